"""The face pipeline of face_recognition, on dlib's models ported to JAX/numpy.

photo (uint8 RGB) -> MMOD detection (upsample 1) -> 5 landmarks per box -> dlib chip (150 px,
padding 0.25, pyramid downsampling for large faces) -> 128-d descriptor.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from encoders import dlib_resnet
from idguardian_jax.faces import align, detect, landmarks


@dataclasses.dataclass
class Face:
    """One face in a photo.

    box: (left, top, right, bottom), dlib's inclusive integer rectangle, photo pixels.
    score: detector confidence (None for a given box or an aligned chip).
    landmarks: (5, 2) float64 (x, y) photo pixels, dlib's integer points.
    details / plan: dlib's chip geometry and how it is extracted from this photo.
    descriptor: (128,) float32 or None until described.
    """

    box: tuple[int, int, int, int]
    score: float | None
    landmarks: np.ndarray
    details: align.ChipDetails
    plan: align.ChipPlan
    descriptor: np.ndarray | None = None


@dataclasses.dataclass
class FaceModels:
    """dlib's three models, loaded once: detector, 5-point predictor, ResNet descriptor."""

    detector: detect.MMODDetector
    predictor: landmarks.ShapePredictor
    resnet: dict

    @classmethod
    def load(cls, use_cache: bool = True) -> "FaceModels":
        return cls(detect.load_detector(use_cache=use_cache),
                   landmarks.load_shape_predictor(use_cache=use_cache),
                   dlib_resnet.load(use_cache=use_cache))


@jax.jit
def _describe_chips(params, chips_u8):
    return dlib_resnet.apply_uint8(params, chips_u8)


def describe_chips(params: dict, chips: np.ndarray) -> np.ndarray:
    """Descriptors (N, 128) float32 of uint8 chips (N, 150, 150, 3).

    Batches are padded to a power of two so a folder of photos compiles a handful of times.
    """
    n = len(chips)
    if n == 0:
        return np.zeros((0, dlib_resnet.EMBED_DIM), np.float32)
    size = 1 << (n - 1).bit_length()
    padded = np.zeros((size,) + chips.shape[1:], np.uint8)
    padded[:n] = chips
    return np.asarray(_describe_chips(params, jnp.asarray(padded)))[:n]


def face_from_landmarks(image_shape, box, score, points) -> Face:
    details = align.face_chip_details(points, dlib_resnet.CHIP_SIZE, dlib_resnet.CHIP_PADDING)
    return Face(tuple(int(v) for v in box), score, np.asarray(points, np.float64), details,
                align.chip_plan(details, image_shape[:2]))


def find_faces(image: np.ndarray, models: FaceModels, upsample_num_times: int = 1,
               boxes: Sequence[tuple[int, int, int, int]] | None = None) -> list[Face]:
    """Detect (unless boxes are given) and align every face in an RGB uint8 photo (H, W, 3)."""
    if boxes is None:
        dets = detect.detect_faces(image, models.detector, upsample_num_times=upsample_num_times)
        found = [(d.rect, d.confidence) for d in dets]
    else:
        found = [(tuple(b), None) for b in boxes]
    faces = []
    for rect, score in found:
        pts = landmarks.predict_landmarks(image, rect, models.predictor, round_to_int=True)
        faces.append(face_from_landmarks(image.shape, rect, score, pts))
    return faces


def describe(image: np.ndarray, faces: list[Face], models: FaceModels) -> list[Face]:
    """Fill each face's descriptor from its dlib chip of `image`."""
    if faces:
        chips = np.stack([align.extract_chip(image, f.plan) for f in faces])
        for f, d in zip(faces, describe_chips(models.resnet, chips)):
            f.descriptor = d
    return faces


def analyze(image: np.ndarray, models: FaceModels, upsample_num_times: int = 1) -> list[Face]:
    """find_faces + describe."""
    return describe(image, find_faces(image, models, upsample_num_times), models)
