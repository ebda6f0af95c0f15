"""The PGD engine: init, step (optax), projection, and the loop inside one jit.

A perturbation `delta` lives on a photo region `x` (float32 in [0, 1], (H, W, C)). Each step:

  loss, g = value_and_direction(delta, key_i)      (g: the loss gradient, or any descent direction)
  delta += optimizer update(g)                     (sign steps by default, or Adam)
  delta  = support * clip(delta, -eps, eps)        (L_inf ball, optax.projections)
  delta  = clip(x + delta, 0, 1) - x               ([0, 1] box)
  delta  = delta * min(1, l2_max / ||delta||_2)    (optional L2 ball: a floor on the PSNR)

With `l2_projection='exact'` the last line is instead the Euclidean projection onto the
intersection of the three sets and the L2 ball, clip(s * v) for the largest s <= 1 that meets the
radius (`project_exact`): coordinates already past the L_inf budget stay at it, instead of every
pixel shrinking by the same factor. Sign steps move every pixel alike, so only steps that carry the
gradient's magnitude (`optimizer='rms'`) let the L2 budget go where the gradient is large.

`support` (H, W) zeroes the perturbation where no view samples the photo, so those pixels stay
exactly as they were. `run_pgd` runs the whole loop as one `lax.scan` inside the caller's jit;
`init` and `step` are the same loop one step at a time, for a host-driven loop (see
idguardian_jax.attack.engine: XLA:CPU runs convolutions inside while-loop bodies ~3x slower than the same
step jitted alone, so on CPU the engine calls a jitted step from Python instead).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from optax import projections


@dataclasses.dataclass(frozen=True)
class PGDConfig:
    """eps: L_inf budget on [0, 1] pixels. step_size: first step (sign: per-pixel change).

    optimizer: 'sign' (signed gradient, the classic PGD step), 'rms' (the gradient, or momentum,
      scaled so that its RMS over the pixels it moves is step_size, i.e. a sign step's size with
      the gradient's own direction: steepest descent in L2, for when the PSNR floor binds), 'adam'.
    schedule: 'constant', 'cosine' (decays to final_fraction x step_size) or 'linear'.
    random_start: start from uniform noise in the budget (inside the support) instead of zero.
    """

    eps: float = 4 / 255
    steps: int = 100
    step_size: float = 1 / 255
    optimizer: str = "sign"
    schedule: str = "constant"
    final_fraction: float = 0.1
    random_start: bool = False
    momentum: float = 0.0  # MI-FGSM decay (sign / rms optimizers; 0 = off); attack/transfer.py
    l2_projection: str = "scale"  # 'scale' (shrink uniformly) or 'exact' (project_exact)

    def __post_init__(self):
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.optimizer not in ("sign", "rms", "adam"):
            raise ValueError(f"optimizer must be 'sign', 'rms' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"schedule must be constant, cosine or linear, got {self.schedule!r}")
        if self.l2_projection not in ("scale", "exact"):
            raise ValueError(f"l2_projection must be 'scale' or 'exact', got {self.l2_projection!r}")


def make_schedule(cfg: PGDConfig) -> optax.Schedule:
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.step_size)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(cfg.step_size, max(cfg.steps, 1), alpha=cfg.final_fraction)
    return optax.linear_schedule(cfg.step_size, cfg.step_size * cfg.final_fraction, max(cfg.steps, 1))


def make_optimizer(cfg: PGDConfig) -> optax.GradientTransformation:
    """An optax transformation whose updates are added to delta (it minimizes the loss)."""
    if cfg.optimizer in ("sign", "rms"):
        scale = optax.scale_by_sign() if cfg.optimizer == "sign" else scale_by_moved_rms()
        if cfg.momentum > 0:
            from idguardian_jax.attack import transfer

            return optax.chain(transfer.momentum_transform(cfg.momentum), scale,
                               optax.scale_by_learning_rate(make_schedule(cfg)))
        if cfg.optimizer == "sign":
            return optax.sign_sgd(make_schedule(cfg))
        return optax.chain(scale, optax.scale_by_learning_rate(make_schedule(cfg)))
    return optax.adam(make_schedule(cfg))


def scale_by_moved_rms() -> optax.GradientTransformation:
    """u -> u / RMS(u over its nonzero entries): a step of a sign step's L2 norm (the pixels a sign
    step would move, at unit size each) in the direction of u itself (0 stays 0)."""

    def update(updates, state, params=None):
        del params
        moved = jnp.maximum(jnp.sum(updates != 0), 1).astype(updates.dtype)
        rms = jnp.sqrt(jnp.sum(jnp.square(updates)) / moved)
        return jnp.where(rms > 0, updates / jnp.where(rms > 0, rms, 1.0), 0.0), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def project(delta: jax.Array, x: jax.Array, eps: float, support: jax.Array | None = None,
            l2_max: jax.Array | None = None) -> jax.Array:
    """Onto the L_inf ball of radius eps, the support, the [0, 1] box of x + delta, and (if
    l2_max is given) the L2 ball of radius l2_max.

    The L2 step scales delta down, which keeps it inside the L_inf ball, the support and the box
    (x and x + delta are in the box, so is every point between), so the result satisfies all four.
    """
    delta = _project_box(delta, x, eps, support)
    if l2_max is not None:
        delta = projections.projection_l2_ball(delta, l2_max)
    return delta


def _project_box(delta, x, eps, support):
    """Onto the L_inf ball, the support and the [0, 1] box of x + delta (a box around 0)."""
    delta = projections.projection_linf_ball(delta, eps)
    if support is not None:
        delta = delta * support[..., None]
    return projections.projection_box(x + delta, 0.0, 1.0) - x


def project_exact(v: jax.Array, x: jax.Array, eps: float, support: jax.Array | None,
                  l2_max: jax.Array, iterations: int = 24) -> jax.Array:
    """The Euclidean projection of v onto {L_inf ball, support, [0, 1] box} n {L2 ball}.

    The first three sets are one box B around 0, so by the KKT conditions the projection is
    P_B(s v) with the largest s in [0, 1] whose result has norm <= l2_max (monotone in s):
    found by bisection (`iterations` halvings of the bracket; the lower end is returned, so the
    radius always holds). Where the L2 ball does not bind the result is P_B(v), bit for bit the
    same as `project`'s.
    """
    full = _project_box(v, x, eps, support)

    def norm2(s):
        return jnp.sum(jnp.square(_project_box(s * v, x, eps, support)))

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        inside = norm2(mid) <= l2_max ** 2
        return jnp.where(inside, mid, lo), jnp.where(inside, hi, mid)

    lo, _ = jax.lax.fori_loop(0, iterations, halve, (jnp.float32(0.0), jnp.float32(1.0)))
    fits = jnp.sum(jnp.square(full)) <= l2_max ** 2
    return jnp.where(fits, full, _project_box(lo * v, x, eps, support))


def init_delta(x: jax.Array, key: jax.Array, cfg: PGDConfig, support: jax.Array | None,
               l2_max: jax.Array | None = None) -> jax.Array:
    if not cfg.random_start:
        return jnp.zeros_like(x)
    noise = jax.random.uniform(key, x.shape, x.dtype, -cfg.eps, cfg.eps)
    return project(noise, x, cfg.eps, support, l2_max)


def init(x: jax.Array, key: jax.Array, cfg: PGDConfig, support: jax.Array | None = None,
         l2_max: jax.Array | None = None):
    """The loop state (delta, optimizer state, loop key) before the first step."""
    k_init, k_loop = jax.random.split(key)
    delta = init_delta(x, k_init, cfg, support, l2_max)
    return delta, make_optimizer(cfg).init(delta), jax.random.key_data(k_loop)


ValueAndDirection = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def descent(loss_fn: Callable[[jax.Array, jax.Array], jax.Array]) -> ValueAndDirection:
    """value_and_direction of a plain loss: (loss, its gradient) at (delta, key)."""
    return jax.value_and_grad(loss_fn)


def step(carry, i: jax.Array, value_and_direction: ValueAndDirection, x: jax.Array,
         cfg: PGDConfig, support: jax.Array | None = None, l2_max: jax.Array | None = None):
    """One PGD step at step index i (a traced int): returns (new carry, loss before the step).

    value_and_direction(delta, key) -> (loss, direction): the loss gradient (`descent(loss)`),
    or any direction to descend (e.g. IDGuardian's identity gradient combined with the
    deflection direction, or an ensemble's balanced gradients).
    """
    delta, state, key_data = carry
    k = jax.random.fold_in(jax.random.wrap_key_data(key_data), i)
    loss, g = value_and_direction(delta, k)
    updates, state = make_optimizer(cfg).update(g, state, delta)
    if cfg.l2_projection == "exact" and l2_max is not None:
        delta = project_exact(delta + updates, x, cfg.eps, support, l2_max)
    else:
        delta = project(delta + updates, x, cfg.eps, support, l2_max)
    return (delta, state, key_data), loss


def run_pgd(value_and_direction: ValueAndDirection, x: jax.Array, key: jax.Array,
            cfg: PGDConfig, support: jax.Array | None = None,
            l2_max: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Descend value_and_direction(delta, key) over the budget, the whole loop in one `lax.scan`.

    Returns (delta, losses (steps,)). Jittable and vmappable: call it inside jit/vmap with a
    per-photo key. `init` + `step` give the same iterates one step at a time (for a host loop).
    """
    carry = init(x, key, cfg, support, l2_max)
    carry, losses = jax.lax.scan(
        lambda c, i: step(c, i, value_and_direction, x, cfg, support, l2_max), carry,
        jnp.arange(cfg.steps))
    return carry[0], losses
