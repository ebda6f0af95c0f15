"""Parity of idguardian_jax.faces.detect with dlib's CNN (MMOD) face detector.

References: ../shared/faces/dlib_reference.json (real dlib 20.0.1 on the shared photos, upsample 1)
and tests/data/astronaut_dlib_cnn.json (real dlib on scikit-image samples and deterministic
transforms of the shared photos, several upsample counts), both produced outside this project.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from idguardian_jax.faces import detect as D, pyramid

HERE = os.path.dirname(os.path.abspath(__file__))
HELD_OUT = os.path.join(HERE, "data", "astronaut_dlib_cnn.json")
FACES_DIR = os.environ.get("IDGUARDIAN_FACES_DIR", os.path.join(HERE, "..", "..", "shared", "faces"))

MIN_IOU = 0.9
# We measured at most 1.5e-6 against dlib (float32 summation order in the convolutions).
CONF_TOL = 1e-3


def _reference_names() -> list:
    path = os.path.join(FACES_DIR, "dlib_reference.json")
    if not os.path.isfile(path):
        return [pytest.param("<no photos>", id="photos-missing")]
    with open(path) as fh:
        names = sorted(json.load(fh)["images"])
    # The largest (biden.jpg, obama3.jpg) take 10-17 s each on a 2-core CPU; the whole file ~90 s.
    return [pytest.param(n, marks=pytest.mark.faces) for n in names]


def _held_out_cases() -> list:
    with open(HELD_OUT) as fh:
        cases = json.load(fh)["cases"]
    return [pytest.param(c, id=c["name"]) for c in cases]


@pytest.fixture(scope="module")
def detector():
    return D.load_detector()


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def iou_inclusive(a, b) -> float:
    """IoU of two [left, top, right, bottom] rectangles with inclusive right/bottom."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return inter / (area(a) + area(b) - inter)


def assert_same_faces(ours, ref, what=""):
    """Every reference box matched by exactly one of ours (IoU >= 0.9) and vice versa, with the
    confidence within CONF_TOL. Returns (max IoU shortfall from 1, max |confidence difference|)."""
    got = [(list(d.rect), d.confidence) for d in ours]
    assert len(got) == len(ref), f"{what}: {len(got)} faces, dlib found {len(ref)}: {got} vs {ref}"
    worst_iou, worst_conf = 0.0, 0.0
    for r in ref:
        matches = [g for g in got if iou_inclusive(g[0], r["rect"]) >= MIN_IOU]
        assert len(matches) == 1, f"{what}: dlib box {r} matched by {matches} (ours: {got})"
        g = matches[0]
        worst_iou = max(worst_iou, 1 - iou_inclusive(g[0], r["rect"]))
        worst_conf = max(worst_conf, abs(g[1] - r["confidence"]))
        assert abs(g[1] - r["confidence"]) <= CONF_TOL, f"{what}: confidence {g[1]} vs dlib {r}"
    for g in got:
        assert sum(iou_inclusive(g[0], r["rect"]) >= MIN_IOU for r in ref) == 1, f"{what}: extra {g}"
    confs = [c for _, c in got]
    assert confs == sorted(confs, reverse=True), f"{what}: not sorted by confidence"
    return worst_iou, worst_conf


