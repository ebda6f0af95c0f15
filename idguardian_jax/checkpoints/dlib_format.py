"""Reader for dlib's binary serialization format (pure numpy, no dlib needed).

What it reads, learned from dlib's sources (dlib/serialize.h, dlib/float_details.h,
dlib/cuda/tensor.h, dlib/dnn/core.h, dlib/dnn/layers.h, dlib/dnn/input.h, dlib/dnn/loss.h,
dlib/image_processing/shape_predictor.h; shape predictors: dlib_shape_predictor.py):

* integers: a control byte (bit 7 = negative, low nibble = byte count 1..8) then the magnitude,
  little-endian;
* floats: mantissa (int64) then exponent (int16), value = mantissa * 2**exponent;
* strings: integer length then bytes; bools: one ASCII byte '0' or '1';
* tensors: version 2, (n, k, nr, nc), then n*k*nr*nc little-endian float32 (NCHW).

A DNN file is `add_loss_layer(version 1, loss details, subnet)`. The subnet writes one version
integer per wrapper (outermost first), then the input layer's details, then, unwinding from the
innermost layer outward, each computational layer's details followed by three bools and three
tensors. Tag and skip layers write only their version integer. So a file parses into
(loss, input, [layer records, innermost first]); the network definition that consumes those records
lives with the model (encoders/dlib_resnet.py, idguardian_jax/faces/detect.py).

Reader.scan/ints/floats decode runs in bulk (vectorized, dlib_runs) as the scalar decoders would.
Any malformed file raises DlibFormatError naming the file and the byte offset.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from idguardian_jax.checkpoints import dlib_runs

__all__ = [
    "DlibFormatError",
    "Reader",
    "LayerRecord",
    "DnnFile",
    "read_dnn",
]


class DlibFormatError(ValueError):
    """A file that is not, or is not a whole, dlib serialized model."""


class Reader:
    """A cursor over the bytes of one dlib file, with dlib's primitive decoders."""

    def __init__(self, data: bytes, path: str = "<bytes>"):
        self.data = memoryview(data)
        self.path = str(path)
        self.pos = 0
        self._bytes: np.ndarray | None = None  # uint8 view of data, for the bulk decoders

    # -- errors ---------------------------------------------------------------------------
    def error(self, what: str, at: int | None = None) -> DlibFormatError:
        at = self.pos if at is None else at
        return DlibFormatError(f"{self.path}: not a valid dlib model file: {what} at byte offset {at}")

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"file ends early while reading {what} (needs {n} bytes, "
                             f"{len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    # -- primitives -----------------------------------------------------------------------
    def int(self, what: str = "an integer") -> int:
        start = self.pos
        ctrl = self._take(1, what)[0]
        size = ctrl & 0x0F
        if ctrl & 0x70 or size == 0 or size > 8:
            raise self.error(f"bad integer control byte 0x{ctrl:02x} while reading {what}", start)
        value = int.from_bytes(self._take(size, what), "little", signed=False)
        return -value if ctrl & 0x80 else value

    def peek_int(self) -> int:
        pos = self.pos
        try:
            return self.int()
        finally:
            self.pos = pos

    def float(self, what: str = "a float") -> float:
        start = self.pos
        if not self.at_end() and self.data[self.pos] & 0x70:
            raise self.error(f"ASCII-encoded float (pre-2011 dlib format) is not supported "
                             f"while reading {what}", start)
        mantissa = self.int(what + " mantissa")
        exponent = self.int(what + " exponent")
        if exponent == 32000:
            return math.inf
        if exponent == 32001:
            return -math.inf
        if exponent == 32002:
            return math.nan
        if not -32768 <= exponent < 32000:
            raise self.error(f"float exponent {exponent} out of range while reading {what}", start)
        return math.ldexp(float(mantissa), exponent)

    # -- bulk primitives: runs of consecutive values, decoded as the scalar ones would --------
    def scan(self, count: int) -> tuple[np.ndarray, int] | None:
        """The next `count` integers as int64 (count,) and the offset past them, without moving the
        cursor; None unless all are well formed, inside the file and within int64 (the scalar
        decoders then tell what is wrong)."""
        if count <= 0:
            return np.zeros(0, np.int64), self.pos
        if self._bytes is None:
            self._bytes = np.frombuffer(self.data, np.uint8)
        left = len(self.data) - self.pos
        raw = self._bytes[self.pos:self.pos + min(left, 9 * count)]
        offs = dlib_runs.int_chain(raw, count)
        if len(offs) < count:
            return None
        ctrl = raw[offs]
        size = ctrl & 0x0F
        if (ctrl & 0x70).any() or not size.all() or size.max() > 8:
            return None  # a bad control byte
        used = int(offs[-1]) + 1 + int(size[-1])  # each integer ends where the next begins
        if used > left:
            return None  # the file ends inside the last one
        buf = np.zeros(used + 8, np.uint8)
        buf[:used] = raw[:used]
        # magnitudes: the 8 bytes after each control byte, little-endian, cut to its length
        mag = np.ndarray((used,), "<u8", buf, 1, (1,))[offs]
        cut = 64 - 8 * size
        np.left_shift(mag, cut, out=mag)
        np.right_shift(mag, cut, out=mag)
        wide = np.flatnonzero(size == 8)
        if wide.size and (mag[wide] > np.uint64(2**63 - 1) + (ctrl[wide] >> 7)).any():
            return None  # outside int64 (only -2**63 may have bit 63 set)
        value = mag.view(np.int64)
        np.multiply(value, 1 - 2 * (ctrl >> 7).astype(np.int8), out=value)  # the sign bit
        return value, self.pos + used

    def ints(self, count: int, what: str = "an integer") -> np.ndarray:
        """The next `count` integers as int64 (count,); raises as `count` calls of `int` would, and
        for a value outside int64."""
        got = self.scan(count)
        if got is not None:
            self.pos = got[1]
            return got[0]
        for _ in range(count):  # something is wrong: find it the scalar way
            at = self.pos
            value = self.int(what)
            if not -2**63 <= value < 2**63:
                raise self.error(f"integer {value} outside int64 while reading {what}", at)
        raise AssertionError("scan and int disagree")  # pragma: no cover

    def floats(self, count: int, what: str = "a float") -> np.ndarray:
        """The next `count` floats as float64 (count,), bit for bit and error for error as `count`
        calls of `float`."""
        got = self.scan(2 * count)
        if got is not None:
            values = dlib_runs.dlib_floats(got[0][0::2], got[0][1::2])
            if values is not None:
                self.pos = got[1]
                return values
        # something is wrong, or a mantissa beyond int64: the scalar way
        return np.array([self.float(what) for _ in range(count)], dtype=np.float64)

    def bool(self, what: str = "a bool") -> bool:
        start = self.pos
        b = self._take(1, what)[0]
        if b not in (ord("0"), ord("1")):
            raise self.error(f"bad bool byte 0x{b:02x} while reading {what}", start)
        return b == ord("1")

    def string(self, what: str = "a string", max_len: int = 1 << 16) -> str:
        start = self.pos
        n = self.int(what + " length")
        if not 0 <= n <= max_len:
            raise self.error(f"implausible string length {n} while reading {what}", start)
        raw = bytes(self._take(n, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"non-ASCII bytes while reading {what}", start) from None

    def tag(self, allowed: tuple[str, ...], what: str) -> str:
        start = self.pos
        s = self.string(what)
        if s not in allowed:
            raise self.error(f"expected {what} tag {'/'.join(allowed)}, found {s!r}", start)
        return s

    def version(self, allowed: tuple[int, ...], what: str) -> int:
        start = self.pos
        v = self.int(what + " version")
        if v not in allowed:
            raise self.error(f"unexpected {what} version {v}", start)
        return v

    def tensor(self, what: str = "a tensor") -> np.ndarray:
        """resizable_tensor -> float32 array of shape (n, k, nr, nc)."""
        start = self.pos
        self.version((2,), what)
        dims = [self.int(what + " shape") for _ in range(4)]
        if any(d < 0 for d in dims):
            raise self.error(f"negative tensor shape {dims} in {what}", start)
        count = int(np.prod(dims, dtype=np.int64))
        raw = self._take(4 * count, f"{what} data ({count} floats)")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias_tensor(self, what: str = "an alias tensor") -> tuple[int, int, int, int]:
        self.version((1,), what)
        return tuple(self.int(what + " shape") for _ in range(4))  # type: ignore[return-value]

    def matrix(self, what: str = "a matrix") -> np.ndarray:
        """dlib::matrix<float or double>: -nr, -nc (older files: nr, nc), then row-major values."""
        start = self.pos
        nr, nc = abs(self.int(what + " rows")), abs(self.int(what + " cols"))
        if nr < 0 or nc < 0 or nr * nc > len(self.data):
            raise self.error(f"bad matrix shape ({nr}, {nc}) in {what}", start)
        return self.floats(nr * nc, what).reshape(nr, nc)


# ------------------------------------------------------------------------------------------
# DNN files
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LayerRecord:
    """One computational layer as stored: its tag (e.g. 'con_5') and decoded fields."""

    tag: str
    fields: dict[str, Any]
    offset: int

    @property
    def kind(self) -> str:
        """Tag without its version suffix: con, affine, relu, max_pool, avg_pool, add_prev, fc."""
        base = self.tag.rstrip("0123456789")
        return base.rstrip("_")


@dataclasses.dataclass
class DnnFile:
    path: str
    loss: LayerRecord
    input: LayerRecord
    layers: list[LayerRecord]  # innermost (next to the input) first


_LOSS_TAGS = ("loss_metric_", "loss_metric_2", "loss_mmod_")
_INPUT_TAGS = ("input_rgb_image_sized", "input_rgb_image_pyramid", "input_rgb_image_pyramid2",
               "input_rgb_image")


def _read_loss(r: Reader) -> LayerRecord:
    off = r.pos
    tag = r.tag(_LOSS_TAGS, "loss layer")
    f: dict[str, Any] = {}
    if tag == "loss_metric_2":
        f["margin"] = r.float("margin")
        f["dist_thresh"] = r.float("distance threshold")
    elif tag == "loss_metric_":
        f["margin"], f["dist_thresh"] = 0.1, 0.75
    elif tag == "loss_mmod_":
        v = r.version((1, 2, 3, 4), "mmod_options")
        if v == 1:
            windows = [{"width": r.int("window width"), "height": r.int("window height"), "label": ""}]
        else:
            windows = []
            for _ in range(r.int("detector window count")):
                w = {"width": r.int("window width"), "height": r.int("window height")}
                w["label"] = r.string("window label")
                windows.append(w)
        f["detector_windows"] = windows
        f["loss_per_false_alarm"] = r.float("loss per false alarm")
        f["loss_per_missed_target"] = r.float("loss per missed target")
        f["truth_match_iou_threshold"] = r.float("truth match IoU threshold")
        f["nms_iou_thresh"] = r.float("NMS IoU threshold")
        f["nms_percent_covered_thresh"] = r.float("NMS percent covered threshold")
        f["ignore_iou_thresh"] = r.float("ignore IoU threshold")
        f["ignore_percent_covered_thresh"] = r.float("ignore percent covered threshold")
        f["assume_image_pyramid"] = True
        f["use_bounding_box_regression"] = False
        f["bbr_lambda"] = 100.0
        if v >= 3:
            start = r.pos
            b = r._take(1, "assume_image_pyramid")[0]
            if b not in (0, 1):
                raise r.error(f"bad assume_image_pyramid byte {b}", start)
            f["assume_image_pyramid"] = bool(b)
        if v >= 4:
            f["use_bounding_box_regression"] = r.bool("use_bounding_box_regression")
            f["bbr_lambda"] = r.float("bbr_lambda")
    return LayerRecord(tag, f, off)


def _read_input(r: Reader, tag: str, off: int) -> LayerRecord:
    f: dict[str, Any] = {}
    if tag == "input_rgb_image":
        f["mean"] = (r.float("avg red"), r.float("avg green"), r.float("avg blue"))
    elif tag == "input_rgb_image_sized":
        f["mean"] = (r.float("avg red"), r.float("avg green"), r.float("avg blue"))
        f["rows"] = r.int("input rows")
        f["cols"] = r.int("input cols")
    else:  # image pyramid
        f["mean"] = (r.float("avg red"), r.float("avg green"), r.float("avg blue"))
        # Older files ("input_rgb_image_pyramid") predate the padding fields; dlib uses 10 and 11.
        f["pyramid_padding"], f["pyramid_outer_padding"] = 10, 11
        if tag == "input_rgb_image_pyramid2":
            f["pyramid_padding"] = r.int("pyramid padding")
            f["pyramid_outer_padding"] = r.int("pyramid outer padding")
    return LayerRecord(tag, f, off)


def _lr_multipliers(r: Reader) -> None:
    for name in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        r.float(name + " multiplier")


def _read_layer(r: Reader) -> LayerRecord:
    off = r.pos
    tag = r.string("layer tag")
    f: dict[str, Any] = {}
    if tag in ("con_4", "con_5", "con_6"):
        params = r.tensor("convolution params")
        f["num_filters"] = r.int("num_filters")
        f["kernel"] = (r.int("kernel rows"), r.int("kernel cols"))
        f["stride"] = (r.int("stride y"), r.int("stride x"))
        f["padding"] = (r.int("padding y"), r.int("padding x"))
        fshape = r.alias_tensor("filters alias")
        bshape = r.alias_tensor("biases alias")
        _lr_multipliers(r)
        f["use_bias"] = r.bool("use_bias") if tag in ("con_5", "con_6") else True
        if tag == "con_6":
            f["use_relu"] = r.bool("use_relu")
        nw = int(np.prod(fshape))
        flat = params.reshape(-1)
        if flat.size < nw:
            raise r.error(f"convolution params hold {flat.size} values, filters need {nw}", off)
        f["filters"] = flat[:nw].reshape(fshape)  # OIHW
        nb = int(np.prod(bshape))
        f["biases"] = flat[nw:nw + nb].copy() if f["use_bias"] and nb else np.zeros(fshape[0], np.float32)
    elif tag in ("affine_", "affine_2"):
        params = r.tensor("affine params").reshape(-1)
        g = r.alias_tensor("gamma alias")
        b = r.alias_tensor("beta alias")
        f["mode"] = r.int("affine mode")
        f["disabled"] = r.bool("disabled") if tag == "affine_2" else False
        ng, nb = int(np.prod(g)), int(np.prod(b))
        if params.size < ng + nb and not f["disabled"]:
            raise r.error("affine params shorter than gamma + beta", off)
        f["gamma"], f["beta"] = params[:ng].copy(), params[ng:ng + nb].copy()
    elif tag in ("bn_con2", "bn_fc2"):
        params = r.tensor("batch norm params").reshape(-1)
        g = r.alias_tensor("gamma alias")
        b = r.alias_tensor("beta alias")
        for name in ("means", "invstds"):
            r.tensor(name)
        running_means = r.tensor("running means").reshape(-1)
        running_vars = r.tensor("running variances").reshape(-1)
        r.int("num_updates")
        r.int("running_stats_window_size")
        _lr_multipliers(r)
        eps = r.float("eps")
        ng, nb = int(np.prod(g)), int(np.prod(b))
        if params.size < ng + nb or running_means.size != ng or running_vars.size != ng:
            raise r.error("batch norm tensors of inconsistent sizes", off)
        # dlib converts bn_ to affine_ on load (layers.h, affine_(const bn_&)), in float32.
        gamma = params[:ng] / np.sqrt(running_vars + np.float32(eps))
        f["gamma"] = gamma.astype(np.float32)
        f["beta"] = (params[ng:ng + nb] - gamma * running_means).astype(np.float32)
        f["mode"] = 0 if tag == "bn_con2" else 1  # dlib layer_mode: CONV_MODE 0, FC_MODE 1
        f["disabled"] = False
        f["converted_from_bn_eps"] = eps
        tag = "affine_2"
    elif tag in ("relu_", "relu_2"):
        f["disabled"] = r.bool("disabled") if tag == "relu_2" else False
    elif tag in ("max_pool_2", "avg_pool_2"):
        f["window"] = (r.int("pool rows"), r.int("pool cols"))
        f["stride"] = (r.int("stride y"), r.int("stride x"))
        f["padding"] = (r.int("padding y"), r.int("padding x"))
    elif tag == "add_prev_":
        pass
    elif tag in ("fc_2", "fc_3"):
        f["num_outputs"] = r.int("num_outputs")
        f["num_inputs"] = r.int("num_inputs")
        params = r.tensor("fc params").reshape(-1)
        w = r.alias_tensor("weights alias")
        b = r.alias_tensor("biases alias")
        f["bias_mode"] = r.int("bias mode")
        _lr_multipliers(r)
        f["use_bias"] = r.bool("use_bias") if tag == "fc_3" else True
        nw = int(np.prod(w))
        if params.size < nw:
            raise r.error("fc params shorter than the weights", off)
        # dlib's fc weights alias is (num_inputs, num_outputs); y = x W.
        f["weights"] = params[:nw].reshape(f["num_inputs"], f["num_outputs"]).copy()
        nb = int(np.prod(b))
        has_bias = f["bias_mode"] == 0 and f["use_bias"] and nb
        f["biases"] = params[nw:nw + nb].copy() if has_bias else None
    else:
        raise r.error(f"unknown layer tag {tag!r}", off)
    return LayerRecord(tag, f, off)


def read_dnn(path: str | os.PathLike, data: bytes | None = None) -> DnnFile:
    """Parse a dlib DNN file (e.g. dlib_face_recognition_resnet_model_v1.dat) into records."""
    path = os.fspath(path)
    if data is None:
        with open(path, "rb") as fh:
            data = fh.read()
    r = Reader(data, path)
    if not data:
        raise DlibFormatError(f"{path}: not a valid dlib model file: the file is empty")
    r.version((1,), "add_loss_layer")
    loss = _read_loss(r)
    # Wrapper versions (add_layer 2/3, tag/skip 1) until the input layer's tag (a string whose
    # length integer is far above 3).
    versions: list[int] = []
    while True:
        off = r.pos
        v = r.int("layer wrapper version")
        if v > 3:
            r.pos = off
            in_tag = r.tag(_INPUT_TAGS, "input layer")
            break
        if v < 1:
            raise r.error(f"unexpected layer wrapper version {v}", off)
        versions.append(v)
        if len(versions) > 100_000:
            raise r.error("too many layer wrappers", off)
    if not versions:
        raise r.error("no layers before the input layer", r.pos)
    inp = _read_input(r, in_tag, off)
    innermost_version = versions[-1]
    layers: list[LayerRecord] = []
    while not r.at_end():
        rec = _read_layer(r)
        for name in ("setup called", "gradient stale", "output disabled"):
            r.bool(name)
        for name in ("x_grad", "cached_output", "params_grad"):
            r.tensor(name)
        if not layers and innermost_version == 3:
            rec.fields["sample_expansion_factor"] = r.int("sample_expansion_factor")
        layers.append(rec)
    n_add = sum(1 for v in versions if v in (2, 3))
    if len(layers) < 1 or len(layers) > len(versions):
        raise r.error(f"found {len(layers)} layer records for {len(versions)} wrappers "
                      f"({n_add} computational)")
    return DnnFile(path=path, loss=loss, input=inp, layers=layers)
