"""Transfer techniques: make a perturbation computed on surrogate encoders fool encoders it never saw.

Each is a switch of `TransferConfig` (configs: `objective.transfer.*`), pure and jittable:

- **input diversity** (DI, Xie et al. 2019): with probability `diversity_prob` per view and step, the
  chip is cut from a randomly larger area of the photo (the face shrinks by a factor drawn in
  [1 / (1 + diversity_scale), 1]) at a random offset inside the freed margin, i.e. DI's random
  resize-and-pad done by the view's own bilinear sampling (no zero border: the margin is photo).
- **translation-invariant gradients** (TI, Dong et al. 2019): the gradient reaching each chip is
  smoothed with a Gaussian kernel before it flows back to the photo (`smooth_cotangent`: identity
  forward, blurred cotangent backward), in the encoder's own chip pixels, so the kernel follows the
  face's scale whatever the photo size. `ti_kernel` is the kernel side at a 112 px chip, scaled
  with the chip size; sigma = (side - 1) / 6 (TI's 3-sigma kernel).
- **momentum** (MI-FGSM, Dong et al. 2018): g_t = mu g_{t-1} + grad / mean|grad|, sign steps on g_t
  (`momentum_transform`, an optax transformation placed before the sign; `attack.momentum`, in
  idguardian_jax.attack.pgd.PGDConfig since it is the optimizer's state).
- **per-encoder balance**: each encoder's gradient is normalized to unit L2 norm over the region
  before the weighted sum (`balance='gradient'`), so no encoder dominates the sign of the step;
  'loss' sums the raw losses (the classic ensemble); 'threshold' also scales each unit gradient by
  how far the encoder still is from its own threshold (`threshold_weight`), so encoders already
  fooled yield the step to those that are not.
- **feature-level loss** (`feature_weight`): see idguardian_jax.losses.identity and the encoders
  that expose intermediate features.
- **model augmentation** (`dropout`): surrogates whose graphs support it drop feature-map units at
  random each step (DFANet-style), a new surrogate per step.
- **linear backpropagation** (`linear_backward`, LinBP, Guo et al. 2020): the last fraction of a
  surrogate's activations pass the gradient through as if they were linear (forward unchanged).
- **spectrum simulation** (`spectrum_rho`, SSA, Long et al. 2022): each chip the encoder reads gets
  Gaussian noise (`spectrum_sigma`) and a random gain in [1 - rho, 1 + rho] per 2-D DCT
  coefficient (`spectrum_augment`), a cheap stand-in for other models' frequency responses.
- **gradient samples** (`samples`): the identity terms' direction (the encoders, balanced, and any
  baseline; not IDGuardian's deflection term) is the mean of that many directions, each with its
  own random draw of every technique above (and of EoT / re-alignment jitter).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    diversity_prob: float = 0.0
    diversity_scale: float = 0.15
    ti_kernel: int = 0
    balance: str = "loss"
    feature_weight: float = 0.0
    dropout: float = 0.0
    threshold_margin: float = 0.25
    threshold_floor: float = 0.1
    flip_prob: float = 0.0
    linear_backward: float = 0.0
    balance_norm: str = "l2"
    spectrum_rho: float = 0.0
    spectrum_sigma: float = 16.0 / 255.0
    samples: int = 1

    @property
    def balanced(self) -> bool:
        """Whether the encoders' gradients are normalized and summed (balance 'gradient' or
        'threshold') rather than their losses summed ('loss')."""
        return self.balance in ("gradient", "threshold")

    def __post_init__(self):
        if not 0.0 <= self.diversity_prob <= 1.0:
            raise ValueError(f"diversity_prob must be in [0, 1], got {self.diversity_prob}")
        if self.diversity_scale < 0:
            raise ValueError(f"diversity_scale must be >= 0, got {self.diversity_scale}")
        if self.ti_kernel < 0 or (self.ti_kernel and self.ti_kernel % 2 == 0):
            raise ValueError(f"ti_kernel must be 0 (off) or an odd size, got {self.ti_kernel}")
        if self.balance not in ("loss", "gradient", "threshold"):
            raise ValueError(f"balance must be 'loss', 'gradient' or 'threshold', got {self.balance!r}")
        if self.balance_norm not in ("l1", "l2"):
            raise ValueError(f"balance_norm must be 'l1' or 'l2', got {self.balance_norm!r}")
        if not 0.0 <= self.linear_backward <= 1.0:
            raise ValueError(f"linear_backward must be in [0, 1], got {self.linear_backward}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        if self.threshold_margin < 0:
            raise ValueError(f"threshold_margin must be >= 0, got {self.threshold_margin}")
        if not 0.0 <= self.threshold_floor <= 1.0:
            raise ValueError(f"threshold_floor must be in [0, 1], got {self.threshold_floor}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.spectrum_rho <= 1.0:
            raise ValueError(f"spectrum_rho must be in [0, 1], got {self.spectrum_rho}")
        if self.spectrum_sigma < 0:
            raise ValueError(f"spectrum_sigma must be >= 0, got {self.spectrum_sigma}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")


# ------------------------------------------------------------------------------------------
# Input diversity
# ------------------------------------------------------------------------------------------
def diversity_affine(affine: jax.Array, key: jax.Array, rows: int, cols: int, prob: float,
                     scale: float, flip_prob: float = 0.0) -> jax.Array:
    """With probability `prob`, zoom the chip's footprint out by u in [1, 1 + scale] about its
    centre and shift it by up to the freed margin ((u - 1) / 2 of the chip each way); with
    probability `flip_prob`, also mirror the chip left-right (the encoder then reads the mirrored
    face: nearly the same identity to it, a different function of the pixels).

    affine: (2, 3) chip (col, row, 1) -> level (x, y). Returns the same shape.
    """
    kp, ku, kt, kf = jax.random.split(key, 4)
    on = jax.random.uniform(kp, ()) < prob
    u = 1.0 + jax.random.uniform(ku, (), minval=0.0, maxval=scale)
    u = jnp.where(on, u, 1.0)
    margin = (u - 1.0) / 2.0 * jnp.array([cols - 1, rows - 1], jnp.float32)
    t = jax.random.uniform(kt, (2,), minval=-1.0, maxval=1.0) * margin
    c = jnp.array([(cols - 1) / 2.0, (rows - 1) / 2.0], jnp.float32)
    # mirror: chip column col -> (cols - 1) - col
    f = jnp.where(jax.random.uniform(kf, ()) < flip_prob, -1.0, 1.0)
    # chip point p -> c + u (F (p - c)) + t with F = diag(f, 1), then the original affine
    fu = jnp.array([1.0, 0.0], jnp.float32) * (f - 1.0) + 1.0  # (f, 1)
    lin = affine[:, :2] * (u * fu)[None, :]
    off = affine[:, :2] @ (c - u * fu * c + t) + affine[:, 2]
    return jnp.concatenate([lin, off[:, None]], axis=1)


# ------------------------------------------------------------------------------------------
# Spectrum simulation
# ------------------------------------------------------------------------------------------
def dct_matrix(n: int) -> np.ndarray:
    """(n, n) orthonormal DCT-II matrix D: D @ x is the DCT of x (n,), D.T @ X its inverse."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


