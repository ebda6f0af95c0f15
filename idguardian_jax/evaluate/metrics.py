"""Image-quality and identity metrics between a clean photo and its protected copy.

Photos are (H, W, 3) uint8 RGB of the same size. Embeddings are (N, E) float32.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def psnr(clean: np.ndarray, other: np.ndarray) -> float:
    """PSNR in dB on 0-255 values over the whole photo (inf when identical)."""
    mse = float(np.mean((clean.astype(np.float64) - other.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))


def max_change(clean: np.ndarray, other: np.ndarray) -> int:
    """Largest per-channel change, 0-255."""
    return int(np.abs(clean.astype(np.int16) - other.astype(np.int16)).max(initial=0))


@jax.jit
def _ssim(a, b):
    import dm_pix

    return dm_pix.ssim(a, b, max_val=1.0)


def ssim(clean: np.ndarray, other: np.ndarray) -> float:
    """SSIM (dm-pix: 11x11 Gaussian window, sigma 1.5, k1 0.01, k2 0.03) on [0, 1] RGB over the whole
    photo, averaged over pixels and channels; 1.0 when identical. Photos smaller than the window
    (11 px) are compared as they are (SSIM = 1 if identical else nan)."""
    if clean.shape[0] < 11 or clean.shape[1] < 11:
        return 1.0 if np.array_equal(clean, other) else float("nan")
    a = jnp.asarray(clean, jnp.float32) / 255.0
    b = jnp.asarray(other, jnp.float32) / 255.0
    return float(_ssim(a, b))


def distances(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """Pairwise distances (N, M) float64 between (N, E) and (M, E) embeddings: 'euclidean' or
    'cosine' (1 - cosine similarity), the encoder's own measure (as losses.identity)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if kind == "euclidean":
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.sqrt(np.maximum(d2, 0.0))
    if kind == "cosine":
        an = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)
        bn = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12)
        return 1.0 - an @ bn.T
    raise ValueError(f"unknown distance {kind!r}")


def distance(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    """Distance between two (E,) embeddings."""
    if kind == "euclidean":
        return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
    return float(distances(np.asarray(a)[None], np.asarray(b)[None], kind)[0, 0])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two inclusive (left, top, right, bottom) boxes."""
    l, t = max(a[0], b[0]), max(a[1], b[1])
    r, bb = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, r - l + 1) * max(0, bb - t + 1)
    area = lambda x: max(0, x[2] - x[0] + 1) * max(0, x[3] - x[1] + 1)  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / float(union) if union > 0 else 0.0


def match_faces(boxes: Sequence[Sequence[float]], found: Sequence[Sequence[float]],
                min_iou: float = 0.3) -> list[int | None]:
    """For each box, the index of the found box it matches (IoU >= min_iou), else None.

    Greedy by decreasing IoU, one-to-one (two clean faces never claim the same found face)."""
    pairs = sorted(((iou(b, f), i, j) for i, b in enumerate(boxes) for j, f in enumerate(found)),
                   reverse=True)
    out: list[int | None] = [None] * len(boxes)
    used = set()
    for v, i, j in pairs:
        if v < min_iou:
            break
        if out[i] is None and j not in used:
            out[i] = j
            used.add(j)
    return out
