"""Face boxes: overlap and matching (one home for both; detection, protect and evaluate use them).

Boxes are inclusive integer (left, top, right, bottom) rectangles, as dlib reports them.
"""
from __future__ import annotations

from typing import Sequence


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two inclusive (left, top, right, bottom) boxes (0 if empty)."""
    l, t = max(a[0], b[0]), max(a[1], b[1])
    r, bb = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, r - l + 1) * max(0, bb - t + 1)
    area = lambda x: max(0, x[2] - x[0] + 1) * max(0, x[3] - x[1] + 1)  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / float(union) if union > 0 else 0.0


def match(boxes: Sequence[Sequence[float]], found: Sequence[Sequence[float]],
          min_iou: float = 0.3) -> list[int | None]:
    """For each box, the index of the found box it matches (IoU >= min_iou), else None.

    Greedy by decreasing IoU, one-to-one: two faces never claim the same found face (the way an
    attacker's pipeline sees one face per detection)."""
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
