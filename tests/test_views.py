"""View planning: regions, supports, groups and signatures; the JAX view equals dlib's chip."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax import views
from idguardian_jax.faces import align, warp


def _plan(points, shape):
    return align.chip_plan(align.face_chip_details(np.asarray(points, float)), shape)


PTS = np.array([[170, 116], [128, 115], [24, 117], [63, 116], [96, 195]], float)


def test_region_covers_windows_and_support_covers_boxes():
    shape = (480, 640)
    plans = [_plan(PTS + [100, 50], shape), _plan(PTS * 0.5 + [400, 300], shape)]
    pp = views.plan_photo(shape, {"dlib_resnet": plans})
    top, left, h, w = pp.region
    assert h % views.BUCKET == 0 and w % views.BUCKET == 0
    a = pp.views.encoders["dlib_resnet"]
    for g_start, g in zip(a.start, [g for g in pp.groups["dlib_resnet"] for _ in range(g.count)]):
        assert g_start[0] + g.window[0] <= h and g_start[1] + g.window[1] <= w
    assert sum(g.count for g in pp.groups["dlib_resnet"]) == 2
    for p in plans:
        t, l, b, r = p.box
        assert pp.support[t - top:b - top + 1, l - left:r - left + 1].all()
    assert pp.support.sum() < h * w  # pixels no chip reads are not in the support


def test_same_size_faces_share_a_signature():
    shape = (512, 512)
    a = views.plan_photo(shape, {"dlib_resnet": [_plan(PTS + [100, 60], shape)]})
    b = views.plan_photo(shape, {"dlib_resnet": [_plan(PTS + [140, 90], shape)]})
    assert a.signature == b.signature


def test_crop_and_paste_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    region = (30, 40, 64, 64)
    crop = views.crop_region(img, region)
    assert crop.shape == (64, 64, 3) and (crop[20:] == 0).all() and (crop[:, 20:] == 0).all()
    assert np.array_equal(views.paste_region(img, crop, region), img)


def test_jax_view_matches_dlib_chip_within_one_level():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (900, 800, 3), dtype=np.uint8)
    for scale, n_down in ((1.0, 0), (2.5, 2)):
        plan = _plan(PTS * scale + [20, 30], img.shape[:2])
        assert plan.n_down == n_down
        pp = views.plan_photo(img.shape[:2], {"e": [plan]})
        g = pp.groups["e"][0]
        x = views.crop_region(img, pp.region).astype(np.float32)
        a = pp.views.encoders["e"]
        f = jax.jit(functools.partial(warp.sample_view, window=g.window, n_down=g.n_down,
                                      rows=150, cols=150))
        chip = np.asarray(f(jnp.asarray(x), a.start[0], a.affine[0], a.level_shape[0]))
        want = align.extract_chip(img, plan)
        diff = np.abs(chip - want)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_face_mask_covers_the_landmark_hull_grown_by_the_margin():
    import numpy as np

    from idguardian_jax import views

    # a square "face" of 68 points on a 20x20 square at (30..50, 40..60) in photo pixels
    t = np.linspace(0, 1, 17)
    sq = np.concatenate([np.stack([30 + 20 * t, 40 + 0 * t], 1), np.stack([50 + 0 * t, 40 + 20 * t], 1),
                         np.stack([50 - 20 * t, 60 + 0 * t], 1), np.stack([30 + 0 * t, 60 - 20 * t], 1)])
    region = (32, 24, 64, 64)  # top, left, h, w
    m0 = views.face_mask(region, [sq], 0.0)
    m5 = views.face_mask(region, [sq], 0.5)
    assert m0.shape == (64, 64) and set(np.unique(m0)) <= {0.0, 1.0}
    # inside: region coords of photo (40, 50) -> (row 18, col 16); outside: photo (x 10, y 10)
    assert m0[50 - 32, 40 - 24] == 1.0 and m0[0, 0] == 0.0
    area0, area5 = m0.sum(), m5.sum()
    assert 380 <= area0 <= 460            # ~20 x 20
    assert 2.0 < area5 / area0 < 2.5      # (1.5)^2 = 2.25
