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
