"""The jitted, vmapped, device-sharded protection of a batch of photo regions.

`protect_batch` runs PGD on B photo regions that share one signature (views.PhotoPlan): a `vmap` of
the single-photo PGD, inside one `jit` whose batch inputs and outputs are sharded over the mesh's
'data' axis and whose model parameters are replicated. Each photo has its own PRNG key (derived from
its content and the seed), and nothing mixes photos, so a photo's result does not depend on the
batch it is in.

To make results identical whatever the device count, the per-device batch is fixed
(`per_device`): a run on 1 device processes the same per-device shapes one chunk after another that
8 devices process side by side.
"""
from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax import encoders as encoder_registry
from idguardian_jax import parallel
from idguardian_jax.attack import pgd, transfer
from idguardian_jax.losses import deflection, objective
from idguardian_jax.losses.targets import Surrogates, Targets
from idguardian_jax.views import PhotoViews


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """loop: 'scan' (the whole PGD loop in one jit), 'host' (a jitted step called from Python),
    or 'auto': 'host' on CPU, 'scan' on GPU/TPU. Measured on a 2-core CPU (jax 0.10, dlib ResNet,
    one face): a step inside lax.scan takes 82 ms, the same step jitted alone 26 ms (XLA:CPU runs
    convolutions inside while-loop bodies slowly, jax issue #12868). Both loops compute the same
    iterates; floating-point results may differ in the last bits between the two.
    """

    pgd: pgd.PGDConfig = pgd.PGDConfig()
    objective: objective.ObjectiveConfig = objective.ObjectiveConfig()
    per_device: int = 1
    loop: str = "auto"
    deflection: deflection.DeflectionConfig | None = None  # IDGuardian's injection-stage term

    def resolved_loop(self) -> str:
        if self.loop == "auto":
            return "host" if jax.default_backend() == "cpu" else "scan"
        if self.loop not in ("scan", "host"):
            raise ValueError(f"loop must be 'scan', 'host' or 'auto', got {self.loop!r}")
        return self.loop


def _loss_fn(surrogates: Surrogates, x, views: PhotoViews, targets: Targets, groups,
             cfg: EngineConfig):
    def loss(delta, key):
        return objective.photo_loss(delta, x, views, targets, surrogates, key, groups=groups,
                                    cfg=cfg.objective)
    return loss


def _identity_direction(surrogates: Surrogates, x, views: PhotoViews, targets: Targets, groups,
                        cfg: EngineConfig) -> pgd.ValueAndDirection:
    """(delta, key) -> (loss, direction to descend) of the identity terms (and baseline).

    balance 'loss': the gradient of the summed loss. balance 'gradient': each encoder's (and the
    baseline's) gradient normalized to unit L2 norm over the region, then weighted and summed, so
    that no surrogate dominates the step (idguardian_jax.attack.transfer). 'threshold': the same,
    each encoder's unit gradient further weighted by how far it still is from its own threshold
    (transfer.threshold_weight), so the step goes to the encoders that still recognize the face."""
    ocfg = cfg.objective
    names = [(n, w) for n, w in ocfg.encoders if n in surrogates.encoders and w != 0.0]
    if not ocfg.transfer.balanced or len(names) + (ocfg.baseline is not None) < 2:
        plain = pgd.descent(_loss_fn(surrogates, x, views, targets, groups, cfg))
        if views.mask is None or all(n in ocfg.mask_exempt for n, _ in names):
            return plain

        def masked(delta, key):  # one gradient for all: the face mask holds unless all are exempt
            loss, g = plain(delta, key)
            return loss, g * views.mask[..., None]

        return masked
    common = dict(x01=x, views=views, targets=targets, surrogates=surrogates, groups=groups,
                  cfg=ocfg)

    def direction(delta, key):
        loss, g = 0.0, jnp.zeros_like(delta)
        for name, weight in names:
            f = functools.partial(objective.encoder_loss, name, key=key, **common)
            l, gi = jax.value_and_grad(f)(delta)
            if views.mask is not None and name not in ocfg.mask_exempt:
                gi = gi * views.mask[..., None]  # objective.face_mask_exempt: others stay inside
            w = weight
            if ocfg.transfer.balance == "threshold" and ocfg.objective == "away":
                w = weight * transfer.threshold_weight(-l, encoder_registry.get(name).threshold,
                                                       ocfg.transfer.threshold_margin,
                                                       ocfg.transfer.threshold_floor)
            loss, g = loss + weight * l, g + w * transfer.unit(gi, ocfg.transfer.balance_norm)
        if ocfg.baseline is not None:
            f = functools.partial(objective.baseline_loss, key=key, **common)
            l, gi = jax.value_and_grad(f)(delta)
            loss, g = loss + l, g + transfer.unit(gi, ocfg.transfer.balance_norm)
        return loss, g

    return direction


