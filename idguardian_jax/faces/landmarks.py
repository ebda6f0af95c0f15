"""dlib's 5-point face landmark predictor (`shape_predictor_5_face_landmarks.dat`) in numpy.

A dlib `shape_predictor` is a cascade of regression-tree forests (Kazemi & Sullivan 2014). Starting
from a mean shape normalized to the detection box, each cascade level reads the intensity of a fixed
set of "feature pixels" placed relative to the current shape, runs every tree of the level on
intensity differences, and adds the selected leaf vectors to the shape. The final shape is mapped to
image pixels and rounded to dlib's integer `point`s.

This module follows dlib's arithmetic (dlib/image_processing/shape_predictor.h, `shape_predictor::
operator()`, `impl::extract_feature_pixel_values`) step by step, so the integer landmarks are the
ones dlib returns, not merely close to them:

* intensity of an RGB pixel is `(r + g + b) // 3` (dlib's rgb -> grayscale `assign_pixel`, integer
  division); a grayscale uint8 image is used as is; pixels outside the image read as 0;
* the shape, the leaf values and the tree thresholds are float32, and the 500 leaf vectors of a
  level are added to the shape one after the other in float32 (`current_shape += leaf`);
* the similarity transform from the mean shape to the current shape (dlib `find_similarity_transform`,
  in float64) is cast to float32 and applied to the feature-pixel offsets in float32;
* box-normalized coordinates are mapped to pixels by dlib's `unnormalizing_tform(rect)`, an affine
  transform that dlib fits with a pseudo-inverse; its matrix is not exactly `diag(w, h)` (errors of
  about 1e-13), and we reproduce it bit for bit from the pseudo-inverse that dlib computes for its
  fixed 3x3 point matrix (see `_DLIB_PINV_UNIT_TRIANGLE`);
* pixel positions and the final landmarks are rounded with `floor(v + 0.5)`, as dlib converts a
  `vector<double,2>` to a `point`.

Typical use::

    from idguardian_jax.faces import landmarks
    sp = landmarks.load_shape_predictor()           # parsed once, then cached on disk
    pts = landmarks.predict_landmarks(image, (349, 142, 617, 409), sp, round_to_int=True)
    # pts: (5, 2) int64 (x, y), equal to dlib.shape_predictor(image, rect).parts()
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import numpy as np

from idguardian_jax.checkpoints import bundled, cache, dlib_shape_predictor

__all__ = [
    "ShapePredictor",
    "load_shape_predictor",
    "predict_landmarks",
    "predict_landmarks_batch",
    "predict_normalized_shapes",
    "dlib_round",
    "unnormalizing_transform",
]

_PARSER_NAME = "dlib_shape_predictor"
_PARSER_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class ShapePredictor:
    """A dlib shape predictor as plain numpy arrays (C cascades, T trees, S splits, L = S + 1 leaves,
    F feature pixels per cascade, P landmarks). For the bundled 5-point model C=15, T=500, S=15,
    L=16, F=800, P=5.

    initial_shape: (P, 2) float32 mean shape (x, y) in box-normalized coordinates ((0, 0) is the
        rectangle's top-left corner, (1, 1) its bottom-right corner).
    splits_idx: (C, T, S, 2) int32 feature-pixel indices in [0, F) of each split node (breadth-first
        node order: node i has children 2i+1 (taken when I[idx1] - I[idx2] > thresh) and 2i+2).
    splits_thresh: (C, T, S) float32 split thresholds on intensity differences (range about +-64).
    leaf_values: (C, T, L, 2P) float32 shape increments (x0, y0, x1, y1, ...).
    anchor_idx: (C, F) int32 landmark index in [0, P) each feature pixel is attached to.
    deltas: (C, F, 2) float32 feature-pixel offsets from their anchor in the mean shape's frame.
    """

    initial_shape: np.ndarray
    splits_idx: np.ndarray
    splits_thresh: np.ndarray
    leaf_values: np.ndarray
    anchor_idx: np.ndarray
    deltas: np.ndarray

    def __post_init__(self):
        p = self.initial_shape.shape[0]
        c, t, s, _ = self.splits_idx.shape
        f = self.anchor_idx.shape[1]
        ok = (self.initial_shape.shape == (p, 2) and self.splits_thresh.shape == (c, t, s)
              and self.leaf_values.shape == (c, t, s + 1, 2 * p) and self.anchor_idx.shape == (c, f)
              and self.deltas.shape == (c, f, 2) and ((s + 1) & s) == 0)
        if not ok:
            raise ValueError("inconsistent shape predictor arrays: "
                             + ", ".join(f"{k} {getattr(self, k).shape}" for k in _FIELDS))

    @property
    def num_parts(self) -> int:
        return int(self.initial_shape.shape[0])

    @property
    def num_cascades(self) -> int:
        return int(self.splits_idx.shape[0])

    @property
    def depth(self) -> int:
        """Number of split levels of every tree (4 for 15 splits)."""
        return int(self.splits_idx.shape[2] + 1).bit_length() - 1


_FIELDS = ("initial_shape", "splits_idx", "splits_thresh", "leaf_values", "anchor_idx", "deltas")
_DTYPES = {"initial_shape": np.float32, "splits_idx": np.int32, "splits_thresh": np.float32,
           "leaf_values": np.float32, "anchor_idx": np.int32, "deltas": np.float32}


def _parse(path: str) -> tuple[dict[str, Any], Any]:
    sp = dlib_shape_predictor.read_shape_predictor(path)
    return {k: getattr(sp, k) for k in _FIELDS}, {"num_parts": sp.num_parts}


@functools.lru_cache(maxsize=4)
def _load_memo(path: str, size: int, mtime_ns: int, use_cache: bool) -> ShapePredictor:
    tree, _ = cache.cached_parse(path, _PARSER_NAME, _PARSER_VERSION, _parse, use_cache=use_cache)
    arrays = {}
    for k in _FIELDS:
        a = np.ascontiguousarray(tree[k], dtype=_DTYPES[k])
        a.setflags(write=False)
        arrays[k] = a
    return ShapePredictor(**arrays)


def load_shape_predictor(path: str | os.PathLike | None = None, use_cache: bool = True) -> ShapePredictor:
    """Loads a dlib shape predictor .dat file (default: the bundled 5-point face model).

    Parsing takes seconds; the parsed arrays are cached on disk (`checkpoints.cache`) and, within the
    process, the same (read-only) `ShapePredictor` is returned for the same unchanged file.
    use_cache=False parses the file afresh and skips the on-disk cache.
    """
    if path is None:
        path = bundled.model_path(bundled.SHAPE_PREDICTOR_5)
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    if not use_cache:
        return _load_memo.__wrapped__(path, st.st_size, st.st_mtime_ns, False)
    return _load_memo(path, st.st_size, st.st_mtime_ns, True)


# --------------------------------------------------------------------------------------------
# dlib's geometry, in dlib's arithmetic
# --------------------------------------------------------------------------------------------

# dlib `impl::unnormalizing_tform(rect)` is `find_affine_transform` from the unit points (0,0),
# (1,0), (1,1) to the rectangle's tl, tr, br corners: M = Q @ pinv(P) with P the fixed 3x3 matrix
# whose columns are (x, y, 1) of the unit points and Q (2x3) the corners. This is pinv(P) exactly as
# dlib's SVD-based `pinv` returns it (float64 bits, printed by a program built on dlib's headers;
# with them our feature pixels and final shapes equal dlib 20.0.1's bit for bit). The exact inverse
# is [[-1, 0, 1], [1, -1, 0], [0, 1, 0]].
_DLIB_PINV_UNIT_TRIANGLE = np.array([
    [float.fromhex("-0x1.0000000000001p+0"), float.fromhex("-0x1p-52"), float.fromhex("0x1.0000000000001p+0")],
    [float.fromhex("0x1.ffffffffffffdp-1"), float.fromhex("-0x1.ffffffffffffbp-1"), float.fromhex("0x1.8p-53")],
    [0.0, float.fromhex("0x1.0000000000001p+0"), float.fromhex("0x1.8p-54")],
], dtype=np.float64)


def unnormalizing_transform(rects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dlib `impl::unnormalizing_tform` for rectangles (N, 4) int (left, top, right, bottom).

    Returns (m (N, 2, 2) float64, b (N, 2) float64): pixel = m @ normalized + b, with dlib's exact
    float64 values (m is diag(right - left, bottom - top) up to ~1e-13; b is (left, top) up to ~1e-13).
    """
    r = np.asarray(rects, np.float64).reshape(-1, 4)
    l, t, rt, b = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
    q = np.stack([np.stack([l, rt, rt], -1), np.stack([t, t, b], -1)], 1)  # (N, 2, 3)
    pi = _DLIB_PINV_UNIT_TRIANGLE
    # dlib's small matrix product: temp = a0*b0; temp += a1*b1; temp += a2*b2 (left to right).
    out = q[:, :, 0, None] * pi[0] + q[:, :, 1, None] * pi[1]
    out = out + q[:, :, 2, None] * pi[2]  # (N, 2, 3)
    return out[:, :, :2], out[:, :, 2]


def _apply_affine_f64(m: np.ndarray, b: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """dlib point_transform_affine: m @ p + b in float64, summed as dlib does.

    m (N, 2, 2), b (N, 2), pts (N, K, 2) (any float dtype, widened exactly) -> (N, K, 2) float64.
    """
    p = pts.astype(np.float64)
    x = p[..., 0:1] * m[:, None, :, 0] + p[..., 1:2] * m[:, None, :, 1]
    return x + b[:, None, :]


def dlib_round(v: np.ndarray) -> np.ndarray:
    """dlib's float -> integer point conversion, floor(v + 0.5), as int64."""
    return np.floor(np.asarray(v, np.float64) + 0.5).astype(np.int64)


def _similarity_f32(from_shape: np.ndarray, to_shape: np.ndarray) -> np.ndarray:
    """Linear part of dlib `find_similarity_transform(from, to)` (float64), cast to float32.

    from_shape (P, 2), to_shape (N, P, 2) float32 -> (N, 2, 2) float32. dlib solves Umeyama's
    problem with an SVD; in 2-D its scaled rotation c*R equals the closed form
    [[a, -s], [s, a]] with a = (cov00 + cov11) / var_from and s = (cov10 - cov01) / var_from,
    whether or not det(cov) < 0, which we evaluate in float64.
    """
    u = from_shape.astype(np.float64)
    v = to_shape.astype(np.float64)
    n = u.shape[0]
    if n == 1:  # dlib uses the identity for one landmark
        return np.broadcast_to(np.eye(2, dtype=np.float32), (v.shape[0], 2, 2)).copy()
    du = u - u.mean(0)
    dv = v - v.mean(1, keepdims=True)
    var = np.sum(du * du) / n
    cov = np.einsum("npi,pj->nij", dv, du) / n
    if var == 0:
        raise ValueError("degenerate shape predictor: all mean-shape landmarks coincide")
    a = (cov[:, 0, 0] + cov[:, 1, 1]) / var
    s = (cov[:, 1, 0] - cov[:, 0, 1]) / var
    m = np.stack([np.stack([a, -s], -1), np.stack([s, a], -1)], 1)
    return m.astype(np.float32)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------

def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (HxWx3 RGB or HxW gray uint8), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8 (values 0..255), got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be HxWx3 RGB or HxW grayscale, got shape {image.shape}")
    return image


def _check_rects(rects: Any, single: bool) -> np.ndarray:
    what = "rect" if single else "rects"
    try:
        arr = np.asarray(rects)
    except Exception:
        raise ValueError(f"{what} must be (left, top, right, bottom) integers") from None
    if arr.dtype == object or arr.dtype == bool or not (
            np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{what} must hold integers (left, top, right, bottom), got dtype {arr.dtype}")
    want = (4,) if single else None
    if (single and arr.shape != want) or (not single and (arr.ndim != 2 or arr.shape[1] != 4)):
        shape = "(4,)" if single else "(N, 4)"
        raise ValueError(f"{what} must have shape {shape} (left, top, right, bottom), got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{what} must be integers like dlib.rectangle, got {arr.tolist()}")
    arr = arr.astype(np.int64).reshape(-1, 4)
    if np.any(np.abs(arr) > 2 ** 40):
        raise ValueError(f"{what} coordinates are out of range: {arr.tolist()}")
    return arr


def _as_predictor(predictor: Any) -> ShapePredictor:
    if isinstance(predictor, ShapePredictor):
        return predictor
    if all(hasattr(predictor, k) for k in _FIELDS):  # e.g. a dlib_shape_predictor.ShapePredictorFile
        return ShapePredictor(**{k: np.ascontiguousarray(getattr(predictor, k), dtype=_DTYPES[k])
                                 for k in _FIELDS})
    raise ValueError(f"predictor must be a ShapePredictor from load_shape_predictor(), "
                     f"got {type(predictor).__name__}")


def _intensity_at(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dlib get_pixel_intensity at integer positions (float64 arrays of the same shape), 0 outside.

    Returns float32 values 0..255 (dlib stores intensities in a std::vector<float>).
    """
    h, w = image.shape[:2]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    xi = np.where(inside, x, 0).astype(np.intp)
    yi = np.where(inside, y, 0).astype(np.intp)
    if h == 0 or w == 0:
        return np.zeros(x.shape, np.float32)
    if image.ndim == 2:
        val = image[yi, xi].astype(np.float32)
    else:
        px = image[yi, xi].astype(np.uint16)  # (..., 3)
        val = ((px[..., 0] + px[..., 1] + px[..., 2]) // 3).astype(np.float32)
    return np.where(inside, val, np.float32(0))


# --------------------------------------------------------------------------------------------
# the predictor
# --------------------------------------------------------------------------------------------

def predict_normalized_shapes(image: np.ndarray, rects: Any, predictor: ShapePredictor) -> np.ndarray:
    """dlib's final `current_shape` for each rectangle: (N, P, 2) float32, box-normalized.

    image: HxWx3 RGB or HxW gray uint8. rects: (N, 4) integers (left, top, right, bottom), right and
    bottom inclusive, as dlib.rectangle; they may lie partly or wholly outside the image.
    """
    image = _check_image(image)
    rects = _check_rects(rects, single=False)
    sp = _as_predictor(predictor)
    n = rects.shape[0]
    num_trees = sp.splits_idx.shape[1]
    num_splits = sp.splits_idx.shape[2]
    shape = np.broadcast_to(sp.initial_shape, (n,) + sp.initial_shape.shape).astype(np.float32)
    if n == 0:
        return shape
    um, ub = unnormalizing_transform(rects)
    tree_ar = np.arange(num_trees)
    tree_base = tree_ar * num_splits  # (T,)
    feat_base = np.arange(n)[:, None] * sp.anchor_idx.shape[1]  # (N, 1)
    for c in range(sp.num_cascades):
        # impl::extract_feature_pixel_values: feature pixels relative to the current shape.
        tf = _similarity_f32(sp.initial_shape, shape)  # (N, 2, 2) float32
        d = sp.deltas[c]  # (F, 2) float32
        anchors = shape[:, sp.anchor_idx[c], :]  # (N, F, 2) float32
        # float32 product and sum in dlib's order: (m0*dx + m1*dy) + anchor
        q = (tf[:, None, :, 0] * d[None, :, 0:1] + tf[:, None, :, 1] * d[None, :, 1:2]) + anchors
        pix = np.floor(_apply_affine_f64(um, ub, q) + 0.5)  # (N, F, 2) float64, integral
        feats = _intensity_at(image, pix[..., 0], pix[..., 1])  # (N, F) float32
        # Run all trees of the level at once: descend `depth` levels of the complete binary tree.
        # Nodes are addressed as flat indices tree * S + node into the level's (T * S) arrays.
        idx1 = sp.splits_idx[c, :, :, 0].reshape(-1)
        idx2 = sp.splits_idx[c, :, :, 1].reshape(-1)
        thr = sp.splits_thresh[c].reshape(-1)
        feats_flat = feats.reshape(-1)
        node = np.zeros((n, num_trees), np.intp)
        for _ in range(sp.depth):
            flat = tree_base + node
            f1 = feats_flat[feat_base + idx1[flat]]
            f2 = feats_flat[feat_base + idx2[flat]]
            node = np.where((f1 - f2) > thr[flat], 2 * node + 1, 2 * node + 2)
        leaves = sp.leaf_values[c][tree_ar, node - num_splits]  # (N, T, 2P) float32
        # current_shape += leaf, tree after tree, in float32 (cumsum accumulates sequentially).
        steps = np.concatenate([shape.reshape(n, 1, -1), leaves], axis=1)
        shape = np.cumsum(steps, axis=1, dtype=np.float32)[:, -1].reshape(n, -1, 2)
    return shape


def predict_landmarks_batch(image: np.ndarray, rects: Any, predictor: ShapePredictor | None = None, *,
                            round_to_int: bool = False) -> np.ndarray:
    """Landmarks for several face rectangles of one image.

    Args:
      image: (H, W, 3) uint8 RGB (as dlib.load_rgb_image / PIL convert("RGB")) or (H, W) uint8 gray.
      rects: (N, 4) integers (left, top, right, bottom), right/bottom inclusive (dlib.rectangle);
        partly or wholly outside the image is fine (outside pixels read as 0, as in dlib).
      predictor: from `load_shape_predictor()` (default: the bundled 5-point model).
      round_to_int: False -> (N, P, 2) float64 (x, y) pixel coordinates before dlib's rounding;
        True -> (N, P, 2) int64, exactly the points of dlib's `full_object_detection`.
    """
    if predictor is None:
        predictor = load_shape_predictor()
    rects_arr = _check_rects(rects, single=False)
    shapes = predict_normalized_shapes(image, rects_arr, predictor)
    um, ub = unnormalizing_transform(rects_arr)
    pts = _apply_affine_f64(um, ub, shapes)
    return dlib_round(pts) if round_to_int else pts


def predict_landmarks(image: np.ndarray, rect: Sequence[int], predictor: ShapePredictor | None = None, *,
                      round_to_int: bool = False) -> np.ndarray:
    """dlib `shape_predictor(image, rect)` for one face.

    Args:
      image: (H, W, 3) uint8 RGB or (H, W) uint8 grayscale.
      rect: (left, top, right, bottom) integers, right/bottom inclusive (dlib.rectangle).
      predictor: from `load_shape_predictor()` (default: the bundled 5-point model).
      round_to_int: see below.

    Returns:
      (P, 2) (x, y) in image pixels (P = 5 for the bundled model: right eye outer/inner corner,
      left eye outer/inner corner, nose base). float64 before rounding (round_to_int=False), or int64
      equal to dlib's `full_object_detection.part(i)` (round_to_int=True).

    Example:
      >>> img = np.zeros((100, 100, 3), np.uint8)
      >>> predict_landmarks(img, (20, 20, 79, 79), round_to_int=True).shape
      (5, 2)
    """
    r = _check_rects(rect, single=True)
    return predict_landmarks_batch(image, r, predictor, round_to_int=round_to_int)[0]
