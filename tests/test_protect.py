"""End-to-end protection on real photos (the dlib default), arrays API."""
import os

import numpy as np
import pytest
from PIL import Image

from idguardian_jax.configs import tiny
from idguardian_jax import protect


@pytest.fixture(scope="module")
def protector():
    return protect.Protector(tiny.get_config())


def _photo(faces_dir, name):
    return np.asarray(Image.open(os.path.join(faces_dir, name)).convert("RGB"))


def test_budget_support_and_determinism(protector, faces_dir):
    img = _photo(faces_dir, "n000050_A_0003_01.png")
    r1, = protect.protect(img, protector=protector)
    r2, = protect.protect(img.copy(), protector=protector)
    assert r1.status == "protected"
    diff = np.abs(r1.protected.astype(int) - img)
    budget = round(protector.config.budget * 255)
    assert diff.max() == r1.max_change <= budget
    assert np.array_equal(r1.protected, r2.protected)  # same seed -> same bytes
    # pixels no chip reads stay untouched: the corners of this 512x512 crop
    plan = protector.prepare(0, img).plan
    top, left = plan.region[:2]
    ys, xs = np.nonzero(diff.max(axis=2))
    assert ys.min() >= top and xs.min() >= left
    assert r1.psnr > 30 and len(r1.losses) == protector.config.attack.steps
    face = r1.faces[0]
    assert face.distance_before < 1e-3 and face.distance_after > face.distance_before


def test_result_independent_of_batch_and_seed_changes_it(protector, faces_dir):
    a = _photo(faces_dir, "n000050_A_0010_01.png")
    b = _photo(faces_dir, "n000050_A_0075_01.png")
    alone, = protect.protect(a, protector=protector)
    both = protect.protect([b, a], protector=protector)
    assert np.array_equal(alone.protected, both[1].protected)
    cfg = tiny.get_config()
    cfg.seed = 1
    cfg.attack.random_start = True
    other, = protect.protect(a, protector=protect.Protector(cfg, models=protector.models))
    assert not np.array_equal(other.protected, alone.protected)


@pytest.mark.parametrize("name", ["n000050_A_0003_01.png", "two_people.jpg"])
def test_measuring_near_the_faces_equals_the_full_redetection(protector, faces_dir, name):
    """detect.measure='near' (dlib's detections near the clean faces only) reports exactly what
    the full re-detection on the whole protected photo reports (issue 13)."""
    img = _photo(faces_dir, name)
    prep = protector.prepare(0, img)
    r, = protector.protect_arrays([img], measure=False, prepared=[prep])
    near = protector.measure(prep, r.protected)
    cfg = tiny.get_config()
    cfg.detect.measure = "full"
    cfg.detect.max_side = 0
    full = protect.Protector(cfg, models=protector.models).measure(prep, r.protected)
    assert [f.found_again for f in near] == [f.found_again for f in full] == [True] * len(prep.faces)
    for a, b in zip(near, full):
        assert a.distance_after == pytest.approx(b.distance_after, abs=1e-6)
        assert a.encoders == b.encoders


@pytest.mark.parametrize("field,value", [("measure", "nearby"), ("max_side", -1)])
def test_bad_detect_settings_are_usage_errors(protector, field, value):
    cfg = tiny.get_config()
    cfg.detect[field] = value
    pr = protect.Protector(cfg, models=protector.models)
    with pytest.raises(protect.UsageError, match=f"detect.{field}"):
        pr.find_faces(np.zeros((64, 64, 3), np.uint8))


def test_no_face_is_reported_not_protected(protector):
    flat = np.full((120, 160, 3), 128, np.uint8)
    r, = protect.protect(flat, protector=protector)
    assert r.status == "no_face" and r.protected is None


def test_rejects_bad_arrays(protector):
    with pytest.raises(ValueError, match="uint8"):
        protect.protect(np.zeros((10, 10, 3), np.float32), protector=protector)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        protect.protect([np.zeros((10, 10), np.uint8)], protector=protector)


@pytest.mark.slow
def test_two_faces_both_protected(faces_dir):
    from idguardian_jax.configs import default

    cfg = default.get_config()
    cfg.attack.steps = 30
    img = _photo(faces_dir, "two_people.jpg")
    r, = protect.protect(img, config=cfg)
    assert len(r.faces) == 2
    assert all(f.distance_after is None or f.distance_after > 0.6 for f in r.faces)
    assert r.max_change <= round(cfg.budget * 255)


def test_psnr_floor_holds_on_a_face_filling_crop(protector, faces_dir):
    img = _photo(faces_dir, "n000050_A_0075_01.png")[130:386, 130:386]  # the face fills it
    cfg = tiny.get_config()
    cfg.budget_psnr = 40.0
    cfg.attack.steps = 4
    r, = protect.protect(img, protector=protect.Protector(cfg, models=protector.models))
    assert r.status == "protected"
    assert r.psnr >= 40.0 and r.max_change <= 8
    unlimited, = protect.protect(img, protector=protector)
    assert unlimited.psnr < 40.0  # without the floor this crop would fall below it


def test_decoy_objective_pulls_toward_the_decoy(protector, faces_dir):
    cfg = tiny.get_config()
    cfg.attack.steps = 6
    cfg.objective.decoy_photo = os.path.join(faces_dir, "biden.jpg")
    pr = protect.Protector(cfg, models=protector.models)
    img = _photo(faces_dir, "n000050_A_0003_01.png")
    r, = protect.protect(img, protector=pr)
    prep = pr.prepare(0, img)
    decoy = pr.decoy["dlib_resnet"][0]
    before = np.linalg.norm(prep.clean["dlib_resnet"][0] - decoy)
    after_prep = pr.prepare(0, r.protected)
    after = np.linalg.norm(after_prep.clean["dlib_resnet"][0] - decoy)
    assert after < before - 0.1, (before, after)
    # and it is the decoy that pulls: the same steps pushing away ('away', no decoy) do not
    # bring the face nearly as close to the decoy
    cfg.objective.decoy_photo = ""
    away, = protect.protect(img, protector=protect.Protector(cfg, models=protector.models))
    after_away = np.linalg.norm(pr.prepare(0, away.protected).clean["dlib_resnet"][0] - decoy)
    assert after < after_away - 0.05, (after, after_away)
