"""Post-processing a platform or an adversary applies to a protected photo, as named transforms.

Every transform is a pure, deterministic function of a uint8 RGB photo (H, W, 3) -> uint8 RGB
(H, W, 3) of the same size, built from a name whose number is its parameter:

  none            the photo itself
  jpegQ           JPEG encode/decode at quality Q (1-100; Pillow, 4:2:0 chroma subsampling)
  webpQ           WebP encode/decode at quality Q (1-100; Pillow)
  resizeS         resize down by S (0 < S < 1) and back up (Pillow bilinear, antialiased down)
  blurS           Gaussian blur, standard deviation S pixels (separable kernel to 4 S, mirrored)
  noiseS          add Gaussian noise of standard deviation S (in 0-255 levels), fixed seed, clip
  cropF           center crop keeping a fraction F (0 < F < 1) of each side, resize back (bilinear)
  bitsB           keep B bits per channel (1-7): round(x / 255 * (2^B - 1)) * 255 / (2^B - 1)
  medianK         median filter, K x K window (K odd; Pillow, per channel)
  A+B+...         chain: A first, then B, ... (e.g. resize0.5+jpeg75)

`parse(name)` returns a `Transform`; unknown names and bad parameters raise ValueError with one
line naming the problem. A transform also knows how it moves pixel coordinates (`geometry`), so
that a face found after a crop can be matched with the clean face it came from.

>>> t = parse("resize0.5+jpeg75")
>>> out = t(np.zeros((64, 48, 3), np.uint8)); out.shape, out.dtype
((64, 48, 3), dtype('uint8'))
"""
from __future__ import annotations

import dataclasses
import io
import re
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

# The robustness sweep of idguardian-evaluate --transforms=default (the list).
DEFAULT = ("jpeg95", "jpeg85", "jpeg75", "jpeg50", "resize0.5", "blur0.5", "blur1", "noise4",
           "crop0.9", "bits5", "median3", "resize0.5+jpeg75")

NOISE_SEED = 20240601

# (a_x, b_x, a_y, b_y): x' = a_x * x + b_x, y' = a_y * y + b_y, in continuous pixel coordinates
# (pixel i covers [i, i + 1)).
Geometry = tuple[float, float, float, float]
IDENTITY_GEOMETRY: Geometry = (1.0, 0.0, 1.0, 0.0)


@dataclasses.dataclass(frozen=True)
class Transform:
    """A named post-processing step (or chain).

    name: as parsed (e.g. 'jpeg75', 'resize0.5+jpeg75').
    fn: (H, W, 3) uint8 -> (H, W, 3) uint8, deterministic.
    geometry_fn: (H, W) -> Geometry, where a point of the input lands in the output.
    """

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    geometry_fn: Callable[[tuple[int, int]], Geometry] = lambda shape: IDENTITY_GEOMETRY

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rgb = _check(rgb, self.name)
        out = self.fn(rgb)
        if out.shape != rgb.shape or out.dtype != np.uint8:
            raise AssertionError(f"transform {self.name}: returned {out.shape} {out.dtype}")
        return out

    def geometry(self, shape: tuple[int, int]) -> Geometry:
        return self.geometry_fn(tuple(shape[:2]))

    def map_box(self, box: Sequence[float], shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """An inclusive (left, top, right, bottom) box of the input photo in the output's pixels."""
        ax, bx, ay, by = self.geometry(shape)
        l, t, r, b = box
        rnd = lambda v: int(np.floor(v + 0.5))  # noqa: E731
        return (rnd(ax * l + bx), rnd(ay * t + by),
                rnd(ax * (r + 1) + bx) - 1, rnd(ay * (b + 1) + by) - 1)


def _check(rgb: np.ndarray, name: str) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"transform {name}: expected (H, W, 3) uint8 RGB, "
                         f"got {rgb.shape} {rgb.dtype}")
    return rgb


# ------------------------------------------------------------------------------------------
# The transforms (parameter already validated)
# ------------------------------------------------------------------------------------------
def _codec(fmt: str, quality: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(rgb):
        buf = io.BytesIO()
        kwargs = {"quality": quality}
        if fmt == "JPEG":
            kwargs.update(subsampling="4:2:0", optimize=False)
        Image.fromarray(rgb).save(buf, format=fmt, **kwargs)
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert("RGB"), np.uint8).copy()
    return fn


def _resize(scale: float) -> Callable[[np.ndarray], np.ndarray]:
    def fn(rgb):
        h, w = rgb.shape[:2]
        small = Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                            Image.BILINEAR)
        return np.asarray(small.resize((w, h), Image.BILINEAR), np.uint8).copy()
    return fn


