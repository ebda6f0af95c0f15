"""Objective and engine on a tiny encoder and fixed geometry: no photos, no real weights, seconds.

The tiny encoder reads a 32 px InsightFace-template chip (a real view, through warp.sample_view)
and embeds it with a fixed random linear map; two faces of fixed landmarks sit in a 96x128 photo.
"""
from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idguardian_jax import encoders
from idguardian_jax.encoders.base import Encoder
from idguardian_jax import parallel, views
from idguardian_jax.attack import engine, pgd
from idguardian_jax.faces import align
from idguardian_jax.losses import objective
from idguardian_jax.losses.targets import Surrogates, Targets

NAME = "tiny_linear_test"
CHIP = 32
EMBED = 8


def _apply(params, chips):
    n = chips.shape[0]
    return jnp.tanh(chips.reshape(n, -1) @ params["w"])


@pytest.fixture(scope="module")
def tiny():
    """The tiny encoder, registered for this module only, and its params."""
    enc = Encoder(name=NAME, chip_size=CHIP, view="arcface", padding=0.0, load=lambda p=None: None,
                  apply=_apply, distance="euclidean", threshold=0.5, embed_dim=EMBED)
    encoders.register(enc)
    w = np.random.default_rng(0).normal(0, 0.05, (CHIP * CHIP * 3, EMBED)).astype(np.float32)
    yield enc, {"w": jnp.asarray(w)}
    encoders._REGISTRY.pop(NAME, None)


# two faces' 5 points (eyes, nose, mouth corners) in a 96 x 128 photo
FACES = [np.array([[30, 40], [50, 40], [40, 52], [33, 62], [47, 62]], float),
         np.array([[80, 35], [98, 36], [89, 47], [82, 56], [96, 57]], float)]
SHAPE = (96, 128)


def _photo(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, SHAPE + (3,), dtype=np.uint8)


def _plan() -> views.PhotoPlan:
    template = align.insightface_template(CHIP)
    plans = [align.template_chip_plan(p, template, CHIP, SHAPE) for p in FACES]
    return views.plan_photo(SHAPE, {NAME: plans})


def _inputs(rgb, plan, params, cfg: engine.EngineConfig):
    """One photo's row: x, support, L2 radius, views, targets (clean embeddings), key data."""
    x = views.crop_region(rgb, plan.region).astype(np.float32) / 255
    surrogates = Surrogates({NAME: params})
    clean = objective.photo_embeddings(jnp.asarray(x), plan.views, plan.groups, surrogates, None,
                                       cfg.objective, objective.Jitter())
    targets = Targets({NAME: np.asarray(clean[NAME])})
    key = np.asarray(jax.random.key_data(jax.random.key(int(rgb[0, 0, 0]))))
    return x, plan.support, np.float32(1e15), plan.views, targets, key, surrogates


def _cfg(steps=4, **objective_kw) -> engine.EngineConfig:
    return engine.EngineConfig(
        pgd=pgd.PGDConfig(eps=8 / 255, steps=steps, step_size=2 / 255),
        objective=objective.ObjectiveConfig(encoders=((NAME, 1.0),), **objective_kw), loop="host")


def test_the_loss_is_pure_and_zero_at_the_clean_photo(tiny):
    _, params = tiny
    plan, cfg = _plan(), _cfg()
    x, _, _, v, t, _, s = _inputs(_photo(1), plan, params, cfg)
    loss = jax.jit(lambda d, k: objective.photo_loss(d, x, v, t, s, k, groups=plan.groups,
                                                     cfg=cfg.objective))
    zero = jnp.zeros_like(x)
    # without jitter the 8-bit view of the clean region is the clean view: distance 0
    assert abs(float(loss(zero, None))) < 1e-6
    delta = jnp.asarray(np.random.default_rng(2).uniform(-4 / 255, 4 / 255, x.shape), jnp.float32)
    assert float(loss(delta, None)) < -1e-3  # moved away: the loss (minus the distance) fell
    # pure: the same inputs give the same value, jitted or not
    eager = objective.photo_loss(delta, x, v, t, s, None, groups=plan.groups, cfg=cfg.objective)
    np.testing.assert_allclose(float(eager), float(loss(delta, None)), rtol=1e-5)


