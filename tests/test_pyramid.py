"""dlib's bilinear resize on XLA (faces/pyramid.py) against a plain numpy statement of it.

The reference below is dlib's SSE loop written out with whole-array numpy operations (numpy never
fuses a multiply into an add): ((tl*w_tl + tr*w_tr) + bl*w_bl) + br*w_br in float32, weights
float32(1 - tb) * (1 - lr) etc. The XLA blocks must equal it bit for bit, on sizes that span several
blocks and calls, for both kinds of resize (pyramid_up on uint8, a pyramid level on float32) and for
level 1 read from uint8 level-0 pixels. (tests/test_detect.py checks the whole chain against dlib's
own rectangles on real photos; this checks the arithmetic directly, where a difference would first
show.)
"""
from __future__ import annotations

import numpy as np
import pytest

from idguardian_jax.faces import pyramid

MEAN = np.array([122.782, 117.001, 104.298], np.float32)


def _reference(src: np.ndarray, out_h: int, out_w: int, kind: str, mean=None) -> np.ndarray:
    top, bottom, tb = pyramid.row_coords(src.shape[0], out_h)
    cols = pyramid.Cols(src.shape[1], out_w)
    s = src.astype(np.float32)
    if mean is not None:
        s = (s - mean) / np.float32(256)
    itb = (1 - tb).astype(np.float32)[:, None, None]
    tbf = tb.astype(np.float32)[:, None, None]
    lr, ilr = cols.simd_lr[None, :, None], cols.simd_ilr[None, :, None]
    st, sb = s[top], s[bottom]
    acc = st[:, cols.simd_left] * (itb * ilr)
    acc = acc + st[:, cols.simd_right] * (itb * lr)
    acc = acc + sb[:, cols.simd_left] * (tbf * ilr)
    acc = acc + sb[:, cols.simd_right] * (tbf * lr)
    return acc.astype(np.int32).astype(np.uint8) if kind == "u8" else acc


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.int32) if a.dtype == np.float32 else a


@pytest.mark.parametrize("h,w", [(7, 9), (40, 33), (150, 1100), (333, 700)])
def test_xla_blocks_equal_the_numpy_loop(h, w):
    rng = np.random.default_rng(h * w)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    flt = (rng.standard_normal((h, w, 3)) * 0.4).astype(np.float32)
    cases = [("u8", img, 2 * h + 1, 2 * w + 2, None),        # pyramid_up
             ("f32", flt, h * 5 // 6, w * 5 // 6, None),     # a level from the previous one
             ("f32", img, h * 5 // 6, w * 5 // 6, MEAN)]     # level 1 from level-0 pixels
    for kind, src, oh, ow, mean in cases:
        st = pyramid.Stage.between(src.shape[:2], (oh, ow), kind)
        got = pyramid.resize_part(src, 0, 0, st, 0, oh, 0, ow, mean=mean)
        ns = st.cols.n_simd
        assert ns > 0 and ow - ns < 16  # the vector loop does almost every column
        np.testing.assert_array_equal(_bits(got[:, :ns]), _bits(_reference(src, oh, ow, kind, mean)))


def test_parts_equal_the_whole_resize():
    rng = np.random.default_rng(5)
    src = (rng.standard_normal((300, 900, 3)) * 0.4).astype(np.float32)
    oh, ow = 250, 750
    whole = np.empty((oh, ow, 3), np.float32)
    pyramid.resize_float(src, oh, ow, whole)
    st = pyramid.Stage.between(src.shape[:2], (oh, ow), "f32")
    for r0, r1, c0, c1 in [(0, oh, 0, ow), (3, 77, 500, ow), (100, 101, 0, 600)]:
        sr0, sr1, sc0, sc1 = pyramid.source_span(st, r0, r1, c0, c1)
        part = pyramid.resize_part(src[sr0:sr1, sc0:sc1], sr0, sc0, st, r0, r1, c0, c1)
        np.testing.assert_array_equal(_bits(part), _bits(whole[r0:r1, c0:c1]))
    up = pyramid.pyramid_up(rng.integers(0, 256, (61, 45, 3), dtype=np.uint8))
    assert up.shape == (123, 92, 3) and up.dtype == np.uint8
