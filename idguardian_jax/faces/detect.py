"""dlib's MMOD CNN face detector (`mmod_human_face_detector.dat`) in JAX, without dlib.

This reproduces `dlib.cnn_face_detection_model_v1(path)(image, upsample_num_times)` (the detector
face_recognition uses with `model="cnn"`), read from the file shipped in `face_recognition_models`:

1. Upsampling (tools/python/src/cnn_face_detector.cpp): the RGB image is enlarged
   `upsample_num_times` times with `pyramid_up(image, pyramid_down<2>)`, i.e. bilinear
   `resize_image` to (2*H + 1, 2*W + 2) (dlib/image_transforms/interpolation.h). dlib's SSE code for
   RGB images interpolates in float32 and truncates; `faces.pyramid` re-creates that arithmetic.
2. Input layer (dlib/dnn/input.h, `input_rgb_image_pyramid<pyramid_down<6>>`): the image becomes
   (pixel - mean) / 256 in float32, the top-left level of a zero-filled "tiled pyramid" canvas laid out
   by `impl::compute_tiled_image_pyramid_details` (dlib/image_transforms/image_pyramid.h; level sizes
   floor(5/6 * previous), padding 10, outer padding 11). Each smaller level is a float32 bilinear
   resize of the previous level (`tt::resize_bilinear` -> `resize_image` on float images), which
   `faces.pyramid` re-creates (with the tiling).
3. The CNN (`_forward_band`, jitted): 3 x [conv 5x5/2 valid, affine, relu] (16, 32, 32 filters),
   3 x [conv 5x5/1 pad 2, affine, relu] (45 filters), conv 9x9/1 pad 4 (1 filter) -> a score map.
   It runs over horizontal bands of the canvas (at most 256 output rows each, so memory stays
   bounded for tall photos, whose canvases reach ~17000 x 2900 pixels) on a width rounded up to a
   shape bucket (few XLA compilations); both are exact, see `_forward_band`.
   The batch-norm layers are stored folded into per-channel affine layers, which are folded into
   the convolutions before them (`fused_layers`).
4. Loss layer (dlib/dnn/loss.h, `loss_mmod_::to_label` / `tensor_to_dets`): every score
   > adjust_threshold gives an 80x80 window centred on the score's receptive-field centre (8c + 14,
   8r + 14 in canvas pixels, from the layers' `map_output_to_input`), mapped to image coordinates by
   `tiled_pyramid_to_image` (nearest pyramid level, then `pyramid_down<6>::rect_up`), rounded with
   lround; sorted by confidence (descending); non-max suppression with `test_box_overlap`
   (intersection over the *bounding box* of the two rectangles > nms_iou_thresh, or intersection over
   either area > nms_percent_covered_thresh).
5. Rectangles are mapped back to the original image with `pyramid_down<2>::rect_down` applied
   `upsample_num_times` times, then rounded with lround.

Numerically, steps 1, 2, 4 and 5 are exact re-creations (the bilinear resizes are bit-identical to
dlib.resize_image; rectangles identical on every image we compared, including hundreds of weak
windows at negative thresholds checked against dlib's C++); the convolutions differ from dlib's
only by float32 summation order and the folded affine layers, so confidences agree to ~1e-5.

Speed (2-core CPU, warm): ~1.5 s for a 512x512 photo, ~4-6 s for ~1000x700, ~10-16 s for
2200-2300 x 1000-1400 with upsample_num_times=1 (dlib's own CPU code: 10 s, 33 s, 118 s).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.checkpoints import bundled, cache, dlib_format
from idguardian_jax.faces import pyramid
from idguardian_jax.faces.pyramid import pyramid_up  # noqa: F401  (detect.pyramid_up: the upsampling step)

__all__ = [
    "Detection",
    "MMODDetector",
    "load_detector",
    "detect_faces",
    "score_map",
    "pyramid_up",
]

PARSER_NAME = "dlib_mmod_detector"
PARSER_VERSION = 1

# The pyramid type is a C++ template argument of the network (input_rgb_image_pyramid<
# pyramid_down<6>> in dnn_mmod_face_detection_ex.cpp and cnn_face_detector.cpp); it is not stored
# in the .dat file.
PYRAMID_DOWN_N = 6

_MAX_BAND_ROWS = 256


# ------------------------------------------------------------------------------------------
# Public types
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Detection:
    """One face found by the detector.

    rect: (left, top, right, bottom) python ints in original-image pixel coordinates, dlib's
        inclusive convention (width = right - left + 1). May extend past the image border (dlib does
        not clip CNN detections), e.g. a negative left for a face cut by the left edge.
    confidence: the CNN score (python float); > adjust_threshold, typically about 0..1.2 for faces.
    """

    rect: tuple[int, int, int, int]
    confidence: float


@dataclasses.dataclass(frozen=True, eq=False)
class MMODDetector:
    """A loaded MMOD detector: parameters plus the options read from the file.

    params: {"layers": {"00": {...}, ...}} pytree of float32 arrays. Convolutions have
        {"kernel": (kh, kw, in, out) HWIO, "bias": (out,)}; affine layers {"scale": (C,), "bias": (C,)};
        relu layers have no entry. The layer kinds and hyper-parameters are in `layers`.
    layers: per layer, innermost (next to the input) first: ("conv", stride, padding, kernel) |
        ("affine",) | ("relu",) | ("identity",) (a disabled affine/relu).
    windows: ((width, height), ...) detector windows, one per output channel (80x80 here).
    nms_iou_thresh, nms_percent_covered_thresh: test_box_overlap thresholds for NMS.
    mean_rgb: float32 channel means (as python floats) subtracted before dividing by 256.
    pyramid_padding, pyramid_outer_padding: tiled-pyramid spacing in canvas pixels.
    pyramid_down_n: N of dlib's pyramid_down<N> (each level is floor((N-1)/N * previous)).
    source: the .dat path the detector was read from.
    """

    params: dict
    layers: tuple
    windows: tuple
    nms_iou_thresh: float
    nms_percent_covered_thresh: float
    mean_rgb: tuple[float, float, float]
    pyramid_padding: int
    pyramid_outer_padding: int
    pyramid_down_n: int = PYRAMID_DOWN_N
    source: str = ""


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def _parse_detector_file(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """read_dnn -> (pytree of numpy arrays, JSON-able metadata). Raises ValueError if the file is
    not an MMOD detector of the supported kind (a chain of con/affine/relu layers)."""
    dnn = dlib_format.read_dnn(path)
    if not dnn.loss.tag.startswith("loss_mmod"):
        raise ValueError(f"{path}: loss layer is {dnn.loss.tag!r}, not loss_mmod (not an MMOD detector)")
    if not dnn.input.tag.startswith("input_rgb_image_pyramid"):
        raise ValueError(f"{path}: input layer is {dnn.input.tag!r}, expected input_rgb_image_pyramid")
    opts = dnn.loss.fields
    if opts.get("use_bounding_box_regression"):
        raise ValueError(f"{path}: MMOD bounding-box regression is not supported")
    tree: dict[str, Any] = {}
    layers: list[list[Any]] = []
    for i, rec in enumerate(dnn.layers):
        f = rec.fields
        name = f"{i:02d}"
        if rec.tag.startswith("con_"):
            if f.get("use_relu"):
                raise ValueError(f"{path}: layer {i}: con_ with a fused relu is not supported")
            filt = np.asarray(f["filters"], np.float32)  # OIHW
            tree[name] = {"kernel": np.ascontiguousarray(filt.transpose(2, 3, 1, 0)),
                          "bias": np.asarray(f["biases"], np.float32).reshape(-1)}
            layers.append(["conv", list(map(int, f["stride"])), list(map(int, f["padding"])),
                           list(map(int, f["kernel"]))])
        elif rec.tag.startswith("affine_"):
            if f.get("disabled"):
                layers.append(["identity"])
                continue
            tree[name] = {"scale": np.asarray(f["gamma"], np.float32).reshape(-1),
                          "bias": np.asarray(f["beta"], np.float32).reshape(-1)}
            layers.append(["affine"])
        elif rec.tag.startswith("relu_"):
            layers.append(["identity"] if f.get("disabled") else ["relu"])
        else:
            raise ValueError(f"{path}: layer {i} is {rec.tag!r}; only con_/affine_/relu_ chains are supported")
    windows = [[int(w["width"]), int(w["height"])] for w in opts["detector_windows"]]
    meta = {
        "layers": layers,
        "windows": windows,
        "nms_iou_thresh": float(opts["nms_iou_thresh"]),
        "nms_percent_covered_thresh": float(opts["nms_percent_covered_thresh"]),
        "mean_rgb": [float(np.float32(m)) for m in dnn.input.fields["mean"]],
        "pyramid_padding": int(dnn.input.fields.get("pyramid_padding", 10)),
        "pyramid_outer_padding": int(dnn.input.fields.get("pyramid_outer_padding", 11)),
    }
    return {"layers": tree}, meta


def load_detector(path: str | os.PathLike | None = None, use_cache: bool = True) -> MMODDetector:
    """Load dlib's MMOD face detector.

    path: a dlib .dat file; default the bundled `mmod_human_face_detector.dat` of
        face_recognition_models. Parsed parameters are cached on disk (checkpoints.cache) unless
        use_cache is False.
    Returns an MMODDetector whose params are jnp float32 arrays.
    """
    path = os.fspath(path) if path is not None else bundled.model_path(bundled.DETECTOR)
    tree, meta = cache.cached_parse(path, PARSER_NAME, PARSER_VERSION, _parse_detector_file, use_cache)
    layers = tuple(tuple(tuple(x) if isinstance(x, list) else x for x in spec) for spec in meta["layers"])
    convs = [k for k in sorted(tree["layers"]) if "kernel" in tree["layers"][k]]
    if not convs:
        raise ValueError(f"{path}: no convolution layers")
    n_out = int(np.asarray(tree["layers"][convs[-1]]["kernel"]).shape[-1])
    if n_out != len(meta["windows"]):
        raise ValueError(f"{path}: the last convolution has {n_out} outputs for "
                         f"{len(meta['windows'])} detector windows")
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)
    return MMODDetector(
        params=params,
        layers=layers,
        windows=tuple(tuple(w) for w in meta["windows"]),
        nms_iou_thresh=meta["nms_iou_thresh"],
        nms_percent_covered_thresh=meta["nms_percent_covered_thresh"],
        mean_rgb=tuple(meta["mean_rgb"]),
        pyramid_padding=meta["pyramid_padding"],
        pyramid_outer_padding=meta["pyramid_outer_padding"],
        source=path,
    )


# ------------------------------------------------------------------------------------------
# The CNN
# ------------------------------------------------------------------------------------------
def _valid_sizes(layers: Sequence[tuple], rows: int, cols: int) -> list[tuple[int, int]]:
    """Input extents (rows, cols) dlib's net sees before each conv, plus the final output extent."""
    out = []
    for spec in layers:
        if spec[0] != "conv":
            continue
        (sy, sx), (py, px), (ky, kx) = spec[1], spec[2], spec[3]
        out.append((rows, cols))
        # 1 + (n + 2p - k) / s; an input smaller than the kernel gives no output
        rows = 1 + (rows + 2 * py - ky) // sy if rows + 2 * py >= ky else 0
        cols = 1 + (cols + 2 * px - kx) // sx if cols + 2 * px >= kx else 0
    out.append((rows, cols))
    return out


