"""ArcFace: InsightFace's IResNet-50 / IResNet-100 face recognition networks in Flax.

The network (insightface recognition/arcface_torch/backbones/iresnet.py), input 112x112 RGB:

  conv 3x3 pad 1 (64, no bias) -> BN -> PReLU
  4 stages of widths 64/128/256/512 with [3, 4, 14, 3] (r50) or [3, 13, 30, 3] (r100) blocks;
  block(x) = BN(conv3x3/s(PReLU(BN(conv3x3(BN(x)))))) + shortcut(x), nothing after the add;
  the first block of each stage has stride 2 and shortcut = BN(conv1x1/2(x)), the others x
  head: BN2d -> flatten in NCHW order (512*7*7) -> Linear 25088 -> 512 -> BatchNorm1d
All batch norms have eps 1e-5 and run on their running statistics. Convolutions pad explicitly
((1, 1), (1, 1)) as PyTorch does (Flax 'SAME' pads stride-2 convolutions differently).

Input: (x - 127.5) / 127.5 on 0..255 RGB (insightface model_zoo/arcface_onnx.py; its cv2 blob
swaps BGR to RGB). Output: the raw 512-d embedding (what the ONNX file outputs; InstantID uses it
as is); compare L2-normalized (`normalize`). Distance: cosine (1 - cos); THRESHOLD = 0.72, i.e.
cosine similarity 0.28, above which InsightFace's recognition demo (web-demos/src_recognition/
main.py, with buffalo_l's w600k_r50) says "They ARE the same person" (0.2-0.28: "likely").

Weights, two upstream forms, both of which `load` reads:
- arcface_torch state dicts (`backbone.pth`, or a training checkpoint holding
  'state_dict_backbone'), read with torch (`weights_only=True`, imported only there);
- InsightFace ONNX files (buffalo_l `w600k_r50.onnx`, antelopev2 `glintr100.onnx`), read with the
  `onnx` package only: graph.node is walked from the input following tensor names
  (Conv / BatchNormalization / PRelu / Add / Flatten / Gemm). Exported files have each batch norm
  that follows a convolution folded into it (the convolution gets a bias); such files load into
  the "folded" form of the network (conv with bias, no BN after it), unfolded files into the
  upstream form. Files that normalize inside the graph (Sub / Mul at the input, older MXNet
  conversions) get that normalization as their input mean / std instead of 127.5 / 127.5.
The variant (r50, r100, or another depth) is read off the file; the registry name is 'arcface'.
"""
from __future__ import annotations

import collections
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.encoders.facenet import l2_normalize
from idguardian_jax.encoders.base import Encoder
from idguardian_jax.checkpoints import cache
from idguardian_jax.checkpoints.tensors import (CheckpointError, _first_line, _flax_to_torch_name,
                                                bilinear_resize, count_params, read_tensors,
                                                state_dict_to_variables, write_tensors)

NAME = "arcface"
CHIP_SIZE = 112
EMBED_DIM = 512
THRESHOLD = 0.72  # cosine distance; InsightFace's demo: similarity >= 0.28 is the same person
BN_EPS = 1e-5
LAYERS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
# parameters() of arcface_torch's iresnet50 / iresnet100 (num_features 512, fc 25088 -> 512)
PARAM_COUNTS = {"r50": 43_590_848, "r100": 65_156_160}
INPUT_MEAN = 127.5
INPUT_STD = 127.5


# ==========================================================================================
# The network
# ==========================================================================================
class PReLU(nn.Module):
    """Per-channel PReLU: x if x >= 0 else slope_c * x."""

    @nn.compact
    def __call__(self, x):
        slope = self.param("slope", nn.initializers.constant(0.25), (x.shape[-1],))
        return jnp.where(x >= 0, x, x * slope)


def _bn(name: str):
    return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name=name)


def _conv(features: int, kernel: int, stride: int, bias: bool, name: str):
    p = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=stride, padding=((p, p), (p, p)),
                   use_bias=bias, name=name)