def gaussian_kernel(sigma: float) -> np.ndarray:
    """(2r + 1,) float64 normalized Gaussian taps, r = ceil(4 sigma)."""
    r = max(1, int(np.ceil(4.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    k = gaussian_kernel(sigma)
    r = len(k) // 2

    def fn(rgb):
        x = rgb.astype(np.float64)
        for axis in (0, 1):
            pad = [(0, 0)] * 3
            pad[axis] = (r, r)
            xp = np.pad(x, pad, mode="symmetric")
            n = x.shape[axis]
            x = sum(k[i] * np.take(xp, np.arange(i, i + n), axis=axis) for i in range(len(k)))
        return np.clip(np.round(x), 0, 255).astype(np.uint8)
    return fn


def _noise(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    def fn(rgb):
        rng = np.random.default_rng(NOISE_SEED)
        n = rng.normal(0.0, sigma, size=rgb.shape)
        return np.clip(np.round(rgb.astype(np.float64) + n), 0, 255).astype(np.uint8)
    return fn


def _crop_box(shape: tuple[int, int], frac: float) -> tuple[int, int, int, int]:
    h, w = shape
    cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
    left, top = (w - cw) // 2, (h - ch) // 2
    return left, top, cw, ch


def _crop(frac: float) -> Callable[[np.ndarray], np.ndarray]:
    def fn(rgb):
        h, w = rgb.shape[:2]
        left, top, cw, ch = _crop_box((h, w), frac)
        im = Image.fromarray(rgb).crop((left, top, left + cw, top + ch))
        return np.asarray(im.resize((w, h), Image.BILINEAR), np.uint8).copy()
    return fn


def _crop_geometry(frac: float) -> Callable[[tuple[int, int]], Geometry]:
    def geo(shape):
        h, w = shape
        left, top, cw, ch = _crop_box((h, w), frac)
        # Pillow maps the output's pixel centres x' + 0.5 to (x' + 0.5) * cw / w in the crop
        sx, sy = w / cw, h / ch
        return (sx, -left * sx, sy, -top * sy)
    return geo


def _bits(bits: int) -> Callable[[np.ndarray], np.ndarray]:
    levels = (1 << bits) - 1

    def fn(rgb):
        q = np.round(rgb.astype(np.float64) / 255.0 * levels)
        return np.clip(np.round(q * 255.0 / levels), 0, 255).astype(np.uint8)
    return fn


def _median(size: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(rgb):
        out = Image.fromarray(rgb).filter(ImageFilter.MedianFilter(size))
        return np.asarray(out, np.uint8).copy()
    return fn


# name -> (parameter kind, check(value) -> error or None, builder, geometry builder or None)
_Spec = tuple[type, Callable[[float], str | None], Callable, Callable | None]


def _between(lo, hi, lo_open=False, hi_open=False, what="") -> Callable[[float], str | None]:
    def check(v):
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        return None if ok else f"{what} must be in {interval}"
    return check


def _odd(v):
    return None if v >= 3 and int(v) % 2 == 1 else "the window must be an odd size >= 3"


REGISTRY: dict[str, _Spec] = {
    "jpeg": (int, _between(1, 100, what="quality"), lambda q: _codec("JPEG", q), None),
    "webp": (int, _between(1, 100, what="quality"), lambda q: _codec("WEBP", q), None),
    "resize": (float, _between(0, 1, True, True, "the scale"), _resize, None),
    "blur": (float, _between(0, 50, True, False, "sigma"), _blur, None),
    "noise": (float, _between(0, 255, True, False, "sigma"), _noise, None),
    "crop": (float, _between(0, 1, True, True, "the kept fraction"), _crop, _crop_geometry),
    "bits": (int, _between(1, 7, what="bits"), _bits, None),
    "median": (int, _odd, _median, None),
}
EXAMPLES = ("none, jpeg75, webp80, resize0.5, blur1, noise4, crop0.9, bits5, median3, "
            "resize0.5+jpeg75")

_NAME = re.compile(r"^([a-z]+)(\d+(?:\.\d*)?|\.\d+)?$")


def _parse_one(part: str, full: str) -> Transform:
    if part in ("none", "identity"):
        return Transform(part, lambda rgb: rgb.copy())
    m = _NAME.match(part)
    if not m or m.group(1) not in REGISTRY:
        raise ValueError(f"unknown transform {part!r} in {full!r}; known: {EXAMPLES}")
    base, num = m.group(1), m.group(2)
    kind, check, build, geometry = REGISTRY[base]
    if num is None:
        raise ValueError(f"transform {part!r} needs a parameter, e.g. {base}{_example(base)}")
    value = float(num)
    if kind is int and value != int(value):
        raise ValueError(f"transform {part!r}: the parameter must be an integer")
    value = kind(value)
    err = check(value)
    if err:
        raise ValueError(f"transform {part!r}: {err}")
    geo = geometry(value) if geometry else (lambda shape: IDENTITY_GEOMETRY)
    return Transform(part, build(value), geo)


def _example(base: str) -> str:
    return {"jpeg": "75", "webp": "80", "resize": "0.5", "blur": "1", "noise": "4", "crop": "0.9",
            "bits": "5", "median": "3"}[base]


def _compose(a: Transform, b: Transform) -> Transform:
    def geo(shape):
        ax, bx, ay, by = a.geometry(shape)
        cx, dx, cy, dy = b.geometry(shape)  # every transform keeps the size
        return (cx * ax, cx * bx + dx, cy * ay, cy * by + dy)
    return Transform(f"{a.name}+{b.name}", lambda rgb: b.fn(a.fn(rgb)), geo)


def parse(name: str) -> Transform:
    """A transform (or '+' chain) from its name; ValueError for an unknown or malformed one."""
    full = str(name).strip().lower()
    parts = [p.strip() for p in full.split("+")]
    if not full or any(not p for p in parts):
        raise ValueError(f"empty transform name in {name!r}; known: {EXAMPLES}")
    out = _parse_one(parts[0], full)
    for p in parts[1:]:
        out = _compose(out, _parse_one(p, full))
    return out


def parse_list(spec: str | Sequence[str]) -> list[Transform]:
    """Comma-separated names (or a sequence); 'default' expands to DEFAULT. Duplicates dropped.
    'none' (the protected photo itself) is not added here; callers evaluate it always."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        for n in (DEFAULT if item.lower() == "default" else (item,)):
            if n.lower() not in names:
                names.append(n.lower())
    return [parse(n) for n in names]