def _band_plan(layers: Sequence[tuple], band_rows: int) -> list[tuple[int, int, int]]:
    """For an output band of `band_rows` rows starting at output row G, per conv (innermost first):
    (a, b, h) such that the conv's input band starts at row a*G + b of that layer's input and has h
    rows. Walks the convs outermost first: a conv (stride s, padding p, kernel k) whose output band
    starts at row J needs input rows s*J - p ... s*(J + n - 1) - p + k - 1."""
    a, b, h = 1, 0, band_rows
    plan = []
    for spec in reversed(layers):
        if spec[0] != "conv":
            continue
        (sy, _), (py, _), (ky, _) = spec[1], spec[2], spec[3]
        a, b, h = sy * a, sy * b - py, sy * (h - 1) + ky
        plan.append((a, b, h))
    return plan[::-1]


def fused_layers(params: dict, layers: Sequence[tuple]) -> list[tuple]:
    """The network as (kind, spec, weights) steps with each affine layer that follows a conv folded
    into it: conv(x, W) + b, then * s + t == conv(x, W * s) + (b * s + t) (per output channel).
    One elementwise pass fewer per layer (~12% of the detector's CPU time on a 512 px photo,
    measured); scores move by float32 rounding only (~5e-6). Use inside jit (traced arrays)."""
    steps, i = [], 0
    while i < len(layers):
        spec, p = layers[i], params["layers"].get(f"{i:02d}")
        if spec[0] == "conv":
            kernel, bias = p["kernel"], p["bias"]
            if i + 1 < len(layers) and layers[i + 1][0] == "affine":
                q = params["layers"][f"{i + 1:02d}"]
                kernel, bias = kernel * q["scale"], bias * q["scale"] + q["bias"]
                i += 1
            steps.append(("conv", spec, {"kernel": kernel, "bias": bias}))
        elif spec[0] in ("affine", "relu"):
            steps.append((spec[0], spec, p))
        i += 1
    return steps