def _sampled(f: pgd.ValueAndDirection, samples: int) -> pgd.ValueAndDirection:
    """The mean (loss, direction) of f over `samples` random draws (transfer.samples; 1: f)."""
    if samples <= 1:
        return f

    def mean(delta, key):
        losses, dirs = jax.vmap(lambda k: f(delta, k))(jax.random.split(key, samples))
        return jnp.mean(losses), jnp.mean(dirs, axis=0)

    return mean


def value_and_direction(surrogates: Surrogates, x: jax.Array, views: PhotoViews,
                        targets: Targets, groups: dict, cfg: EngineConfig) -> pgd.ValueAndDirection:
    """The one function PGD descends for a photo region x (H, W, 3) in [0, 1]: (delta, key) ->
    (loss, direction). The identity terms' gradient (balanced across encoders when
    cfg.objective.transfer says so, _identity_direction) and, with cfg.deflection, IDGuardian's
    combined direction: the identity gradient and the deflection direction, each normalized over
    the photo (Algorithm 1). The deflection is computed on each face's CLIP view (the image
    IP-Adapter reads) and pulled back to the photo through the view's vector-Jacobian product."""
    identity_dir = _sampled(_identity_direction(surrogates, x, views, targets, groups, cfg),
                            cfg.objective.transfer.samples)
    if cfg.deflection is None:
        return identity_dir
    dp = surrogates.diffusion
    name = "clip_vit"

    def clip_views(x01):
        x255 = objective.region_255(x01, views.offset, None, cfg.objective, None)
        return objective.photo_views(x255, views.encoders[name], groups[name], None,
                                     objective.Jitter(), "round")

    def direction(delta, key):
        loss, g_id = identity_dir(delta, key)
        chips, pull = jax.vjp(clip_views, x + delta)
        s_chip = deflection.score_direction(dp, chips, targets.diffusion.z0,
                                            targets.diffusion.tokens,
                                            jax.random.fold_in(key, 0xD1FF), cfg.deflection)
        (s_pix,) = pull(s_chip)
        return loss, deflection.combine(g_id, s_pix, cfg.deflection.weight)

    return direction


def _distances(surrogates, delta, x, views, targets, groups, cfg: EngineConfig):
    after = objective.photo_distances(delta, x, views, targets, surrogates, groups=groups,
                                      cfg=cfg.objective)
    before = objective.photo_distances(jnp.zeros_like(delta), x, views, targets, surrogates,
                                       groups=groups, cfg=cfg.objective)
    return after, before


def _scan_single(surrogates, x, support, l2_max, views, targets, key_data, *, groups, cfg):
    key = jax.random.wrap_key_data(key_data)
    vd = value_and_direction(surrogates, x, views, targets, groups, cfg)
    delta, losses = pgd.run_pgd(vd, x, key, cfg.pgd, support, l2_max)
    return (delta, losses) + _distances(surrogates, delta, x, views, targets, groups, cfg)


def _init_single(x, support, l2_max, key_data, *, cfg):
    return pgd.init(x, jax.random.wrap_key_data(key_data), cfg.pgd, support, l2_max)


def _step_single(surrogates, carry, i, x, support, l2_max, views, targets, *, groups, cfg):
    vd = value_and_direction(surrogates, x, views, targets, groups, cfg)
    return pgd.step(carry, i, vd, x, cfg.pgd, support, l2_max)


def _finish_single(surrogates, delta, x, views, targets, *, groups, cfg):
    return _distances(surrogates, delta, x, views, targets, groups, cfg)