def spectrum_augment(chips: jax.Array, key: jax.Array, rho: float, sigma: float) -> jax.Array:
    """SSA's spectrum transformation of (N, H, W, C) chips in [0, 1]: IDCT(DCT(x + noise) * gain),
    noise ~ N(0, sigma^2) per pixel, gain ~ U(1 - rho, 1 + rho) per DCT coefficient, channel and
    chip; the 2-D DCT over each chip's rows and columns (orthonormal, so rho = 0 and sigma = 0 give
    x back). Differentiable in x (a linear map plus noise)."""
    n, h, w, c = chips.shape
    kn, kg = jax.random.split(key)
    dh, dw = jnp.asarray(dct_matrix(h)), jnp.asarray(dct_matrix(w))
    x = chips + sigma * jax.random.normal(kn, chips.shape, chips.dtype)
    spec = jnp.einsum("ah,nhwc,bw->nabc", dh, x, dw)
    spec = spec * jax.random.uniform(kg, spec.shape, spec.dtype, 1.0 - rho, 1.0 + rho)
    return jnp.einsum("ah,nabc,bw->nhwc", dh, spec, dw)


# ------------------------------------------------------------------------------------------
# Translation-invariant gradients
# ------------------------------------------------------------------------------------------
def ti_side(ti_kernel: int, chip_size: int) -> int:
    """The kernel side for a chip of `chip_size` px (ti_kernel is given at 112 px); odd, >= 1."""
    if ti_kernel <= 1:
        return 1
    side = int(round(ti_kernel * chip_size / 112.0))
    return side if side % 2 else side + 1


