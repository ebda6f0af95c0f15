"""IDGuardian's identity deflection in the generative flow (the "adversarial conceptual bridge").

Algorithm 1 of the paper's supplementary material, per PGD step and face image x_adv (the face
view, [0, 1]) with clean x: draw t ~ U{t_min..t_max} and e ~ N(0, I); z_t = add_noise(z_clean, e, t)
with z_clean = VAE(x).mode * scaling factor; without gradients

  s* = -(eps(z_t, t, [text; tokens(x_adv)]) - eps(z_t, t, [text; tokens(x)])) / sqrt(1 - alphabar_t)

where tokens() is IP-Adapter's image projection of CLIP's hidden_states[-2]. s* is brought back
to pixels either as in the reference (its first 3 latent channels, bilinearly resized to the
image: 'upsample') or through the VAE encoder's vector-Jacobian product ('vae_vjp'). The PGD
direction is then g_id / ||g_id|| - s_pix / ||s_pix|| (norms over each photo), with g_id the
gradient of the identity loss, and the step is -alpha * sign(direction).

Everything here is pure and jittable; the UNet and the image encoder run under stop_gradient.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from idguardian_jax.checkpoints.tensors import bilinear_resize


@dataclasses.dataclass(frozen=True)
class DeflectionConfig:
    """t_min/t_max: timestep range (inclusive); noise_samples: (t, e) draws averaged per step;
    variant: 'upsample' (the reference) or 'vae_vjp'; ip_scale: IP-Adapter scale (1.0 in the
    reference); weight: multiplies the normalized deflection in the combined direction."""

    t_min: int = 0
    t_max: int = 999
    noise_samples: int = 1
    variant: str = "upsample"
    ip_scale: float = 1.0
    weight: float = 1.0

    def __post_init__(self):
        if self.variant not in ("upsample", "vae_vjp"):
            raise ValueError(f"deflection variant must be 'upsample' or 'vae_vjp', got {self.variant!r}")


@dataclasses.dataclass
class DiffusionParams:
    """What the deflection needs, as a pytree: UNet (with IP layers), VAE, IP image projection,
    the CLIP image encoder the adapter reads, the schedule, and the prompt's embeddings."""

    unet: Any
    vae: Any
    proj: Any
    clip: Any
    schedule: Any
    text: jax.Array            # (1, T, D)
    added: dict | None         # SDXL: {'text_embeds': (1, 1280), 'time_ids': (1, 6)} or None


jax.tree_util.register_dataclass(
    DiffusionParams, data_fields=["unet", "vae", "proj", "clip", "schedule", "text", "added"],
    meta_fields=[])