def test_the_gradient_lives_where_the_views_read(tiny):
    _, params = tiny
    plan, cfg = _plan(), _cfg()
    x, support, _, v, t, _, s = _inputs(_photo(3), plan, params, cfg)
    delta = jnp.asarray(np.random.default_rng(4).uniform(-4 / 255, 4 / 255, x.shape), jnp.float32)
    g = jax.grad(lambda d: objective.photo_loss(d, x, v, t, s, None, groups=plan.groups,
                                                cfg=cfg.objective))(delta)
    g = np.abs(np.asarray(g)).sum(-1)
    assert g[support > 0].max() > 0
    assert g[support == 0].max() == 0.0


def test_a_typed_input_of_the_wrong_encoder_is_a_clear_error(tiny):
    _, params = tiny
    plan, cfg = _plan(), _cfg()
    x, _, _, v, _, _, s = _inputs(_photo(5), plan, params, cfg)
    with pytest.raises(KeyError, match=NAME):
        objective.photo_loss(jnp.zeros_like(x), x, v, Targets({}), s, None, groups=plan.groups,
                             cfg=cfg.objective)


def _protect(rows, plan, cfg, surrogates):
    x, support, l2, v, t, keys = (jax.tree_util.tree_map(lambda *a: np.stack(a),
                                                         *[r[i] for r in rows]) for i in range(6))
    return engine.protect_batch(surrogates, x, support, l2, v, t, keys, groups=plan.groups,
                                cfg=cfg, mesh=parallel.make_mesh())


def test_engine_moves_every_face_within_the_budget_and_support(tiny):
    _, params = tiny
    plan, cfg = _plan(), _cfg()
    row = _inputs(_photo(6), plan, params, cfg)
    delta, losses, after, before = _protect([row[:6]], plan, cfg, row[6])
    assert delta.shape == (1,) + row[0].shape and losses.shape == (1, cfg.pgd.steps)
    assert np.abs(delta).max() <= 8 / 255 + 1e-6
    assert np.abs(delta[0][row[1] == 0]).max() == 0.0
    assert after[NAME].shape == (1, 2)
    # the clean embedding was computed eagerly, the loop's under jit and vmap: float32 order only
    np.testing.assert_allclose(before[NAME], 0.0, atol=1e-3)
    assert (after[NAME] > 0.05).all()  # both faces moved
    assert losses[0, -1] < losses[0, 0]


def test_a_photo_gives_the_same_result_alone_and_in_a_batch(tiny):
    _, params = tiny
    plan, cfg = _plan(), _cfg(steps=3)
    a = _inputs(_photo(7), plan, params, cfg)
    b = _inputs(_photo(8), plan, params, cfg)
    alone = _protect([a[:6]], plan, cfg, a[6])
    together = _protect([b[:6], a[:6]], plan, cfg, a[6])
    np.testing.assert_array_equal(alone[0][0], together[0][1])
    np.testing.assert_array_equal(alone[2][NAME][0], together[2][NAME][1])


def test_one_compile_per_signature(tiny, monkeypatch):
    """The engine's step is traced once for a signature, whatever the photos (chex)."""
    _, params = tiny
    plan, cfg = _plan(), _cfg(steps=2)
    engine._compiled.cache_clear()
    counted = chex.assert_max_traces(engine._step_single, n=1)
    monkeypatch.setattr(engine, "_step_single", counted)
    for seed in (9, 10, 11):
        row = _inputs(_photo(seed), plan, params, cfg)
        _protect([row[:6]], plan, cfg, row[6])
    # a different budget is another program: traced once more, and the counter says so
    with pytest.raises(AssertionError, match="traced"):
        cfg2 = dataclasses.replace(cfg, pgd=dataclasses.replace(cfg.pgd, eps=4 / 255))
        _protect([row[:6]], plan, cfg2, row[6])
    engine._compiled.cache_clear()


