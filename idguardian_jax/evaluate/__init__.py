"""Measuring protection: identity distance, verification, detection failures and image quality
between clean photos and their protected copies, after post-processing transforms, with a report.

>>> from idguardian_jax import evaluate  # doctest: +SKIP
>>> run = evaluate.evaluate_folders("photos/", "protected/",  # doctest: +SKIP
...                                transforms=["jpeg75"])
>>> report = evaluate.report.build(run); evaluate.report.write("report/", report)  # doctest: +SKIP
"""
from __future__ import annotations

from idguardian_jax.evaluate import metrics, report, transforms
from idguardian_jax.evaluate.core import Evaluator
from idguardian_jax.evaluate.records import FaceEval, PhotoEval, Run, Variant


def evaluate_folders(clean_dir: str, protected_dir: str, identities=None, *,
                     encoders=("dlib_resnet",), checkpoints=None, transforms=(),
                     clean_baseline=False, lpips_weights=None, upsample=1,
                     reuse_protect_records=False, thumb_size=320, progress=False, workers=1,
                     evaluator: Evaluator | None = None) -> Run:
    """Evaluate every photo under clean_dir against its protected copy (see core.Evaluator)."""
    ev = evaluator or Evaluator(encoders, checkpoints, transforms, clean_baseline, lpips_weights,
                                upsample, thumb_size=thumb_size)
    return ev.evaluate_folders(clean_dir, protected_dir, identities,
                               reuse_protect_records=reuse_protect_records, progress=progress,
                               workers=workers)


__all__ = ["Evaluator", "FaceEval", "PhotoEval", "Run", "Variant", "evaluate_folders", "metrics",
           "report", "transforms"]