@functools.lru_cache(maxsize=64)
def _compiled(kind: str, groups_items: tuple, cfg: EngineConfig, mesh: jax.sharding.Mesh):
    """Jitted, vmapped programs for one signature; batch args sharded, params replicated."""
    groups = dict(groups_items)
    rep, bat = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    if kind == "scan":
        fn = jax.vmap(functools.partial(_scan_single, groups=groups, cfg=cfg),
                      in_axes=(None, 0, 0, 0, 0, 0, 0))
        return jax.jit(fn, in_shardings=(rep,) + (bat,) * 6, out_shardings=bat)
    if kind == "init":
        fn = jax.vmap(functools.partial(_init_single, cfg=cfg))
        return jax.jit(fn, in_shardings=(bat,) * 4, out_shardings=bat)
    if kind == "step":
        fn = jax.vmap(functools.partial(_step_single, groups=groups, cfg=cfg),
                      in_axes=(None, 0, None, 0, 0, 0, 0, 0))
        return jax.jit(fn, in_shardings=(rep, bat, rep) + (bat,) * 5, out_shardings=bat,
                       donate_argnums=(1,))
    fn = jax.vmap(functools.partial(_finish_single, groups=groups, cfg=cfg),
                  in_axes=(None, 0, 0, 0, 0))
    return jax.jit(fn, in_shardings=(rep,) + (bat,) * 4, out_shardings=bat)


def _run_chunk(surrogates, part, groups_items, cfg: EngineConfig, mesh):
    x, support, l2_max, views, targets, key_data = part
    if cfg.resolved_loop() == "scan":
        return _compiled("scan", groups_items, cfg, mesh)(surrogates, *part)
    carry = _compiled("init", groups_items, cfg, mesh)(x, support, l2_max, key_data)
    step = _compiled("step", groups_items, cfg, mesh)
    losses = []
    for i in range(cfg.pgd.steps):
        idx = parallel.replicate(np.int32(i), mesh)
        carry, loss = step(surrogates, carry, idx, x, support, l2_max, views, targets)
        losses.append(loss)
    delta = carry[0]
    losses = jnp.stack(losses, axis=1) if losses else jnp.zeros((x.shape[0], 0), jnp.float32)
    after, before = _compiled("finish", groups_items, cfg, mesh)(surrogates, delta, x, views,
                                                                 targets)
    return delta, losses, after, before


def protect_batch(surrogates: Surrogates, x: np.ndarray, support: np.ndarray, l2_max: np.ndarray,
                  views: PhotoViews, targets: Targets, key_data: np.ndarray, *, groups: dict,
                  cfg: EngineConfig, mesh: jax.sharding.Mesh):
    """PGD on a batch of photo regions of one signature.

    surrogates: the models' frozen params (replicated). x: (B, H, W, 3) float32 in [0, 1].
    support: (B, H, W). l2_max: (B,) float32 L2 radius of delta (np.inf: no L2 limit).
    views/targets: leading axis B on every leaf. key_data: (B, 2) uint32.
    Returns numpy (delta (B, H, W, 3), losses (B, steps), distances after / before: name -> (B, F)).
    B is padded internally to a multiple of per_device x devices; chunks run one after another.
    With several processes (jax.distributed), every process calls this together with its own rows
    (at most per_device x its local devices, one global chunk) and gets its own rows back.
    """
    chunk = parallel.local_batch_size(mesh, cfg.per_device)
    b = x.shape[0]
    if jax.process_count() > 1 and b > chunk:
        raise ValueError(f"with several processes each call takes at most {chunk} rows, got {b}")
    groups_items = tuple(sorted(groups.items()))
    chex.assert_rank(x, 4)
    chex.assert_shape(support, x.shape[:3])
    chex.assert_shape(key_data, (b, 2))
    surrogates = parallel.replicate(surrogates, mesh)
    batch = (x, support, np.asarray(l2_max, np.float32), views, targets, key_data)
    outs = []
    for lo in range(0, b, chunk):
        part = jax.tree_util.tree_map(lambda a: _pad_rows(a[lo:lo + chunk], chunk), batch)
        out = _run_chunk(surrogates, parallel.shard_batch(part, mesh), groups_items, cfg, mesh)
        n = min(chunk, b - lo)
        outs.append(jax.tree_util.tree_map(lambda a: a[:n], parallel.to_local(out)))
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=0), *outs)


def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
    """Pad the leading axis to n by repeating the last row (dummy photos, results discarded)."""
    a = np.asarray(a)
    if a.shape[0] == n:
        return a
    return np.concatenate([a, np.repeat(a[-1:], n - a.shape[0], axis=0)], axis=0)