@functools.partial(jax.jit, static_argnames=("layers", "band_rows"))
def _forward_band(params: dict, band: jax.Array, g: jax.Array, valid: jax.Array, layers: tuple,
                  band_rows: int) -> jax.Array:
    """The detector CNN on one horizontal band of the canvas.

    band: (h0, C, 3) float32 canvas rows a0*g + b0 ... (see _band_plan; rows outside dlib's canvas
        are 0). Columns start at canvas column 0; C may exceed dlib's canvas width (shape buckets).
    g: int32 scalar, the first output row of this band. valid: (n_conv, 2) int32, the (rows, cols)
        extent of dlib's real tensor before each conv.
    Returns (band_rows, C', K) float32 scores for output rows g ... g + band_rows - 1.

    Exactness: rows are convolved without padding (the band carries every input row its outputs
    need), columns with the layer's padding. Before every conv, activations whose global (row, col)
    lies outside dlib's real extent are set to 0: for padded convs that is exactly dlib's zero
    padding, and unpadded convs never read past the extent for in-extent outputs. So every score
    inside dlib's output extent equals dlib's net on its own canvas (up to float summation order);
    scores outside it are discarded by the caller, so bucket padding cannot create detections.
    """
    plan = _band_plan(layers, band_rows)
    # A tall band is convolved transposed, as (1, columns, rows, C) with (kx, ky) kernels: XLA:CPU's
    # convolutions ran 2.4x faster on the wide orientation of the same tensor (16 -> 32 channels,
    # stride 2: 57 ms tall, 24 ms wide), and a 512 px photo's canvas is 3737 x 1048 (its score map
    # 0.95 -> 0.72 s; a wide band, two_people.jpg's, was 5 % slower transposed, so it is not;
    # 2026-12-02). The sums are the same products in another order (scores within 7e-6).
    tall = band.shape[0] > band.shape[1]
    x = (jnp.swapaxes(band, 0, 1) if tall else band)[None]
    r_axis, c_axis = (2, 1) if tall else (1, 2)
    ci = 0
    for kind, spec, p in fused_layers(params, layers):
        if kind == "conv":
            (sy, sx), (_, px), _ = spec[1], spec[2], spec[3]
            a, b, _ = plan[ci]
            shape = (1, x.shape[1], x.shape[2], 1)
            rr = jax.lax.broadcasted_iota(jnp.int32, shape, r_axis) + (a * g + b)
            cc = jax.lax.broadcasted_iota(jnp.int32, shape, c_axis)
            inside = (rr >= 0) & (rr < valid[ci, 0]) & (cc < valid[ci, 1])
            x = jnp.where(inside, x, 0.0)
            kernel, strides, padding = p["kernel"], (sy, sx), ((0, 0), (px, px))
            if tall:
                kernel, strides, padding = jnp.swapaxes(kernel, 0, 1), (sx, sy), padding[::-1]
            x = jax.lax.conv_general_dilated(
                x, kernel, window_strides=strides, padding=padding,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST) + p["bias"]
            ci += 1
        elif kind == "affine":
            x = x * p["scale"] + p["bias"]
        elif kind == "relu":
            x = jnp.maximum(x, 0.0)
    return jnp.swapaxes(x[0], 0, 1) if tall else x[0]


