"""dlib's MMOD detector at a cost set by the faces, not the photo (detect.py does the full canvas).

The full pipeline (detect.detect_faces at upsample 1) runs the CNN over a tiled pyramid canvas of
~3.3x the upsampled photo's pixels: 4x the photo at upsample 1, so ~13x the photo's pixels in all.
Here the same scores are computed only where faces are:

1. **Exact scores on a part of the canvas** (`PyramidGeometry`, `_region_scores`). Every pixel of
   dlib's canvas is a chain of bilinear resizes (pyramid_up per upsampling, then each pyramid level
   from the previous one) whose sample positions depend only on the *full* image and level sizes.
   So any rectangle of any level can be computed bit-identically from a slightly larger rectangle
   of the level above, down to a rectangle of the photo: `pyramid.resize_part` is the pyramid's resize
   restricted to output rows/columns (same arithmetic, same float32/float64 steps). The CNN then runs
   on a canvas tile with its global row/column offsets and dlib's zero extents (as detect's bands do
   for rows, here for both axes), so a tile's scores equal the full canvas's scores at the same
   positions (up to float32 summation order, ~1e-6).
2. **Where to look** (`refine`): a face of width s photo pixels fires the 80x80 window at pyramid
   levels k with s * 2**upsample * (5/6)**k ~ 80. Around each candidate box, a tile of
   `tile` x `tile` output positions (8 canvas pixels each) is scored at the levels within
   `levels_around` of that k, the windows above the threshold become boxes exactly as in
   loss_mmod_::to_label (nearest level, rect_up, lround) and the union is non-max suppressed as dlib
   does. The detection dlib reports for a face is its best-scoring window, at the level where the
   face is ~80 px (a window 2 levels away is 1.44x larger or smaller: IoU <= 0.48 with a box at
   the face's size), so `levels_around` = 2 holds every window that can be the face's detection
   when the candidate's size is within a level (20 %) of it.
3. **Candidates** (`detect_faces_bounded`): the photo is resized (Pillow, antialiased) so that its
   long side is `max_side` and the detector runs there at upsample 0 with a lowered threshold; each
   candidate is refined on the full-resolution pyramid at the requested upsampling (step 2). A photo
   whose upsampled long side is at most `max_side` runs the full pipeline (exact, and as cheap).
   Faces smaller than about 55 * long_side / max_side photo pixels can be missed (measured: at
   max_side 1024 a 3000 px photo's 160 px face is found, its 140 px face is not), where the full
   pipeline at upsample 1 finds faces down to ~40 px; BENCHMARKS.md has the agreement measured.

Cost and memory: the small canvas, and per face the resize chain of the level regions its tiles
need: ~11x the face's width square at level 0 (upsample 1; 5.5x in photo pixels), shrinking by
5/6 per level, clipped to the photo. For a face filling the photo that is the whole pyramid's
resizes (XLA blocks, ~12 ns per level pixel of CPU; numpy took ~50), but never the full canvas's
CNN (5 tiles of 16x16 outputs, ~0.5 GFLOP each). Level regions are freed (or cut to what tiles
read) as soon as the next level is computed, and level 0 stays uint8, so the peak is about two
consecutive levels.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.faces import boxes as boxes_lib, detect as D, pyramid

__all__ = ["PyramidGeometry", "refine", "detect_faces_bounded", "bounded_candidates"]

# Output positions per tile side. A 16x16 tile covers window centres within +-64 canvas pixels of the
# predicted centre (a face is ~80 px wide at its level); measured on the shared photos: see
# tests/test_detect_regions.py (same boxes as the full canvas at 16 with +-2 levels).
TILE = 16
# Levels scored on either side of the level where the face's width is 80 px (see module docstring).
LEVELS_AROUND = 2
# Threshold for candidates on the small canvas (dlib's is 0): a face scoring just above 0 at full
# resolution can score a little below it on the resized photo.
CANDIDATE_THRESHOLD = -0.4


# ------------------------------------------------------------------------------------------
# Geometry of dlib's canvas for one image size
# ------------------------------------------------------------------------------------------
class PyramidGeometry:
    """dlib's canvas for an (h, w) photo at `upsample`: resize chain, level rects, extents.

    stages[0] is the photo; stages 1..upsample are pyramid_up (uint8); stage upsample is level 0 of
    the pyramid (converted to (pixel - mean) / 256 float32); stage upsample + k is level k.
    """

    def __init__(self, h: int, w: int, detector: D.MMODDetector, upsample: int):
        self.detector = detector
        self.upsample = int(upsample)
        shapes = [(h, w)]
        for _ in range(self.upsample):
            hh, ww = shapes[-1]
            shapes.append((pyramid.lround((hh - 1 + 0.75) * 2) + 1, pyramid.lround((ww - 1 + 1.25) * 2) + 1))
        h0, w0 = shapes[-1]
        self.rows, self.cols, self.rects = pyramid.tile_pyramid(
            h0, w0, detector.pyramid_down_n, detector.pyramid_padding, detector.pyramid_outer_padding)
        self.n_levels = len(self.rects)
        for l, t, r, b in self.rects[1:]:
            shapes.append((b - t + 1, r - l + 1))
        self.shapes = shapes
        self.stages: list[pyramid.Stage | None] = [None]
        for i in range(1, len(shapes)):
            kind = "u8" if i <= self.upsample else "f32"
            self.stages.append(pyramid.Stage(shapes[i - 1], shapes[i], kind,
                                      pyramid.row_coords(shapes[i - 1][0], shapes[i][0]),
                                      pyramid.Cols(shapes[i - 1][1], shapes[i][1])))
        if self.rects:
            self.valid = D._valid_sizes(detector.layers, self.rows, self.cols)
            self.out_rows, self.out_cols = self.valid[-1]
        else:
            self.valid, self.out_rows, self.out_cols = [], 0, 0
        # canvas coordinate of output position p: ax * p + bx (the same on both axes)
        x0, _ = D._output_to_input(detector.layers, np.array([0]), np.array([0]))
        x1, _ = D._output_to_input(detector.layers, np.array([1]), np.array([1]))
        self.out_step, self.out_origin = float(x1[0] - x0[0]), float(x0[0])

    @property
    def usable(self) -> bool:
        return bool(self.rects) and self.out_rows > 0 and self.out_cols > 0

    def level_of_width(self, width: float) -> float:
        """The (fractional) level at which a box `width` photo pixels wide is a detector window."""
        win = float(self.detector.windows[0][0])
        ratio = self.detector.pyramid_down_n / (self.detector.pyramid_down_n - 1.0)
        return math.log(max(width, 1.0) * 2 ** self.upsample / win) / math.log(ratio)

    def to_canvas(self, level: int, x: float, y: float) -> tuple[float, float]:
        """A photo point -> canvas pixels of pyramid level `level` (inverse of detect's mapping)."""
        for _ in range(self.upsample):
            x, y = (x + 1.25) * 2, (y + 0.75) * 2
        ratio = self.detector.pyramid_down_n / (self.detector.pyramid_down_n - 1.0)
        for _ in range(level):
            x, y = (x - 0.3) / ratio, (y - 0.3) / ratio
        l, t = self.rects[level][0], self.rects[level][1]
        return x + l, y + t


def _canvas_tiles(image: np.ndarray, geo: PyramidGeometry, tiles: Sequence[tuple[int, int, int, int]]):
    """The canvas pixels of each tile (R0, R1, C0, C1) (canvas rows/cols, may extend past the
    canvas: those pixels are 0), computed through the resize chain on the needed parts only.
    Returns a list of (R1 - R0, C1 - C0, 3) float32 arrays equal to pyramid.build_canvas's."""
    n_stages = len(geo.stages)
    u = geo.upsample
    need: list = [None] * n_stages
    own: list = [None] * n_stages  # what the tiles themselves read of each stage
    hits = []  # per tile: (level, canvas rect of the intersection)
    for (R0, R1, C0, C1) in tiles:
        mine = []
        for lev, (l, t, r, b) in enumerate(geo.rects):
            ir0, ir1, ic0, ic1 = max(R0, t), min(R1, b + 1), max(C0, l), min(C1, r + 1)
            if ir1 > ir0 and ic1 > ic0:
                need[u + lev] = pyramid.union(need[u + lev], (ir0 - t, ir1 - t, ic0 - l, ic1 - l))
                own[u + lev] = pyramid.union(own[u + lev], (ir0 - t, ir1 - t, ic0 - l, ic1 - l))
                mine.append((lev, ir0, ir1, ic0, ic1))
        hits.append(mine)
    for s in range(n_stages - 1, 0, -1):
        if need[s] is not None:
            need[s - 1] = pyramid.union(need[s - 1], pyramid.source_span(geo.stages[s], *need[s]))
    regions: list = [None] * n_stages
    mean = np.asarray(geo.detector.mean_rgb, np.float32)
    for s in range(n_stages):
        if need[s] is None:
            continue
        if s == 0:
            r0, r1, c0, c1 = need[0]
            regions[0] = image[r0:r1, c0:c1]
        else:
            sr0, _, sc0, _ = need[s - 1]
            regions[s] = pyramid.resize_part(regions[s - 1], sr0, sc0, geo.stages[s], *need[s],
                                        mean=mean if s == u + 1 else None)
            # the previous stage is done feeding the chain: keep only what the tiles read of it
            prev = s - 1
            if own[prev] is None:
                regions[prev] = None
            elif own[prev] != need[prev]:
                (a0, a1, b0, b1), (n0, _, m0, _) = own[prev], need[prev]
                regions[prev] = regions[prev][a0 - n0:a1 - n0, b0 - m0:b1 - m0].copy()
                need[prev] = own[prev]
        # level 0 stays uint8 (4x smaller than float32; for a face filling a 6000 px photo the
        # upsampled region is 12001 x 12002): it is converted to (pixel - mean) / 256 float32, as
        # input_rgb_image_pyramid does, by row blocks where level 1 reads it and where tiles do.
    out = []
    for (R0, R1, C0, C1), mine in zip(tiles, hits):
        tile = np.zeros((R1 - R0, C1 - C0, 3), np.float32)
        for lev, ir0, ir1, ic0, ic1 in mine:
            l, t = geo.rects[lev][0], geo.rects[lev][1]
            nr0, _, nc0, _ = need[u + lev]
            part = regions[u + lev][ir0 - t - nr0:ir1 - t - nr0, ic0 - l - nc0:ic1 - l - nc0]
            if lev == 0:
                part = (part.astype(np.float32) - mean) / np.float32(256)
            tile[ir0 - R0:ir1 - R0, ic0 - C0:ic1 - C0] = part
        out.append(tile)
    return out


# ------------------------------------------------------------------------------------------
# The CNN on canvas tiles
# ------------------------------------------------------------------------------------------
def _tile_plan(layers, n: int):
    """detect._band_plan for an n x n output tile (the net is symmetric in rows and columns):
    per conv, (a, b, h): its input tile starts at a * g + b (g: first output position), h wide."""
    for spec in layers:
        if spec[0] == "conv" and not (spec[1][0] == spec[1][1] and spec[2][0] == spec[2][1]
                                      and spec[3][0] == spec[3][1]):
            raise ValueError("the detector's convolutions are not square; tiles need square ones")
    return D._band_plan(layers, n)


@functools.partial(jax.jit, static_argnames=("layers", "n"))
def _forward_tiles(params: dict, tiles: jax.Array, g: jax.Array, valid: jax.Array, layers: tuple,
                   n: int) -> jax.Array:
    """The detector CNN on canvas tiles.

    tiles: (B, h0, h0, 3) float32 canvas pixels from (a0*g_r + b0, a0*g_c + b0) (see _tile_plan).
    g: (B, 2) int32 first output (row, col) of each tile. valid: (n_conv, 2) int32 extents of dlib's
        tensor before each conv.
    Returns (B, n, n, K) scores for outputs g ... g + n - 1 on both axes.

    Exactness: as detect._forward_band, for both axes: no padding (the tile carries every input its
    outputs need) and activations outside dlib's extent set to 0 before every conv, which is dlib's
    zero padding; unpadded convs never read past the extent for in-extent outputs.
    """
    plan = _tile_plan(layers, n)
    x = tiles
    ci = 0
    for kind, spec, p in D.fused_layers(params, layers):
        if kind == "conv":
            (sy, sx) = spec[1]
            a, b, _ = plan[ci]
            rr = (jax.lax.broadcasted_iota(jnp.int32, (x.shape[0], x.shape[1], 1, 1), 1)
                  + (a * g[:, 0] + b)[:, None, None, None])
            cc = (jax.lax.broadcasted_iota(jnp.int32, (x.shape[0], 1, x.shape[2], 1), 2)
                  + (a * g[:, 1] + b)[:, None, None, None])
            inside = (rr >= 0) & (rr < valid[ci, 0]) & (cc >= 0) & (cc < valid[ci, 1])
            x = jnp.where(inside, x, 0.0)
            x = jax.lax.conv_general_dilated(
                x, p["kernel"], window_strides=(sy, sx), padding=((0, 0), (0, 0)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST) + p["bias"]
            ci += 1
        elif kind == "affine":
            x = x * p["scale"] + p["bias"]
        elif kind == "relu":
            x = jnp.maximum(x, 0.0)
    return x


@dataclasses.dataclass(frozen=True)
class Windows:
    """Detector windows scored above a threshold: (N,) channel, output row, output column, score
    (float64), in dlib's scan order (channel, row, column), each position once."""

    k: np.ndarray
    r: np.ndarray
    c: np.ndarray
    conf: np.ndarray


def _region_scores(image: np.ndarray, geo: PyramidGeometry, origins: Sequence[tuple[int, int]],
                   n: int, threshold: float) -> Windows:
    """Score n x n output tiles starting at output (row, col) `origins`; windows > threshold."""
    det = geo.detector
    plan = _tile_plan(det.layers, n)
    a0, b0, h0 = plan[0]
    origins = sorted(set((int(r), int(c)) for r, c in origins))
    tiles = _canvas_tiles(image, geo, [(a0 * r + b0, a0 * r + b0 + h0, a0 * c + b0, a0 * c + b0 + h0)
                                       for r, c in origins])
    valid = jnp.asarray(np.array(geo.valid[:-1], np.int32))
    found: dict[tuple[int, int, int], float] = {}
    batch = 4  # tiles per call (one compiled shape; padded with empty tiles)
    for i in range(0, len(tiles), batch):
        chunk, org = tiles[i:i + batch], origins[i:i + batch]
        pad = batch - len(chunk)
        x = np.stack(chunk + [np.zeros_like(chunk[0])] * pad)
        g = np.array(org + [org[0]] * pad, np.int32)
        scores = np.asarray(_forward_tiles(det.params, x, g, valid, det.layers, n))[:len(chunk)]
        for (gr, gc), sc in zip(org, scores):
            kk, rr, cc = np.nonzero(np.transpose(sc, (2, 0, 1)).astype(np.float64) > threshold)
            rr, cc = rr + gr, cc + gc
            ok = (rr >= 0) & (rr < geo.out_rows) & (cc >= 0) & (cc < geo.out_cols)
            for k_, r_, c_ in zip(kk[ok], rr[ok], cc[ok]):
                found.setdefault((int(k_), int(r_), int(c_)), float(sc[r_ - gr, c_ - gc, k_]))
    keys = sorted(found)
    arr = np.array(keys, np.int64).reshape(-1, 3)
    return Windows(arr[:, 0], arr[:, 1], arr[:, 2], np.array([found[k] for k in keys], np.float64))


# ------------------------------------------------------------------------------------------
# Refinement and bounded detection
# ------------------------------------------------------------------------------------------
def refine(image: np.ndarray, detector: D.MMODDetector, boxes: Sequence[tuple[int, int, int, int]],
           upsample_num_times: int = 1, adjust_threshold: float = 0.0, tile: int = TILE,
           levels_around: int = LEVELS_AROUND, min_iou: float = 0.3) -> list[D.Detection]:
    """dlib's detections (full canvas, `upsample_num_times`) near each of `boxes`, computed on the
    canvas tiles around them only.

    image: (H, W, 3) uint8 RGB, the full-resolution photo. boxes: approximate face boxes (photo
    pixels, inclusive), e.g. from a smaller canvas or from the clean photo.
    Returns the detections (sorted by decreasing confidence, after dlib's NMS over every window
    scored) that overlap some given box with IoU >= min_iou; at most one per given box.
    """
    image = D._check_image(image)
    h, w = image.shape[:2]
    geo = PyramidGeometry(h, w, detector, upsample_num_times)
    if not geo.usable or not boxes:
        return []
    origins = []
    for (l, t, r, b) in boxes:
        k_mid = int(round(geo.level_of_width(r - l + 1)))
        cx, cy = (l + r) / 2.0, (t + b) / 2.0
        for lev in range(k_mid - levels_around, k_mid + levels_around + 1):
            if not 0 <= lev < geo.n_levels:
                continue
            x, y = geo.to_canvas(lev, cx, cy)
            gc = int(round((x - geo.out_origin) / geo.out_step)) - tile // 2
            gr = int(round((y - geo.out_origin) / geo.out_step)) - tile // 2
            origins.append((gr, gc))
    if not origins:
        return []
    win = _region_scores(image, geo, origins, tile, float(adjust_threshold))
    dets = D.windows_to_detections(win.k, win.r, win.c, win.conf, geo.rects, detector,
                                   int(upsample_num_times))
    used = set()
    for b in boxes:
        best = max((i for i in range(len(dets)) if i not in used),
                   key=lambda i: boxes_lib.iou(b, dets[i].rect), default=None)
        if best is not None and boxes_lib.iou(b, dets[best].rect) >= min_iou:
            used.add(best)
    return [dets[i] for i in sorted(used)]


def bounded_candidates(image: np.ndarray, detector: D.MMODDetector, max_side: int,
                       threshold: float = CANDIDATE_THRESHOLD) -> list[D.Detection]:
    """Approximate face boxes (photo pixels) from the photo resized to long side `max_side`
    (Pillow, antialiased bilinear), detector at upsample 0 and `threshold`."""
    from PIL import Image

    h, w = image.shape[:2]
    f = max_side / float(max(h, w))
    sh, sw = max(1, int(round(h * f))), max(1, int(round(w * f)))
    small = np.asarray(Image.fromarray(image).resize((sw, sh), Image.BILINEAR))
    dets = D.detect_faces(small, detector, upsample_num_times=0, adjust_threshold=threshold)
    fy, fx = h / float(sh), w / float(sw)
    out = []
    for d in dets:
        l, t, r, b = d.rect
        out.append(D.Detection((int(round((l + 0.5) * fx - 0.5)), int(round((t + 0.5) * fy - 0.5)),
                                int(round((r + 0.5) * fx - 0.5)), int(round((b + 0.5) * fy - 0.5))),
                               d.confidence))
    return out


def needs_bounding(shape, max_side: int, upsample_num_times: int = 1) -> bool:
    """Whether the full canvas (long side * 2**upsample) exceeds max_side (0: never bounded)."""
    return bool(max_side) and max(shape[:2]) * 2 ** int(upsample_num_times) > int(max_side)


def detect_faces_bounded(image: np.ndarray, detector: D.MMODDetector, max_side: int,
                         upsample_num_times: int = 1, adjust_threshold: float = 0.0,
                         candidate_threshold: float = CANDIDATE_THRESHOLD, tile: int = TILE,
                         levels_around: int = LEVELS_AROUND) -> list[D.Detection]:
    """detect.detect_faces(image, detector, upsample_num_times) at a bounded cost: candidates on a
    canvas of long side max_side, each refined on the full-resolution pyramid (see module
    docstring). A photo whose upsampled long side is <= max_side (or max_side 0) runs the full
    pipeline. Returns Detections sorted by decreasing confidence."""
    image = D._check_image(image)
    if not needs_bounding(image.shape, max_side, upsample_num_times):
        return D.detect_faces(image, detector, upsample_num_times, adjust_threshold)
    cands = bounded_candidates(image, detector, int(max_side), candidate_threshold)
    return refine(image, detector, [c.rect for c in cands], upsample_num_times, adjust_threshold,
                  tile, levels_around)
