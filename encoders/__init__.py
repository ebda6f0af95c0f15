"""Identity encoders: one module per ported model, and a registry by name.

Each encoder knows its view of the face (how its chip is cut from the photo), how to load its
weights, how to embed [0, 1] RGB chips, its distance and its same-person threshold.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Encoder:
    """An identity encoder.

    name: registry name. chip_size: side of the square chip it reads (pixels).
    view: how the chip is cut from the photo: 'dlib' (dlib's 5-point template with `padding` and
      its pyramid downsampling), 'arcface' (InsightFace's 112 px template), 'facenet' / 'clip'
      (a square face crop resized to chip_size).
    load(path_or_None) -> params pytree (None: the bundled weights, where there are any).
    apply(params, chips) -> (N, embed_dim) for float32 chips (N, chip_size, chip_size, 3) in [0, 1].
    distance: 'euclidean' or 'cosine'; threshold: same person below it.
    template_margin: for template views, the template is shrunk towards the chip centre by
      1 + template_margin (a looser crop; 0: InsightFace's template as is).
    to_tree(params) -> (nested dict of arrays, JSON-able meta) and from_tree(tree, meta) -> params:
      how params are stored in the converted Flax format (idguardian-convert).
    """

    name: str
    chip_size: int
    view: str
    padding: float
    load: Callable[..., Any]
    apply: Callable[[Any, Any], Any]
    distance: str
    threshold: float
    embed_dim: int
    to_tree: Callable[[Any], Any] = lambda params: (params, {})
    from_tree: Callable[[Any, Any], Any] = lambda tree, meta: tree
    template_margin: float = 0.0
    # apply_augmented(params, chips, key, rate, linear_backward=0.0) -> embeddings of a randomly
    # thinned network (feature-map dropout; model augmentation for transfer) whose last
    # activations may be linear in the backward pass (LinBP), or None where not supported.
    apply_augmented: Callable[..., Any] | None = None
    # features(params, chips) -> (N, h, w, c) intermediate feature map (a mid-network layer) for
    # feature-level transfer losses, or None where not exposed.
    features: Callable[..., Any] | None = None


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
    from encoders import arcface, clip_vit, dlib_resnet, facenet, tfjs_face  # noqa: F401  (register themselves)
