"""The protection objective of one photo: a pure function of the perturbation.

  loss(delta) = sum over encoders e, faces f of  w_e * term(encoder_e(view_{e,f}(x + delta)))

view_{e,f} is the differentiable dlib-faithful chip of face f for encoder e (with random
re-alignment jitter, since the attacker finds the landmarks again on the protected photo), and the
term is identity confusion (away from the clean embedding, or toward a decoy). Everything here is
jittable and free of Python side effects; the static structure (groups) comes from views.PhotoPlan.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib

import jax
import jax.numpy as jnp

from idguardian_jax import encoders as encoder_registry
from idguardian_jax.attack import eot as eot_lib
from idguardian_jax.attack import transfer as transfer_lib
from idguardian_jax.faces import warp
from idguardian_jax.losses import identity
from idguardian_jax.losses.targets import Surrogates, Targets
from idguardian_jax.views import FaceViews, PhotoViews, ViewGroup, rounding_for


@dataclasses.dataclass(frozen=True)
class Jitter:
    """Random re-alignment per step: uniform shift (photo pixels), rotation (rad), scale (rel.)."""

    shift_px: float = 0.0
    rotation: float = 0.0
    scale: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.shift_px or self.rotation or self.scale)


@dataclasses.dataclass(frozen=True)
class BaselineTerm:
    """A classic protection in the same loop, on each face's `view` (an encoder's aligned crop):

    'advdm' (Liang et al. 2023): maximize the diffusion model's denoising loss
      E_{t,e} ||eps(z_t(VAE(x_adv)), t, text) - e||^2 (gradient through the VAE and the UNet);
      with a DreamBooth-fine-tuned model as `model_dir` this is Anti-DreamBooth's FSMG.
    'photoguard' (Salman et al. 2023, encoder attack): pull VAE(x_adv) toward the latent of a
      flat gray target image.
    """

    kind: str
    weight: float = 1.0
    view: str = "clip_vit"
    t_min: int = 0
    t_max: int = 999


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """encoders: ((name, weight), ...). objective: 'away' or 'decoy'. cap: see identity_confusion.

    quantize: the loop sees the photo as it will be written (8-bit, straight-through rounding).
    """

    encoders: tuple[tuple[str, float], ...] = (("dlib_resnet", 1.0),)
    objective: str = "away"
    cap: float | None = None
    quantize: bool = True
    jitter: Jitter = Jitter()
    eot: eot_lib.EoTConfig = eot_lib.EoTConfig()
    baseline: BaselineTerm | None = None
    transfer: transfer_lib.TransferConfig = transfer_lib.TransferConfig()
    # encoders whose gradient may use their whole crop when the face mask is on (the others stay
    # inside it); needs a balanced direction (transfer.balance 'gradient' or 'threshold')
    mask_exempt: tuple[str, ...] = ()


def photo_views(x255: jax.Array, fv: FaceViews, groups: tuple[ViewGroup, ...], key: jax.Array | None,
                jitter: Jitter, rounding: str = "floor",
                transfer: transfer_lib.TransferConfig | None = None) -> jax.Array:
    """Every face chip of one encoder, (F, rows, cols, 3) float32 in [0, 1].

    x255: (H, W, 3) region, 0..255 values; fv/groups: from PhotoPlan for that encoder.
    With a key and an active jitter, each chip is re-aligned at random; with a key and a
    `transfer` config, input diversity, spectrum simulation and translation-invariant gradients
    apply (see idguardian_jax.attack.transfer).
    """
    chips, at = [], 0
    transfer = transfer if key is not None else None  # the techniques draw from the key
    diverse = transfer is not None and (transfer.diversity_prob > 0 or transfer.flip_prob > 0)
    for gi, g in enumerate(groups):
        sl = slice(at, at + g.count)
        at += g.count
        affine = fv.affine[sl]
        if key is not None and jitter.active:
            keys = jax.random.split(jax.random.fold_in(key, gi), g.count)

            def jit_one(a, k, s):
                return warp.jitter_affine(a, k, g.rows, g.cols, jitter.shift_px * s,
                                          jitter.rotation, jitter.scale)

            affine = jax.vmap(jit_one)(affine, keys, fv.chip_per_px[sl])
        if diverse:
            keys = jax.random.split(jax.random.fold_in(key, 0xD1 + 0x100 * gi), g.count)
            affine = jax.vmap(lambda a, k: transfer_lib.diversity_affine(
                a, k, g.rows, g.cols, transfer.diversity_prob, transfer.diversity_scale,
                transfer.flip_prob))(affine, keys)
        sample = functools.partial(warp.sample_view, window=g.window, n_down=g.n_down,
                                   rows=g.rows, cols=g.cols, rounding=rounding)
        c = jax.vmap(sample, in_axes=(None, 0, 0, 0))(
            x255, fv.start[sl], affine, fv.level_shape[sl])
        if transfer is not None and transfer.spectrum_rho > 0:
            c = 255.0 * transfer_lib.spectrum_augment(
                c / 255.0, jax.random.fold_in(key, 0x55A + 0x100 * gi), transfer.spectrum_rho,
                transfer.spectrum_sigma)
        if transfer is not None and transfer.ti_kernel > 1:
            c = transfer_lib.smooth_cotangent(c, transfer_lib.ti_side(transfer.ti_kernel, g.rows))
        chips.append(c)
    return jnp.concatenate(chips, axis=0) / 255.0


def region_255(x01: jax.Array, offset: jax.Array, key: jax.Array | None, cfg: ObjectiveConfig,
               eot: eot_lib.EoTConfig | None) -> jax.Array:
    """The region as it will be written (8-bit), post-processed by a random transform (EoT);
    offset (2,): the region's top-left in the photo."""
    x255 = warp.quantize_uint8_st(x01) if cfg.quantize else jnp.clip(x01, 0, 1) * 255.0
    if key is not None and eot is not None and eot.active:
        x255 = eot_lib.random_transform(x255, jax.random.fold_in(key, 0x5EED), eot,
                                        (offset[0], offset[1]))
    return x255


