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


_REGISTRY: dict[str, Encoder] = {}


def register(enc: Encoder) -> Encoder:
    _REGISTRY[enc.name] = enc
    return enc


def get(name: str) -> Encoder:
    _ensure_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown encoder {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def _ensure_builtin() -> None:
    from encoders import arcface, clip_vit, dlib_resnet, facenet  # noqa: F401  (register themselves)