class IBasicBlock(nn.Module):
    features: int
    stride: int = 1
    downsample: bool = False
    folded: bool = False  # batch norms after convolutions folded into them (ONNX exports)

    @nn.compact
    def __call__(self, x):
        f = self.folded
        y = _bn("bn1")(x)
        y = _conv(self.features, 3, 1, f, "conv1")(y)
        y = y if f else _bn("bn2")(y)
        y = PReLU(name="prelu")(y)
        y = _conv(self.features, 3, self.stride, f, "conv2")(y)
        y = y if f else _bn("bn3")(y)
        if self.downsample:
            x = _conv(self.features, 1, self.stride, f, "downsample_0")(x)
            x = x if f else _bn("downsample_1")(x)
        return y + x


class IResNet(nn.Module):
    """Normalized 112x112 NHWC chips -> (N, num_features) raw embeddings."""

    layers: Sequence[int] = LAYERS["r50"]
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: int = 64
    num_features: int = EMBED_DIM
    folded: bool = False
    features_bn: bool = True  # the final BatchNorm1d (absent if a file folded it into fc)

    @nn.compact
    def __call__(self, x):
        x = _conv(self.stem, 3, 1, self.folded, "conv1")(x)
        x = x if self.folded else _bn("bn1")(x)
        x = PReLU(name="prelu")(x)
        for s, (n, w) in enumerate(zip(self.layers, self.widths)):
            for i in range(n):
                x = IBasicBlock(w, 2 if i == 0 else 1, i == 0, self.folded,
                                name=f"layer{s + 1}_{i}")(x)
        x = _bn("bn2")(x)
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch.flatten of NCHW
        x = nn.Dense(self.num_features, name="fc")(x)
        return _bn("features")(x) if self.features_bn else x


def config_of(variables: Mapping[str, Any]) -> dict[str, Any]:
    """The IResNet fields of a variables tree (its keys and shapes; static under jit)."""
    p = variables["params"]
    layers, widths, s = [], [], 1
    while f"layer{s}_0" in p:
        n = 0
        while f"layer{s}_{n}" in p:
            n += 1
        layers.append(n)
        widths.append(int(p[f"layer{s}_0"]["conv2"]["kernel"].shape[-1]))
        s += 1
    return dict(layers=tuple(layers), widths=tuple(widths),
                stem=int(p["conv1"]["kernel"].shape[-1]),
                num_features=int(p["fc"]["kernel"].shape[-1]),
                folded="bias" in p["conv1"], features_bn="features" in p)


def variant_of(layers: Sequence[int]) -> str:
    for name, ls in LAYERS.items():
        if tuple(layers) == ls:
            return name
    return "iresnet" + "-".join(str(n) for n in layers)


def variable_shapes(**config) -> dict[str, Any]:
    return jax.eval_shape(IResNet(**config).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, CHIP_SIZE, CHIP_SIZE, 3)))


def preprocess(chips: jax.Array, mean=INPUT_MEAN, std=INPUT_STD) -> jax.Array:
    """[0, 1] RGB chips -> (255 x - mean) / std, resized bilinearly to 112 if needed."""
    chips = bilinear_resize(chips, CHIP_SIZE)
    return (chips * 255.0 - jnp.asarray(mean, chips.dtype)) / jnp.asarray(std, chips.dtype)


def apply(params: dict[str, Any], chips: jax.Array) -> jax.Array:
    """Raw embeddings of float32 RGB chips in [0, 1], (N, 112, 112, 3) -> (N, 512).

    `params` is what `load()` returns: {'net': Flax variables, 'input_mean': (3,),
    'input_std': (3,)}. Chips of another size are resized bilinearly to 112."""
    chex.assert_rank(chips, 4)
    chex.assert_axis_dimension(chips, -1, 3)
    model = IResNet(**config_of(params["net"]))
    return model.apply(params["net"], preprocess(chips, params["input_mean"], params["input_std"]))


def normalize(emb: jax.Array) -> jax.Array:
    """L2-normalized embeddings (InsightFace's `normed_embedding`)."""
    return l2_normalize(emb)


