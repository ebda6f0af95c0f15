"""Face chip alignment as dlib does it, as an explicit plan that a differentiable sampler can follow.

dlib's `get_face_chip_details` fits a similarity transform from a 5-point template to the landmarks
and describes the chip as a rotated rectangle in the photo; `extract_image_chips` then
(dlib/image_transforms/interpolation.h):

1. crops the photo to a bounding box around the rotated rectangle, grown by a margin,
2. halves that crop with `pyramid_down<2>` (5x5 binomial filter, integer arithmetic) as many times
   as needed for the rectangle to fit in the chip's pixel count,
3. samples the chip from that level with bilinear interpolation, truncating to uint8, and writing 0
   where any of the four neighbours lies outside the level image.

`chip_plan` computes steps 1-3's geometry once (numpy, float64, as dlib does); `extract_chip` follows
the plan in numpy and reproduces dlib's uint8 chip; `idguardian_jax.faces.warp` follows the same plan
differentiably in JAX, so the protection loop sees the chip that dlib (and face_recognition) sees.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# dlib get_face_chip_details, 5-point template in [0, 1] chip coordinates (parts 0..4 of the
# 5-point predictor: right eye outer, right eye inner, left eye outer, left eye inner, nose base).
DLIB_TEMPLATE_5 = np.array([
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
], dtype=np.float64)

# InsightFace ArcFace alignment template (insightface/utils/face_align.py), 112x112 pixels, in the
# order left eye, right eye, nose, left mouth, right mouth (image-left first).
ARCFACE_TEMPLATE_112 = np.array([
    (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
    (70.7299, 92.2041)], dtype=np.float64)


def insightface_template(size: int) -> np.ndarray:
    """InsightFace's alignment template for a square chip of `size` px (face_align.estimate_norm):
    the 112 px ArcFace template scaled by size/112 when size is a multiple of 112, else by size/128
    and shifted right by 8 * size/128 (e.g. 160 px for FaceNet-sized crops)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE_112 * (size / 112.0)
    ratio = size / 128.0
    return ARCFACE_TEMPLATE_112 * ratio + np.array([8.0 * ratio, 0.0])


def loosen_template(template: np.ndarray, size: int, margin: float) -> np.ndarray:
    """A template for a looser crop: the points moved towards the chip centre (size/2, size/2)
    by the factor 1 / (1 + margin), so the chip spans (1 + margin) times the face it would."""
    c = np.array([size / 2.0, size / 2.0])
    return c + (np.asarray(template, np.float64) - c) / (1.0 + float(margin))


def points5_from_68(points68: np.ndarray) -> np.ndarray:
    """The five points InsightFace aligns on, from dlib's 68-point landmarks (x, y):
    image-left eye centre (mean of 36-41), image-right eye centre (42-47), nose tip (30),
    mouth corners (48, 54). InsightFace's detectors were trained on their own annotation, so this is
    close to, not identical with, the points they would find."""
    p = np.asarray(points68, np.float64)
    if p.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks of shape (68, 2), got {p.shape}")
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