@pytest.fixture
def twin(tiny):
    """The tiny encoder registered a second time under another name, and a plan of both views."""
    enc, _ = tiny
    other = dataclasses.replace(enc, name=NAME + "_twin")
    encoders.register(other)
    template = align.insightface_template(CHIP)
    plans = [align.template_chip_plan(p, template, CHIP, SHAPE) for p in FACES]
    yield other.name, views.plan_photo(SHAPE, {NAME: plans, other.name: plans})
    encoders._REGISTRY.pop(other.name, None)


def _two_encoder_run(params, twin_name, plan, photo_views, seed, **objective_kw):
    """(cfg, x, surrogates, targets, delta, balanced direction g at delta) for both encoders."""
    cfg = engine.EngineConfig(objective=objective.ObjectiveConfig(
        encoders=((NAME, 1.0), (twin_name, 1.0)),
        transfer=objective.transfer_lib.TransferConfig(balance="gradient", balance_norm="l2"),
        **objective_kw))
    x = jnp.asarray(views.crop_region(_photo(seed), plan.region).astype(np.float32) / 255)
    s = Surrogates({NAME: params, twin_name: params})
    clean = objective.photo_embeddings(x, photo_views, plan.groups, s, None, cfg.objective,
                                       objective.Jitter())
    t = Targets({n: np.asarray(e) for n, e in clean.items()})
    delta = jnp.asarray(np.random.default_rng(seed + 1).uniform(-2 / 255, 2 / 255, x.shape),
                        jnp.float32)
    _, g = engine.value_and_direction(s, x, photo_views, t, plan.groups, cfg)(delta,
                                                                             jax.random.key(0))
    return cfg, x, s, t, delta, g


def test_balanced_direction_is_the_unit_gradient_with_one_encoder_and_a_twin(tiny, twin):
    """With two encoders (the tiny one twice, under two names), balance 'gradient' gives the
    sum of the two unit gradients: 2 x the unit gradient of one."""
    _, params = tiny
    twin_name, plan = twin
    cfg, x, s_, t, delta, g = _two_encoder_run(params, twin_name, plan, plan.views, 12)
    one = jax.grad(lambda d: objective.encoder_loss(
        NAME, d, x, plan.views, t, s_, jax.random.key(0), groups=plan.groups,
        cfg=cfg.objective))(delta)
    np.testing.assert_allclose(np.asarray(g), 2 * np.asarray(one) / float(jnp.linalg.norm(one)),
                               rtol=1e-4, atol=1e-7)


def test_boxes_match_one_to_one_by_overlap():
    from idguardian_jax.faces import boxes

    assert boxes.iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert boxes.iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0
    assert abs(boxes.iou((0, 0, 9, 9), (5, 0, 14, 9)) - 50 / 150) < 1e-12
    # two clean faces overlapping one found face: only the better one claims it
    got = boxes.match([(0, 0, 9, 9), (3, 0, 12, 9)], [(3, 0, 12, 9), (40, 40, 49, 49)])
    assert got == [None, 0]
    assert boxes.match([(0, 0, 9, 9)], []) == [None]


def test_face_mask_exempt_encoders_alone_use_the_pixels_outside_the_mask(tiny, twin):
    """objective.mask_exempt: a masked encoder's gradient stays inside views.mask; an exempt
    one's reaches its whole crop (balanced direction)."""
    _, params = tiny
    twin_name, plan = twin
    mask = np.zeros(plan.support.shape, np.float32)
    mask[:, ::2] = 1.0  # every other column of the region
    pv = dataclasses.replace(plan.views, mask=mask)
    cfg, x, s_, t, delta, g = _two_encoder_run(params, twin_name, plan, pv, 14,
                                               mask_exempt=(twin_name,))
    one = jax.grad(lambda d: objective.encoder_loss(
        twin_name, d, x, pv, t, s_, jax.random.key(0), groups=plan.groups,
        cfg=cfg.objective))(delta)
    out = np.asarray(mask == 0)
    g, one = np.asarray(g), np.asarray(one) / float(jnp.linalg.norm(one))
    assert np.abs(one[out]).max() > 0  # the views read the columns the mask leaves out
    np.testing.assert_allclose(g[out], one[out], rtol=1e-4, atol=1e-8)  # the twin alone
    assert np.abs(g[~out] - one[~out]).max() > 1e-6  # inside, both encoders