def photo_embeddings(x01, views: PhotoViews, groups, surrogates: Surrogates, key,
                     cfg: ObjectiveConfig, jitter: Jitter, eot: eot_lib.EoTConfig | None = None,
                     x255=None, only: str | None = None) -> dict[str, jax.Array]:
    """encoder name -> (F, E) embeddings of every face's view (or of encoder `only`).

    The region is rounded to 8 bits as it will be written (cfg.quantize), then, with a key and an
    active `eot`, post-processed by one random transform (JPEG, resize, blur, noise) before the
    views are cut: the chip each encoder sees is that of the processed photo. With a key, the
    transfer techniques of cfg.transfer apply to the views and (dropout) to the encoders.
    """
    if x255 is None:
        x255 = region_255(x01, views.offset, key, cfg, eot)
    out = {}
    for name, _ in cfg.encoders:
        if name not in surrogates.encoders or (only is not None and name != only):
            continue  # a weight-0 encoder kept only for its view
        enc = encoder_registry.get(name)
        k = None if key is None else jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
        chips = photo_views(x255, views.encoders[name], groups[name], k, jitter,
                            rounding_for(enc), cfg.transfer)
        out[name] = _apply(enc, surrogates.encoders[name], chips, k, cfg.transfer)
    return out


def _apply(enc, params, chips, key, transfer: transfer_lib.TransferConfig):
    """The encoder on its chips; in the loop (key given), a randomly thinned surrogate and/or one
    with a linear backward pass at its end, where the encoder supports them (transfer.dropout,
    transfer.linear_backward)."""
    augmented = transfer.dropout > 0 or transfer.linear_backward > 0
    if key is not None and augmented and enc.apply_augmented is not None:
        return enc.apply_augmented(params, chips, jax.random.fold_in(key, 0xD0), transfer.dropout,
                                   transfer.linear_backward)
    return enc.apply(params, chips)


def photo_loss(delta: jax.Array, x01: jax.Array, views: PhotoViews, targets: Targets,
               surrogates: Surrogates, key: jax.Array | None, *,
               groups: dict[str, tuple[ViewGroup, ...]], cfg: ObjectiveConfig) -> jax.Array:
    """Scalar loss of one photo region to minimize (mean over faces of the weighted terms).

    delta, x01: (H, W, 3) float32, the perturbation and the clean region in [0, 1]."""
    x255 = region_255(x01 + delta, views.offset, key, cfg, cfg.eot)
    embs = photo_embeddings(None, views, groups, surrogates, key, cfg, cfg.jitter, x255=x255)
    total, count = 0.0, 0
    if cfg.baseline is not None:
        total = cfg.baseline.weight * _baseline_term(x255, views, groups, surrogates, targets, key,
                                                     cfg)
        count = sum(g.count for g in groups[cfg.baseline.view])
        total = total * count  # the sum below is divided by the face count again
    for name, weight in cfg.encoders:
        if name not in embs:
            continue
        enc = encoder_registry.get(name)
        d = None if cfg.objective == "away" else targets.decoy[name]
        terms = identity.identity_confusion(embs[name], targets.clean[name], enc.distance, d,
                                            cfg.cap)
        if key is not None and cfg.transfer.feature_weight > 0 and enc.features is not None:
            terms = terms + cfg.transfer.feature_weight * _feature_terms(
                name, x255, x01, views, groups, surrogates, key, cfg)
        total = total + weight * jnp.sum(terms)
        count = max(count, terms.shape[0])
    return total / max(count, 1)


