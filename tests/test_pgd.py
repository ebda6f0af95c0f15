"""The PGD engine on toy losses: budget, box, support, schedules, scan == host loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idguardian_jax.attack import pgd


def _x():
    return jnp.asarray(np.random.default_rng(0).uniform(size=(6, 5, 3)).astype(np.float32))


def test_projection_respects_budget_box_and_support():
    x = _x().at[0, 0].set(1.0).at[1, 1].set(0.0)
    support = jnp.ones((6, 5)).at[2].set(0.0)
    d = pgd.project(jnp.full_like(x, 0.5), x, 4 / 255, support)
    assert float(jnp.abs(d).max()) <= 4 / 255 + 1e-7
    assert float((x + d).max()) <= 1.0 and float((x + d).min()) >= 0.0
    assert float(jnp.abs(d[2]).max()) == 0.0
    assert float(d[0, 0].max()) == 0.0  # already at 1: cannot go up


def _dykstra(v, x, eps, support, radius, iterations=3000):
    """The projection onto box n ball by Dykstra's alternating projections (a slow reference)."""
    inside = support[..., None] > 0
    lo = jnp.where(inside, jnp.maximum(-eps, -x), 0.0)
    hi = jnp.where(inside, jnp.minimum(eps, 1.0 - x), 0.0)
    y, p, q = v, jnp.zeros_like(v), jnp.zeros_like(v)
    for _ in range(iterations):
        z = jnp.clip(y + p, lo, hi)
        p = y + p - z
        y = (z + q) * jnp.minimum(1.0, radius / jnp.linalg.norm(z + q))
        q = z + q - y
    return y


def test_exact_l2_projection_is_the_euclidean_projection():
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(8, 7, 3)).astype(np.float32))
    v = jnp.asarray(np.random.default_rng(2).normal(0, 0.03, size=x.shape).astype(np.float32))
    support = jnp.ones((8, 7)).at[3].set(0.0)
    eps, radius = 8 / 255, jnp.float32(0.25)
    d = pgd.project_exact(v, x, eps, support, radius)
    assert float(jnp.linalg.norm(d)) <= 0.25 and float(jnp.linalg.norm(d)) > 0.2499
    assert float(jnp.abs(d).max()) <= eps + 1e-7 and float(jnp.abs(d[3]).max()) == 0.0
    assert float((x + d).min()) >= 0.0 and float((x + d).max()) <= 1.0
    np.testing.assert_allclose(np.asarray(d), np.asarray(_dykstra(v, x, eps, support, radius)),
                               atol=1e-6)
    # closer to v than the uniform shrink of `project`, which is in the same set
    scaled = pgd.project(v, x, eps, support, radius)
    assert float(jnp.linalg.norm(d - v)) < float(jnp.linalg.norm(scaled - v)) - 1e-3
    # where the ball does not bind, the same bits as `project`
    small = 0.01 * v
    assert bool(jnp.all(pgd.project_exact(small, x, eps, support, radius)
                        == pgd.project(small, x, eps, support, radius)))


def test_rms_steps_spend_a_binding_l2_budget_where_the_gradient_holds():
    """Where the L2 ball binds, sign steps move every pixel alike, so the pixels whose gradient
    flips at random from step to step take as much of the budget as those whose gradient holds;
    'rms' steps (momentum's own magnitudes) with the exact projection give it to the latter, close
    to the optimum (the consistent half at 6/255: 150 * 6/255 = 3.53)."""
    x = jnp.full((10, 10, 3), 0.5, jnp.float32)
    half = jnp.zeros_like(x).at[:5].set(1.0)
    radius = jnp.float32(np.sqrt(150) * 6 / 255)  # room for the consistent half at 6/255

    def loss(d, k):  # the consistent half pulls up; the other half's pull is a coin per step
        coin = jnp.sign(jax.random.normal(k, x.shape))
        return -jnp.sum(half * d) - jnp.sum((1 - half) * coin * d)

    out = {}
    for opt, kind in (("sign", "scale"), ("sign", "exact"), ("rms", "exact")):
        cfg = pgd.PGDConfig(eps=8 / 255, steps=30, step_size=1 / 255, optimizer=opt,
                            momentum=0.9, l2_projection=kind)
        out[opt, kind], _ = pgd.run_pgd(pgd.descent(loss), x, jax.random.key(0), cfg, None,
                                        radius)
        assert float(jnp.linalg.norm(out[opt, kind])) <= float(radius) * (1 + 1e-5)
    gain = {k: float(jnp.sum(half * d)) for k, d in out.items()}  # 2.93, 2.93, 3.46 measured
    assert gain["rms", "exact"] > 1.1 * gain["sign", "scale"]
    assert gain["sign", "exact"] >= gain["sign", "scale"] * (1 - 1e-6)


def test_sign_steps_reach_the_budget_and_minimize():
    x = _x()
    target = jnp.full_like(x, 0.5)
    cfg = pgd.PGDConfig(eps=8 / 255, steps=10, step_size=2 / 255)
    delta, losses = jax.jit(lambda x, k: pgd.run_pgd(
        pgd.descent(lambda d, k: jnp.sum((x + d - target) ** 2)), x, k, cfg))(x, jax.random.key(0))
    assert losses.shape == (10,)
    assert float(losses[-1]) < float(losses[0])
    far = jnp.abs(x - 0.5) > 8 / 255
    np.testing.assert_allclose(np.abs(np.asarray(delta))[np.asarray(far)], 8 / 255, atol=1e-6)


def test_random_start_stays_in_budget_and_support():
    x = _x()
    support = jnp.zeros((6, 5)).at[:3].set(1.0)
    cfg = pgd.PGDConfig(eps=4 / 255, steps=0, random_start=True)
    delta, _ = pgd.run_pgd(pgd.descent(lambda d, k: jnp.sum(d)), x, jax.random.key(3), cfg, support)
    assert float(jnp.abs(delta).max()) <= 4 / 255 + 1e-7
    assert float(jnp.abs(delta[3:]).max()) == 0.0 and float(jnp.abs(delta[:3]).max()) > 0


@pytest.mark.parametrize("optimizer,schedule", [("sign", "constant"), ("sign", "cosine"),
                                                ("adam", "linear")])
def test_scan_and_host_loop_agree(optimizer, schedule):
    x = _x()
    cfg = pgd.PGDConfig(eps=6 / 255, steps=7, step_size=1 / 255, optimizer=optimizer,
                        schedule=schedule, random_start=True)

    def loss(d, k):  # uses the key, as the jittered objective does
        return jnp.sum(jnp.sin(7 * (x + d)) * jax.random.normal(k, x.shape))

    key = jax.random.key(5)
    d_scan, l_scan = jax.jit(lambda: pgd.run_pgd(pgd.descent(loss), x, key, cfg))()
    carry = pgd.init(x, key, cfg)
    step = jax.jit(lambda c, i: pgd.step(c, i, pgd.descent(loss), x, cfg))
    l_host = []
    for i in range(cfg.steps):
        carry, li = step(carry, jnp.int32(i))
        l_host.append(li)
    np.testing.assert_allclose(np.asarray(carry[0]), np.asarray(d_scan), atol=1e-6)
    np.testing.assert_allclose(np.asarray(l_host), np.asarray(l_scan), rtol=1e-5, atol=1e-5)


def test_config_validation():
    with pytest.raises(ValueError, match="eps"):
        pgd.PGDConfig(eps=0)
    with pytest.raises(ValueError, match="optimizer"):
        pgd.PGDConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="l2_projection"):
        pgd.PGDConfig(l2_projection="clip")
