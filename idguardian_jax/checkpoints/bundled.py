"""Locate the dlib model files shipped in the PyPI package `face_recognition_models`.

The package's own `__init__` imports `pkg_resources`, which setuptools >= 81 removed, so we find the
files through `importlib.metadata` without importing the package.
"""
from __future__ import annotations

import importlib.metadata
import os

DETECTOR = "mmod_human_face_detector.dat"
SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"
RESNET = "dlib_face_recognition_resnet_model_v1.dat"


class MissingModelError(FileNotFoundError):
    pass


def model_path(filename: str) -> str:
    """Absolute path of one of the bundled dlib model files."""
    override = os.environ.get("IDGUARDIAN_DLIB_MODELS")
    if override:
        path = os.path.join(override, filename)
        if not os.path.isfile(path):
            raise MissingModelError(f"{path}: not found (IDGUARDIAN_DLIB_MODELS is set to {override})")
        return path
    try:
        dist = importlib.metadata.distribution("face_recognition_models")
    except importlib.metadata.PackageNotFoundError:
        raise MissingModelError(
            "the package face_recognition_models is not installed; `pip install "
            "face_recognition_models` provides dlib's face model files") from None
    path = str(dist.locate_file(os.path.join("face_recognition_models", "models", filename)))
    if not os.path.isfile(path):
        raise MissingModelError(f"{path}: not found in the installed face_recognition_models")
    return path
