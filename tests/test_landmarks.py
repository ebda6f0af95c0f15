"""Parity of idguardian_jax.faces.landmarks with dlib's 5-point shape predictor.

References: ../shared/faces/dlib_reference.json (dlib's landmarks from its HOG and CNN boxes) and
tests/data/astronaut_dlib_landmarks.json (held-out images and rectangles, computed with dlib in a
separate environment; see its "description").
"""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from idguardian_jax.faces import landmarks as lm

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "astronaut_dlib_landmarks.json")


@pytest.fixture(scope="module")
def sp():
    return lm.load_shape_predictor()


@pytest.fixture(scope="module")
def heldout():
    with open(DATA) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def astronaut():
    skdata = pytest.importorskip("skimage.data")
    return np.asarray(skdata.astronaut())


def _sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _heldout_image(key, entry, faces_dir=None):
    if key in ("astronaut", "astronaut_gray"):
        import skimage.data
        img = np.asarray(skimage.data.astronaut())
        if key == "astronaut_gray":
            img = np.asarray(Image.fromarray(img).convert("L"))
    else:
        pil = Image.open(os.path.join(faces_dir, entry["source_file"])).convert("RGB")
        how = key.split("|")[1]
        img = np.asarray(pil.reduce(2)) if how == "reduce2" else np.asarray(pil)[:, ::-1]
    assert list(img.shape) == entry["image_shape"]
    assert _sha(img) == entry["image_sha256"], f"{key}: rebuilt image differs from the one dlib saw"
    return img


def _compare(img, cases, sp, label):
    rects = [c["rect"] for c in cases]
    ours = lm.predict_landmarks_batch(img, rects, sp, round_to_int=True)
    ref = np.array([c["landmarks5"] for c in cases])
    diff = np.abs(ours - ref).reshape(len(cases), -1).max(1)
    for c, d, o in zip(cases, diff, ours):
        assert d <= 1, f"{label} {c['what']} rect {c['rect']}: ours {o.tolist()} dlib {c['landmarks5']}"
    return int((diff == 0).sum()), len(cases), int(diff.max())


# ------------------------------------------------------------------------------------------
# parity with dlib
# ------------------------------------------------------------------------------------------

def test_reference_faces_match_dlib(dlib_reference, faces_dir, sp):
    exact = total = worst = 0
    for name, rec in sorted(dlib_reference["images"].items()):
        cases = [dict(f, what=f"{kind}[{i}]") for kind in ("faces", "cnn_faces")
                 for i, f in enumerate(rec.get(kind, []))]
        if not cases:
            continue
        img = np.asarray(Image.open(os.path.join(faces_dir, name)).convert("RGB"))
        e, n, d = _compare(img, cases, sp, name)
        exact, total, worst = exact + e, total + n, max(worst, d)
    print(f"\ndlib_reference.json: {exact}/{total} faces with all 5 integer landmarks exactly "
          f"equal to dlib's; max difference {worst} px")
    assert total >= 20
    assert exact == total  # observed: every face exact (the hard requirement is <= 1 px, above)


def test_heldout_astronaut_matches_dlib(heldout, sp, astronaut):
    for key in ("astronaut", "astronaut_gray"):
        entry = heldout["images"][key]
        img = _heldout_image(key, entry)
        e, n, d = _compare(img, entry["cases"], sp, key)
        assert e == n, f"{key}: {e}/{n} exact, max {d} px"


def test_heldout_astronaut_float_shape_is_bit_exact(heldout, sp, astronaut):
    """dlib's final float32 shape (from dlib's own code) is reproduced bit for bit."""
    entry = heldout["images"]["astronaut"]
    cases = [c for c in entry["cases"] if "normalized_shape_float32_hex" in c]
    assert len(cases) >= 10
    ours = lm.predict_normalized_shapes(astronaut, [c["rect"] for c in cases], sp)
    for c, o in zip(cases, ours):
        want = np.array([float.fromhex(h) for h in c["normalized_shape_float32_hex"]], np.float32)
        np.testing.assert_array_equal(o.reshape(-1), want, err_msg=c["what"])


def test_heldout_transformed_photos_match_dlib(heldout, sp, faces_dir):
    exact = total = 0
    keys = [k for k in heldout["images"] if "|" in k]
    assert {k.split("|")[1] for k in keys} == {"reduce2", "fliplr"}
    for key in keys:
        entry = heldout["images"][key]
        img = _heldout_image(key, entry, faces_dir)
        e, n, _ = _compare(img, entry["cases"], sp, key)
        exact, total = exact + e, total + n
    print(f"\nheld-out transformed photos: {exact}/{total} faces exactly equal to dlib")
    assert exact == total


# ------------------------------------------------------------------------------------------
# API behaviour
# ------------------------------------------------------------------------------------------

def test_single_batch_float_and_int_agree(sp, astronaut):
    rects = np.array([[165, 73, 263, 171], [150, 60, 280, 190], [-40, -30, 58, 68]])
    batch_f = lm.predict_landmarks_batch(astronaut, rects, sp)
    batch_i = lm.predict_landmarks_batch(astronaut, rects, sp, round_to_int=True)
    assert batch_f.shape == (3, 5, 2) and batch_f.dtype == np.float64
    assert batch_i.shape == (3, 5, 2) and batch_i.dtype == np.int64
    np.testing.assert_array_equal(lm.dlib_round(batch_f), batch_i)
    for k, r in enumerate(rects):
        one = lm.predict_landmarks(astronaut, tuple(int(v) for v in r), sp)
        np.testing.assert_array_equal(one, batch_f[k])
    assert lm.predict_landmarks_batch(astronaut, np.zeros((0, 4), int), sp).shape == (0, 5, 2)
    # float rects holding integers are accepted, like dlib.rectangle(int(...))
    np.testing.assert_array_equal(
        lm.predict_landmarks(astronaut, [165.0, 73.0, 263.0, 171.0], sp, round_to_int=True), batch_i[0])


