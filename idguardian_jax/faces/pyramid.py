"""dlib's image pyramid, bit-exact: the bilinear resizes and the tiled pyramid canvas.

- `pyramid_up` (dlib/image_transforms/interpolation.h, pyramid_up with pyramid_down<2>): the RGB
  photo enlarged to (2H + 1, 2W + 2) by bilinear `resize_image`, whose SSE code for RGB images
  interpolates in float32 and truncates (`resize_rgb_u8`).
- The canvas of `input_rgb_image_pyramid<pyramid_down<6>>` (dlib/dnn/input.h): the photo as
  (pixel - mean) / 256 float32, the top-left level of a zero-filled tiled pyramid laid out by
  `impl::compute_tiled_image_pyramid_details` (`tile_pyramid`: level sizes floor(5/6 * previous),
  padding, outer padding), each smaller level a float32 bilinear resize of the previous one
  (`resize_float`); `build_canvas` fills it.
- `Stage` and `resize_part`: one resize of that chain restricted to some output rows and columns,
  with the same arithmetic, so any rectangle of any level can be computed from a rectangle of the
  level above (faces.detect_regions).

Every function here reproduces dlib's arithmetic exactly (the order and precision of each float32
and float64 step); tests/test_detect.py compares the results with dlib's own.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

# Smallest pyramid level height (impl::compute_tiled_image_pyramid_details, min_height).
MIN_LEVEL_HEIGHT = 5
_U64 = 1 << 64  # dlib mixes `long` and `unsigned long` in the tiling arithmetic; see tile_pyramid.


# ------------------------------------------------------------------------------------------
# dlib's bilinear resize (dlib/image_transforms/interpolation.h, resize_image + interpolate_bilinear)
# ------------------------------------------------------------------------------------------
def row_coords(in_n: int, out_n: int):
    """Row sample positions as dlib computes them: y starts at -scale and accumulates `+= scale` in
    double. Returns (top, bottom, frac) with frac float64."""
    scale = (in_n - 1) / max(out_n - 1, 1)
    steps = np.full(out_n + 1, scale, np.float64)
    steps[0] = -scale
    y = np.add.accumulate(steps)[1:]  # sequential double accumulation, as in the C++ loop
    top = np.floor(y).astype(np.int64)
    bottom = np.minimum(top + 1, in_n - 1)
    return top, bottom, y - top


class Cols:
    """Column sample positions of dlib's SSE bilinear loop.

    The vector loop handles 4 columns at a time with float32 positions: lanes start at
    float(x0 + j*scale) (x0 = -4*scale) and each pass adds float(4*scale) in float32; it stops at the
    first pass whose last lane's right neighbour (trunc(x) + 1) is outside the input. The remaining
    columns are done one by one with a double position restarted at -scale + c*scale and
    accumulated `+= scale`.
    """

    def __init__(self, in_n: int, out_n: int):
        scale = (in_n - 1) / max(out_n - 1, 1)
        x0 = -4 * scale
        lanes = np.array([x0, x0 + scale, x0 + 2 * scale, x0 + 3 * scale], np.float64).astype(np.float32)
        n_pass = out_n // 4 + 2
        seq = np.empty((n_pass + 1, 4), np.float32)
        seq[0] = lanes
        seq[1:] = np.float32(4 * scale)
        xs = np.add.accumulate(seq, axis=0, dtype=np.float32)[1:]  # float32, sequential per lane
        left = np.trunc(xs).astype(np.int64)  # _mm_cvttps_epi32 (x >= 0 here)
        stop = np.nonzero(left[:, 3] + 1 >= in_n)[0]
        g = int(stop[0]) if stop.size else n_pass
        n_simd = 4 * g
        if n_simd > out_n:  # cannot happen for out_n >= 1; dlib would write past the row
            raise AssertionError("bilinear column bookkeeping")
        xs, left = xs[:g].reshape(-1), left[:g].reshape(-1)
        self.simd_left = left
        self.simd_right = left + 1
        self.simd_lr = xs - left.astype(np.float32)  # float32
        self.simd_ilr = np.float32(1) - self.simd_lr
        # scalar tail
        n_tail = out_n - n_simd
        steps = np.full(n_tail + 1, scale, np.float64)
        steps[0] = -scale + n_simd * scale
        x = np.add.accumulate(steps)[1:]
        tl = np.floor(x).astype(np.int64)
        self.tail_left = tl
        self.tail_right = np.minimum(tl + 1, in_n - 1)
        self.tail_lr = x - tl  # float64
        self.n_simd = n_simd


def simd_block(st: np.ndarray, sb: np.ndarray, tbd: np.ndarray, cols: Cols) -> np.ndarray:
    """dlib's vector loop for a block of output rows: st/sb are the (R, in_w, C) source rows above
    and below (any dtype, converted to float32), tbd the (R, 1, 1) float64 row fractions. Returns
    (R, n_simd, C) float32 = ((tl*w_tl + tr*w_tr) + bl*w_bl) + br*w_br with float32 weights
    w_tl = float(1 - tb) * (1 - lr) etc., in this order and precision."""
    tbf = tbd.astype(np.float32)
    itbf = (1 - tbd).astype(np.float32)
    lr, ilr = cols.simd_lr[None, :, None], cols.simd_ilr[None, :, None]
    acc = np.take(st, cols.simd_left, axis=1).astype(np.float32, copy=False)
    acc *= itbf * ilr
    tmp = np.take(st, cols.simd_right, axis=1).astype(np.float32, copy=False)
    tmp *= itbf * lr
    acc += tmp
    tmp[...] = np.take(sb, cols.simd_left, axis=1)
    tmp *= tbf * ilr
    acc += tmp
    tmp[...] = np.take(sb, cols.simd_right, axis=1)
    tmp *= tbf * lr
    acc += tmp
    return acc


def resize_float(src: np.ndarray, out_h: int, out_w: int, out: np.ndarray, chunk: int = 16) -> None:
    """dlib resize_image(float image, bilinear) of an (h, w, C) float32 array into `out`
    (out_h, out_w, C) float32, channel by channel (C channels share the arithmetic)."""
    in_h, in_w = src.shape[:2]
    top, bottom, tb = row_coords(in_h, out_h)
    cols = Cols(in_w, out_w)
    ns = cols.n_simd
    one = np.float32(1)
    for r0 in range(0, out_h, chunk):
        r1 = min(out_h, r0 + chunk)
        st, sb = src[top[r0:r1]], src[bottom[r0:r1]]
        tbd = tb[r0:r1, None, None]
        if ns:
            out[r0:r1, :ns] = simd_block(st, sb, tbd, cols)
        if out_w > ns:  # scalar tail: float32 horizontal mixes, double vertical mix
            lr = cols.tail_lr.astype(np.float32)[None, :, None]
            il = one - lr
            top_mix = il * st[:, cols.tail_left] + lr * st[:, cols.tail_right]
            bot_mix = il * sb[:, cols.tail_left] + lr * sb[:, cols.tail_right]
            out[r0:r1, ns:] = ((1 - tbd) * top_mix.astype(np.float64)
                               + tbd * bot_mix.astype(np.float64)).astype(np.float32)


def resize_rgb_u8(src: np.ndarray, out_h: int, out_w: int, chunk: int = 16) -> np.ndarray:
    """dlib resize_image(rgb_pixel image, bilinear): (h, w, 3) uint8 -> (out_h, out_w, 3) uint8.
    Vector part: float32 weights and products, truncated to int; scalar tail: double, truncated."""
    in_h, in_w = src.shape[:2]
    out = np.empty((out_h, out_w, 3), np.uint8)
    top, bottom, tb = row_coords(in_h, out_h)
    cols = Cols(in_w, out_w)
    ns = cols.n_simd
    for r0 in range(0, out_h, chunk):
        r1 = min(out_h, r0 + chunk)
        st, sb = src[top[r0:r1]], src[bottom[r0:r1]]
        tbd = tb[r0:r1, None, None]
        if ns:
            out[r0:r1, :ns] = simd_block(st, sb, tbd, cols).astype(np.int32)  # cvttps: truncation
        if out_w > ns:
            lr = cols.tail_lr[None, :, None]
            st64, sb64 = st.astype(np.float64), sb.astype(np.float64)
            v = ((1 - tbd) * ((1 - lr) * st64[:, cols.tail_left] + lr * st64[:, cols.tail_right])
                 + tbd * ((1 - lr) * sb64[:, cols.tail_left] + lr * sb64[:, cols.tail_right]))
            out[r0:r1, ns:] = v.astype(np.int32)
    return out


def pyramid_up(image: np.ndarray) -> np.ndarray:
    """dlib's pyramid_up(img, pyramid_down<2>) for an (H, W, 3) uint8 RGB image.

    The output is (2H + 1, 2W + 2, 3) uint8: dlib sizes it from rect_up of the image rectangle,
    point_up(p) = (p + (1.25, 0.75)) * 2, rounded with lround, and fills it by bilinear resize."""
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        return np.zeros((0, 0, 3), np.uint8)
    right = lround((w - 1 + 1.25) * 2)
    bottom = lround((h - 1 + 0.75) * 2)
    return resize_rgb_u8(image, bottom + 1, right + 1)


# ------------------------------------------------------------------------------------------
# Tiled pyramid (dlib/image_transforms/image_pyramid.h, impl::compute_tiled_image_pyramid_details)
# ------------------------------------------------------------------------------------------
def lround(v: float) -> int:
    """C's lround: nearest integer, halves away from zero."""
    a = abs(v)
    f = math.floor(a)
    r = f + 1 if a - f >= 0.5 else f
    return int(r) if v >= 0 else -int(r)


