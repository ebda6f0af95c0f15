"""Reader for dlib's shape_predictor files (shape_predictor_5/68_face_landmarks.dat), with the
serialization primitives of dlib_format (dlib/image_processing/shape_predictor.h: the initial
shape, then per cascade level a forest of regression trees and the feature-pixel anchors).

A cascade whose trees are all laid out alike is decoded in one bulk call (Reader.scan); any other,
or one that does not decode cleanly, is read value by value, with the same values and errors."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from idguardian_jax.checkpoints.dlib_format import DlibFormatError, Reader
from idguardian_jax.checkpoints.dlib_runs import dlib_floats


@dataclasses.dataclass
class ShapePredictorFile:
    """A dlib shape_predictor (cascade of regression-tree forests), as arrays.

    initial_shape: (P, 2) float32, landmark (x, y) normalized to the detection box.
    splits_idx: (C, T, S, 2) int32 feature-pixel indices per split; splits_thresh: (C, T, S) float32.
    leaf_values: (C, T, L, 2P) float32 shape increments. anchor_idx: (C, F) int32 landmark anchors.
    deltas: (C, F, 2) float32 offsets from the anchor, in normalized shape coordinates.
    """

    path: str
    initial_shape: np.ndarray
    splits_idx: np.ndarray
    splits_thresh: np.ndarray
    leaf_values: np.ndarray
    anchor_idx: np.ndarray
    deltas: np.ndarray

    @property
    def num_parts(self) -> int:
        return int(self.initial_shape.shape[0])


def _vector_len(r: Reader, what: str, limit: int) -> int:
    off = r.pos
    n = r.int(what + " count")
    if not 0 <= n <= limit:
        raise r.error(f"implausible {what} count {n}", off)
    return n


def _read_forest(r: Reader, c: int, n_trees: int, num_parts: int, limit: int):
    """Cascade c's n_trees trees, one value at a time: lists of per-tree split indices (S, 2) int64,
    thresholds (S,) float64 and leaf values (L, 2P) float64."""
    ci, ct, cl = [], [], []
    for t in range(n_trees):
        n_splits = _vector_len(r, "split", limit)
        si = np.empty((n_splits, 2), np.int64)
        st = np.empty((n_splits,), np.float64)
        for s in range(n_splits):
            si[s, 0] = r.int("split idx1")
            si[s, 1] = r.int("split idx2")
            st[s] = r.float("split threshold")
        n_leaves = _vector_len(r, "leaf", limit)
        lv = [r.matrix("leaf value") for _ in range(n_leaves)]
        if n_leaves != n_splits + 1 or any(m.shape != (2 * num_parts, 1) for m in lv):
            raise r.error(f"cascade {c} tree {t}: {n_splits} splits with {n_leaves} leaves "
                          f"of shapes {sorted({m.shape for m in lv})}")
        ci.append(si)
        ct.append(st)
        cl.append(np.stack([m[:, 0] for m in lv]) if lv else np.zeros((0, 2 * num_parts)))
    return ci, ct, cl


def _read_forest_bulk(r: Reader, n_trees: int, num_parts: int, limit: int):
    """A cascade's n_trees trees in one bulk decode, when every tree is laid out as the first one
    (its split count S, S + 1 leaves of shape (2P, 1)) and decodes cleanly: split indices
    (T, S, 2) int64, thresholds (T, S) float64, leaf values (T, S + 1, 2P) float64, the same values
    as _read_forest. Otherwise None, with the reader where it was."""
    head = r.scan(1)
    if n_trees == 0 or head is None or not 0 <= head[0][0] < limit:
        return None
    n_splits, rows = int(head[0][0]), 2 * num_parts
    leaf = 2 + 2 * rows  # rows, cols, then (mantissa, exponent) per value
    tree = 2 + 4 * n_splits + (n_splits + 1) * leaf  # split count, splits, leaf count, leaves
    got = r.scan(n_trees * tree)
    if got is None:
        return None
    v = got[0].reshape(n_trees, tree)
    splits = v[:, 1:1 + 4 * n_splits].reshape(n_trees, n_splits, 4)
    leaves = v[:, 2 + 4 * n_splits:].reshape(n_trees, n_splits + 1, leaf)
    if not ((v[:, 0] == n_splits).all() and (v[:, 1 + 4 * n_splits] == n_splits + 1).all()
            and (np.abs(leaves[:, :, 0]) == rows).all() and (np.abs(leaves[:, :, 1]) == 1).all()):
        return None
    thresh = dlib_floats(splits[:, :, 2], splits[:, :, 3])
    values = dlib_floats(leaves[:, :, 2::2], leaves[:, :, 3::2])
    if thresh is None or values is None:
        return None
    r.pos = got[1]
    return splits[:, :, :2].copy(), thresh, values  # (a copy: not to keep all of v alive)


def _read_deltas(r: Reader, n: int) -> list:
    """n (delta x, delta y) float pairs, as a list of n [x, y] lists of floats."""
    got = r.scan(4 * n)
    xy = None if got is None else dlib_floats(got[0][0::2], got[0][1::2])
    if xy is None:  # the scalar way, which says what is wrong
        return [(r.float("delta x"), r.float("delta y")) for _ in range(n)]
    r.pos = got[1]
    return xy.reshape(n, 2).tolist()


def read_shape_predictor(path: str | os.PathLike, data: bytes | None = None) -> ShapePredictorFile:
    """Parse a dlib shape_predictor .dat file (e.g. shape_predictor_5_face_landmarks.dat)."""
    path = os.fspath(path)
    if data is None:
        with open(path, "rb") as fh:
            data = fh.read()
    if not data:
        raise DlibFormatError(f"{path}: not a valid dlib model file: the file is empty")
    r = Reader(data, path)
    r.version((1,), "shape_predictor")
    init = r.matrix("initial shape")
    if init.shape[1] != 1 or init.shape[0] % 2 or init.shape[0] == 0:
        raise r.error(f"initial shape of size {init.shape} is not a column of (x, y) pairs")
    num_parts = init.shape[0] // 2
    limit = len(data)
    n_casc = _vector_len(r, "cascade", limit)
    if n_casc == 0:
        raise r.error("the shape predictor has no cascades")
    splits_idx, splits_thresh, leaves = [], [], []
    for c in range(n_casc):
        n_trees = _vector_len(r, "tree", limit)
        bulk = _read_forest_bulk(r, n_trees, num_parts, limit)
        ci, ct, cl = bulk if bulk is not None else _read_forest(r, c, n_trees, num_parts, limit)
        if c and len(ci) != len(splits_idx[0]):
            raise r.error("cascades with different tree counts are not supported")
        if bulk is None:
            if ci and len({a.shape for a in ci}) != 1:
                raise r.error("trees of different depths are not supported")
            ci = np.stack(ci) if ci else np.zeros((0, 0, 2), np.int64)
            ct = np.stack(ct) if ct else np.zeros((0, 0))
            cl = np.stack(cl) if cl else np.zeros((0, 0, 2 * num_parts))
        splits_idx.append(ci)
        splits_thresh.append(ct.astype(np.float32))
        leaves.append(cl.astype(np.float32))
    n_anchor = _vector_len(r, "anchor list", limit)
    anchors = [r.ints(_vector_len(r, "anchor", limit), "anchor index").tolist()
               for _ in range(n_anchor)]
    n_delta = _vector_len(r, "delta list", limit)
    deltas = [_read_deltas(r, _vector_len(r, "delta", limit)) for _ in range(n_delta)]
    if not r.at_end():
        raise r.error(f"{len(data) - r.pos} unexpected trailing bytes")
    if n_anchor != n_casc or n_delta != n_casc:
        raise r.error(f"{n_casc} cascades but {n_anchor} anchor lists and {n_delta} delta lists")
    if len({len(a) for a in anchors} | {len(d) for d in deltas}) > 1:
        raise r.error("feature pixel lists of different lengths")
    out = ShapePredictorFile(
        path=path,
        initial_shape=init[:, 0].reshape(num_parts, 2).astype(np.float32),
        splits_idx=np.stack(splits_idx).astype(np.int32),
        splits_thresh=np.stack(splits_thresh),
        leaf_values=np.stack(leaves),
        anchor_idx=np.asarray(anchors, np.int32),
        deltas=np.asarray(deltas, np.float32),
    )
    nfeat = out.anchor_idx.shape[1]
    if out.splits_idx.size and (out.splits_idx.min() < 0 or out.splits_idx.max() >= nfeat):
        raise r.error(f"split feature index outside 0..{nfeat - 1}")
    if out.anchor_idx.size and (out.anchor_idx.min() < 0 or out.anchor_idx.max() >= num_parts):
        raise r.error(f"anchor index outside 0..{num_parts - 1}")
    return out
