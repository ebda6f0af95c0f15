"""Transfer techniques (idguardian_jax/attack/transfer.py): each does what it says, on tiny inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from idguardian_jax.attack import pgd, transfer


def _affine():
    return jnp.array([[0.5, 0.1, 10.0], [-0.1, 0.5, 20.0]], jnp.float32)


def test_diversity_off_is_identity_and_on_zooms_out_inside_the_margin():
    a = _affine()
    key = jax.random.key(0)
    np.testing.assert_allclose(transfer.diversity_affine(a, key, 112, 112, 0.0, 0.2), a, atol=1e-6)
    for i in range(20):
        b = transfer.diversity_affine(a, jax.random.key(i), 112, 112, 1.0, 0.2)
        u = float(jnp.linalg.det(b[:, :2]) / jnp.linalg.det(a[:, :2])) ** 0.5
        assert 1.0 <= u <= 1.2 + 1e-5
        # the zoomed-out footprint still contains the original chip's centre region: the centre
        # moves by at most the freed margin
        c = jnp.array([55.5, 55.5, 1.0])
        shift = jnp.linalg.solve(a[:, :2], b @ c - a @ c)
        assert float(jnp.max(jnp.abs(shift))) <= (u - 1) / 2 * 111 + 1e-3


def test_ti_forward_is_identity_backward_is_the_blurred_gradient():
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    w = jnp.zeros((2, 16, 16, 3)).at[0, 8, 8, 1].set(1.0)
    np.testing.assert_array_equal(transfer.smooth_cotangent(x, 5), x)
    g = jax.grad(lambda c: jnp.sum(w * transfer.smooth_cotangent(c, 5)))(x)
    k = transfer.gaussian_kernel(5)
    np.testing.assert_allclose(g[0, 6:11, 6:11, 1], np.outer(k, k), rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(g[0, :, :, 0]).sum()) == 0.0 and float(jnp.abs(g[1]).sum()) == 0.0
    np.testing.assert_allclose(float(g.sum()), 1.0, rtol=1e-5)


def test_ti_kernel_follows_the_chip_size():
    assert transfer.ti_side(7, 112) == 7
    assert transfer.ti_side(7, 224) == 15   # odd, twice the side
    assert transfer.ti_side(0, 224) == 1


def test_momentum_accumulates_l1_normalized_gradients_before_the_sign():
    cfg = pgd.PGDConfig(eps=0.1, steps=2, step_size=0.01, momentum=0.5)
    opt = pgd.make_optimizer(cfg)
    d = jnp.zeros((4,))
    state = opt.init(d)
    g1 = jnp.array([1.0, -2.0, 3.0, 0.0])
    g2 = jnp.array([-10.0, 1.0, -1.0, 0.5])
    u1, state = opt.update(g1, state, d)
    u2, state = opt.update(g2, state, d)
    m1 = g1 / jnp.mean(jnp.abs(g1))
    m2 = 0.5 * m1 + g2 / jnp.mean(jnp.abs(g2))
    np.testing.assert_allclose(u1, -0.01 * jnp.sign(m1), atol=1e-7)
    np.testing.assert_allclose(u2, -0.01 * jnp.sign(m2), atol=1e-7)
    # without momentum the second step would follow g2's sign alone: here it differs somewhere
    assert not np.array_equal(np.sign(m2), np.sign(g2))


def test_unit_and_bad_settings():
    np.testing.assert_allclose(float(jnp.linalg.norm(transfer.unit(jnp.arange(5.0)))), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="ti_kernel"):
        transfer.TransferConfig(ti_kernel=4)
    with pytest.raises(ValueError, match="balance"):
        transfer.TransferConfig(balance="max")
    with pytest.raises(ValueError, match="momentum"):
        pgd.PGDConfig(momentum=1.0)
