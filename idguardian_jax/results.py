"""What protecting a photo gives back: per-face reports and the photo's result, and the words a
newcomer reads for them."""
from __future__ import annotations

import dataclasses

import numpy as np

from idguardian_jax import encoders as encoder_registry


@dataclasses.dataclass
class FaceReport:
    """Distances are dlib's (the yardstick, always measured); `encoders` holds, per encoder of the
    objective, {'after': distance to the clean embedding, 'threshold': same person below it}."""

    box: list[int]
    score: float | None
    distance_in_loop: float | None = None       # the loop's own view, no jitter, 8-bit photo
    distance_before: float | None = None        # clean photo, same pipeline (0 unless nondeterministic)
    distance_after: float | None = None         # protected photo, faces found again
    found_again: bool | None = None             # the detector still finds this face
    protected: bool | None = None               # distance_after above dlib's threshold
    encoders: dict[str, dict] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PhotoResult:
    """status: 'protected', 'no_face', 'error' (and 'skipped', 'copied' for files)."""

    status: str
    protected: np.ndarray | None = None
    faces: list[FaceReport] = dataclasses.field(default_factory=list)
    psnr: float | None = None
    max_change: int | None = None
    seconds: float | None = None
    losses: list[float] | None = None
    error: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def record(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("protected")
        return d


def describe_face(face: dict) -> list[str]:
    """Lines a newcomer reads right, one per encoder of a face record (FaceReport as a dict):
    the similarity (cosine encoders) or distance (dlib) of the protected face, found again on
    the written photo, to the clean face, against the encoder's same-person threshold."""
    lines = []
    for name, e in face.get("encoders", {}).items():
        enc = encoder_registry.get(name)
        after, thr = e.get("after"), float(e["threshold"])
        if after is None:
            lines.append(f"{name}: face no longer detected: not recognized")
            continue
        if enc.distance == "cosine":
            sim, same = 1.0 - after, 1.0 - thr
            verdict = "recognized" if after < thr else "not recognized"
            lines.append(f"{name}: similarity to the clean face 1.00 -> {sim:.2f} (same person at "
                         f">= {same:.2f}): {verdict}")
        else:
            verdict = "recognized" if after < thr else "not recognized"
            lines.append(f"{name}: distance to the clean face 0.00 -> {after:.2f} (same person "
                         f"below {thr:.2f}): {verdict}")
    return lines