def clean_conditioning(p: DiffusionParams, chips: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(z_clean (F, 4, h, w), tokens of the clean chips (F, N, D)) for [0, 1] chips (F, S, S, 3)."""
    from idguardian_jax.diffusion import ip_adapter, vae

    return vae.encode(p.vae, chips), ip_adapter.image_tokens(p.proj, p.clip, chips)


def score_direction(p: DiffusionParams, chips_adv: jax.Array, z_clean: jax.Array,
                    tokens_clean: jax.Array, key: jax.Array, cfg: DeflectionConfig,
                    t: jax.Array | None = None, noise: jax.Array | None = None) -> jax.Array:
    """s* brought to pixels, (F, S, S, 3), for adversarial chips (F, S, S, 3) in [0, 1].

    t (F,) / noise (like z_clean) may be given (tests); otherwise drawn from key.
    """
    from idguardian_jax.diffusion import ip_adapter, schedule, unet

    chips_adv = jax.lax.stop_gradient(chips_adv)
    f = chips_adv.shape[0]
    tokens_adv = ip_adapter.image_tokens(p.proj, p.clip, chips_adv)
    text = jnp.broadcast_to(p.text, (2 * f,) + p.text.shape[1:])
    added = None
    if p.added is not None:
        added = {k: jnp.broadcast_to(v, (2 * f,) + v.shape[1:]) for k, v in p.added.items()}

    def one(k, t, noise):
        if t is None:
            t = schedule.sample_timesteps(jax.random.fold_in(k, 1), (f,), cfg.t_min, cfg.t_max)
        if noise is None:
            noise = jax.random.normal(jax.random.fold_in(k, 2), z_clean.shape, z_clean.dtype)
        zt = schedule.add_noise(p.schedule, z_clean, noise, t)
        eps = unet.apply(p.unet, jnp.concatenate([zt, zt]), jnp.concatenate([t, t]), text,
                         jnp.concatenate([tokens_adv, tokens_clean]), added, ip_scale=cfg.ip_scale,
                         options=unet.options_for(p.unet))
        eps_adv, eps_clean = eps[:f], eps[f:]
        sig = schedule.sigma(p.schedule, t).reshape((f,) + (1,) * (eps.ndim - 1))
        return -(eps_adv - eps_clean) / sig

    if t is not None or noise is not None or cfg.noise_samples == 1:
        s = one(key, t, noise)
    else:
        keys = jax.random.split(key, cfg.noise_samples)
        s = jnp.mean(jnp.stack([one(k, None, None) for k in keys]), axis=0)
    s = jax.lax.stop_gradient(s)
    size = chips_adv.shape[1:3]
    if cfg.variant == "upsample":
        # the first 3 latent channels as an RGB direction, resized to the image
        return bilinear_resize(jnp.transpose(s[:, :3], (0, 2, 3, 1)), size)
    from idguardian_jax.diffusion import vae

    return jax.lax.stop_gradient(vae.pullback(p.vae, chips_adv, s))


def _unit(x: jax.Array) -> jax.Array:
    return x / (jnp.sqrt(jnp.sum(x * x)) + 1e-8)


def combine(g_id: jax.Array, s_pix: jax.Array, weight: float = 1.0) -> jax.Array:
    """The reference's direction g_id / ||g_id|| - s / ||s|| (norms over the whole photo)."""
    return _unit(g_id) - weight * _unit(s_pix)


# ------------------------------------------------------------------------------------------
# Algorithm 1 on a face image as the paper runs it (the whole image is the face crop)
# ------------------------------------------------------------------------------------------
def reference_identity_loss(x_adv: jax.Array, x: jax.Array, clip_params, facenet_params) -> jax.Array:
    """cos(clip(x_adv), clip(x)) + cos(facenet(x_adv), facenet(x)) for (1, S, S, 3) images in
    [0, 1], with the reference's preprocessing (whole image resized bilinearly to 224 / 160)."""
    from idguardian_jax.encoders import clip_vit, facenet

    def cos(a, b):
        a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
        b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
        return jnp.sum(a * b)

    c = cos(clip_vit.apply(clip_params, x_adv), jax.lax.stop_gradient(clip_vit.apply(clip_params, x)))
    f = cos(facenet.apply(facenet_params, x_adv),
            jax.lax.stop_gradient(facenet.apply(facenet_params, x)))
    return c + f


def algorithm1_direction(x_adv: jax.Array, x: jax.Array, p: DiffusionParams, facenet_params,
                         z_clean: jax.Array, tokens_clean: jax.Array, t: jax.Array,
                         noise: jax.Array, cfg: DeflectionConfig = DeflectionConfig()) -> jax.Array:
    """total = g_id / ||g_id|| - s_up / ||s_up|| for one face image (1, S, S, 3) in [0, 1]."""
    g = jax.grad(reference_identity_loss)(x_adv, x, p.clip, facenet_params)
    s = score_direction(p, x_adv, z_clean, tokens_clean, None, cfg, t=t, noise=noise)
    return combine(g, s, cfg.weight)


def algorithm1_step(x_adv, x, p, facenet_params, z_clean, tokens_clean, t, noise,
                    alpha: float = 0.005, eps: float = 8 / 255,
                    cfg: DeflectionConfig = DeflectionConfig()) -> jax.Array:
    """One step of Algorithm 1: x_adv - alpha * sign(total), projected on the eps-ball and [0, 1]."""
    total = algorithm1_direction(x_adv, x, p, facenet_params, z_clean, tokens_clean, t, noise, cfg)
    x_new = x_adv - alpha * jnp.sign(total)
    return jnp.clip(x + jnp.clip(x_new - x, -eps, eps), 0.0, 1.0)