def apply_normed(params: dict[str, Any], chips: jax.Array) -> jax.Array:
    return normalize(apply(params, chips))


# ==========================================================================================
# State dicts (arcface_torch naming: conv1, bn1, prelu, layerS.I.{bn1, conv1, bn2, prelu, conv2,
# bn3, downsample.0, downsample.1}, bn2, fc, features; folded files have conv biases instead of
# the batch norms after convolutions)
# ==========================================================================================
_WHAT_PT = "an arcface_torch IResNet state dict"
_PARSER_VERSION = 1


def _config_from_state_dict(sd: Mapping[str, np.ndarray], path: str, what: str) -> dict:
    for key in ("conv1.weight", "fc.weight", "layer1.0.conv1.weight"):
        if key not in sd:
            raise CheckpointError(f"{path}: not {what}: missing key {key!r}")
    layers, widths, s = [], [], 1
    while f"layer{s}.0.conv1.weight" in sd:
        n = 0
        while f"layer{s}.{n}.conv1.weight" in sd:
            n += 1
        layers.append(n)
        widths.append(int(np.shape(sd[f"layer{s}.0.conv1.weight"])[0]))
        s += 1
    fc = np.shape(sd["fc.weight"])
    if len(fc) != 2 or fc[1] != widths[-1] * 49:
        raise CheckpointError(f"{path}: not {what}: 'fc.weight' has shape {fc}, expected "
                              f"(N, {widths[-1] * 49}) for a 112x112 input")
    return dict(layers=tuple(layers), widths=tuple(widths),
                stem=int(np.shape(sd["conv1.weight"])[0]),
                num_features=int(fc[0]), folded="conv1.bias" in sd,
                features_bn="features.running_mean" in sd)


def _from_state_dict(sd: Mapping[str, np.ndarray], path: str, what: str, source: str):
    sd = dict(sd)
    mean = np.broadcast_to(np.asarray(sd.pop("input_mean", INPUT_MEAN), np.float32), (3,))
    std = np.broadcast_to(np.asarray(sd.pop("input_std", INPUT_STD), np.float32), (3,))
    cfg = _config_from_state_dict(sd, path, what)
    variables = state_dict_to_variables(sd, variable_shapes(**cfg), path, what)
    tree = {"net": variables, "input_mean": mean.copy(), "input_std": std.copy()}
    info = {"variant": variant_of(cfg["layers"]), "folded": cfg["folded"], "source": source}
    return tree, info