def test_face_mask_exempt_needs_a_balanced_direction():
    from idguardian_jax import settings
    from idguardian_jax.errors import UsageError

    cfg = settings.default_config()
    cfg.objective.face_mask_exempt = ("mobileface",)
    assert settings.engine_config(cfg).objective.mask_exempt == ("mobileface",)
    cfg.objective.transfer.balance = "loss"
    with pytest.raises(UsageError, match="face_mask_exempt"):
        settings.engine_config(cfg)


def test_a_single_masked_encoder_keeps_its_gradient_inside_the_mask(tiny):
    _, params = tiny
    plan, cfg = _plan(), _cfg()
    x, _, _, v, t, _, s = _inputs(_photo(16), plan, params, cfg)
    mask = np.zeros(plan.support.shape, np.float32)
    mask[:, ::2] = 1.0
    pv = dataclasses.replace(v, mask=mask)
    delta = jnp.asarray(np.random.default_rng(17).uniform(-2 / 255, 2 / 255, x.shape), jnp.float32)
    _, g = engine.value_and_direction(s, jnp.asarray(x), pv, t, plan.groups, cfg)(
        delta, jax.random.key(0))
    g = np.abs(np.asarray(g)).sum(-1)
    assert g[mask > 0].max() > 0 and g[mask == 0].max() == 0.0


def test_gradient_samples_average_the_random_draws(tiny):
    _, params = tiny
    plan = _plan()
    tl = objective.transfer_lib
    x, _, _, v, t, _, s = _inputs(_photo(18), plan, params, _cfg())
    delta = jnp.asarray(np.random.default_rng(19).uniform(-2 / 255, 2 / 255, x.shape), jnp.float32)

    def direction(**kw):
        cfg = _cfg(transfer=tl.TransferConfig(**kw))
        return engine.value_and_direction(s, jnp.asarray(x), v, t, plan.groups, cfg)(
            delta, jax.random.key(3))

    (l1, g1), (l4, g4) = direction(), direction(samples=4)
    np.testing.assert_allclose(float(l4), float(l1), rtol=1e-5)  # nothing random: the same
    np.testing.assert_allclose(np.asarray(g4), np.asarray(g1), rtol=1e-4, atol=1e-9)
    _, gs1 = direction(spectrum_rho=0.5)
    _, gs4 = direction(spectrum_rho=0.5, samples=4)
    keys = jax.random.split(jax.random.key(3), 4)
    cfg = _cfg(transfer=tl.TransferConfig(spectrum_rho=0.5))
    f = engine.value_and_direction(s, jnp.asarray(x), v, t, plan.groups, cfg)
    mean = np.mean([np.asarray(f(delta, k)[1]) for k in keys], axis=0)
    np.testing.assert_allclose(np.asarray(gs4), mean, rtol=1e-4, atol=1e-7)
    assert not np.allclose(np.asarray(gs1), np.asarray(g1), rtol=1e-3)  # the spectrum draw acts


def test_embed_uint8_is_apply_on_padded_batches(tiny):
    """encoders.embed_uint8: apply on chips / 255, each row independent of the batch it is in,
    batches padded to a power of two (3 and 4 chips: one compiled program), an empty batch."""
    enc, params = tiny
    chips = np.random.default_rng(5).integers(0, 256, (3, CHIP, CHIP, 3), dtype=np.uint8)
    got = encoders.embed_uint8(NAME, params, chips)
    assert got.shape == (3, EMBED) and got.dtype == np.float32
    want = np.asarray(_apply(params, jnp.asarray(chips, jnp.float32) / 255.0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoders.embed_uint8(NAME, params, chips[1:2])[0], got[1],
                               rtol=1e-5, atol=1e-6)
    fn = encoders._compiled_uint8(enc)
    before = fn._cache_size()
    encoders.embed_uint8(NAME, params, np.concatenate([chips, chips[:1]]))  # 4 chips: as 3
    assert fn._cache_size() == before
    assert encoders.embed_uint8(NAME, params, chips[:0]).shape == (0, EMBED)
