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
and float64 step); tests/test_detect.py compares the results with dlib's own, tests/test_pyramid.py
the XLA blocks of the vector loop with a numpy statement of it, bit for bit.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

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


# The vector loop on XLA, in fixed-size blocks. Per output value dlib's SSE code computes
# ((tl*w_tl + tr*w_tr) + bl*w_bl) + br*w_br in float32 with separate multiplies and adds; XLA:CPU
# contracts a multiply feeding an add into one FMA (one rounding instead of two: 23 % of 1M random
# products differed in a test, 2026-12-02), so each product goes through `_opaque` first.
# Blocks of BLOCK output rows x cols, CALL_BLOCKS per call, read a source block of at least
# SOURCE_BLOCK (a 5/6 downscale of 64 x 512 outputs reads <= 78 x 616 inputs; pyramid_up fewer), so
# one program per source dtype serves every image size. 64 x 512: the resize chain of a 2000 px
# photo's face (~52 M level pixels: 21 resizes) in 0.6 s against 2.7 s in numpy (one re-detection
# of a 1050 px face on a 2000 px photo: 2.9 s -> 0.77 s, 2026-12-02; BENCHMARKS.md, issue 13).
BLOCK = (64, 512)
SOURCE_BLOCK = (80, 640)
CALL_BLOCKS = 8


def _opaque(x: jax.Array, zero: jax.Array) -> jax.Array:
    """x itself, through an integer xor with a runtime zero that no compiler can see through."""
    return lax.bitcast_convert_type(lax.bitcast_convert_type(x, jnp.int32) ^ zero, jnp.float32)


@functools.partial(jax.jit, static_argnames=("center", "truncate"))
def _simd_blocks(src, mean, top, bottom, itb, tb, left, right, ilr, lr, zero, *, center: bool,
                 truncate: bool):
    """dlib's vector loop on N blocks. src (N, SR, SC, 3) uint8 or float32 source blocks; top,
    bottom (N, BR) int32 rows and itb = float32(1 - tb), tb (N, BR) float32 row weights; left,
    right (N, BC) int32 columns and ilr, lr (N, BC) float32 column weights (indices within the
    block). center: the source is level-0 pixels, used as (pixel - mean) / 256 float32.
    Returns (N, BR, BC, 3): float32, or uint8 truncated (the 'u8' resize's cvttps)."""

    def one(s, top, bottom, itb, tb, left, right, ilr, lr):
        s = s.astype(jnp.float32)
        if center:
            s = (s - mean) / jnp.float32(256)
        st, sb = s[top], s[bottom]  # (BR, SC, 3)
        terms = ((st[:, left], itb[:, None] * ilr[None, :]), (st[:, right], itb[:, None] * lr[None, :]),
                 (sb[:, left], tb[:, None] * ilr[None, :]), (sb[:, right], tb[:, None] * lr[None, :]))
        p = [_opaque(v * w[..., None], zero) for v, w in terms]
        return ((p[0] + p[1]) + p[2]) + p[3]

    out = jax.vmap(one)(src, top, bottom, itb, tb, left, right, ilr, lr)
    return out.astype(jnp.int32).astype(jnp.uint8) if truncate else out


