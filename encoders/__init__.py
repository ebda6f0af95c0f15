"""Identity encoders: one module per ported model, and a registry by name.

Each encoder knows its view of the face (how its chip is cut from the photo), how to load its
weights, how to embed [0, 1] RGB chips, its distance and its same-person threshold.
"""
from __future__ import annotations

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
