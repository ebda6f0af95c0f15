"""Transfer techniques (idguardian_jax/attack/transfer.py): each does what it says, on tiny inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from idguardian_jax import encoders
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


def test_flip_mirrors_the_chip_columns():
    a = _affine()
    b = transfer.diversity_affine(a, jax.random.key(0), 100, 112, 0.0, 0.2, flip_prob=1.0)
    for col, row in ((0, 0), (111, 7), (30, 99)):
        np.testing.assert_allclose(b @ jnp.array([col, row, 1.0]),
                                   a @ jnp.array([111 - col, row, 1.0]), atol=1e-4)
    flipped = [float(jnp.linalg.det(transfer.diversity_affine(a, jax.random.key(i), 112, 112, 0.0,
                                                              0.2, flip_prob=0.5)[:, :2])) < 0
               for i in range(40)]
    assert 5 < sum(flipped) < 35  # about half the draws mirror


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
    np.testing.assert_allclose(float(jnp.sum(jnp.abs(transfer.unit(-jnp.arange(5.0), "l1")))), 1.0,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="balance_norm"):
        transfer.TransferConfig(balance_norm="linf")
    with pytest.raises(ValueError, match="ti_kernel"):
        transfer.TransferConfig(ti_kernel=4)
    with pytest.raises(ValueError, match="balance"):
        transfer.TransferConfig(balance="max")
    with pytest.raises(ValueError, match="momentum"):
        pgd.PGDConfig(momentum=1.0)
    with pytest.raises(ValueError, match="threshold_floor"):
        transfer.TransferConfig(balance="threshold", threshold_floor=1.5)


def test_spectrum_augment_is_a_random_gain_per_dct_coefficient():
    d = transfer.dct_matrix(7)
    np.testing.assert_allclose(d @ d.T, np.eye(7), atol=1e-6)  # orthonormal DCT-II
    x = jax.random.uniform(jax.random.key(0), (2, 12, 9, 3))
    key = jax.random.key(1)
    same = transfer.spectrum_augment(x, key, 0.0, 0.0)
    np.testing.assert_allclose(np.asarray(same), np.asarray(x), atol=1e-5)
    y = np.asarray(transfer.spectrum_augment(x, key, 0.5, 0.0))
    assert 0.01 < float(np.abs(y - np.asarray(x)).mean()) < 0.5
    # the gain of each coefficient lies in [1 - rho, 1 + rho]
    dh, dw = transfer.dct_matrix(12), transfer.dct_matrix(9)
    spec_x = np.einsum("ah,nhwc,bw->nabc", dh, np.asarray(x), dw)
    spec_y = np.einsum("ah,nhwc,bw->nabc", dh, y, dw)
    gain = spec_y[np.abs(spec_x) > 1e-2] / spec_x[np.abs(spec_x) > 1e-2]
    assert 0.5 - 1e-3 <= gain.min() and gain.max() <= 1.5 + 1e-3 and gain.std() > 0.1
    g = jax.grad(lambda v: jnp.sum(transfer.spectrum_augment(v, key, 0.5, 0.1) ** 2))(x)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0
    with pytest.raises(ValueError, match="spectrum_rho"):
        transfer.TransferConfig(spectrum_rho=1.5)
    with pytest.raises(ValueError, match="samples"):
        transfer.TransferConfig(samples=0)


def test_threshold_weight_falls_from_one_to_the_floor_at_the_goal():
    # threshold 0.6, margin 0.25: goal 0.75
    w = [float(transfer.threshold_weight(jnp.float32(d), 0.6, 0.25, 0.1))
         for d in (0.0, 0.375, 0.7, 0.75, 2.0)]
    np.testing.assert_allclose(w, [1.0, 0.5, 0.1, 0.1, 0.1], atol=1e-6)
    # the weight carries no gradient (it scales an encoder's unit gradient, it is not a loss)
    assert float(jax.grad(lambda d: transfer.threshold_weight(d, 0.6, 0.25, 0.1))(0.3)) == 0.0


# ------------------------------------------------------------------------------------------
# With the real encoders: the default ensemble and the balanced direction
# ------------------------------------------------------------------------------------------
@pytest.mark.real_encoders
def test_default_config_adds_every_installed_encoder(installed):
    from idguardian_jax import settings

    cfg = settings.default_config()
    names = [n for n, _ in settings.encoders_of(cfg)]
    assert names == ["dlib_resnet"] + sorted(installed)
    assert settings.dlib_alone_note(cfg) is None
    cfg.objective.installed_encoders = "none"
    assert [n for n, _ in settings.encoders_of(cfg)] == ["dlib_resnet"]
    assert "dlib alone" in settings.dlib_alone_note(cfg)


def test_without_installs_the_default_is_dlib_alone():
    from idguardian_jax import settings

    cfg = settings.default_config()
    assert [n for n, _ in settings.encoders_of(cfg)] == ["dlib_resnet"]
    assert "dlib alone" in settings.dlib_alone_note(cfg)


@pytest.mark.real_encoders
@pytest.mark.faces
def test_gradient_balance_is_the_sum_of_unit_encoder_gradients(installed, faces_dir):
    import functools
    import os

    from idguardian_jax import images, protect, settings
    from idguardian_jax.attack import engine
    from idguardian_jax.losses import objective

    cfg = settings.default_config()
    cfg.objective.installed_encoders = "none"
    cfg.objective.encoders = (("dlib_resnet", 1.0), ("mobileface", 2.0))
    cfg.objective.transfer.balance = "gradient"
    cfg.objective.transfer.balance_norm = "l2"
    cfg.objective.transfer.diversity_prob = 0.5
    cfg.objective.transfer.ti_kernel = 5
    prot = protect.Protector(cfg)
    rgb = images.read_photo(os.path.join(faces_dir, "n000050_A_0003_01.png")).rgb
    p = prot.prepare(0, rgb)
    x, _, _, views, targets, _ = prot._inputs(p)
    groups = p.plan.groups
    delta = jnp.asarray(np.random.default_rng(0).uniform(-2 / 255, 2 / 255, x.shape), jnp.float32)
    key = jax.random.key(3)
    surrogates = prot.models.surrogates
    direction = engine.value_and_direction(surrogates, x, views, targets, groups, prot.cfg)
    loss, g = jax.jit(direction)(delta, key)
    want, total = 0.0, 0.0
    for name, w in (("dlib_resnet", 1.0), ("mobileface", 2.0)):
        f = functools.partial(objective.encoder_loss, name, x01=x, views=views, targets=targets,
                              surrogates=surrogates, key=key, groups=groups,
                              cfg=prot.cfg.objective)
        l, gi = jax.jit(jax.value_and_grad(f))(delta)
        assert float(jnp.linalg.norm(gi)) > 0
        want = want + w * gi / jnp.linalg.norm(gi)
        total += w * float(l)
    # separately compiled programs: the same up to float32 rounding (a wrong combination would
    # be off by O(1): the two unit gradients are far from parallel, see below)
    np.testing.assert_allclose(float(loss), total, rtol=1e-3)
    assert float(jnp.linalg.norm(g - want) / jnp.linalg.norm(want)) < 1e-2
    # and the direction differs from the plain summed-loss gradient (the balance does something)
    plain = jax.jit(jax.grad(engine._loss_fn(surrogates, x, views, targets, groups, prot.cfg)))(
        delta, key)
    cos = float(jnp.sum(plain * g) / jnp.linalg.norm(plain) / jnp.linalg.norm(g))
    assert cos < 0.99
    # balance 'threshold' (L1 norm, the default): each encoder's gradient at unit L1 norm, also
    # scaled by the distance still to its goal
    cfg.objective.transfer.balance = "threshold"
    cfg.objective.transfer.balance_norm = "l1"
    prot_t = protect.Protector(cfg)
    direction = engine.value_and_direction(prot_t.models.surrogates, x, views, targets, groups,
                                           prot_t.cfg)
    _, g_t = jax.jit(direction)(delta, key)
    want_t = 0.0
    for name, w in (("dlib_resnet", 1.0), ("mobileface", 2.0)):
        f = functools.partial(objective.encoder_loss, name, x01=x, views=views, targets=targets,
                              surrogates=surrogates, key=key, groups=groups,
                              cfg=prot_t.cfg.objective)
        l, gi = jax.jit(jax.value_and_grad(f))(delta)
        enc_w = transfer.threshold_weight(-l, encoders.get(name).threshold, 0.25, 0.1)
        assert 0.1 <= float(enc_w) < 1.0  # the random start moved both a little
        want_t = want_t + w * enc_w * gi / jnp.sum(jnp.abs(gi))
    assert float(jnp.linalg.norm(g_t - want_t) / jnp.linalg.norm(want_t)) < 1e-2