def _feature_terms(name, x255, x01, views: PhotoViews, groups, surrogates: Surrogates, key,
                   cfg: ObjectiveConfig):
    """Feature-level confusion per face (F,): minus the relative squared change of the encoder's
    mid-network feature map, protected view against the clean view cut with the same random
    re-alignment (and diversity) draw; the clean side carries no gradient."""
    enc = encoder_registry.get(name)
    k = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
    fv, rounding = views.encoders[name], rounding_for(enc)
    adv = photo_views(x255, fv, groups[name], k, cfg.jitter, rounding, cfg.transfer)
    clean255 = jax.lax.stop_gradient(region_255(x01, views.offset, None, cfg, None))
    ref = photo_views(clean255, fv, groups[name], k, cfg.jitter, rounding, cfg.transfer)
    fa = enc.features(surrogates.encoders[name], adv)
    fc = jax.lax.stop_gradient(enc.features(surrogates.encoders[name], ref))
    axes = tuple(range(1, fa.ndim))
    return -jnp.sum((fa - fc) ** 2, axis=axes) / (jnp.sum(fc ** 2, axis=axes) + 1e-6)


def encoder_loss(name: str, delta: jax.Array, x01: jax.Array, views: PhotoViews,
                 targets: Targets, surrogates: Surrogates, key: jax.Array | None, *,
                 groups: dict[str, tuple[ViewGroup, ...]], cfg: ObjectiveConfig) -> jax.Array:
    """One encoder's identity term (weighted mean over faces), the same random draw (EoT, jitter,
    diversity) as photo_loss with the same key: for balancing encoders' gradients."""
    x255 = region_255(x01 + delta, views.offset, key, cfg, cfg.eot)
    emb = photo_embeddings(None, views, groups, surrogates, key, cfg, cfg.jitter, x255=x255,
                           only=name)[name]
    enc = encoder_registry.get(name)
    d = None if cfg.objective == "away" else targets.decoy[name]
    terms = identity.identity_confusion(emb, targets.clean[name], enc.distance, d, cfg.cap)
    if key is not None and cfg.transfer.feature_weight > 0 and enc.features is not None:
        terms = terms + cfg.transfer.feature_weight * _feature_terms(
            name, x255, x01, views, groups, surrogates, key, cfg)
    return jnp.mean(terms)


def baseline_loss(delta: jax.Array, x01: jax.Array, views: PhotoViews, targets: Targets,
                  surrogates: Surrogates, key: jax.Array | None, *,
                  groups: dict[str, tuple[ViewGroup, ...]], cfg: ObjectiveConfig) -> jax.Array:
    """The baseline term alone (weighted), for balancing it against the identity terms."""
    x255 = region_255(x01 + delta, views.offset, key, cfg, cfg.eot)
    return cfg.baseline.weight * _baseline_term(x255, views, groups, surrogates, targets, key, cfg)


def _baseline_term(x255, views: PhotoViews, groups, surrogates: Surrogates, targets: Targets, key,
                   cfg: ObjectiveConfig):
    """Mean over faces of the baseline's loss to minimize."""
    from idguardian_jax.diffusion import schedule, unet, vae

    b = cfg.baseline
    dp = surrogates.diffusion
    k = None if key is None else jax.random.fold_in(key, 0xBA5E)
    chips = photo_views(x255, views.encoders[b.view], groups[b.view], k, cfg.jitter,
                        rounding_for(encoder_registry.get(b.view)))
    z = vae.encode(dp.vae, chips)
    if b.kind == "photoguard":
        return jnp.mean((z - targets.diffusion.z_target) ** 2)
    f = chips.shape[0]
    k = jax.random.key(0) if k is None else k
    t = schedule.sample_timesteps(jax.random.fold_in(k, 1), (f,), b.t_min, b.t_max)
    e = jax.random.normal(jax.random.fold_in(k, 2), z.shape, z.dtype)
    zt = schedule.add_noise(dp.schedule, z, e, t)
    text = jnp.broadcast_to(dp.text, (f,) + dp.text.shape[1:])
    added = None if dp.added is None else {n: jnp.broadcast_to(v, (f,) + v.shape[1:])
                                           for n, v in dp.added.items()}
    # the gradient goes through the UNet: recompute its blocks in the backward pass (remat)
    eps = unet.apply(dp.unet, zt, t, text, None, added, options=unet.options_for(dp.unet, remat=True))
    return -jnp.mean((eps - e) ** 2)  # AdvDM maximizes the denoising loss


def photo_distances(delta: jax.Array, x01: jax.Array, views: PhotoViews, targets: Targets,
                    surrogates: Surrogates, *, groups: dict[str, tuple[ViewGroup, ...]],
                    cfg: ObjectiveConfig) -> dict[str, jax.Array]:
    """encoder name -> (F,) distance of each protected view (no jitter) to its clean embedding."""
    embs = photo_embeddings(x01 + delta, views, groups, surrogates, None, cfg, Jitter())
    return {name: identity.embedding_distance(embs[name], targets.clean[name],
                                              encoder_registry.get(name).distance)
            for name, _ in cfg.encoders if name in embs}
