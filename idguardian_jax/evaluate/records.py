"""What an evaluation records: the variants measured, per face and per photo results, the run."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from idguardian_jax.evaluate import transforms as transforms_mod


@dataclasses.dataclass
class Variant:
    """An image the faces are measured on: `source` ('protected' or 'clean') after `transform`.
    name: the transform's name for the protected photo ('none' = the photo itself), and
    'clean:<transform>' for the clean photo (the transform's own effect, a baseline)."""

    name: str
    source: str
    transform: transforms_mod.Transform


@dataclasses.dataclass
class FaceEval:
    """One clean face and how it fares on each variant.

    results: variant name -> {'found': bool, 'box': [l, t, r, b] | None,
                              'encoders': {encoder: {'distance', 'gallery_min', 'recognized',
                                                     'success'}}}
    clean: encoder -> {'gallery_min', 'recognized'}: the clean face against its gallery (baseline).
    """

    index: int
    box: list[int]
    score: float | None
    person: str | None = None
    gallery: int = 0
    clean: dict[str, dict] = dataclasses.field(default_factory=dict)
    results: dict[str, dict] = dataclasses.field(default_factory=dict)
    clean_emb: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    emb: dict[tuple[str, str], np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    def record(self) -> dict:
        return {"index": self.index, "box": self.box, "score": self.score, "person": self.person,
                "gallery": self.gallery, "clean": self.clean, "results": self.results}


@dataclasses.dataclass
class PhotoEval:
    """One clean photo and its protected copy. status: 'evaluated', 'no_face' or 'error'.
    psnr is None when the photos are identical (max_change 0). thumbs: JPEG bytes of the clean,
    protected and amplified-difference thumbnails for the HTML report (not in the JSON)."""

    path: str
    clean: str | None = None
    protected: str | None = None
    status: str = "error"
    error: str | None = None
    width: int | None = None
    height: int | None = None
    person: str | None = None
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    max_change: int | None = None
    clean_faces_from: str | None = None
    seconds: float | None = None
    faces: list[FaceEval] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    thumbs: dict[str, bytes] = dataclasses.field(default_factory=dict, repr=False)

    def record(self) -> dict:
        keys = ("path", "clean", "protected", "status", "error", "width", "height", "person",
                "psnr", "ssim", "lpips", "max_change", "clean_faces_from", "seconds", "notes")
        d = {k: getattr(self, k) for k in keys}
        d["faces"] = [f.record() for f in self.faces]
        return d


@dataclasses.dataclass
class Run:
    """Everything one evaluation produced (report.build turns it into the JSON report)."""

    photos: list[PhotoEval]
    encoders: dict[str, dict]           # name -> {'distance', 'threshold'}
    variants: list[str]
    settings: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)
    unpaired: list[str] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