def variables_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse mapping: load()'s params -> arcface_torch-named float32 arrays (plus
    'input_mean' / 'input_std'); folded networks give conv biases and no post-conv BNs."""
    out: dict[str, np.ndarray] = {}
    names = {"kernel": "weight", "scale": "weight", "slope": "weight", "bias": "bias",
             "mean": "running_mean", "var": "running_var"}
    for coll in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(params["net"].get(coll, {}))[0]
        for kpath, v in flat:
            keys = [k.key for k in kpath]
            v = np.asarray(v, np.float32)
            if keys[-1] == "kernel":
                v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
            out[_flax_to_torch_name(keys[:-1], names[keys[-1]])] = np.ascontiguousarray(v)
    out["input_mean"] = np.asarray(params["input_mean"], np.float32)
    out["input_std"] = np.asarray(params["input_std"], np.float32)
    return out


# ==========================================================================================
# ONNX files
# ==========================================================================================
_WHAT_ONNX = "an InsightFace IResNet (ArcFace) ONNX model"


class _Graph:
    """Data-flow view of an ONNX graph: constants (initializers, Constant nodes and shape ops on
    them folded), the live nodes, and who consumes each tensor."""

    def __init__(self, model, path: str):
        from onnx import numpy_helper

        self.path = path
        g = model.graph
        self.consts: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.nodes = []
        for n in g.node:
            if self._fold_constant(n, numpy_helper):
                continue
            self.nodes.append(n)
        self.consumers: dict[str, list] = collections.defaultdict(list)
        for n in self.nodes:
            for name in n.input:
                if name:
                    self.consumers[name].append(n)
        inputs = [i.name for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            self.fail(f"it has {len(inputs)} graph inputs, expected 1 image input")
        self.input = inputs[0]
        self.outputs = [o.name for o in g.output]

    def _fold_constant(self, n, numpy_helper) -> bool:
        ins = [i for i in n.input if i]
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    self.consts[n.output[0]] = numpy_helper.to_array(a.t)
                    return True
            return False
        if not ins or not all(i in self.consts for i in ins):
            return False
        v = [self.consts[i] for i in ins]
        attrs = {a.name: a for a in n.attribute}
        if n.op_type in ("Identity", "Cast"):
            self.consts[n.output[0]] = v[0]
        elif n.op_type == "Unsqueeze":
            axes = v[1] if len(v) > 1 else list(attrs["axes"].ints)
            out = v[0]
            for ax in sorted(int(a) % (out.ndim + len(axes)) for a in axes):
                out = np.expand_dims(out, ax)
            self.consts[n.output[0]] = out
        elif n.op_type == "Squeeze":
            axes = v[1] if len(v) > 1 else (list(attrs["axes"].ints) if "axes" in attrs else None)
            self.consts[n.output[0]] = np.squeeze(v[0], None if axes is None else tuple(
                int(a) for a in axes))
        elif n.op_type == "Reshape":
            self.consts[n.output[0]] = v[0].reshape([int(d) if d != 0 else v[0].shape[i]
                                                     for i, d in enumerate(v[1])])
        else:
            return False
        return True

    def fail(self, msg: str):
        raise CheckpointError(f"{self.path}: not {_WHAT_ONNX}: {msg}")

    @staticmethod
    def describe(n) -> str:
        return f"{n.op_type} node {n.name or n.output[0]!r}"

    def only_consumer(self, t: str, ops: Sequence[str], after: str):
        cons = self.consumers.get(t, [])
        if len(cons) != 1 or cons[0].op_type not in ops:
            found = ", ".join(self.describe(c) for c in cons) or "nothing"
            self.fail(f"{after} is read by {found}, expected one {'/'.join(ops)} node")
        return cons[0]

    def const(self, n, i: int, what: str) -> np.ndarray:
        name = n.input[i] if i < len(n.input) else ""
        if name not in self.consts:
            self.fail(f"{self.describe(n)}: its {what} is not a constant")
        return np.asarray(self.consts[name], np.float32)

    @staticmethod
    def attr(n, name, default=None):
        from onnx import helper

        for a in n.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default


def _parse_onnx_graph(model, path: str) -> dict[str, np.ndarray]:
    """Walk the IResNet graph from its input; returns an arcface_torch-named state dict (folded
    or not, as the file is) with 'input_mean' / 'input_std'."""
    G = _Graph(model, path)
    sd: dict[str, np.ndarray] = {}
    units: list[tuple[str, str | None]] = []  # (conv prefix, bn prefix) of each conv unit

    # --- normalization inside the graph (Sub / Mul / Div / Add by constants), if any
    t, a, b = G.input, np.float32(1.0), np.float32(0.0)
    while True:
        cons = G.consumers.get(t, [])
        if len(cons) != 1 or cons[0].op_type not in ("Sub", "Mul", "Div", "Add"):
            break
        n = cons[0]
        other = [i for i in n.input if i != t]
        if len(other) != 1 or other[0] not in G.consts or n.input[0] != t:
            break
        c = np.asarray(G.consts[other[0]], np.float32).reshape(-1)
        a, b = {"Sub": (a, b - c), "Add": (a, b + c), "Mul": (a * c, b * c),
                "Div": (a / c, b / c)}[n.op_type]
        t = n.output[0]
    a, b = np.broadcast_to(a, (3,)), np.broadcast_to(b, (3,))
    if np.all(a == 1) and np.all(b == 0):
        mean, std = np.full(3, INPUT_MEAN, np.float32), np.full(3, INPUT_STD, np.float32)
    else:  # the graph reads 0..255 pixels p and computes a * p + b = (p - mean) / std
        mean, std = (-b / a).astype(np.float32), (1.0 / a).astype(np.float32)
    sd["input_mean"], sd["input_std"] = mean, std

    def bn_record(n, prefix: str):
        eps = float(G.attr(n, "epsilon", 1e-5))
        gamma, beta = G.const(n, 1, "scale"), G.const(n, 2, "bias")
        mu, var = G.const(n, 3, "mean"), G.const(n, 4, "variance")
        # the Flax layers use eps 1e-5; move a file's other eps into the variance
        sd.update({f"{prefix}.weight": gamma, f"{prefix}.bias": beta,
                   f"{prefix}.running_mean": mu,
                   f"{prefix}.running_var": (var + np.float32(eps - BN_EPS)).astype(np.float32)})

    def conv_unit(t: str, after: str, conv: str, bn: str, kernel: int, strides=(1, 2),
                  n=None) -> tuple[str, int]:
        n = n or G.only_consumer(t, ("Conv",), after)
        w = G.const(n, 1, "weight")
        ks = list(G.attr(n, "kernel_shape", w.shape[2:]))
        stride = list(G.attr(n, "strides", [1, 1]))
        pads = list(G.attr(n, "pads", [0, 0, 0, 0]))
        p = kernel // 2
        if (w.ndim != 4 or ks != [kernel, kernel] or stride[0] != stride[1]
                or stride[0] not in strides or pads != [p] * 4 or G.attr(n, "group", 1) != 1
                or list(G.attr(n, "dilations", [1, 1])) != [1, 1]
                or G.attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            G.fail(f"{G.describe(n)} is a {ks} convolution with strides {stride}, pads {pads}, "
                   f"expected {kernel}x{kernel} with pad {p} and stride in {strides}")
        sd[f"{conv}.weight"] = w
        if len(n.input) > 2 and n.input[2]:
            sd[f"{conv}.bias"] = G.const(n, 2, "bias")
        out = n.output[0]
        cons = G.consumers.get(out, [])
        if len(cons) == 1 and cons[0].op_type == "BatchNormalization":
            bn_record(cons[0], bn)
            units.append((conv, bn))
            out = cons[0].output[0]
        else:
            units.append((conv, None))
        return out, stride[0]

    def prelu(t: str, after: str, name: str) -> str:
        n = G.only_consumer(t, ("PRelu",), after)
        slope = G.const(n, 1, "slope").reshape(-1)
        sd[f"{name}.weight"] = slope
        return n.output[0]

    # --- stem
    t, _ = conv_unit(t, "the input", "conv1", "bn1", 3, strides=(1,))
    t = prelu(t, "the stem convolution", "prelu")

    # --- residual blocks, until the head's batch norm (whose output is flattened)
    blocks: list[tuple[str, bool]] = []  # (prefix, has downsample)
    stage, index = 0, 0
    while True:
        cons = G.consumers.get(t, [])
        bns = [c for c in cons if c.op_type == "BatchNormalization"]
        where = f"the output of block {len(blocks)}" if blocks else "the stem"
        if len(bns) != 1:
            G.fail(f"{where} is read by {', '.join(G.describe(c) for c in cons) or 'nothing'}, "
                   f"expected a BatchNormalization starting a block or the head")
        after_bn = G.consumers.get(bns[0].output[0], [])
        if len(cons) == 1 and len(after_bn) == 1 and after_bn[0].op_type in ("Flatten", "Reshape"):
            break
        convs = [c for c in cons if c.op_type == "Conv"]
        down = len(convs) == 1
        if len(cons) != 1 + len(convs) + sum(c.op_type == "Add" for c in cons) or len(convs) > 1:
            G.fail(f"{where} is read by {', '.join(G.describe(c) for c in cons)}, expected a "
                   f"block (BatchNormalization, optional downsample Conv, Add)")
        if down or not blocks:
            stage, index = stage + 1, 0
        pre = f"layer{stage}.{index}"
        bn_record(bns[0], f"{pre}.bn1")
        y, _ = conv_unit(bns[0].output[0], f"{pre}.bn1", f"{pre}.conv1", f"{pre}.bn2", 3,
                         strides=(1,))
        y = prelu(y, f"{pre}.conv1", f"{pre}.prelu")
        y, stride = conv_unit(y, f"{pre}.prelu", f"{pre}.conv2", f"{pre}.bn3", 3)
        add = G.only_consumer(y, ("Add",), f"{pre}.conv2")
        other = [i for i in add.input if i != y]
        if down:
            s, s_stride = conv_unit(t, where, f"{pre}.downsample.0", f"{pre}.downsample.1", 1,
                                    n=convs[0])
            if other != [s] or s_stride != stride:
                G.fail(f"{G.describe(add)} does not add the downsample branch of {pre}")
        elif other != [t] or stride != 1:
            G.fail(f"{G.describe(add)}: block {pre} has stride {stride} but no downsample branch")
        blocks.append((pre, down))
        index += 1
        t = add.output[0]
    if not blocks or not blocks[0][1]:
        G.fail("the first block has no downsample branch")

    # --- head: BN2d -> flatten -> (dropout) -> Gemm / MatMul+Add -> (BatchNorm1d)
    bn_record(bns[0], "bn2")
    flat = after_bn[0]
    if flat.op_type == "Flatten" and G.attr(flat, "axis", 1) != 1:
        G.fail(f"{G.describe(flat)} flattens from axis {G.attr(flat, 'axis')}, expected 1")
    t = flat.output[0]
    while len(G.consumers.get(t, [])) == 1 and G.consumers[t][0].op_type in ("Dropout", "Identity"):
        t = G.consumers[t][0].output[0]
    fc = G.only_consumer(t, ("Gemm", "MatMul"), "the flattened features")
    if fc.op_type == "Gemm":
        if G.attr(fc, "alpha", 1.0) != 1.0 or G.attr(fc, "transA", 0) != 0:
            G.fail(f"{G.describe(fc)} has alpha/transA attributes this loader does not handle")
        w = G.const(fc, 1, "weight")
        w = w if G.attr(fc, "transB", 0) else w.T
        bias = (G.const(fc, 2, "bias") * np.float32(G.attr(fc, "beta", 1.0))
                if len(fc.input) > 2 and fc.input[2] else np.zeros(w.shape[0], np.float32))
        t = fc.output[0]
    else:
        w = G.const(fc, 1, "weight").T
        t = fc.output[0]
        cons = G.consumers.get(t, [])
        if len(cons) == 1 and cons[0].op_type == "Add":
            other = [i for i in cons[0].input if i != t]
            bias = G.const(cons[0], cons[0].input.index(other[0]), "bias").reshape(-1)
            t = cons[0].output[0]
        else:
            bias = np.zeros(w.shape[0], np.float32)
    sd["fc.weight"], sd["fc.bias"] = w, np.broadcast_to(bias, (w.shape[0],)).astype(np.float32)
    cons = G.consumers.get(t, [])
    if len(cons) == 1 and cons[0].op_type == "BatchNormalization":
        bn_record(cons[0], "features")
        t = cons[0].output[0]
    if t not in G.outputs or G.consumers.get(t):
        G.fail(f"the embedding {t!r} is not the graph's output (outputs: {G.outputs})")

    # --- one form for the whole network: all conv+BN pairs kept, or all folded
    folded = any(bn is None for _, bn in units)
    for conv, bn in units:
        if folded and bn is not None:  # fold this pair as the exporter does
            s = sd.pop(f"{bn}.weight") / np.sqrt(sd.pop(f"{bn}.running_var") + np.float32(BN_EPS))
            mu, beta = sd.pop(f"{bn}.running_mean"), sd.pop(f"{bn}.bias")
            b0 = sd.get(f"{conv}.bias", np.zeros_like(mu))
            sd[f"{conv}.weight"] = sd[f"{conv}.weight"] * s[:, None, None, None]
            sd[f"{conv}.bias"] = (b0 - mu) * s + beta
        elif folded:
            sd.setdefault(f"{conv}.bias", np.zeros(sd[f"{conv}.weight"].shape[0], np.float32))
        elif f"{conv}.bias" in sd:  # BN(conv + b) == BN with mean - b
            sd[f"{bn}.running_mean"] = sd[f"{bn}.running_mean"] - sd.pop(f"{conv}.bias")
    return sd


def _parse_file(path: str):
    if os.path.splitext(path)[1].lower() == ".onnx":
        try:
            import onnx
        except ImportError:
            raise CheckpointError(f"{path}: reading an ONNX model needs the onnx package "
                                  f"(pip install onnx)") from None
        try:
            model = onnx.load(path)
        except Exception as e:
            raise CheckpointError(f"{path}: not a readable ONNX file ({_first_line(e)})") from None
        sd = _parse_onnx_graph(model, path)
        return _from_state_dict(sd, path, _WHAT_ONNX, "onnx")
    return _from_state_dict(read_tensors(path), path, _WHAT_PT, "state_dict")


def load(path: str | os.PathLike | None = None, use_cache: bool = True, with_info: bool = False):
    """Parameters from an InsightFace ArcFace checkpoint: an ONNX file (w600k_r50.onnx,
    glintr100.onnx; needs the `onnx` package), an arcface_torch state dict (.pt/.pth; needs
    torch), or the .safetensors / .npz that `convert` writes (needs neither).

    Returns {'net': Flax variables, 'input_mean': (3,), 'input_std': (3,)} (jnp arrays); with
    with_info=True also {'variant': 'r50' | 'r100' | ..., 'folded': bool, 'source': ...}.
    ONNX / torch files are parsed once and cached as .npz. Raises CheckpointError (one line
    naming the file) for a damaged file or another network."""
    if path is None:
        raise FileNotFoundError(
            "ArcFace weights are not bundled: pass the path of InsightFace's w600k_r50.onnx "
            "(buffalo_l) or glintr100.onnx (antelopev2), or an arcface_torch backbone .pth")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    cacheable = os.path.splitext(path)[1].lower() not in (".safetensors", ".npz")
    tree, info = cache.cached_parse(path, "arcface", _PARSER_VERSION, _parse_file,
                                    use_cache and cacheable)
    params = jax.tree_util.tree_map(jnp.asarray, tree)
    return (params, info) if with_info else params


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Re-save any checkpoint `load` reads as .safetensors / .npz (arcface_torch names; folded
    files keep their conv biases), readable later without torch or onnx."""
    params = load(src, use_cache=False)
    write_tensors(dst, variables_to_state_dict(params))