def level_sizes(nr: int, nc: int, n: int) -> list[tuple[int, int]]:
    """(rows, cols) of each pyramid_down<n> level, largest first, while rows >= 5."""
    sizes = [(nr, nc)]
    rate = (n - 1.0) / n
    while True:
        nr, nc = math.floor(rate * nr), math.floor(rate * nc)
        if nr * nc == 0 or nr < MIN_LEVEL_HEIGHT:
            return sizes
        sizes.append((nr, nc))


def tile_pyramid(nr: int, nc: int, n: int, padding: int, outer_padding: int):
    """Layout of dlib's tiled pyramid for an nr x nc image.

    Returns (canvas_rows, canvas_cols, rects) with rects a list of (left, top, right, bottom)
    inclusive canvas rectangles, level 0 (the image itself) first. Re-creates
    impl::compute_tiled_image_pyramid_details, including its unsigned-long wrap-around in the
    "start the second column" test (rectangle::width()/height() are unsigned long in dlib).
    """
    if nr * nc == 0:
        return 0, 0, []
    sizes = level_sizes(nr, nc, n)
    h0, w0 = sizes[0]
    total_height = sum(h + padding for h, _ in sizes) - 2 * padding
    height = 0
    prev_width = 0
    for h, w in sizes:
        fits_beside = w <= (w0 - prev_width - padding) % _U64
        half_done = ((height - h0) % _U64) * 2 % _U64 >= (total_height - h0) % _U64
        if fits_beside and half_done:
            break
        height += h + padding
        prev_width = w
    height -= padding
    width = w0
    canvas_rows = height + 2 * outer_padding
    canvas_cols = width + 2 * outer_padding

    rects: list[tuple[int, int, int, int]] = []
    y = outer_padding
    i = 0
    while y < height + outer_padding and i < len(sizes):
        h, w = sizes[i]
        rects.append((outer_padding, y, outer_padding + w - 1, y + h - 1))
        y += h + padding
        i += 1
    y -= padding
    while rects and i < len(sizes):
        h, w = sizes[i]
        rect = (outer_padding + width - w, y - h, outer_padding + width - 1, y - 1)
        r0 = rects[0]
        if max(rect[0], r0[0]) <= min(rect[2], r0[2]) and max(rect[1], r0[1]) <= min(rect[3], r0[3]):
            break  # would overlap the full-size image: drop this and all smaller levels
        rects.append(rect)
        y -= h + padding
        i += 1
    # Images narrower than about `padding` pixels make the unsigned arithmetic above produce a
    # layout that does not fit its own canvas; dlib then fails (alias_tensor assertion). We report
    # such an image as having no usable pyramid (no detections) instead.
    if not rects or any(l < 0 or t < 0 or r >= canvas_cols or b >= canvas_rows for l, t, r, b in rects):
        return canvas_rows, canvas_cols, []
    return canvas_rows, canvas_cols, rects