def test_gray_equals_rgb_with_equal_channels(sp, astronaut):
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rect = (165, 73, 263, 171)
    np.testing.assert_array_equal(lm.predict_landmarks(gray, rect, sp), lm.predict_landmarks(rgb, rect, sp))


def test_rgb_intensity_is_integer_mean(sp):
    """dlib's rgb -> gray is (r + g + b) // 3: an image whose channel sum is 3g+2 behaves like g."""
    rng = np.random.default_rng(0)
    g = rng.integers(0, 254, size=(80, 90), dtype=np.uint8)
    rgb = np.stack([g, g + 1, g + 1], -1)  # sum 3g + 2, mean g.67 -> truncates to g
    rect = (10, 12, 70, 72)
    np.testing.assert_array_equal(lm.predict_landmarks(rgb, rect, sp), lm.predict_landmarks(g, rect, sp))


def test_rect_outside_image_reads_zeros(sp, astronaut):
    black = np.zeros((40, 30, 3), np.uint8)
    outside = (600, 100, 700, 200)  # wholly outside astronaut: every feature pixel reads 0
    a = lm.predict_normalized_shapes(astronaut, [outside], sp)
    b = lm.predict_normalized_shapes(black, [(0, 0, 100, 100)], sp)
    np.testing.assert_array_equal(a, b)
    # partly outside equals the same face in a zero-padded copy (integer landmarks, shifted)
    pad = 64
    padded = np.pad(astronaut, ((pad, pad), (pad, pad), (0, 0)))
    rect = (-40, -30, 58, 68)
    got = lm.predict_landmarks(astronaut, rect, sp, round_to_int=True)
    want = lm.predict_landmarks(padded, tuple(v + pad for v in rect), sp, round_to_int=True) - pad
    np.testing.assert_array_equal(got, want)
    # an empty image works too (everything is outside)
    lm.predict_landmarks(np.zeros((0, 0, 3), np.uint8), (0, 0, 10, 10), sp)


@pytest.mark.parametrize("image, match", [
    (np.zeros((20, 20, 3), np.float32), "dtype uint8"),
    (np.zeros((20, 20, 3), np.int64), "dtype uint8"),
    (np.zeros((20, 20, 4), np.uint8), "shape"),
    (np.zeros((20, 20, 1), np.uint8), "shape"),
    (np.zeros((2, 20, 20, 3), np.uint8), "shape"),
    (np.zeros((20,), np.uint8), "shape"),
    ([[0, 1], [2, 3]], "numpy array"),
])
def test_bad_image_raises(sp, image, match):
    with pytest.raises(ValueError, match=match) as ei:
        lm.predict_landmarks(image, (0, 0, 9, 9), sp)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("rect, match", [
    ((0, 0, 9), "shape"),
    ((0, 0, 9, 9, 1), "shape"),
    ([[0, 0, 9, 9]], "shape"),
    ((0.5, 0, 9, 9), "integers"),
    ((0, 0, float("nan"), 9), "integers"),
    (("a", 0, 9, 9), "integers"),
    ((True, False, True, True), "integers"),
    ((0, 0, 2 ** 50, 9), "range"),
])
def test_bad_rect_raises(sp, rect, match):
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match=match) as ei:
        lm.predict_landmarks(img, rect, sp)
    assert "\n" not in str(ei.value)


def test_bad_rects_batch_raises(sp):
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        lm.predict_landmarks_batch(img, [(0, 0, 9)], sp)
    with pytest.raises(ValueError, match="predictor"):
        lm.predict_landmarks(img, (0, 0, 9, 9), object())


def test_loader_arrays_and_memo(sp):
    assert sp.num_parts == 5 and sp.num_cascades == 15 and sp.depth == 4
    assert sp.initial_shape.shape == (5, 2) and sp.initial_shape.dtype == np.float32
    assert sp.splits_idx.shape == (15, 500, 15, 2) and sp.splits_idx.dtype == np.int32
    assert sp.leaf_values.shape == (15, 500, 16, 10) and sp.leaf_values.dtype == np.float32
    assert sp.anchor_idx.shape == (15, 800) and sp.deltas.shape == (15, 800, 2)
    assert not sp.leaf_values.flags.writeable
    assert lm.load_shape_predictor() is sp  # same file -> same in-process object


def test_unnormalizing_transform_is_dlibs(sp):
    """dlib's pinv-based tform is diag(w, h) + (l, t) only up to ~1e-13; we keep its exact bits."""
    m, b = lm.unnormalizing_transform([[171, 290, 438, 558]])
    assert m[0, 0, 0].hex() == "0x1.0affffffffffcp+8" and m[0, 0, 1].hex() == "0x1.4000000000000p-42"
    assert m[0, 1, 0].hex() == "-0x1.8000000000000p-43" and m[0, 1, 1].hex() == "0x1.0c00000000004p+8"
    assert b[0, 0].hex() == "0x1.5600000000005p+7" and b[0, 1].hex() == "0x1.2200000000003p+8"
    np.testing.assert_allclose(m[0], np.diag([267.0, 268.0]), atol=1e-9)