def param_count(params: dict[str, Any]) -> int:
    """Trainable parameters (batch-norm statistics excluded). Equals PARAM_COUNTS[variant] for
    arcface_torch state dicts; folded ONNX networks have fewer (a conv bias per folded BN)."""
    return count_params(params["net"])


ENCODER = Encoder(
    name=NAME, chip_size=CHIP_SIZE, view="arcface", padding=0.0, load=load, apply=apply,
    distance="cosine", threshold=THRESHOLD, embed_dim=EMBED_DIM)


def main(argv: Iterable[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m encoders.arcface",
                                description="Convert an InsightFace ONNX / arcface_torch "
                                            "checkpoint to .safetensors or .npz.")
    p.add_argument("command", choices=["convert", "info"])
    p.add_argument("src")
    p.add_argument("dst", nargs="?")
    a = p.parse_args(list(argv) if argv is not None else None)
    try:
        if a.command == "info":
            params, info = load(a.src, with_info=True)
            print({**info, "param_count": param_count(params),
                   "input_mean": np.asarray(params["input_mean"]).tolist(),
                   "input_std": np.asarray(params["input_std"]).tolist()})
            return
        if not a.dst:
            p.error("convert needs SRC and DST")
        convert(a.src, a.dst)
    except (CheckpointError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(a.dst)


if __name__ == "__main__":
    main()