def _output_to_input(layers: Sequence[tuple], c: np.ndarray, r: np.ndarray):
    """Map output-tensor coordinates to canvas coordinates through every conv's
    map_output_to_input (p * stride - padding + kernel // 2), outermost layer first."""
    x, y = c.astype(np.float64), r.astype(np.float64)
    for spec in reversed(layers):
        if spec[0] == "conv":
            (sy, sx), (py, px), (ky, kx) = spec[1], spec[2], spec[3]
            x = x * sx - px + kx // 2
            y = y * sy - py + ky // 2
    return x, y


def _band_rows(out_rows: int) -> int:
    """Output rows per band: the output split into equal bands of at most _MAX_BAND_ROWS rows
    (~0.4 GB of activations for a 3000-pixel-wide canvas), rounded up to a multiple of 16 so that
    few band shapes (XLA compilations, ~0.6 s each on CPU) occur."""
    n_bands = -(-out_rows // _MAX_BAND_ROWS)
    per_band = -(-out_rows // n_bands)
    return -(-per_band // 16) * 16


def score_map(image: np.ndarray, detector: MMODDetector, upsample_num_times: int = 1):
    """Run the detector's pyramid + CNN on an image (validated like detect_faces).

    Returns (scores, rects) where scores is the (R', C', K) float32 map over dlib's output tensor
    (what loss_mmod_ scans) and rects the tiled-pyramid level rectangles (left, top, right, bottom)
    in canvas pixels; (None, rects) when the image is too small to give any output.
    """
    image = _check_image(image)
    if not isinstance(upsample_num_times, (int, np.integer)) or upsample_num_times < 0:
        raise ValueError(f"upsample_num_times must be a non-negative int, got {upsample_num_times!r}")
    for _ in range(int(upsample_num_times)):
        image = pyramid_up(image)
    h, w = image.shape[:2]
    rows, cols, rects = pyramid.tile_pyramid(h, w, detector.pyramid_down_n, detector.pyramid_padding,
                                      detector.pyramid_outer_padding)
    if not rects:
        return None, []
    valid = _valid_sizes(detector.layers, rows, cols)
    out_rows, out_cols = valid[-1]
    if out_rows <= 0 or out_cols <= 0:
        return None, rects
    canvas = pyramid.build_canvas(image, detector.mean_rgb, rows, pyramid.bucket_width(cols), rects)
    del image
    band_rows = _band_rows(out_rows)
    a0, b0, h0 = _band_plan(detector.layers, band_rows)[0]
    valid_arr = jnp.asarray(np.array(valid[:-1], np.int32))
    pieces = []
    for g in range(0, out_rows, band_rows):
        start = a0 * g + b0
        band = np.zeros((h0,) + canvas.shape[1:], np.float32)
        lo, hi = max(start, 0), min(start + h0, rows)
        if hi > lo:
            band[lo - start:hi - start] = canvas[lo:hi]
        out = _forward_band(detector.params, band, jnp.int32(g), valid_arr, detector.layers, band_rows)
        pieces.append(np.asarray(out)[:, :out_cols])
    scores = np.concatenate(pieces, axis=0)[:out_rows]
    return scores, rects


# ------------------------------------------------------------------------------------------
# Scores -> detections (dlib/dnn/loss.h, loss_mmod_)
# ------------------------------------------------------------------------------------------
def _lround_array(v: np.ndarray) -> np.ndarray:
    """Vectorized C lround (halves away from zero) of float64 values -> int64."""
    a = np.abs(v)
    f = np.floor(a)
    r = f + (a - f >= 0.5)
    return np.where(v < 0, -r, r).astype(np.int64)


def _nearest_rect(rects, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dlib nearest_rect for integer points: the first rect containing the point, else the first
    one at the smallest Euclidean distance."""
    rr = np.asarray(rects, np.float64)  # (L, 4) left, top, right, bottom
    x, y = x[:, None].astype(np.float64), y[:, None].astype(np.float64)
    inside = (rr[:, 0] <= x) & (x <= rr[:, 2]) & (rr[:, 1] <= y) & (y <= rr[:, 3])
    dx = np.clip(x, rr[:, 0], rr[:, 2]) - x
    dy = np.clip(y, rr[:, 1], rr[:, 3]) - y
    dist = np.sqrt(dx * dx + dy * dy)
    return np.where(inside.any(axis=1), inside.argmax(axis=1), dist.argmin(axis=1))


def _overlaps_any(kept: np.ndarray, box: np.ndarray, iou_thresh: float, covered_thresh: float) -> bool:
    """dlib test_box_overlap(kept[i], box) for any i, on inclusive integer rectangles: intersection
    area over the area of the *bounding box* of both (rectangle operator+), or over either
    rectangle's own area, above the thresholds. kept: (n, 4) int64, box: (4,) int64."""
    if kept.shape[0] == 0:
        return False
    iw = np.minimum(kept[:, 2], box[2]) - np.maximum(kept[:, 0], box[0]) + 1
    ih = np.minimum(kept[:, 3], box[3]) - np.maximum(kept[:, 1], box[1]) + 1
    hit = (iw > 0) & (ih > 0)
    if not hit.any():
        return False
    inner = (np.where(hit, iw * ih, 0)).astype(np.float64)
    ow = np.maximum(kept[:, 2], box[2]) - np.minimum(kept[:, 0], box[0]) + 1
    oh = np.maximum(kept[:, 3], box[3]) - np.minimum(kept[:, 1], box[1]) + 1
    area_k = ((kept[:, 2] - kept[:, 0] + 1) * (kept[:, 3] - kept[:, 1] + 1)).astype(np.float64)
    area_b = float((box[2] - box[0] + 1) * (box[3] - box[1] + 1))
    over = ((inner / (ow * oh).astype(np.float64) > iou_thresh) | (inner / area_k > covered_thresh)
            | (inner / area_b > covered_thresh))
    return bool((hit & over).any())


def _to_detections(scores: np.ndarray, rects, detector: MMODDetector, adjust_threshold: float,
                   upsample_num_times: int) -> list[Detection]:
    """loss_mmod_::to_label on a score map, then the python binding's rect_down."""
    ks, rs, cs = [], [], []
    for k in range(scores.shape[2]):
        # dlib compares the float32 score, widened to double, with the double threshold
        r, c = np.nonzero(scores[:, :, k].astype(np.float64) > adjust_threshold)
        ks.append(np.full(r.shape, k)), rs.append(r), cs.append(c)
    k_all, r_all, c_all = np.concatenate(ks), np.concatenate(rs), np.concatenate(cs)
    if k_all.size == 0:
        return []
    conf = scores[r_all, c_all, k_all].astype(np.float64)
    return windows_to_detections(k_all, r_all, c_all, conf, rects, detector, upsample_num_times)


def windows_to_detections(k_all: np.ndarray, r_all: np.ndarray, c_all: np.ndarray, conf: np.ndarray,
                          rects, detector: MMODDetector, upsample_num_times: int) -> list[Detection]:
    """Windows above the threshold -> detections (loss_mmod_::to_label's boxes and NMS, then
    rect_down per upsampling).

    k_all, r_all, c_all: (N,) int channel / output row / output column of each window, in dlib's
        scan order (channel, row, column); conf: (N,) float64 scores; rects: the tiled pyramid's
        level rectangles (canvas pixels).
    """
    if k_all.size == 0:
        return []
    # Window centre in canvas pixels (output_tensor_to_input_tensor), window of the channel's size
    # (centered_drect: half-extent (size - 1) / 2), mapped to the (upsampled) image through the
    # nearest pyramid level (tiled_pyramid_to_image): subtract the level's origin, then
    # pyramid_down<N>::point_up (p * N/(N-1) + 0.3) once per level, all in double; lround.
    px, py = _output_to_input(detector.layers, c_all, r_all)
    win = np.asarray(detector.windows, np.float64)[k_all]
    hw, hh = (win[:, 0] - 1) / 2, (win[:, 1] - 1) / 2
    level = _nearest_rect(rects, _lround_array(px), _lround_array(py))
    origin = np.asarray(rects, np.float64)[level]
    corners = np.stack([px - hw - origin[:, 0], py - hh - origin[:, 1],
                        px + hw - origin[:, 0], py + hh - origin[:, 1]], axis=1)
    ratio = detector.pyramid_down_n / (detector.pyramid_down_n - 1.0)
    for i in range(int(level.max(initial=0))):
        corners = np.where((level > i)[:, None], corners * ratio + 0.3, corners)
    boxes = _lround_array(corners)
    # std::sort by descending confidence (dlib's order among equal scores is unspecified; we keep
    # scan order k, r, c), then greedy NMS against the boxes kept so far.
    order = np.argsort(-conf, kind="stable")
    kept = np.empty((0, 4), np.int64)
    kept_conf: list[float] = []
    for j in order:
        if _overlaps_any(kept, boxes[j], detector.nms_iou_thresh, detector.nms_percent_covered_thresh):
            continue
        kept = np.concatenate([kept, boxes[j][None]])
        kept_conf.append(float(conf[j]))
    # Back to the original image (cnn_face_detector.cpp: pyramid_down<2>::rect_down per
    # upsampling, p / 2 - (1.25, 0.75), in double), then lround.
    out_boxes = kept.astype(np.float64)
    for _ in range(upsample_num_times):
        out_boxes = out_boxes / 2.0 - np.array([1.25, 0.75, 1.25, 0.75])
    out_boxes = _lround_array(out_boxes)
    return [Detection(tuple(int(v) for v in b), c) for b, c in zip(out_boxes, kept_conf)]


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB (H, W, 3), got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 RGB of shape (H, W, 3), got shape {image.shape}")
    return np.ascontiguousarray(image)


def detect_faces(image: np.ndarray, detector: MMODDetector, upsample_num_times: int = 1,
                 adjust_threshold: float = 0.0) -> list[Detection]:
    """Find faces like dlib's cnn_face_detection_model_v1(image, upsample_num_times).

    image: (H, W, 3) uint8 RGB, values 0..255 (any H, W >= 0; tiny images give []).
    upsample_num_times: how many times to double the image first (pyramid_up); 1 by default, as
        face_recognition uses. Each upsampling lets smaller faces be found (the smallest face is about
        80 / 2**upsample_num_times pixels) and costs ~4x time and memory.
    adjust_threshold: keep windows whose score is > adjust_threshold (dlib's default 0).
    Returns Detections sorted by decreasing confidence, after non-max suppression; rects in
    original-image pixels (inclusive), possibly extending past the border.
    Raises ValueError for a non-uint8 or non-(H, W, 3) image.
    """
    scores, rects = score_map(image, detector, upsample_num_times)
    if scores is None:
        return []
    return _to_detections(scores, rects, detector, float(adjust_threshold), int(upsample_num_times))
