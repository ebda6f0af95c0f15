"""The Encoder record every identity encoder module defines (its `ENCODER`, or `ENCODERS`), which
the `encoders` registry collects. Kept apart from the registry so that an encoder module never
imports the package that imports it."""
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