def gaussian_kernel(side: int) -> np.ndarray:
    """(side,) normalized 1-D Gaussian over [-3 sigma, 3 sigma] (TI's kernel, separable)."""
    x = np.linspace(-3.0, 3.0, side)
    k = np.exp(-0.5 * x ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(g: jax.Array, side: int) -> jax.Array:
    """Separable Gaussian blur of (N, H, W, C), zero padding ('same' size), as a sum of `side`
    shifted, weighted copies per axis: ~30x faster on XLA:CPU than the same blur as a grouped
    convolution (measured: a 224 px chip, side 11: 16 ms vs 0.5 ms)."""
    k = gaussian_kernel(side)
    pad = side // 2
    h, w = g.shape[1], g.shape[2]
    x = jnp.pad(g, ((0, 0), (pad, pad), (0, 0), (0, 0)))
    x = sum(float(k[i]) * x[:, i:i + h] for i in range(side))
    x = jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (0, 0)))
    return sum(float(k[i]) * x[:, :, i:i + w] for i in range(side))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def smooth_cotangent(chips: jax.Array, side: int) -> jax.Array:
    """Identity on (N, H, W, C) chips whose backward pass blurs the incoming gradient (TI)."""
    return chips


def _smooth_fwd(chips, side):
    return chips, None


def _smooth_bwd(side, _, g):
    return (_blur(g, side) if side > 1 else g,)


smooth_cotangent.defvjp(_smooth_fwd, _smooth_bwd)


# ------------------------------------------------------------------------------------------
# Momentum and balance
# ------------------------------------------------------------------------------------------
def momentum_transform(decay: float) -> optax.GradientTransformation:
    """MI-FGSM's accumulator: m <- decay m + g / mean|g| (the update is m; sign it afterwards)."""

    def init(params):
        return optax.TraceState(trace=jnp.zeros_like(params))

    def update(updates, state, params=None):
        del params
        g = updates / (jnp.mean(jnp.abs(updates)) + 1e-12)
        m = decay * state.trace + g
        return m, optax.TraceState(trace=m)

    return optax.GradientTransformation(init, update)


def threshold_weight(distance: jax.Array, threshold: float, margin: float,
                     floor: float) -> jax.Array:
    """How much of the step an encoder still needs, in [floor, 1] (balance='threshold').

    distance: the encoder's current distance to the clean face (its mean over faces); the goal is
    `threshold * (1 + margin)` (past the same-person threshold with a relative margin): weight 1 at
    distance 0, falling linearly to `floor` at the goal and staying there (an encoder already
    fooled keeps a small share, so it stays fooled)."""
    goal = max(threshold * (1.0 + margin), 1e-6)
    w = (goal - jax.lax.stop_gradient(distance)) / goal
    return jnp.clip(w, floor, 1.0)


def unit(g: jax.Array, norm: str = "l2") -> jax.Array:
    """g / ||g|| over the whole tensor (0 stays 0), in the L2 norm or the L1 norm.

    With sign steps an encoder's first-order progress alone is ||g||_1: L1-normalized gradients
    give each encoder the same potential progress, L2-normalized ones favour those whose gradient
    is spread over many pixels."""
    if norm == "l1":
        return g / (jnp.sum(jnp.abs(g)) + 1e-12)
    return g / (jnp.sqrt(jnp.sum(g * g)) + 1e-12)
