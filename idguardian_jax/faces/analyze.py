"""The face pipeline of face_recognition, on dlib's models ported to JAX/numpy.

photo (uint8 RGB) -> MMOD detection (upsample 1) -> 5 landmarks per box -> dlib chip (150 px,
padding 0.25, pyramid downsampling for large faces) -> 128-d descriptor.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from idguardian_jax import encoders as encoder_registry
from idguardian_jax.encoders import dlib_resnet
from idguardian_jax.faces import align, detect, detect_regions, landmarks


@dataclasses.dataclass
class Face:
    """One face in a photo.

    box: (left, top, right, bottom), dlib's inclusive integer rectangle, photo pixels.
    score: detector confidence (None for a given box or an aligned chip).
    landmarks: (5, 2) float64 (x, y) photo pixels, dlib's integer points.
    details / plan: dlib's chip geometry and how it is extracted from this photo.
    descriptor: (128,) float32 or None until described.
    landmarks68: (68, 2) dlib's 68 points, when an encoder aligned InsightFace-style needs them.
    """

    box: tuple[int, int, int, int]
    score: float | None
    landmarks: np.ndarray
    details: align.ChipDetails
    plan: align.ChipPlan
    descriptor: np.ndarray | None = None
    landmarks68: np.ndarray | None = None


@dataclasses.dataclass
class FaceModels:
    """dlib's models, loaded once: detector, 5-point predictor, ResNet descriptor, and (on first
    use) the 68-point predictor for encoders aligned on eye centres and mouth corners."""

    detector: detect.MMODDetector
    predictor: landmarks.ShapePredictor
    resnet: dict
    predictor68: landmarks.ShapePredictor | None = None

    @classmethod
    def load(cls, use_cache: bool = True) -> "FaceModels":
        return cls(detect.load_detector(use_cache=use_cache),
                   landmarks.load_shape_predictor(use_cache=use_cache),
                   dlib_resnet.load(use_cache=use_cache))

    def ensure_68(self) -> landmarks.ShapePredictor:
        """Load shape_predictor_68_face_landmarks.dat (99.7 MB: parsed once, 2.0 s on a 2-core CPU
        on 2026-12-02 (80.6 s before the bulk decoder), then cached)."""
        if self.predictor68 is None:
            from idguardian_jax.checkpoints import bundled

            self.predictor68 = landmarks.load_shape_predictor(
                bundled.model_path(bundled.SHAPE_PREDICTOR_68))
        return self.predictor68


def face_from_landmarks(image_shape, box, score, points) -> Face:
    details = align.face_chip_details(points, dlib_resnet.CHIP_SIZE, dlib_resnet.CHIP_PADDING)
    return Face(tuple(int(v) for v in box), score, np.asarray(points, np.float64), details,
                align.chip_plan(details, image_shape[:2]))


def find_faces(image: np.ndarray, models: FaceModels, upsample_num_times: int = 1,
               boxes: Sequence[tuple[int, int, int, int]] | None = None,
               with68: bool = False, max_side: int = 0,
               near: Sequence[tuple[int, int, int, int]] | None = None) -> list[Face]:
    """Detect (unless boxes are given) and align every face in an RGB uint8 photo (H, W, 3).

    with68: also find dlib's 68 landmarks (needed by the arcface / facenet / clip views).
    max_side: 0 runs the detector on the full canvas (detect.detect_faces); otherwise candidates are
        found on a canvas of that long side and refined at full resolution
        (detect_regions.detect_faces_bounded).
    near: approximate boxes where faces are expected (e.g. the clean photo's, to measure a
        protected photo): only dlib's detections near them are computed (detect_regions.refine),
        exactly as the full canvas would give them. Landmarks are always found on the full photo.
    """
    if boxes is None:
        if near is not None:
            dets = detect_regions.refine(image, models.detector, list(near), upsample_num_times)
        elif max_side:
            dets = detect_regions.detect_faces_bounded(image, models.detector, int(max_side),
                                                       upsample_num_times)
        else:
            dets = detect.detect_faces(image, models.detector, upsample_num_times=upsample_num_times)
        found = [(d.rect, d.confidence) for d in dets]
    else:
        found = [(tuple(b), None) for b in boxes]
    faces = []
    for rect, score in found:
        pts = landmarks.predict_landmarks(image, rect, models.predictor, round_to_int=True)
        face = face_from_landmarks(image.shape, rect, score, pts)
        if with68:
            face.landmarks68 = np.asarray(landmarks.predict_landmarks(
                image, rect, models.ensure_68(), round_to_int=True), np.float64)
        faces.append(face)
    return faces


def needs_68(encoder_names: Sequence[str]) -> bool:
    from idguardian_jax import encoders

    return any(encoders.get(n).view != "dlib" for n in encoder_names)


def chip_plan_for(encoder, face: Face, image_shape) -> align.ChipPlan:
    """The chip `encoder` reads from this face: dlib's chip for 'dlib' views, InsightFace's
    norm_crop geometry (template scaled to the chip size) for 'arcface' / 'facenet' / 'clip',
    shrunk towards the chip centre by 1 + encoder.template_margin where that is set."""
    if encoder.view == "dlib":
        if (encoder.chip_size, encoder.padding) == (dlib_resnet.CHIP_SIZE, dlib_resnet.CHIP_PADDING):
            return face.plan
        details = align.face_chip_details(face.landmarks, encoder.chip_size, encoder.padding)
        return align.chip_plan(details, image_shape[:2])
    if face.landmarks68 is None:
        raise ValueError(f"encoder {encoder.name} needs 68-point landmarks (find_faces with68=True)")
    template = align.insightface_template(encoder.chip_size)
    margin = float(getattr(encoder, "template_margin", 0.0))
    if margin:
        template = align.loosen_template(template, encoder.chip_size, margin)
    return align.template_chip_plan(align.points5_from_68(face.landmarks68), template,
                                    encoder.chip_size, image_shape[:2])


def describe(image: np.ndarray, faces: list[Face], models: FaceModels) -> list[Face]:
    """Fill each face's descriptor from its dlib chip of `image`."""
    if faces:
        chips = np.stack([align.extract_chip(image, f.plan) for f in faces])
        for f, d in zip(faces, encoder_registry.embed_uint8("dlib_resnet", models.resnet, chips)):
            f.descriptor = d
    return faces


def analyze(image: np.ndarray, models: FaceModels, upsample_num_times: int = 1) -> list[Face]:
    """find_faces + describe."""
    return describe(image, find_faces(image, models, upsample_num_times), models)
