"""dlib's face descriptor network (dlib_face_recognition_resnet_model_v1) in Flax.

The network (dlib examples/dnn_face_recognition_ex.cpp, "anet_type"), input 150x150 RGB:

  conv 7x7/2 (32, no padding) -> affine -> relu -> max-pool 3x3/2
  3 x residual(32)
  down-residual(64)  + 3 x residual(64)
  down-residual(128) + 2 x residual(128)
  down-residual(256) + 2 x residual(256)
  down-residual(256)
  global average pool -> fc 256 -> 128 (no bias)

residual(N):      relu(x + affine(conv3x3(relu(affine(conv3x3(x))))))
down-residual(N): relu(avgpool2x2/2(x) + affine(conv3x3(relu(affine(conv3x3/2(x))))))
where the 3x3/2 convolution has no padding and dlib adds tensors of different spatial sizes by
zero-padding the smaller one at the high end of each axis (each down block adds N/2 shortcut channels
to N, and the last two add 3x3 to 4x4 and 1x1 to 2x2 maps).
"affine" is a frozen per-channel scale and shift (batch norm folded at training time).

Input normalization (dlib/dnn/input.h, input_rgb_image_sized): (pixel - mean_c) / 256 on 0..255
values, means (122.782, 117.001, 104.298) read from the file. Output: 128 floats, not normalized;
two faces are the same person for dlib when their Euclidean distance is below 0.6.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.checkpoints import bundled, cache, dlib_format
from idguardian_jax.encoders import frozen_conv
from idguardian_jax.encoders.base import Encoder

NAME = "dlib_resnet"
CHIP_SIZE = 150
CHIP_PADDING = 0.25
EMBED_DIM = 128
THRESHOLD = 0.6  # dlib's same-person threshold on Euclidean distance (the file's loss stores it)
PARAM_COUNT = 5_614_592  # parameters of the upstream file: 29 convs, 29 affines, fc 256x128

# (channels, number of plain residual blocks after the optional down block, has down block)
_STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False), (64, 3, True), (128, 2, True), (256, 2, True), (256, 0, True))


def _add_zero_padded(a: jax.Array, b: jax.Array) -> jax.Array:
    """a + b for NHWC tensors of different H, W or C: dlib's tt::add zero-pads the smaller one at
    the high end of each axis (down blocks add 32 to 64 channels, 4x4 to 3x3 maps)."""
    shape = [max(i, j) for i, j in zip(a.shape, b.shape)]

    def pad(x):
        return jnp.pad(x, [(0, n - m) for n, m in zip(shape, x.shape)])

    return pad(a) + pad(b)


class Affine(nn.Module):
    """Per-channel y = x * scale + bias (dlib's affine_ layer in convolutional mode)."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return x * scale + bias


class Conv(nn.Module):
    """A convolution with bias (dlib's con_ layer); with the kernel's flipped copy in the
    'derived' collection (`derive`), its input gradient uses that copy (encoders/frozen_conv.py)."""

    features: int
    kernel: int
    stride: int
    padding: int

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", nn.initializers.lecun_normal(),
                       (self.kernel, self.kernel, x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        flipped = (self.get_variable("derived", "flipped")
                   if self.has_variable("derived", "flipped") else None)
        p = self.padding
        return frozen_conv.convolve(x, k, flipped, (self.stride, self.stride),
                                    ((p, p), (p, p))) + b


class ConvAffine(nn.Module):
    features: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1

    @nn.compact
    def __call__(self, x):
        p = self.padding
        x = Conv(self.features, self.kernel, self.stride, p, name="conv")(x)
        return Affine(name="affine")(x)


class ResidualBlock(nn.Module):
    features: int
    down: bool = False

    @nn.compact
    def __call__(self, x):
        stride, pad = (2, 0) if self.down else (1, 1)
        y = nn.relu(ConvAffine(self.features, stride=stride, padding=pad, name="conv1")(x))
        y = ConvAffine(self.features, name="conv2")(y)
        shortcut = nn.avg_pool(x, (2, 2), strides=(2, 2)) if self.down else x
        return nn.relu(_add_zero_padded(shortcut, y))


class DlibResNet(nn.Module):
    """150x150x3 normalized chips (NHWC float32) -> (N, 128) descriptors."""

    stages: Sequence[tuple[int, int, bool]] = _STAGES
    stem_features: int = 32
    embed_dim: int = EMBED_DIM

    @nn.compact
    def __call__(self, x):
        x = nn.relu(ConvAffine(self.stem_features, kernel=7, stride=2, padding=0, name="stem")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        for s, (features, n_plain, has_down) in enumerate(self.stages):
            if has_down:
                x = ResidualBlock(features, down=True, name=f"stage{s}_down")(x)
            for b in range(n_plain):
                x = ResidualBlock(features, name=f"stage{s}_block{b}")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.embed_dim, use_bias=False, name="fc")(x)


MODEL = DlibResNet()


def preprocess(chips: jax.Array, mean: jax.Array | Sequence[float] = (122.782, 117.001, 104.298)):
    """[0, 1] RGB chips (N, 150, 150, 3) -> the network's input, (255 x - mean) / 256."""
    return (chips * 255.0 - jnp.asarray(mean, chips.dtype)) / 256.0


def apply(params: dict[str, Any], chips: jax.Array) -> jax.Array:
    """Descriptors of float32 RGB chips in [0, 1], shape (N, 150, 150, 3) -> (N, 128).

    `params` is what `load()` returns: {'net': flax variables, 'mean': (3,) array} and, from
    `with_derived`, 'derived' (the kernels' flipped copies: a faster input gradient, same values).
    """
    chex.assert_rank(chips, 4)
    chex.assert_axis_dimension(chips, -1, 3)
    variables = {"params": params["net"], "derived": params.get("derived", {})}
    return MODEL.apply(variables, preprocess(chips, params["mean"]))


def derive(net: dict[str, Any]) -> dict[str, Any]:
    """The 'derived' collection of a params tree: every convolution kernel flipped once
    (frozen_conv.flip), at the kernel's place in the tree (.../conv/flipped)."""
    out = {}
    for name, sub in net.items():
        if not isinstance(sub, dict):
            continue
        if name == "conv" and "kernel" in sub:
            out[name] = {"flipped": frozen_conv.flip(sub["kernel"])}
        elif (d := derive(sub)):
            out[name] = d
    return out


def with_derived(params: dict[str, Any]) -> dict[str, Any]:
    """params plus 'derived' (`derive` of its net, as jnp arrays): added wherever the weights are
    loaded (`load`, a converted file's `from_tree`), never stored (`to_tree` drops it)."""
    return dict(params, derived=jax.tree_util.tree_map(jnp.asarray, derive(params["net"])))


# ------------------------------------------------------------------------------------------
# Loading the upstream .dat file
# ------------------------------------------------------------------------------------------
_PARSER_VERSION = 1


class _Records:
    """Consumes dlib layer records in file order (innermost first) with structural checks."""

    def __init__(self, dnn: dlib_format.DnnFile):
        self.dnn = dnn
        self.layers = dnn.layers
        self.i = 0

    def take(self, kind: str) -> dlib_format.LayerRecord:
        if self.i >= len(self.layers):
            raise dlib_format.DlibFormatError(
                f"{self.dnn.path}: not the dlib face recognition network: it ends after "
                f"{len(self.layers)} layers, expected a {kind} layer next")
        rec = self.layers[self.i]
        if rec.kind != kind:
            raise dlib_format.DlibFormatError(
                f"{self.dnn.path}: not the dlib face recognition network: layer {self.i} is "
                f"{rec.tag!r} at byte offset {rec.offset}, expected a {kind} layer")
        self.i += 1
        return rec

    def conv_affine(self, features: int, kernel: int, stride: int, pad: int) -> dict[str, Any]:
        c = self.take("con")
        f = c.fields
        want = (features, (kernel, kernel), (stride, stride), (pad, pad))
        got = (f["num_filters"], f["kernel"], f["stride"], f["padding"])
        if got != want:
            raise dlib_format.DlibFormatError(
                f"{self.dnn.path}: convolution at byte offset {c.offset} is "
                f"(filters, kernel, stride, padding)={got}, expected {want}")
        a = self.take("affine").fields
        return {
            "conv": {"kernel": np.transpose(f["filters"], (2, 3, 1, 0)),  # OIHW -> HWIO
                     "bias": f["biases"].astype(np.float32)},
            "affine": {"scale": a["gamma"].astype(np.float32), "bias": a["beta"].astype(np.float32)},
        }

    def block(self, features: int, down: bool) -> dict[str, Any]:
        out = {"conv1": self.conv_affine(features, 3, 2 if down else 1, 0 if down else 1)}
        self.take("relu")
        out["conv2"] = self.conv_affine(features, 3, 1, 1)
        if down:
            p = self.take("avg_pool").fields
            if (p["window"], p["stride"], p["padding"]) != ((2, 2), (2, 2), (0, 0)):
                raise dlib_format.DlibFormatError(f"{self.dnn.path}: unexpected shortcut pooling {p}")
        self.take("add_prev")
        self.take("relu")
        return out


def _parse(path: str) -> tuple[dict[str, Any], Any]:
    dnn = dlib_format.read_dnn(path)
    if dnn.loss.tag not in ("loss_metric_", "loss_metric_2"):
        raise dlib_format.DlibFormatError(
            f"{path}: not the dlib face recognition network: its loss is {dnn.loss.tag!r}")
    if dnn.input.tag != "input_rgb_image_sized" or (dnn.input.fields["rows"],
                                                    dnn.input.fields["cols"]) != (150, 150):
        raise dlib_format.DlibFormatError(
            f"{path}: not the dlib face recognition network: input {dnn.input.tag} {dnn.input.fields}")
    r = _Records(dnn)
    net: dict[str, Any] = {"stem": r.conv_affine(32, 7, 2, 0)}
    r.take("relu")
    mp = r.take("max_pool").fields
    if (mp["window"], mp["stride"]) != ((3, 3), (2, 2)):
        raise dlib_format.DlibFormatError(f"{path}: unexpected stem pooling {mp}")
    for s, (features, n_plain, has_down) in enumerate(_STAGES):
        if has_down:
            net[f"stage{s}_down"] = r.block(features, down=True)
        for b in range(n_plain):
            net[f"stage{s}_block{b}"] = r.block(features, down=False)
    gp = r.take("avg_pool").fields
    if gp["window"] != (0, 0):
        raise dlib_format.DlibFormatError(f"{path}: expected global average pooling, found {gp}")
    fc = r.take("fc").fields
    if fc["weights"].shape != (256, EMBED_DIM):
        raise dlib_format.DlibFormatError(f"{path}: fc weights of shape {fc['weights'].shape}")
    net["fc"] = {"kernel": fc["weights"].astype(np.float32)}
    if r.i != len(dnn.layers):
        raise dlib_format.DlibFormatError(
            f"{path}: {len(dnn.layers) - r.i} unexpected layers after the fc layer")
    meta = {"dist_thresh": dnn.loss.fields["dist_thresh"], "margin": dnn.loss.fields["margin"]}
    return {"net": net, "mean": np.asarray(dnn.input.fields["mean"], np.float32)}, meta


def load(path: str | os.PathLike | None = None, use_cache: bool = True) -> dict[str, Any]:
    """Parameters from a dlib .dat file (default: the file bundled in face_recognition_models).

    Returns {'net': flax params pytree (jnp arrays), 'mean': (3,) float32, 'derived': the
    kernels' flipped copies (`with_derived`; 22 MB)}. Raises
    DlibFormatError naming the file and byte offset for a damaged or foreign file.
    """
    path = os.fspath(path) if path is not None else bundled.model_path(bundled.RESNET)
    tree, _ = cache.cached_parse(path, "dlib_resnet", _PARSER_VERSION, _parse, use_cache)
    return with_derived(jax.tree_util.tree_map(jnp.asarray, tree))


def param_count(params: dict[str, Any]) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params["net"])))


ENCODER = Encoder(
    name=NAME, chip_size=CHIP_SIZE, view="dlib", padding=CHIP_PADDING,
    load=load, apply=apply, distance="euclidean", threshold=THRESHOLD, embed_dim=EMBED_DIM,
    to_tree=lambda p: ({k: v for k, v in p.items() if k != "derived"}, {}),
    from_tree=lambda tree, meta: with_derived(tree))
