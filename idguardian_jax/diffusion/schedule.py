"""The training noise schedule of SD / SDXL (DDPM / DDIM share it): betas, alphas_cumprod,
add_noise, and the conversions the deflection term needs.

SD 1.x / 2.x and SDXL: 1000 steps, 'scaled_linear' betas = linspace(sqrt(0.00085), sqrt(0.012),
1000)**2 (float32), alphabar_t = prod_{s<=t} (1 - beta_s). Betas come from diffusers'
FlaxDDPMScheduler (through `adapter`) for any scheduler_config.json (linear, scaled_linear,
squaredcos_cap_v2, trained betas).

  add_noise(z0, e, t) = sqrt(alphabar_t) z0 + sqrt(1 - alphabar_t) e
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.checkpoints.tensors import CheckpointError, read_json_config
from idguardian_jax.diffusion import adapter

SD_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}


@flax.struct.dataclass
class Schedule:
    alphas_cumprod: jax.Array  # (num_train_timesteps,) float32
    prediction_type: str = flax.struct.field(pytree_node=False, default="epsilon")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])


def from_config(config: Mapping[str, Any] | None = None) -> Schedule:
    """From a diffusers scheduler config (dict); default: SD / SDXL's."""
    c = dict(SD_SCHEDULER)
    c.update({k: v for k, v in (config or {}).items() if k in
              ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
               "prediction_type")})
    pt = c.get("prediction_type", "epsilon")
    if pt not in ("epsilon", "v_prediction", "sample"):
        raise CheckpointError(f"scheduler prediction_type {pt!r} is not supported")
    if c["beta_schedule"] not in ("linear", "scaled_linear", "squaredcos_cap_v2") and \
            c.get("trained_betas") is None:
        raise CheckpointError(f"beta_schedule {c['beta_schedule']!r} is not supported")
    cls = adapter.ddpm_scheduler()
    sched = cls(num_train_timesteps=int(c["num_train_timesteps"]),
                beta_start=float(c["beta_start"]), beta_end=float(c["beta_end"]),
                beta_schedule=c["beta_schedule"], trained_betas=c.get("trained_betas"),
                prediction_type=pt)
    ac = np.asarray(sched.create_state().common.alphas_cumprod, np.float32)
    return Schedule(jnp.asarray(ac), pt)


def load(folder: str | os.PathLike) -> Schedule:
    """From a diffusers pipeline folder (scheduler/scheduler_config.json) or that file."""
    folder = os.fspath(folder)
    path = folder
    if os.path.isdir(folder):
        path = os.path.join(folder, "scheduler", "scheduler_config.json")
        if not os.path.isfile(path):
            path = os.path.join(folder, "scheduler_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: no scheduler/scheduler_config.json")
    return from_config(read_json_config(path, "a scheduler config"))


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _coefs(s: Schedule, t, like: jax.Array):
    t = jnp.asarray(t, jnp.int32)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, like.shape[:1])
    ab = s.alphas_cumprod[t]
    return _bcast(jnp.sqrt(ab), like), _bcast(jnp.sqrt(1.0 - ab), like)


def add_noise(s: Schedule, x0: jax.Array, noise: jax.Array, t) -> jax.Array:
    """sqrt(alphabar_t) x0 + sqrt(1 - alphabar_t) noise; t int scalar or (B,) (any layout; the
    batch is the leading axis)."""
    a, b = _coefs(s, t, x0)
    return (a * x0.astype(jnp.float32) + b * noise.astype(jnp.float32)).astype(x0.dtype)


def sigma(s: Schedule, t) -> jax.Array:
    """sqrt(1 - alphabar_t) (the divisor of IDGuardian's s*)."""
    return jnp.sqrt(1.0 - s.alphas_cumprod[jnp.asarray(t, jnp.int32)])


def to_epsilon(s: Schedule, model_output: jax.Array, x_t: jax.Array, t) -> jax.Array:
    """The epsilon a model's output means (epsilon models: itself; v_prediction (SD 2.x 768):
    sqrt(ab) v + sqrt(1 - ab) x_t; 'sample': (x_t - sqrt(ab) x0) / sqrt(1 - ab))."""
    if s.prediction_type == "epsilon":
        return model_output
    a, b = _coefs(s, t, x_t)
    if s.prediction_type == "v_prediction":
        return a * model_output + b * x_t
    return (x_t - a * model_output) / b


def velocity(s: Schedule, x0: jax.Array, noise: jax.Array, t) -> jax.Array:
    a, b = _coefs(s, t, x0)
    return a * noise - b * x0


def sample_timesteps(key: jax.Array, shape, t_min: int = 0, t_max: int | None = None,
                     s: Schedule | None = None) -> jax.Array:
    """Uniform integer timesteps in [t_min, t_max] (default the whole schedule: 0..999)."""
    hi = (s.num_train_timesteps if s is not None else 1000) if t_max is None else t_max + 1
    return jax.random.randint(key, shape, t_min, hi, dtype=jnp.int32)