def load_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# The image recipes of tests/data/astronaut_dlib_cnn.json (pure numpy after loading).
def _apply_op(img: np.ndarray, op: list) -> np.ndarray:
    name, args = op[0], op[1:]
    if name == "crop":  # [top, left, bottom, right), exclusive end
        t, l, b, r = args
        return img[t:b, l:r]
    if name == "flip_lr":
        return img[:, ::-1]
    if name == "box_down":  # mean of k x k blocks, rounded half up
        k = args[0]
        h, w = img.shape[0] // k * k, img.shape[1] // k * k
        s = img[:h, :w].astype(np.int64).reshape(h // k, k, w // k, k, 3).sum(axis=(1, 3))
        return ((s + (k * k) // 2) // (k * k)).astype(np.uint8)
    if name == "subsample":
        k = args[0]
        return img[::k, ::k]
    if name == "pad":  # top, bottom, left, right, gray value
        t, b, l, r, v = args
        return np.pad(img, ((t, b), (l, r), (0, 0)), constant_values=v)
    raise ValueError(f"unknown op {op}")


def make_image(spec: dict, request) -> np.ndarray:
    if spec["source"] == "collage":
        h, w = spec["size"]
        out = np.full((h, w, 3), spec.get("fill", 128), np.uint8)
        for part in spec["parts"]:
            sub = make_image(part["image"], request)
            y, x = part["at"]
            out[y:y + sub.shape[0], x:x + sub.shape[1]] = sub
        return out
    kind, name = spec["source"].split(":", 1)
    if kind == "skimage":
        skdata = pytest.importorskip("skimage.data")
        img = getattr(skdata, name)()
    elif kind == "faces":
        img = load_rgb(os.path.join(request.getfixturevalue("faces_dir"), name))
    else:
        raise ValueError(spec["source"])
    for op in spec.get("ops", []):
        img = _apply_op(img, op)
    return np.ascontiguousarray(img)


# ------------------------------------------------------------------------------------------
# parity with dlib
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", _reference_names())
def test_matches_dlib_on_shared_photos(name, detector, dlib_reference, faces_dir):
    rec = dlib_reference["images"][name]
    img = load_rgb(os.path.join(faces_dir, name))
    assert img.shape[:2] == (rec["image"]["height"], rec["image"]["width"])
    dets = D.detect_faces(img, detector)  # upsample 1, like the reference
    assert_same_faces(dets, rec["cnn_detections"], name)
    # We reproduce dlib's integer rectangles exactly, not just within the IoU tolerance.
    assert [list(d.rect) for d in dets] == [r["rect"] for r in rec["cnn_detections"]]


@pytest.mark.slow
@pytest.mark.parametrize("case", _held_out_cases())
def test_matches_dlib_held_out(case, detector, request):
    img = make_image(case["image"], request)
    assert list(img.shape) == case["shape"]
    assert hashlib.sha256(img.tobytes()).hexdigest() == case["sha256"], "image recipe changed"
    thr = case.get("adjust_threshold", 0.0)
    dets = D.detect_faces(img, detector, upsample_num_times=case["upsample_num_times"], adjust_threshold=thr)
    ref = case["cnn_detections"]
    if thr == 0.0:
        assert_same_faces(dets, ref, case["name"])
        assert [list(d.rect) for d in dets] == [r["rect"] for r in ref]
    else:
        # Many weak, overlapping windows (negative threshold): the very same rectangles after NMS.
        # (Order is compared per rectangle: near-equal scores may swap within float noise.)
        ours = {d.rect: d.confidence for d in dets}
        theirs = {tuple(r["rect"]): r["confidence"] for r in ref}
        assert len(ours) == len(dets) and sorted(ours) == sorted(theirs), case["name"]
        worst = max(abs(ours[r] - theirs[r]) for r in theirs)
        assert worst <= CONF_TOL, f"{case['name']}: confidence differs by {worst}"
        confs = [d.confidence for d in dets]
        assert confs == sorted(confs, reverse=True)


# ------------------------------------------------------------------------------------------
# behaviour
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def astronaut():
    return pytest.importorskip("skimage.data").astronaut()


def test_adjust_threshold_is_a_prefix_filter(detector, astronaut):
    # Greedy NMS over score-sorted windows: raising the threshold keeps exactly the detections
    # above it. A negative threshold lets more (overlapping, weak) windows through NMS.
    low = D.detect_faces(astronaut, detector, upsample_num_times=0, adjust_threshold=-1.2)
    base = D.detect_faces(astronaut, detector, upsample_num_times=0)
    assert len(low) > len(base) >= 1
    assert [d for d in low if d.confidence > 0.0] == base
    high = D.detect_faces(astronaut, detector, upsample_num_times=0, adjust_threshold=base[0].confidence)
    assert high == []
    confs = [d.confidence for d in low]
    assert confs == sorted(confs, reverse=True)
    assert all(isinstance(v, int) for d in low for v in d.rect)


def test_bands_and_buckets_do_not_change_scores(detector, astronaut, monkeypatch):
    """Scores computed in several row bands on a bucket-widened canvas equal one band on dlib's
    exact canvas width: band halos and bucket padding are exact."""
    img = astronaut[:200, 130:380]
    ref, rects = D.score_map(img, detector, 1)
    monkeypatch.setattr(D, "_MAX_BAND_ROWS", 64)
    monkeypatch.setattr(pyramid, "bucket_width", lambda n: n)
    banded, rects2 = D.score_map(img, detector, 1)
    assert rects == rects2
    assert ref.shape == banded.shape and ref.shape[0] > 64
    np.testing.assert_allclose(banded, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(20, 20), (1, 1), (0, 0), (0, 7), (5, 300), (300, 7)])
@pytest.mark.parametrize("upsample", [0, 1])
def test_tiny_images_give_no_faces(detector, shape, upsample):
    img = np.random.default_rng(0).integers(0, 256, shape + (3,), dtype=np.uint8)
    assert D.detect_faces(img, detector, upsample_num_times=upsample) == []


@pytest.mark.parametrize("bad", [
    np.zeros((32, 32, 3), np.float32),
    np.zeros((32, 32, 3), np.uint16),
    np.zeros((32, 32), np.uint8),
    np.zeros((32, 32, 4), np.uint8),
    np.zeros((2, 32, 32, 3), np.uint8),
    [[[0, 0, 0]]],
])
def test_bad_images_raise(detector, bad):
    with pytest.raises(ValueError) as exc:
        D.detect_faces(bad, detector)
    assert "\n" not in str(exc.value)


def test_bad_upsample_raises(detector):
    with pytest.raises(ValueError):
        D.detect_faces(np.zeros((32, 32, 3), np.uint8), detector, upsample_num_times=-1)


def test_pyramid_up_size_and_layout():
    img = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    up = D.pyramid_up(img)
    assert up.shape == (2 * 37 + 1, 2 * 53 + 2, 3) and up.dtype == np.uint8
    for h, w in [(1025, 1026), (4409, 1942), (75, 108), (661, 1126)]:
        rows, cols, rects = pyramid.tile_pyramid(h, w, 6, 10, 11)
        assert rects[0] == (11, 11, 11 + w - 1, 11 + h - 1)
        assert cols == w + 22
        sizes = pyramid.level_sizes(h, w, 6)
        assert len(rects) <= len(sizes)
        for (l, t, r, b), (lh, lw) in zip(rects, sizes):
            assert (b - t + 1, r - l + 1) == (lh, lw)
            assert 0 <= l and 0 <= t and r < cols and b < rows
        for i, a in enumerate(rects):  # levels never overlap
            for b in rects[i + 1:]:
                assert max(a[0], b[0]) > min(a[2], b[2]) or max(a[1], b[1]) > min(a[3], b[3])


def test_detector_params_and_options(detector):
    convs = [v for v in detector.params["layers"].values() if "kernel" in v]
    assert [tuple(v["kernel"].shape) for v in convs] == [
        (5, 5, 3, 16), (5, 5, 16, 32), (5, 5, 32, 32), (5, 5, 32, 45), (5, 5, 45, 45), (5, 5, 45, 45),
        (9, 9, 45, 1)]
    assert all(v["kernel"].dtype == np.float32 for v in convs)
    assert detector.windows == ((80, 80),)
    assert detector.pyramid_padding == 10 and detector.pyramid_outer_padding == 11
    assert 0.33 < detector.nms_iou_thresh < 0.34 and detector.nms_percent_covered_thresh == 1.0
    assert np.allclose(detector.mean_rgb, (122.782, 117.001, 104.298))
    d = D.Detection((1, 2, 3, 4), 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.confidence = 1.0  # type: ignore[misc]


def test_cached_and_uncached_loads_agree(detector):
    fresh = D.load_detector(use_cache=False)
    cached = D.load_detector()
    for other in (fresh, cached):
        assert other.layers == detector.layers and other.windows == detector.windows
        assert other.mean_rgb == detector.mean_rgb
        assert other.nms_iou_thresh == detector.nms_iou_thresh
        for k, v in detector.params["layers"].items():
            for name, arr in v.items():
                np.testing.assert_array_equal(np.asarray(other.params["layers"][k][name]), np.asarray(arr))