def bucket_width(n: int) -> int:
    """Round the canvas width up so that nearby image sizes share one XLA compilation: multiples of 64
    up to 1024, then of 1/8 of the largest power of two <= n (at most ~12.5% extra width)."""
    if n <= 1024:
        q = 64
    else:
        q = 1 << (n.bit_length() - 1 - 3)
    return -(-n // q) * q


def build_canvas(image: np.ndarray, mean_rgb, rows: int, cols: int, rects) -> np.ndarray:
    """The input tensor of input_rgb_image_pyramid::to_tensor as an (rows, cols, 3) float32 array
    (cols may exceed dlib's canvas width; the extra area stays 0)."""
    canvas = np.zeros((rows, cols, 3), np.float32)
    l, t, r, b = rects[0]
    mean = np.asarray(mean_rgb, np.float32)
    # (pixel - mean) / 256: float32 subtraction, division by a power of two is exact.
    canvas[t:b + 1, l:r + 1] = (image.astype(np.float32) - mean) / np.float32(256)
    for (pl, pt, pr, pb), (l, t, r, b) in zip(rects[:-1], rects[1:]):
        src = canvas[pt:pb + 1, pl:pr + 1]
        resize_float(src, b - t + 1, r - l + 1, canvas[t:b + 1, l:r + 1])
    return canvas


@dataclasses.dataclass(frozen=True)
class Stage:
    """One resize of the chain: in_shape -> out_shape (rows, cols); kind 'u8' (pyramid_up on RGB
    uint8) or 'f32' (a pyramid level from the previous one, float)."""

    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    kind: str
    rows: tuple  # (top, bottom, frac) of row_coords
    cols: Cols


# ------------------------------------------------------------------------------------------
# Parts of resized images, bit-identical to the full resizes
# ------------------------------------------------------------------------------------------
def source_span(st: Stage, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int]:
    """Rows/cols [sr0, sr1) x [sc0, sc1) of the stage's input read by its outputs [r0, r1) x [c0, c1)."""
    top, bottom, _ = st.rows
    sr0, sr1 = int(top[r0:r1].min()), int(bottom[r0:r1].max()) + 1
    cols, ns = st.cols, st.cols.n_simd
    lo, hi = [], []
    if min(c1, ns) > c0:
        lo.append(int(cols.simd_left[c0:min(c1, ns)].min()))
        hi.append(int(cols.simd_right[c0:min(c1, ns)].max()))
    if c1 > max(c0, ns):
        a, b = max(c0, ns) - ns, c1 - ns
        lo.append(int(cols.tail_left[a:b].min()))
        hi.append(int(cols.tail_right[a:b].max()))
    return sr0, sr1, min(lo), max(hi) + 1


class SimdSlice:
    """The columns [a, b) of a Cols vector part, indices relative to source column sc0."""

    def __init__(self, cols: Cols, a: int, b: int, sc0: int):
        self.simd_left = cols.simd_left[a:b] - sc0
        self.simd_right = cols.simd_right[a:b] - sc0
        self.simd_lr = cols.simd_lr[a:b]
        self.simd_ilr = cols.simd_ilr[a:b]


def resize_part(src: np.ndarray, sr0: int, sc0: int, st: Stage, r0: int, r1: int, c0: int,
                   c1: int, chunk: int = 32, mean: np.ndarray | None = None) -> np.ndarray:
    """Outputs [r0, r1) x [c0, c1) of the stage's resize, from `src` = its input's rows/cols starting
    at (sr0, sc0). Same arithmetic as resize_rgb_u8 ('u8') / resize_float ('f32').
    mean: for level 1, whose input (level 0) is kept as uint8 pixels: the rows read are first
    converted to (pixel - mean) / 256 float32 (the same values as converting the whole level)."""
    top, bottom, tb = st.rows
    cols, ns = st.cols, st.cols.n_simd
    out = np.empty((r1 - r0, c1 - c0, 3), np.uint8 if st.kind == "u8" else np.float32)
    a, b = c0, min(c1, ns)
    simd = SimdSlice(cols, a, b, sc0) if b > a else None
    t0, t1 = max(c0, ns), c1
    if t1 > t0:
        tl = cols.tail_left[t0 - ns:t1 - ns] - sc0
        tr = cols.tail_right[t0 - ns:t1 - ns] - sc0
        tlr = cols.tail_lr[t0 - ns:t1 - ns]
    one = np.float32(1)
    for q0 in range(r0, r1, chunk):
        q1 = min(r1, q0 + chunk)
        s_t, s_b = src[top[q0:q1] - sr0], src[bottom[q0:q1] - sr0]
        if mean is not None:
            s_t = (s_t.astype(np.float32) - mean) / np.float32(256)
            s_b = (s_b.astype(np.float32) - mean) / np.float32(256)
        tbd = tb[q0:q1, None, None]
        o = out[q0 - r0:q1 - r0]
        if simd is not None:
            v = simd_block(s_t, s_b, tbd, simd)
            o[:, :b - a] = v.astype(np.int32) if st.kind == "u8" else v
        if t1 > t0:
            j = t0 - c0
            if st.kind == "u8":
                lr = tlr[None, :, None]
                t64, b64 = s_t.astype(np.float64), s_b.astype(np.float64)
                v = ((1 - tbd) * ((1 - lr) * t64[:, tl] + lr * t64[:, tr])
                     + tbd * ((1 - lr) * b64[:, tl] + lr * b64[:, tr]))
                o[:, j:] = v.astype(np.int32)
            else:
                lr = tlr.astype(np.float32)[None, :, None]
                il = one - lr
                top_mix = il * s_t[:, tl] + lr * s_t[:, tr]
                bot_mix = il * s_b[:, tl] + lr * s_b[:, tr]
                o[:, j:] = ((1 - tbd) * top_mix.astype(np.float64)
                            + tbd * bot_mix.astype(np.float64)).astype(np.float32)
    return out


def union(a, b):
    if a is None:
        return b
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
