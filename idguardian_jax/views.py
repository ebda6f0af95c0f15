"""Planning each encoder's view of each face, with static shapes for the jitted loop.

Faces are found and aligned once, on the clean photo. For each (encoder, face) the plan fixes
what dlib's extraction does (crop box, pyramid depth, level size, affine) as arrays, and puts the
face in a group of faces that share static shapes (window size, pyramid depth, chip size), so a
group is one vmapped computation. The photo is cut to a *region* covering every window; only the
region travels to the device. A photo's *signature* (region size + groups) decides which compiled
program runs it: photos with equal signatures are batched together.

Window and region sizes are rounded up to multiples of BUCKET so that faces of similar size share a
program; the extra pixels never reach a chip (see `idguardian_jax.faces.warp`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from idguardian_jax.faces import align

BUCKET = 64


def bucket(n: int, step: int = BUCKET) -> int:
    return max(step, -(-int(n) // step) * step)


@dataclasses.dataclass(frozen=True)
class ViewGroup:
    """Static shape of a group of face views: window (h, w), pyramid halvings, chip size, count."""

    window: tuple[int, int]
    n_down: int
    rows: int
    cols: int
    count: int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FaceViews:
    """One encoder's views of a photo's faces, over its F face slots in group order (a pytree;
    numpy on the host, jax arrays in the loop, with a leading batch axis when batched).

    start: (F, 2) int32 window top-left in region pixels. affine: (F, 2, 3) float32 chip ->
    level. level_shape: (F, 2) int32. chip_per_px: (F,) float32 chip pixels per photo pixel.
    """

    start: Any
    affine: Any
    level_shape: Any
    chip_per_px: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PhotoViews:
    """Every encoder's FaceViews of one photo region, and the region's top-left in the photo
    (offset (2,) int32: JPEG's block grid for EoT)."""

    encoders: dict[str, FaceViews]
    offset: Any
    # (H, W) float32 face mask for encoders not exempt from it (objective.face_mask_exempt), or
    # None: their gradients are kept inside it while the exempt ones use their whole crop
    mask: Any = None


@dataclasses.dataclass
class PhotoPlan:
    """The region of a photo the loop works on, and every face view inside it.

    region: (top, left, height, width) in photo pixels; height/width are bucketed and may run past
      the photo's edge (those pixels are zero padding and are never written back).
    groups: per encoder name, the tuple of ViewGroups (static).
    views: the PhotoViews (numpy) of the loop.
    slot_faces: per encoder name, (F,) int32 index in the photo's face list of each face slot.
    support: (height, width) float32, 1 where some view reads the photo (dlib's crop boxes).
    """

    region: tuple[int, int, int, int]
    groups: dict[str, tuple[ViewGroup, ...]]
    views: PhotoViews
    slot_faces: dict[str, np.ndarray]
    support: np.ndarray

    @property
    def signature(self) -> tuple:
        return (self.region[2], self.region[3],
                tuple((name, self.groups[name]) for name in sorted(self.groups)))


def plan_photo(image_shape: tuple[int, int], chip_plans: dict[str, Sequence[align.ChipPlan]],
               step: int = BUCKET) -> PhotoPlan:
    """Plan the views of every face for every encoder.

    chip_plans: encoder name -> one align.ChipPlan per face (dlib-style extraction).
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    items = []  # (name, face index, plan, window)
    for name, plans in chip_plans.items():
        for i, p in enumerate(plans):
            bh, bw = p.box_shape
            items.append((name, i, p, (bucket(bh, step), bucket(bw, step))))
    if not items:
        raise ValueError("a photo plan needs at least one face view")
    top = min(p.box[0] for _, _, p, _ in items)
    left = min(p.box[1] for _, _, p, _ in items)
    bottom = max(p.box[0] + w[0] for _, _, p, w in items)
    right = max(p.box[1] + w[1] for _, _, p, w in items)
    rh, rw = bucket(bottom - top, step), bucket(right - left, step)
    support = np.zeros((rh, rw), np.float32)
    for _, _, p, _ in items:
        t, l, b, r = p.box
        support[t - top:b - top + 1, l - left:r - left + 1] = 1.0
    # the photo ends inside the region: nothing there may be perturbed
    support[max(0, height - top):, :] = 0.0
    support[:, max(0, width - left):] = 0.0

    groups: dict[str, tuple[ViewGroup, ...]] = {}
    per_encoder: dict[str, FaceViews] = {}
    slot_faces: dict[str, np.ndarray] = {}
    for name in chip_plans:
        mine = [(i, p, w) for n, i, p, w in items if n == name]
        key = lambda t: (t[2], t[1].n_down, t[1].rows, t[1].cols, t[0])  # noqa: E731
        mine.sort(key=key)
        gs: list[ViewGroup] = []
        for i, p, w in mine:
            if gs and (gs[-1].window, gs[-1].n_down, gs[-1].rows, gs[-1].cols) == (w, p.n_down, p.rows, p.cols):
                gs[-1] = dataclasses.replace(gs[-1], count=gs[-1].count + 1)
            else:
                gs.append(ViewGroup(w, p.n_down, p.rows, p.cols, 1))
        groups[name] = tuple(gs)
        per_encoder[name] = FaceViews(
            start=np.array([[p.box[0] - top, p.box[1] - left] for _, p, _ in mine], np.int32),
            affine=np.stack([p.affine for _, p, _ in mine]).astype(np.float32),
            level_shape=np.array([p.level_shape for _, p, _ in mine], np.int32),
            # chip pixels per photo pixel: 2**n_down level pixels per photo pixel, then the affine
            chip_per_px=np.array([1.0 / (np.hypot(*p.affine[:, 0]) * 2 ** p.n_down)
                                  for _, p, _ in mine], np.float32))
        slot_faces[name] = np.array([i for i, _, _ in mine], np.int32)
    # the region's place in the photo (JPEG's block grid)
    photo_views = PhotoViews(per_encoder, np.array([top, left], np.int32))
    return PhotoPlan((top, left, rh, rw), groups, photo_views, slot_faces, support)


def rounding_for(encoder) -> str:
    """How the encoder's upstream pipeline turns its float chip into 8 bits: dlib's extraction
    floors, the others round to the nearest level (align.extract_chip, warp.sample_view)."""
    return "floor" if encoder.view == "dlib" else "round"


def crop_region(image: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """The region of an (H, W, C) photo, zero-padded where it runs past the edge."""
    top, left, h, w = region
    out = np.zeros((h, w) + image.shape[2:], image.dtype)
    part = image[top:top + h, left:left + w]
    out[:part.shape[0], :part.shape[1]] = part
    return out


def paste_region(image: np.ndarray, region_values: np.ndarray,
                 region: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of `image` with the region (clipped to the photo) replaced by region_values."""
    top, left, h, w = region
    out = image.copy()
    part = out[top:top + h, left:left + w]
    part[...] = region_values[:part.shape[0], :part.shape[1]]
    return out


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (counter-clockwise) of (N, 2) points, Andrew's monotone chain."""
    pts = sorted(map(tuple, np.asarray(points, np.float64)))
    if len(pts) <= 2:
        return np.array(pts)

    def half(seq):
        out: list = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(reversed(pts))
    return np.array(lower[:-1] + upper[:-1])


def face_mask(region: tuple[int, int, int, int], landmarks68: Sequence[np.ndarray],
              margin: float) -> np.ndarray:
    """(height, width) float32 of the region: 1 inside each face's convex hull of dlib's 68
    landmarks (jaw line, brows, eyes, nose, mouth) grown about its centroid by `margin`
    (relative), 0 elsewhere. The identity lives there; hair and background are left alone."""
    from PIL import Image, ImageDraw

    top, left, h, w = region
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for pts in landmarks68:
        hull = _hull(pts)
        c = hull.mean(axis=0)
        hull = c + (hull - c) * (1.0 + margin) - np.array([left, top], np.float64)
        draw.polygon([tuple(p) for p in hull], fill=255)
    return (np.asarray(img, np.float32) / 255.0 > 0.5).astype(np.float32)
