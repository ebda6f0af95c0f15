"""Identity encoders: one module per ported model, and a registry by name.

Each encoder knows its view of the face (how its chip is cut from the photo), how to load its
weights, how to embed [0, 1] RGB chips, its distance and its same-person threshold.
"""
from __future__ import annotations

import functools

import numpy as np

from idguardian_jax.encoders.base import Encoder


_REGISTRY: dict[str, Encoder] = {}


def register(enc: Encoder) -> Encoder:
    _REGISTRY[enc.name] = enc
    return enc


def get(name: str) -> Encoder:
    _ensure_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown encoder {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name]


def load_params(name: str, path: str | None = None):
    """An encoder's params from an upstream checkpoint (its own loader) or from a file that
    idguardian-convert wrote (the Flax tree in one .safetensors file)."""
    import jax
    import jax.numpy as jnp

    from idguardian_jax.checkpoints import tensors

    enc = get(name)
    if path is not None:
        found = tensors.read_flax(path)
        if found is not None:
            stored, tree, meta = found
            if stored != name:
                raise tensors.CheckpointError(
                    f"{path}: a converted {stored or 'unknown'} checkpoint, not {name}")
            return enc.from_tree(jax.tree_util.tree_map(jnp.asarray, tree), meta)
    return enc.load(path) if path is not None else enc.load()


def embed_uint8(name: str, params, chips: np.ndarray) -> np.ndarray:
    """(N, embed_dim) float32 embeddings by encoder `name` of uint8 RGB chips (N, S, S, 3).

    One compiled program per encoder and batch size; batches are padded to a power of two, so a
    folder of photos compiles a handful of times. Not op by op: run eagerly, each of a network's
    hundreds of operations is compiled on its first call and dispatched alone after; on a 2-core
    CPU (2026-12-02) a first 1-chip embedding took 4.2 / 10.8 / 15.7 s eagerly for dlib /
    mobileface / faceres against 1.2-1.6 s compiled, and a warm one 0.26 / 0.10 / 0.20 s against
    0.018 / 0.002 / 0.023 s.
    """
    n = len(chips)
    enc = get(name)
    if n == 0:
        return np.zeros((0, enc.embed_dim), np.float32)
    size = 1 << (n - 1).bit_length()
    padded = np.zeros((size,) + chips.shape[1:], np.uint8)
    padded[:n] = chips
    return np.asarray(_compiled_uint8(enc)(params, padded), np.float32)[:n]


@functools.lru_cache(maxsize=None)
def _compiled_uint8(enc: Encoder):
    import jax
    import jax.numpy as jnp

    return jax.jit(lambda params, chips: enc.apply(params, chips.astype(jnp.float32) / 255.0))


def installed() -> list[str]:
    """Registry names of the real face encoders installed in the cache (`idguardian-models
    install`); `load_params(name)` (no path) loads each from there. Reads only the cache."""
    from idguardian_jax.checkpoints import human_models

    return [e.name for e in human_models.installed_encoders()]


def installable() -> list[str]:
    """Registry names that `idguardian-models install` provides."""
    from idguardian_jax.checkpoints import human_models

    return [m.name for m in human_models.MODELS]


def names() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def _ensure_builtin() -> None:
    """Registers the built-in encoders (each module's ENCODER or ENCODERS) on first use."""
    if _BUILTIN_DONE:
        return
    from idguardian_jax.encoders import arcface, clip_vit, dlib_resnet, facenet, tfjs_face

    for module in (arcface, clip_vit, dlib_resnet, facenet, tfjs_face):
        for enc in getattr(module, "ENCODERS", None) or (module.ENCODER,):
            _REGISTRY.setdefault(enc.name, enc)
    _BUILTIN_DONE.append(True)


_BUILTIN_DONE: list[bool] = []
