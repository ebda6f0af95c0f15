"""Measuring like an attacker: the one path idguardian-protect's records and idguardian-evaluate
share. On a photo (protected, or post-processed), faces are found again the way the attacker's
pipeline finds them (dlib's detector, near the known faces or on the whole photo), matched
one-to-one to the known faces by box overlap, and each encoder reads its own chip of each match.
Embedding the chips is left to the caller (its loaded weights, its batching).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from idguardian_jax import views
from idguardian_jax.faces import align, analyze, boxes

MIN_IOU = 0.3  # a known face and a face found again are the same face from this box overlap


def found_again(photo: np.ndarray, known_boxes: Sequence[Sequence[int]],
                find_faces: Callable[..., list[analyze.Face]], near: bool = True,
                min_iou: float = MIN_IOU) -> tuple[list[analyze.Face], list[int | None]]:
    """(the faces found on `photo`, and per known box the index of its match among them or None).

    photo: (H, W, 3) uint8. find_faces(photo, near=boxes or None): the caller's detection (near:
    only where the known faces are, equal there to a full detection; else the whole photo)."""
    found = find_faces(photo, near=list(known_boxes) if near else None)
    return found, boxes.match(known_boxes, [g.box for g in found], min_iou)


def chip(encoder, photo: np.ndarray, face: analyze.Face) -> np.ndarray:
    """The (S, S, 3) uint8 chip `encoder` reads from this face of `photo` (its own crop and
    rounding, as its upstream pipeline cuts it)."""
    return align.extract_chip(photo, analyze.chip_plan_for(encoder, face, photo.shape),
                              views.rounding_for(encoder))
