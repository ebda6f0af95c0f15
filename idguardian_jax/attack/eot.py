"""Expectation over transformation: differentiable versions of what platforms do to photos.

Each transform maps a photo region of 0..255 float values (H, W, 3) to the same shape, is pure and
jittable, and lets gradients through (rounding steps use the straight-through estimator, as in
BPDA). `random_transform` draws one per PGD step, so the perturbation is optimized to survive them:

- JPEG (4:2:0 chroma subsampling, the standard quantization tables of ITU-T T.81 Annex K scaled by
  quality as libjpeg does), with the 8x8 / 16x16 block grid aligned to the full photo;
- resize down by a factor and back up (antialiased bilinear down, bilinear up);
- Gaussian blur; Gaussian noise.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.faces.warp import round_st

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), quality 50.
_Q_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float32).reshape(8, 8)
_Q_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99], np.float32).reshape(8, 8)


def _dct_matrix() -> np.ndarray:
    n = np.arange(8)
    c = np.sqrt(2 / 8) * np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16)
    c[0] /= np.sqrt(2)
    return c.astype(np.float32)  # orthonormal DCT-II: X = C x C^T


_DCT = _dct_matrix()


def quant_table(base: np.ndarray, quality: jax.Array) -> jax.Array:
    """libjpeg's quality scaling of a base table (quality 1..100, traced)."""
    q = jnp.clip(quality, 1, 100)
    scale = jnp.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    return jnp.clip(jnp.floor((base * scale + 50.0) / 100.0), 1.0, 255.0)


def _blocks(x: jax.Array) -> jax.Array:
    """(H, W) with H, W multiples of 8 -> (H/8, W/8, 8, 8)."""
    h, w = x.shape
    return x.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)


def _unblocks(b: jax.Array) -> jax.Array:
    n, m = b.shape[:2]
    return b.transpose(0, 2, 1, 3).reshape(n * 8, m * 8)


def _jpeg_plane(x: jax.Array, table: jax.Array) -> jax.Array:
    c = jnp.asarray(_DCT)
    b = _blocks(x - 128.0)
    coef = jnp.einsum("ij,abjk,lk->abil", c, b, c)
    coef = round_st(coef / table) * table
    return _unblocks(jnp.einsum("ji,abjk,kl->abil", c, coef, c)) + 128.0


def jpeg(x255: jax.Array, quality: jax.Array, offset: tuple[jax.Array, jax.Array] = (0, 0)) -> jax.Array:
    """Differentiable JPEG round trip (4:2:0) of (H, W, 3) 0..255 values.

    offset: (row, col) of the region's top-left in the full photo, so the 16x16 MCU grid lines up
    with the one the encoder of the full photo uses. Returns 0..255 values, rounded (straight-through).
    """
    h, w, _ = x255.shape
    oy, ox = jnp.mod(offset[0], 16), jnp.mod(offset[1], 16)
    # shift onto the grid: pad 16 on every side, then roll so that region pixel (0,0) sits at
    # (oy, ox) of a 16-aligned canvas
    ph, pw = (-(h + 32) % 16) + h + 32, (-(w + 32) % 16) + w + 32
    canvas = jnp.zeros((ph, pw, 3), x255.dtype)
    canvas = jax.lax.dynamic_update_slice(canvas, x255, (oy, ox, 0))
    r, g, b = canvas[..., 0], canvas[..., 1], canvas[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128.0
    ty, tc = quant_table(_Q_LUMA, quality), quant_table(_Q_CHROMA, quality)
    y = _jpeg_plane(y, ty)

    def chroma(c):
        small = c.reshape(ph // 2, 2, pw // 2, 2).mean(axis=(1, 3))
        small = _jpeg_plane(small, tc)
        return jax.image.resize(small, (ph, pw), "linear")

    cb, cr = chroma(cb) - 128.0, chroma(cr) - 128.0
    out = jnp.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
    out = jax.lax.dynamic_slice(out, (oy, ox, 0), (h, w, 3))
    return round_st(jnp.clip(out, 0.0, 255.0))


def resize_round_trip(x255: jax.Array, scale: float) -> jax.Array:
    """Down by a (static) `scale` (antialiased bilinear), back up to the original size."""
    h, w, c = x255.shape
    small = jax.image.resize(x255, (max(1, round(h * scale)), max(1, round(w * scale)), c),
                             "linear", antialias=True)
    return jax.image.resize(small, (h, w, c), "linear")


def gaussian_blur(x255: jax.Array, sigma: jax.Array, radius: int = 4) -> jax.Array:
    """Separable Gaussian blur (edge-replicated), sigma traced, kernel of 2*radius+1 taps."""
    t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (t / jnp.maximum(sigma, 1e-3)) ** 2)
    k = k / k.sum()
    p = jnp.pad(x255, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    h, w = x255.shape[:2]
    rows = sum(k[i] * p[i:i + h] for i in range(2 * radius + 1))
    return sum(k[i] * rows[:, i:i + w] for i in range(2 * radius + 1))


def gaussian_noise(x255: jax.Array, key: jax.Array, std: jax.Array) -> jax.Array:
    return jnp.clip(x255 + std * jax.random.normal(key, x255.shape), 0.0, 255.0)


@dataclasses.dataclass(frozen=True)
class EoTConfig:
    """Per PGD step, with probability p_identity no transform, else one of the enabled ones,
    uniformly, with its strength drawn uniformly from the given range."""

    p_identity: float = 0.0
    jpeg_quality: tuple[float, float] | None = None      # e.g. (50, 95)
    resize_scale: tuple[float, float] | None = None      # e.g. (0.5, 0.9): 4 scales in range
    blur_sigma: tuple[float, float] | None = None        # e.g. (0.0, 1.0)
    noise_std: tuple[float, float] | None = None         # 0..255 units, e.g. (0, 4)

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.jpeg_quality, self.resize_scale, self.blur_sigma,
                                           self.noise_std))


def random_transform(x255: jax.Array, key: jax.Array, cfg: EoTConfig,
                     offset: tuple[jax.Array, jax.Array] = (0, 0)) -> jax.Array:
    """One random differentiable post-processing of a (H, W, 3) 0..255 region."""
    branches, ranges = [], []
    if cfg.jpeg_quality is not None:
        branches.append(lambda x, s, k: jpeg(x, s, offset))
        ranges.append(cfg.jpeg_quality)
    if cfg.resize_scale is not None:
        # output sizes must be static: four scales spread over the range, one branch each
        for sc in np.linspace(cfg.resize_scale[0], cfg.resize_scale[1], 4):
            branches.append(lambda x, s, k, sc=float(sc): resize_round_trip(x, sc))
            ranges.append((0.0, 0.0))
    if cfg.blur_sigma is not None:
        branches.append(lambda x, s, k: gaussian_blur(x, s))
        ranges.append(cfg.blur_sigma)
    if cfg.noise_std is not None:
        branches.append(lambda x, s, k: gaussian_noise(x, k, s))
        ranges.append(cfg.noise_std)
    if not branches:
        return x255
    k_pick, k_id, k_s, k_n = jax.random.split(key, 4)
    i = jax.random.randint(k_pick, (), 0, len(branches))
    lo = jnp.asarray([r[0] for r in ranges], jnp.float32)[i]
    hi = jnp.asarray([r[1] for r in ranges], jnp.float32)[i]
    s = jax.random.uniform(k_s, (), minval=lo, maxval=hi)
    out = jax.lax.switch(i, branches, x255, s, k_n)
    keep = jax.random.uniform(k_id) < cfg.p_identity
    return jnp.where(keep, x255, out)