def _round_up(n: int, q: int) -> int:
    return -(-n // q) * q


def _simd_rows(src: np.ndarray, top: np.ndarray, bottom: np.ndarray, tb: np.ndarray,
               left: np.ndarray, right: np.ndarray, lr: np.ndarray, ilr: np.ndarray,
               out: np.ndarray, *, mean: np.ndarray | None) -> None:
    """The vector loop for outputs (len(top), len(left)) from `src` (indices into src), written
    into `out` (R, C, 3): uint8 (truncated, the 'u8' resize) or float32.
    top/bottom: (R,) source rows, tb (R,) float64 fractions; left/right (C,) source columns and
    lr/ilr (C,) float32 weights."""
    nr, nc = len(top), len(left)
    truncate = out.dtype == np.uint8
    if nr == 0 or nc == 0:
        return
    (br, bc), q0s, p0s = BLOCK, np.arange(0, nr, BLOCK[0]), np.arange(0, nc, BLOCK[1])
    rs0, rs1 = np.minimum.reduceat(top, q0s), np.maximum.reduceat(bottom, q0s) + 1
    cs0, cs1 = np.minimum.reduceat(left, p0s), np.maximum.reduceat(right, p0s) + 1
    sr = max(SOURCE_BLOCK[0], _round_up(int((rs1 - rs0).max()), 16))
    sc = max(SOURCE_BLOCK[1], _round_up(int((cs1 - cs0).max()), 128))
    itb32, tb32 = (1 - tb).astype(np.float32), tb.astype(np.float32)
    mean32 = np.zeros(3, np.float32) if mean is None else np.asarray(mean, np.float32)
    # per block: its row/column indices, output rows [q0, q1) and columns [p0, p1)
    blocks = [(i, j, int(q0), min(nr, int(q0) + br), int(p0), min(nc, int(p0) + bc))
              for i, q0 in enumerate(q0s) for j, p0 in enumerate(p0s)]
    pending: list = []

    def collect(part, res):
        res = np.asarray(res)
        for m, (_, _, q0, q1, p0, p1) in enumerate(part):
            out[q0:q1, p0:p1] = res[m, :q1 - q0, :p1 - p0]

    for k0 in range(0, len(blocks), CALL_BLOCKS):
        part = blocks[k0:k0 + CALL_BLOCKS]
        n = CALL_BLOCKS
        s = np.empty((n, sr, sc, 3), src.dtype)  # outside each block: never read by an output kept
        rows_i = np.zeros((2, n, br), np.int32)
        rows_w = np.zeros((2, n, br), np.float32)
        cols_i = np.zeros((2, n, bc), np.int32)
        cols_w = np.zeros((2, n, bc), np.float32)
        for m, (i, j, q0, q1, p0, p1) in enumerate(part):
            s[m, :rs1[i] - rs0[i], :cs1[j] - cs0[j]] = src[rs0[i]:rs1[i], cs0[j]:cs1[j]]
            rows_i[:, m, :q1 - q0] = (top[q0:q1] - rs0[i], bottom[q0:q1] - rs0[i])
            rows_w[:, m, :q1 - q0] = (itb32[q0:q1], tb32[q0:q1])
            cols_i[:, m, :p1 - p0] = (left[p0:p1] - cs0[j], right[p0:p1] - cs0[j])
            cols_w[:, m, :p1 - p0] = (ilr[p0:p1], lr[p0:p1])
        res = _simd_blocks(s, mean32, rows_i[0], rows_i[1], rows_w[0], rows_w[1], cols_i[0],
                           cols_i[1], cols_w[0], cols_w[1], np.int32(0),
                           center=mean is not None, truncate=truncate)
        pending.append((part, res))  # dispatched: the next blocks are cut while XLA computes
        if len(pending) > 2:  # at most 2 calls' results in flight (memory stays that of `out`)
            collect(*pending.pop(0))
    for part, res in pending:
        collect(part, res)


def resize_float(src: np.ndarray, out_h: int, out_w: int, out: np.ndarray) -> None:
    """dlib resize_image(float image, bilinear) of an (h, w, 3) float32 array into `out`
    (out_h, out_w, 3) float32."""
    st = Stage.between(src.shape[:2], (out_h, out_w), "f32")
    resize_part(src, 0, 0, st, 0, out_h, 0, out_w, out=out)


def resize_rgb_u8(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """dlib resize_image(rgb_pixel image, bilinear): (h, w, 3) uint8 -> (out_h, out_w, 3) uint8.
    Vector part: float32 weights and products, truncated to int; scalar tail: double, truncated."""
    st = Stage.between(src.shape[:2], (out_h, out_w), "u8")
    return resize_part(src, 0, 0, st, 0, out_h, 0, out_w)


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
    return _round_up(n, q)


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

    @classmethod
    def between(cls, in_shape, out_shape, kind: str) -> "Stage":
        in_shape, out_shape = tuple(int(v) for v in in_shape), tuple(int(v) for v in out_shape)
        return cls(in_shape, out_shape, kind, row_coords(in_shape[0], out_shape[0]),
                   Cols(in_shape[1], out_shape[1]))


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


def resize_part(src: np.ndarray, sr0: int, sc0: int, st: Stage, r0: int, r1: int, c0: int,
                c1: int, chunk: int = 32, mean: np.ndarray | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
    """Outputs [r0, r1) x [c0, c1) of the stage's resize, from `src` = its input's rows/cols starting
    at (sr0, sc0): (r1 - r0, c1 - c0, 3) uint8 ('u8': pyramid_up) or float32 ('f32': a level).
    mean: for level 1, whose input (level 0) is kept as uint8 pixels: the rows read are first
    converted to (pixel - mean) / 256 float32 (the same values as converting the whole level).
    out: where to write them (e.g. a canvas slice), else a new array.
    The vector columns run on XLA (`_simd_rows`), the few scalar-tail columns in numpy by chunks
    of rows."""
    top, bottom, tb = st.rows
    cols, ns = st.cols, st.cols.n_simd
    u8 = st.kind == "u8"
    if out is None:
        out = np.empty((r1 - r0, c1 - c0, 3), np.uint8 if u8 else np.float32)
    a, b = c0, min(c1, ns)
    if b > a:
        _simd_rows(src, top[r0:r1] - sr0, bottom[r0:r1] - sr0, tb[r0:r1],
                   cols.simd_left[a:b] - sc0, cols.simd_right[a:b] - sc0, cols.simd_lr[a:b],
                   cols.simd_ilr[a:b], out[:, :b - a], mean=mean)
    t0, t1 = max(c0, ns), c1
    if t1 <= t0:
        return out
    tl = cols.tail_left[t0 - ns:t1 - ns] - sc0
    tr = cols.tail_right[t0 - ns:t1 - ns] - sc0
    tlr = cols.tail_lr[t0 - ns:t1 - ns]
    j, n = t0 - c0, len(tl)
    tcols = np.r_[tl, tr][None, :]
    one = np.float32(1)
    for q0 in range(r0, r1, chunk):  # scalar tail: the few columns past the vector loop
        q1 = min(r1, q0 + chunk)
        s_t, s_b = src[(top[q0:q1] - sr0)[:, None], tcols], src[(bottom[q0:q1] - sr0)[:, None], tcols]
        if mean is not None:
            s_t = (s_t.astype(np.float32) - mean) / np.float32(256)
            s_b = (s_b.astype(np.float32) - mean) / np.float32(256)
        tbd = tb[q0:q1, None, None]
        o = out[q0 - r0:q1 - r0]
        if u8:  # double throughout, truncated
            lr = tlr[None, :, None]
            t64, b64 = s_t.astype(np.float64), s_b.astype(np.float64)
            v = ((1 - tbd) * ((1 - lr) * t64[:, :n] + lr * t64[:, n:])
                 + tbd * ((1 - lr) * b64[:, :n] + lr * b64[:, n:]))
            o[:, j:] = v.astype(np.int32)
        else:  # float32 horizontal mixes, double vertical mix
            lr = tlr.astype(np.float32)[None, :, None]
            il = one - lr
            top_mix = il * s_t[:, :n] + lr * s_t[:, n:]
            bot_mix = il * s_b[:, :n] + lr * s_b[:, n:]
            o[:, j:] = ((1 - tbd) * top_mix.astype(np.float64)
                        + tbd * bot_mix.astype(np.float64)).astype(np.float32)
    return out


def union(a, b):
    if a is None:
        return b
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
