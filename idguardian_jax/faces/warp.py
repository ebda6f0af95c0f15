"""Differentiable face views: dlib's chip extraction followed step by step in JAX.

`sample_view` reproduces `align.extract_chip` (the uint8 chip dlib extracts) in its forward pass and
lets gradients flow to the photo's pixels:

  window = photo[top : top + S_h, left : left + S_w]        (static size, dynamic start)
  repeat n_down times: window = floor(binomial5x5_stride2(window) / 256)     (pyramid_down<2>)
  chip = floor(bilinear(window, affine @ chip grid)), 0 where a neighbour is off the level image

Floors use the straight-through estimator: forward value exact, gradient of the identity. The
window may be larger than dlib's crop box (so that photos of different faces share one compiled
shape): pyramid pixels computed from beyond the box lie past dlib's level size and are masked out by
`level_shape`, which is the size dlib's own level has; so the extra pixels never reach the chip.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32)


def floor_st(x: jax.Array) -> jax.Array:
    """floor(x) in the forward pass, identity in the backward pass."""
    return x + jax.lax.stop_gradient(jnp.floor(x) - x)


def round_st(x: jax.Array) -> jax.Array:
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def quantize_uint8_st(x01: jax.Array) -> jax.Array:
    """[0, 1] float photo -> the 0..255 values that writing it as 8-bit gives (straight-through)."""
    return round_st(jnp.clip(x01, 0.0, 1.0) * 255.0)


def pyramid_down2(img: jax.Array) -> jax.Array:
    """dlib pyramid_down<2> on (H, W, C) 0..255 values: 5x5 binomial, stride 2, floor(/256).

    Output shape ((H - 3) // 2, (W - 3) // 2, C); exact on integer-valued inputs. Written as sums
    of strided slices (separable filter): on CPU this is ~50x faster, forward and backward, than
    XLA's depthwise strided convolution.
    """
    h, w = img.shape[:2]
    oh, ow = (h - 3) // 2, (w - 3) // 2
    rows = sum(float(_BINOMIAL[a]) * img[:, a:a + 2 * ow - 1:2] for a in range(5))
    out = sum(float(_BINOMIAL[a]) * rows[a:a + 2 * oh - 1:2] for a in range(5))
    return floor_st(out / 256.0)


def bilinear_sample(level: jax.Array, affine: jax.Array, level_shape: jax.Array,
                    rows: int, cols: int, rounding: str = "floor") -> jax.Array:
    """dlib transform_image + interpolate_bilinear, truncated: (rows, cols, C) 0..255 values.

    level: (H, W, C); affine: (2, 3) chip (col, row, 1) -> level (x, y);
    level_shape: (2,) int, dlib's level size (pixels at or beyond it count as outside).
    rounding: 'floor' (dlib's truncation) or 'round' (OpenCV's warpAffine), straight-through.
    """
    cc, rr = jnp.meshgrid(jnp.arange(cols, dtype=jnp.float32), jnp.arange(rows, dtype=jnp.float32))
    x = affine[0, 0] * cc + affine[0, 1] * rr + affine[0, 2]
    y = affine[1, 0] * cc + affine[1, 1] * rr + affine[1, 2]
    left, top = jnp.floor(x), jnp.floor(y)
    nr, nc = level_shape[0], level_shape[1]
    inside = (left >= 0) & (top >= 0) & (left + 1 < nc) & (top + 1 < nr)
    h, w = level.shape[:2]
    li = jnp.clip(left.astype(jnp.int32), 0, w - 2)
    ti = jnp.clip(top.astype(jnp.int32), 0, h - 2)
    fx = jax.lax.stop_gradient(x - left)[..., None]
    fy = jax.lax.stop_gradient(y - top)[..., None]
    tl, tr = level[ti, li], level[ti, li + 1]
    bl, br = level[ti + 1, li], level[ti + 1, li + 1]
    v = (1 - fy) * ((1 - fx) * tl + fx * tr) + fy * ((1 - fx) * bl + fx * br)
    v = jnp.where(inside[..., None], v, 0.0)
    return round_st(v) if rounding == "round" else floor_st(v)


def sample_view(photo255: jax.Array, start: jax.Array, affine: jax.Array, level_shape: jax.Array,
                *, window: tuple[int, int], n_down: int, rows: int, cols: int,
                rounding: str = "floor") -> jax.Array:
    """One face chip from a photo of 0..255 values (H, W, 3) -> (rows, cols, 3) 0..255 values.

    start: (2,) int (top, left) of dlib's crop box; the photo must extend at least `window` past it
    (pad it). window, n_down, rows, cols are static.
    """
    win = jax.lax.dynamic_slice(photo255, (start[0], start[1], 0), (window[0], window[1], 3))
    for _ in range(n_down):
        win = pyramid_down2(win)
    return bilinear_sample(win, affine, level_shape, rows, cols, rounding)


def jitter_affine(affine: jax.Array, key: jax.Array, rows: int, cols: int, shift: float,
                  rotation: float, scale: float) -> jax.Array:
    """Compose a random similarity about the chip centre (in chip pixels) into a chip affine.

    Models the attacker's landmarks moving when found again on the protected photo:
    shift in chip pixels, rotation in radians, scale as a relative change (uniform in +-each).
    """
    ks, kr, kz = jax.random.split(key, 3)
    t = jax.random.uniform(ks, (2,), minval=-shift, maxval=shift)
    a = jax.random.uniform(kr, (), minval=-rotation, maxval=rotation)
    s = 1.0 + jax.random.uniform(kz, (), minval=-scale, maxval=scale)
    c = jnp.array([(cols - 1) / 2.0, (rows - 1) / 2.0])
    m = s * jnp.array([[jnp.cos(a), -jnp.sin(a)], [jnp.sin(a), jnp.cos(a)]])
    # chip point p -> c + m (p - c) + t, then the original affine
    lin = affine[:, :2] @ m
    off = affine[:, :2] @ (c - m @ c + t) + affine[:, 2]
    return jnp.concatenate([lin, off[:, None]], axis=1)
