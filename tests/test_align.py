"""dlib chip alignment: geometry and pixels against the chips dlib wrote."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from idguardian_jax.faces import align


def _faces(ref):
    for name, im in sorted(ref["images"].items()):
        for face in im["faces"]:
            yield name, face


def test_chip_details_match_dlib(dlib_reference):
    for name, face in _faces(dlib_reference):
        d = align.face_chip_details(np.array(face["landmarks5"]))
        np.testing.assert_allclose(d.rect, face["chip_details"]["rect"], atol=1e-9)
        assert d.angle == pytest.approx(face["chip_details"]["angle"], abs=1e-12)


def test_chips_pixel_exact(faces_dir, dlib_reference):
    n_pyramid = 0
    for name, face in _faces(dlib_reference):
        img = np.asarray(Image.open(os.path.join(faces_dir, name)).convert("RGB"))
        plan = align.chip_plan(align.face_chip_details(np.array(face["landmarks5"])), img.shape[:2])
        n_pyramid += plan.n_down > 0
        chip = align.extract_chip(img, plan)
        want = np.asarray(Image.open(os.path.join(faces_dir, face["chip_file"])).convert("RGB"))
        assert np.array_equal(chip, want), name
    assert n_pyramid >= 3  # the shared photos exercise the pyramid path


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, size=(5, 2))
    ang, s, t = 0.3, 1.7, np.array([12.0, -4.0])
    m_true = s * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    m, tt = align.similarity_transform(src, src @ m_true.T + t)
    np.testing.assert_allclose(m, m_true, atol=1e-10)
    np.testing.assert_allclose(tt, t, atol=1e-8)


def test_pyramid_down_sizes_and_values():
    img = np.full((11, 20, 3), 200, np.uint8)
    out = align.pyramid_down2(img)
    assert out.shape == (4, 8, 3)
    assert (out == 200).all()  # the binomial weights sum to 256
    assert align.pyramid_down2(np.zeros((8, 30, 3), np.uint8)).shape[:2] == (0, 0)
    assert align.pyramid_level_shape((11, 20), 1) == (4, 8)


def test_chip_partly_outside_photo_is_zero_there():
    img = np.full((200, 200, 3), 100, np.uint8)
    pts = np.array([[60, 40], [45, 41], [10, 40], [25, 41], [35, 70]], float) - [30, 0]
    chip = align.face_chip(img, pts)
    assert chip.shape == (150, 150, 3)
    assert (chip[:, 0] == 0).all() and (chip[75, -1] == 100).all()