@dataclasses.dataclass(frozen=True)
class ChipDetails:
    """dlib::chip_details: a rotated rectangle (l, t, r, b inclusive, float) and the chip size."""

    rect: tuple[float, float, float, float]
    angle: float
    rows: int
    cols: int


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity transform (Umeyama) mapping src -> dst, as dlib computes it.

    Args: src, dst: (N, 2) points, N >= 2. Returns (M (2, 2), t (2,)) with dst ~ M @ src + t.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = len(src)
    mean_s, mean_d = src.mean(0), dst.mean(0)
    sigma_s = np.sum((src - mean_s) ** 2) / n
    cov = (dst - mean_d).T @ (src - mean_s) / n
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    det = np.linalg.det(cov)
    if det < 0 or (det == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        s[1, 1] = -1  # numpy's singular values are sorted descending: flip the smaller one
    r = u @ s @ vt
    c = np.trace(np.diag(d) @ s) / sigma_s if sigma_s != 0 else 1.0
    m = c * r
    return m, mean_d - m @ mean_s


def face_chip_details(landmarks: np.ndarray, size: int = 150, padding: float = 0.25) -> ChipDetails:
    """dlib.get_face_chip_details for 5-point landmarks (5, 2) in photo pixels (x, y)."""
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected 5 landmarks of shape (5, 2), got {landmarks.shape}")
    template = (padding + DLIB_TEMPLATE_5) / (2 * padding + 1) * size
    m, t = similarity_transform(template, landmarks)
    p = m @ np.array([1.0, 0.0])
    angle = math.atan2(p[1], p[0])
    scale = math.hypot(p[0], p[1])
    cx, cy = m @ np.array([size / 2.0, size / 2.0]) + t
    # dlib centered_drect(p, w, h): the inclusive rectangle of width w centred on p.
    w = size * scale - 1
    h = size * scale - 1
    return ChipDetails((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), angle, size, size)


# --- dlib drectangle helpers (inclusive: width = r - l + 1) ----------------------------------
def _area(r):
    l, t, rr, b = r
    if t > b or l > rr:
        return 0.0
    return (rr - l + 1) * (b - t + 1)


def _rect_down(r):
    """pyramid_down<2>::rect_down: each corner p -> p / 2 - (1.25, 0.75)."""
    l, t, rr, b = r
    return (l / 2 - 1.25, t / 2 - 0.75, rr / 2 - 1.25, b / 2 - 0.75)


def _rotate(center, p, angle):
    c, s = math.cos(angle), math.sin(angle)
    x, y = p[0] - center[0], p[1] - center[1]
    return (c * x - s * y + center[0], s * x + c * y + center[1])


def _corners(rect, angle):
    """Rotated tl, tr, bl, br corners of a drectangle about its centre."""
    l, t, r, b = rect
    cen = ((l + r) / 2.0, (t + b) / 2.0)
    return [_rotate(cen, p, angle) for p in ((l, t), (r, t), (l, b), (r, b))]


def _lround(v: float) -> int:
    """C's lround: halves away from zero."""
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


@dataclasses.dataclass(frozen=True)
class ChipPlan:
    """How dlib extracts one chip from a photo of size (height, width).

    box: (top, left, bottom, right) inclusive integer crop of the photo the pyramid starts from.
    n_down: number of pyramid_down<2> halvings of that crop (0: sample the crop directly).
    level_shape: (rows, cols) of the image the chip is sampled from (after n_down halvings).
    affine: (2, 3) float64, maps chip pixel (col, row, 1) to (x, y) in that level image.
    rows, cols: chip size.
    """

    box: tuple[int, int, int, int]
    n_down: int
    level_shape: tuple[int, int]
    affine: np.ndarray
    rows: int
    cols: int

    @property
    def box_shape(self) -> tuple[int, int]:
        return (self.box[2] - self.box[0] + 1, self.box[3] - self.box[1] + 1)


def pyramid_level_shape(shape: tuple[int, int], n_down: int) -> tuple[int, int]:
    """Size after n_down pyramid_down<2> halvings: n -> (n - 3) // 2 each time (0 if n <= 8)."""
    h, w = shape
    for _ in range(n_down):
        if h <= 8 or w <= 8:
            return (0, 0)
        h, w = (h - 3) // 2, (w - 3) // 2
    return (h, w)


def chip_plan(details: ChipDetails, image_shape: tuple[int, int]) -> ChipPlan:
    """The geometry of dlib.extract_image_chip(img, details) for a photo of (height, width)."""
    height, width = int(image_shape[0]), int(image_shape[1])
    size = details.rows * details.cols
    depth, grow = 0, 2.0
    r = _rect_down(details.rect)
    while _area(r) > size:
        r = _rect_down(r)
        depth += 1
        grow = grow * 2 + 2
    xs, ys = zip(*_corners(details.rect, details.angle))
    gl, gt, gr, gb = min(xs) - grow, min(ys) - grow, max(xs) + grow, max(ys) + grow
    # intersect with the image, then dlib converts the drectangle to a rectangle with lround
    gl, gt, gr, gb = max(gl, 0.0), max(gt, 0.0), min(gr, width - 1.0), min(gb, height - 1.0)
    left, top, right, bottom = _lround(gl), _lround(gt), _lround(gr), _lround(gb)
    if left > right or top > bottom:
        raise ValueError("the face's chip lies entirely outside the photo")
    # the rectangle in the crop's coordinates, then down to the chosen level
    l, t, rr, b = details.rect
    rect = (l - left, t - top, rr - left, b - top)
    n_down = 0
    while _area(_rect_down(rect)) > size:
        rect = _rect_down(rect)
        n_down += 1
    tl, tr, bl, _ = _corners(rect, details.angle)
    a = np.array([
        [(tr[0] - tl[0]) / (details.cols - 1), (bl[0] - tl[0]) / (details.rows - 1), tl[0]],
        [(tr[1] - tl[1]) / (details.cols - 1), (bl[1] - tl[1]) / (details.rows - 1), tl[1]],
    ])
    box = (top, left, bottom, right)
    level_shape = pyramid_level_shape((bottom - top + 1, right - left + 1), n_down)
    return ChipPlan(box, n_down, level_shape, a, details.rows, details.cols)


def template_chip_plan(points: np.ndarray, template: np.ndarray, size: int,
                       image_shape: tuple[int, int]) -> ChipPlan:
    """A chip cut like InsightFace's norm_crop (cv2.warpAffine of a similarity transform fitted
    from the landmarks to the template; bilinear, no pyramid), as a ChipPlan with n_down = 0.

    points, template: (5, 2) (x, y), photo pixels and chip pixels. The crop box is the chip's
    footprint in the photo (plus a pixel), clipped to the photo.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    m, t = similarity_transform(points, template)  # photo -> chip
    inv = np.linalg.inv(m)
    off = -inv @ t  # chip -> photo: inv @ p + off
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], float)
    foot = corners @ inv.T + off
    left = max(0, int(np.floor(foot[:, 0].min())) - 1)
    top = max(0, int(np.floor(foot[:, 1].min())) - 1)
    right = min(width - 1, int(np.ceil(foot[:, 0].max())) + 1)
    bottom = min(height - 1, int(np.ceil(foot[:, 1].max())) + 1)
    if left > right or top > bottom:
        raise ValueError("the face's chip lies entirely outside the photo")
    affine = np.concatenate([inv, (off - [left, top])[:, None]], axis=1)
    return ChipPlan((top, left, bottom, right), 0, (bottom - top + 1, right - left + 1), affine,
                    size, size)


_BINOMIAL = np.array([1, 4, 6, 4, 1], np.uint32)


def pyramid_down2(img: np.ndarray) -> np.ndarray:
    """dlib pyramid_down<2> on an RGB uint8 image (H, W, 3) -> ((H-3)//2, (W-3)//2, 3) uint8.

    Output pixel (i, j) = floor(sum_ab w_a w_b img[2i+a, 2j+b] / 256), w = (1, 4, 6, 4, 1).
    """
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0) + img.shape[2:], np.uint8)
    oh, ow = (h - 3) // 2, (w - 3) // 2
    x = img.astype(np.uint32)
    rows = sum(_BINOMIAL[a] * x[:, a:a + 2 * ow:2] for a in range(5))  # (h, ow, c)
    out = sum(_BINOMIAL[a] * rows[a:a + 2 * oh:2] for a in range(5))  # (oh, ow, c)
    return (out // 256).astype(np.uint8)


def bilinear_uint8(level: np.ndarray, affine: np.ndarray, rows: int, cols: int,
                   rounding: str = "floor") -> np.ndarray:
    """dlib transform_image with interpolate_bilinear into a (rows, cols) uint8 chip.

    rounding: 'floor' truncates as dlib does; 'round' rounds as OpenCV's warpAffine does.
    """
    nr, nc = level.shape[:2]
    cc, rr = np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64))
    x = affine[0, 0] * cc + affine[0, 1] * rr + affine[0, 2]
    y = affine[1, 0] * cc + affine[1, 1] * rr + affine[1, 2]
    left, top = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    inside = (left >= 0) & (top >= 0) & (left + 1 < nc) & (top + 1 < nr)
    lc, tc = np.clip(left, 0, max(nc - 2, 0)), np.clip(top, 0, max(nr - 2, 0))
    fx, fy = (x - left)[..., None], (y - top)[..., None]
    f = level.astype(np.float64)
    if nr < 2 or nc < 2:
        return np.zeros((rows, cols) + level.shape[2:], np.uint8)
    tl, tr = f[tc, lc], f[tc, lc + 1]
    bl, br = f[tc + 1, lc], f[tc + 1, lc + 1]
    v = (1 - fy) * ((1 - fx) * tl + fx * tr) + fy * ((1 - fx) * bl + fx * br)
    v = np.where(inside[..., None], v, 0.0)
    if rounding == "round":
        v = np.round(v)
    return v.astype(np.uint8)  # static_cast<unsigned char>: truncation


def extract_chip(image: np.ndarray, plan: ChipPlan, rounding: str = "floor") -> np.ndarray:
    """Follow a ChipPlan on an RGB uint8 photo (H, W, 3): dlib's uint8 chip (rows, cols, 3)."""
    t, l, b, r = plan.box
    level = image[t:b + 1, l:r + 1]
    for _ in range(plan.n_down):
        level = pyramid_down2(level)
    return bilinear_uint8(level, plan.affine, plan.rows, plan.cols, rounding)


def face_chip(image: np.ndarray, landmarks: np.ndarray, size: int = 150,
              padding: float = 0.25) -> np.ndarray:
    """dlib.get_face_chip(image, shape, size, padding) for 5-point landmarks: uint8 (size, size, 3)."""
    details = face_chip_details(landmarks, size, padding)
    return extract_chip(image, chip_plan(details, image.shape[:2]))
