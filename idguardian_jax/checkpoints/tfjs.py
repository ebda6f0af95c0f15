"""A TF.js graph-model importer: `NAME.json` + `.bin` shards -> a pure JAX function.

A TF.js graph model (what tfjs-converter writes for a frozen TensorFlow graph) is one JSON file,
  {"format": "graph-model", "modelTopology": {"node": [...]}, "weightsManifest": [...]}
whose nodes are GraphDef nodes in JSON form (name, op, input names, attrs), and whose weights
manifest lists, group by group, the binary shards (`paths`, concatenated in order) and the
tensors laid out one after another in them (name, shape, dtype, optional quantization). Every
Const node's value is one of those tensors.

Weight decoding (as tfjs-core's io.decodeWeights defines it):
- dtype float32 / int32 (4 bytes), bool (1 byte), little endian, row-major;
- quantization {dtype: float16}: IEEE half floats stored, widened to float32;
- quantization {dtype: uint8 | uint16, scale, min}: value = q * scale + min (int32 tensors are
  rounded to the nearest integer).

`read_graph_model(json_path)` returns `GraphParams`: the graph (a hashable, static `GraphModel`:
nodes, inputs, outputs, integer constants such as shapes and paddings) and the float weights
(a dict of float32 arrays: the pytree leaves). `apply(params, x, output_name)` evaluates, with
`jax.lax` ops in float32, only the nodes the requested output depends on; it is pure, jittable
and differentiable w.r.t. x. An op the importer does not know raises `UnsupportedOp` naming the
op and the node.

Ops: Const, Placeholder, Identity, Add/AddV2, Sub, Mul, RealDiv, Maximum, Minimum, Relu, Relu6,
Sigmoid, Tanh, Softmax, BiasAdd, Pad/PadV2, Conv2D, DepthwiseConv2dNative, _FusedConv2D,
_FusedDepthwiseConv2dNative, MatMul, _FusedMatMul (fused BiasAdd then Relu / Relu6 / Prelu /
LeakyRelu / Sigmoid / Tanh / Elu), Reshape, Mean. Layout NHWC only.

Speed on CPU: DepthwiseConv2dNative is evaluated as kh * kw shifted per-channel products and 1x1
Conv2D as a matrix product (both much faster than XLA's CPU convolutions here); other
convolutions use lax.conv_general_dilated.

Gradients follow TF's definitions where JAX's differ: Maximum(a, b) sends the gradient to a where
a >= b (Minimum: where a <= b), Relu / Relu6 pass none at 0 (JAX's maximum splits ties).
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import os
import zlib
from typing import Any, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class GraphModelError(ValueError):
    """A TF.js model file that cannot be read (one line naming the file and what is wrong)."""


class UnsupportedOp(GraphModelError):
    """A node whose op the importer does not implement."""


# ==========================================================================================
# The static graph
# ==========================================================================================
@dataclasses.dataclass(frozen=True, eq=False)
class Node:
    """One graph node. inputs: data inputs (control inputs '^x' dropped, ':0' suffixes removed);
    attrs: (key, value) pairs decoded to Python values (str, int, float, bool, tuples)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...]

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default


@dataclasses.dataclass(frozen=True, eq=False)
class GraphModel:
    """The static part of a graph model (hashable, compared by content, so it can be jit-static).

    nodes: every node, in file order. inputs: Placeholder names. outputs: the signature's outputs
    (names without ':0'). int_constants: name -> (shape, flat values) of the integer Const tensors
    (shapes, paddings, axes), which must be static under jit.
    """

    nodes: tuple[Node, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    int_constants: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    fingerprint: str = ""

    def __post_init__(self):
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", hashlib.sha256(
                json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest())

    def __hash__(self):
        return hash(self.fingerprint)

    def __eq__(self, other):
        return isinstance(other, GraphModel) and other.fingerprint == self.fingerprint

    def node_map(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def int_constant(self, name: str) -> np.ndarray | None:
        for n, shape, values in self.int_constants:
            if n == name:
                return np.asarray(values, np.int64).reshape(shape)
        return None

    def to_json(self) -> dict[str, Any]:
        return {"nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs),
                           "attrs": [[k, _jsonable(v)] for k, v in n.attrs]} for n in self.nodes],
                "inputs": list(self.inputs), "outputs": list(self.outputs),
                "int_constants": [[n, list(s), list(v)] for n, s, v in self.int_constants]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "GraphModel":
        nodes = tuple(Node(n["name"], n["op"], tuple(n["inputs"]),
                           tuple((k, _hashable(v)) for k, v in n["attrs"])) for n in d["nodes"])
        return cls(nodes, tuple(d["inputs"]), tuple(d["outputs"]),
                   tuple((n, tuple(s), tuple(v)) for n, s, v in d["int_constants"]))

    def prune(self, outputs: Sequence[str]) -> "GraphModel":
        """The subgraph the given outputs need (other nodes and constants dropped)."""
        keep = set(topological_order(self, outputs))
        return GraphModel(tuple(n for n in self.nodes if n.name in keep),
                          tuple(i for i in self.inputs if i in keep), tuple(outputs),
                          tuple(c for c in self.int_constants if c[0] in keep))


def _jsonable(v):
    return [_jsonable(x) for x in v] if isinstance(v, tuple) else v


def _hashable(v):
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


@struct.dataclass
class GraphParams:
    """A graph model with its weights: `graph` is static (pytree aux data), `weights` (tensor
    name -> float32 array) are the leaves that jit traces."""

    graph: GraphModel = struct.field(pytree_node=False)
    weights: dict[str, Any]


# ==========================================================================================
# Reading model.json and its shards
# ==========================================================================================
_DTYPES = {"float32": (np.float32, 4), "int32": (np.int32, 4), "bool": (np.bool_, 1)}
_QUANT = {"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}


def _decode_attr(v: Mapping[str, Any]) -> Any:
    """A GraphDef AttrValue in JSON form -> a hashable Python value."""
    if "list" in v:
        lst = v["list"]
        if "i" in lst:
            return tuple(int(x) for x in lst["i"])
        if "f" in lst:
            return tuple(float(x) for x in lst["f"])
        if "s" in lst:
            return tuple(base64.b64decode(x).decode() for x in lst["s"])
        if "b" in lst:
            return tuple(bool(x) for x in lst["b"])
        return ()
    if "s" in v:
        return base64.b64decode(v["s"]).decode(errors="replace")
    if "i" in v:
        return int(v["i"])
    if "f" in v:
        return float(v["f"])
    if "b" in v:
        return bool(v["b"])
    if "type" in v:
        return str(v["type"])
    return None  # shapes and tensors: not needed to evaluate


def _input_name(s: str) -> str | None:
    if s.startswith("^"):
        return None  # control dependency
    if ":" in s:
        base, idx = s.rsplit(":", 1)
        if idx.isdigit():
            if idx != "0":
                raise GraphModelError(f"input {s!r}: only single-output ops are supported")
            return base
    return s


def decode_weights(manifest: Sequence[Mapping[str, Any]], folder: str,
                   source: str = "model.json") -> dict[str, np.ndarray]:
    """Every tensor of a weights manifest, decoded from its shards in `folder`."""
    out: dict[str, np.ndarray] = {}
    for g, group in enumerate(manifest):
        blobs = []
        for p in group.get("paths", []):
            path = os.path.join(folder, p)
            if os.path.basename(p) != p or not os.path.isfile(path):
                raise GraphModelError(f"{source}: weights shard {p!r} not found next to it")
            with open(path, "rb") as fh:
                blobs.append(fh.read())
        buf = b"".join(blobs)
        offset = 0
        for w in group.get("weights", []):
            name, dtype = w["name"], w.get("dtype", "float32")
            shape = tuple(int(s) for s in w.get("shape", []))
            count = int(np.prod(shape, dtype=np.int64))
            if dtype not in _DTYPES:
                raise GraphModelError(f"{source}: weight {name!r} has unsupported dtype {dtype!r}")
            np_dtype, itemsize = _DTYPES[dtype]
            q = w.get("quantization")
            if q is not None:
                qd = q.get("dtype")
                if qd not in _QUANT:
                    raise GraphModelError(f"{source}: weight {name!r}: unsupported quantization "
                                          f"dtype {qd!r}")
                stored = np.dtype(_QUANT[qd]).newbyteorder("<")
                nbytes = count * stored.itemsize
            else:
                stored = np.dtype(np_dtype).newbyteorder("<")
                nbytes = count * itemsize
            if offset + nbytes > len(buf):
                raise GraphModelError(f"{source}: weight {name!r} runs past the end of group {g}'s "
                                      f"shards ({offset + nbytes} > {len(buf)} bytes)")
            raw = np.frombuffer(buf, stored, count, offset)
            offset += nbytes
            if q is None:
                value = raw.astype(np_dtype)
            elif q["dtype"] == "float16":
                value = raw.astype(np.float32).astype(np_dtype)
            else:
                value = raw.astype(np.float64) * float(q["scale"]) + float(q["min"])
                value = np.round(value).astype(np_dtype) if dtype == "int32" else value.astype(np_dtype)
            out[name] = value.reshape(shape)
    return out


def read_graph_model(json_path: str | os.PathLike) -> GraphParams:
    """A TF.js graph model (model.json + its .bin shards next to it) -> GraphParams."""
    json_path = os.fspath(json_path)
    try:
        with open(json_path, "rb") as fh:
            doc = json.loads(fh.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GraphModelError(f"{json_path}: not a readable JSON file ({e})") from None
    if not isinstance(doc, dict) or "modelTopology" not in doc or "weightsManifest" not in doc:
        raise GraphModelError(f"{json_path}: not a TF.js graph model (no modelTopology / "
                              f"weightsManifest)")
    topo = doc["modelTopology"]
    if "node" not in topo:
        raise GraphModelError(f"{json_path}: modelTopology has no 'node' list (a layers model?)")
    weights = decode_weights(doc["weightsManifest"], os.path.dirname(json_path),
                             os.path.basename(json_path))
    return build(topo["node"], weights, doc.get("signature"), json_path)


def build(node_list: Sequence[Mapping[str, Any]], weights: Mapping[str, np.ndarray],
          signature: Mapping[str, Any] | None = None, source: str = "model") -> GraphParams:
    """GraphParams from JSON nodes and decoded weights (integer Consts become static)."""
    nodes, inputs, ints, floats = [], [], [], {}
    for n in node_list:
        ins = tuple(x for x in (_input_name(s) for s in n.get("input", [])) if x is not None)
        attrs = tuple(sorted((k, _decode_attr(v)) for k, v in n.get("attr", {}).items()
                             if k not in ("value", "shape", "_output_shapes")))
        node = Node(n["name"], n["op"], ins, attrs)
        nodes.append(node)
        if node.op == "Placeholder":
            inputs.append(node.name)
        elif node.op == "Const":
            if node.name not in weights:
                raise GraphModelError(f"{source}: Const node {node.name!r} has no tensor in the "
                                      f"weights manifest")
            v = np.asarray(weights[node.name])
            if v.dtype.kind in "iub":
                ints.append((node.name, tuple(v.shape), tuple(int(x) for x in v.reshape(-1))))
            else:
                floats[node.name] = v.astype(np.float32)
    outs = tuple(_input_name(k) for k in (signature or {}).get("outputs", {}))
    graph = GraphModel(tuple(nodes), tuple(inputs), outs, tuple(ints))
    return GraphParams(graph=graph, weights=floats)


# ==========================================================================================
# Evaluation
# ==========================================================================================
def topological_order(graph: GraphModel, outputs: Sequence[str]) -> list[str]:
    """Names of the nodes the outputs depend on, each after its inputs."""
    nodes = graph.node_map()
    order, state = [], {}
    for out in outputs:
        if out not in nodes:
            raise GraphModelError(f"no node named {out!r} in the graph")
        stack = [(out, False)]
        while stack:
            name, done = stack.pop()
            if done:
                if state.get(name) != 2:
                    state[name] = 2
                    order.append(name)
                continue
            if state.get(name) == 2:
                continue
            if state.get(name) == 1:
                raise GraphModelError(f"the graph has a cycle through {name!r}")
            if name not in nodes:
                raise GraphModelError(f"node input {name!r} is not a node of the graph")
            state[name] = 1
            stack.append((name, True))
            for i in reversed(nodes[name].inputs):
                if state.get(i) != 2:
                    if state.get(i) == 1:
                        raise GraphModelError(f"the graph has a cycle through {i!r}")
                    stack.append((i, False))
    return order


def _where_ge(a, b):  # TF Maximum: gradient to a where a >= b
    return jnp.where(a >= b, a, b)


def _where_le(a, b):  # TF Minimum: gradient to a where a <= b
    return jnp.where(a <= b, a, b)


def _relu(x):
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def _relu6(x):
    return jnp.where(x > 0, jnp.where(x < 6, x, jnp.full_like(x, 6.0)), jnp.zeros_like(x))


def _activation(kind: str, x, alpha=None, leak: float = 0.2):
    if kind == "Relu":
        return _relu(x)
    if kind == "Relu6":
        return _relu6(x)
    if kind == "Prelu":
        return jnp.where(x > 0, x, x * alpha)
    if kind == "LeakyRelu":
        return jnp.where(x > 0, x, x * leak)
    if kind == "Sigmoid":
        return jax.nn.sigmoid(x)
    if kind == "Tanh":
        return jnp.tanh(x)
    if kind == "Elu":
        return jax.nn.elu(x)
    return None


def _padding(node: Node, spatial_rank: int = 2):
    pad = node.attr("padding", "VALID")
    if pad in ("SAME", "VALID"):
        return pad
    if pad == "EXPLICIT":
        p = node.attr("explicit_paddings", ())
        if len(p) != 8:
            raise GraphModelError(f"node {node.name!r}: EXPLICIT padding needs 8 explicit_paddings")
        return [(p[2], p[3]), (p[4], p[5])]  # NHWC: pairs for H and W
    raise GraphModelError(f"node {node.name!r}: unsupported padding {pad!r}")


def _check_nhwc(node: Node):
    fmt = node.attr("data_format", "NHWC")
    if fmt != "NHWC":
        raise GraphModelError(f"node {node.name!r} ({node.op}): data_format {fmt!r}; only NHWC")


def _explicit_pads(node: Node, in_hw, k_hw, strides, dil) -> list[tuple[int, int]]:
    """(low, high) padding of H and W as TF computes it (SAME: the extra pixel at the end)."""
    pad = _padding(node)
    if pad == "VALID":
        return [(0, 0), (0, 0)]
    if pad != "SAME":
        return pad
    out = []
    for size, k, s, d in zip(in_hw, k_hw, strides, dil):
        n_out = -(-size // s)
        total = max((n_out - 1) * s + (k - 1) * d + 1 - size, 0)
        out.append((total // 2, total - total // 2))
    return out


def _depthwise(node: Node, x, w, strides, dil):
    """Depthwise convolution as a sum of kh * kw shifted, strided, per-channel products.

    Output channel c * mult + m is input channel c filtered by w[..., c, m] (TF's order). XLA's
    CPU grouped convolution is 15-100x slower than this for MobileNet shapes (measured: 112x112x64,
    3x3: 48 ms vs 0.7 ms forward, 264 ms vs 1.5 ms forward+backward at stride 2). The backward
    pass is the same kind of sum (depthwise_taps' custom VJP)."""
    kh, kw, cin, mult = w.shape
    if mult != 1:
        x = jnp.repeat(x, mult, axis=-1)
    w = jnp.reshape(w, (kh, kw, cin * mult))
    pads = tuple(tuple(p) for p in _explicit_pads(node, x.shape[1:3], (kh, kw), strides, dil))
    return depthwise_taps(x, w, pads, tuple(strides), tuple(dil))


def _taps(xp, w, strides, dil, oh, ow):
    """sum over taps (i, j) of xp[:, i*d + s*r, j*d + s*c, :] * w[i, j]: (N, oh, ow, C)."""
    kh, kw, _ = w.shape
    out = None
    for i in range(kh):
        for j in range(kw):
            term = _tap(xp, i * dil[0], j * dil[1], strides, oh, ow) * w[i, j]
            out = term if out is None else out + term
    return out


def _tap(xp, r0, c0, strides, oh, ow):
    return jax.lax.slice(xp, (0, r0, c0, 0),
                         (xp.shape[0], r0 + strides[0] * (oh - 1) + 1,
                          c0 + strides[1] * (ow - 1) + 1, xp.shape[3]),
                         (1, strides[0], strides[1], 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_taps(x, w, pads, strides, dil):
    """Depthwise correlation of x (N, H, W, C) with w (kh, kw, C), padding ((top, bottom),
    (left, right)), strides and dilations (2-tuples): (N, oh, ow, C).

    Its VJP is written out: the input cotangent is the output cotangent dilated by the stride and
    correlated with the flipped kernel, again a sum of shifted products. (JAX's own transpose of
    the strided slices, pads added up, ran ~7x the forward time inside FaceRes on XLA:CPU.)"""
    (pt, pb), (pl, pr) = pads
    kh, kw, _ = w.shape
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh = (xp.shape[1] - ((kh - 1) * dil[0] + 1)) // strides[0] + 1
    ow = (xp.shape[2] - ((kw - 1) * dil[1] + 1)) // strides[1] + 1
    return _taps(xp, w, strides, dil, oh, ow)


def _depthwise_fwd(x, w, pads, strides, dil):
    return depthwise_taps(x, w, pads, strides, dil), (x, w)


def _depthwise_bwd(pads, strides, dil, res, g):
    x, w = res
    (pt, pb), (pl, pr) = pads
    kh, kw, _ = w.shape
    h, wd = x.shape[1], x.shape[2]
    hp, wp = h + pt + pb, wd + pl + pr
    oh, ow = g.shape[1], g.shape[2]
    # g dilated by the stride and padded so that a stride-1 correlation with the flipped kernel
    # gives the cotangent of the padded input (hp, wp); then crop the padding off
    zero = jnp.zeros((), g.dtype)
    gd = jax.lax.pad(g, zero, ((0, 0, 0),
                               ((kh - 1) * dil[0], hp - (oh - 1) * strides[0] - 1, strides[0] - 1),
                               ((kw - 1) * dil[1], wp - (ow - 1) * strides[1] - 1, strides[1] - 1),
                               (0, 0, 0)))
    gx = _taps(gd, w[::-1, ::-1], (1, 1), dil, hp, wp)[:, pt:pt + h, pl:pl + wd, :]
    # the kernel's cotangent (XLA drops it when only the input's gradient is asked for)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    gw = jnp.stack([jnp.stack([jnp.sum(_tap(xp, i * dil[0], j * dil[1], strides, oh, ow) * g,
                                       axis=(0, 1, 2)) for j in range(kw)]) for i in range(kh)])
    return gx, gw.astype(w.dtype)


depthwise_taps.defvjp(_depthwise_fwd, _depthwise_bwd)


def _conv(node: Node, x, w, depthwise: bool):
    _check_nhwc(node)
    strides = node.attr("strides", (1, 1, 1, 1))
    dil = node.attr("dilations", (1, 1, 1, 1)) or (1, 1, 1, 1)
    if depthwise:
        return _depthwise(node, x, w, tuple(strides[1:3]), tuple(dil[1:3]))
    if w.shape[0] == 1 and w.shape[1] == 1:
        # 1x1 (pointwise): a matrix product, 2-3x faster than XLA's CPU convolution forward +
        # backward (measured: 56x56x128 -> 128, 7.7 ms vs 2.3 ms)
        (pt, pb), (pl, pr) = _explicit_pads(node, x.shape[1:3], (1, 1), strides[1:3], dil[1:3])
        if pt or pb or pl or pr:
            x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        x = x[:, ::strides[1], ::strides[2], :]
        return jnp.einsum("nhwc,co->nhwo", x, w[0, 0], precision=jax.lax.Precision.HIGHEST)
    groups = 1
    return jax.lax.conv_general_dilated(
        x, w, window_strides=tuple(strides[1:3]), padding=_padding(node),
        rhs_dilation=tuple(dil[1:3]), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)


def _fused_tail(node: Node, y, args):
    """_Fused*: the fused ops after the main op (BiasAdd, then one activation)."""
    ops = node.attr("fused_ops", ())
    rest = list(args)
    for op in ops:
        if op == "BiasAdd":
            y = y + rest.pop(0)
            continue
        alpha = rest.pop(0) if op == "Prelu" else None
        z = _activation(op, y, alpha, node.attr("leakyrelu_alpha", 0.2))
        if z is None:
            raise UnsupportedOp(f"node {node.name!r}: unsupported fused op {op!r} in {node.op}")
        y = z
    return y


def _static_ints(graph: GraphModel, node: Node, name: str) -> np.ndarray:
    v = graph.int_constant(name)
    if v is None:
        raise GraphModelError(f"node {node.name!r} ({node.op}): input {name!r} must be an "
                              f"integer constant")
    return v


def _matmul(node: Node, a, b):
    if node.attr("transpose_a", False):
        a = jnp.swapaxes(a, -1, -2)
    if node.attr("transpose_b", False):
        b = jnp.swapaxes(b, -1, -2)
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


_BINARY = {"Add": jnp.add, "AddV2": jnp.add, "Sub": jnp.subtract, "Mul": jnp.multiply,
           "RealDiv": jnp.divide, "Maximum": _where_ge, "Minimum": _where_le}
_UNARY = {"Relu": _relu, "Relu6": _relu6, "Sigmoid": jax.nn.sigmoid, "Tanh": jnp.tanh,
          "Identity": lambda x: x, "Softmax": lambda x: jax.nn.softmax(x, axis=-1)}


def _eval_node(graph: GraphModel, node: Node, get):
    op = node.op
    if op in _BINARY:
        return _BINARY[op](get(node.inputs[0]), get(node.inputs[1]))
    if op in _UNARY:
        return _UNARY[op](get(node.inputs[0]))
    if op == "BiasAdd":
        _check_nhwc(node)
        return get(node.inputs[0]) + get(node.inputs[1])
    if op in ("Conv2D", "DepthwiseConv2dNative"):
        return _conv(node, get(node.inputs[0]), get(node.inputs[1]), op != "Conv2D")
    if op in ("_FusedConv2D", "_FusedDepthwiseConv2dNative"):
        y = _conv(node, get(node.inputs[0]), get(node.inputs[1]), op != "_FusedConv2D")
        return _fused_tail(node, y, [get(i) for i in node.inputs[2:]])
    if op == "MatMul":
        return _matmul(node, get(node.inputs[0]), get(node.inputs[1]))
    if op == "_FusedMatMul":
        y = _matmul(node, get(node.inputs[0]), get(node.inputs[1]))
        return _fused_tail(node, y, [get(i) for i in node.inputs[2:]])
    if op in ("Pad", "PadV2"):
        x = get(node.inputs[0])
        pads = _static_ints(graph, node, node.inputs[1])
        value = get(node.inputs[2]) if op == "PadV2" else 0.0
        return jax.lax.pad(x, jnp.asarray(value, x.dtype),
                           [(int(lo), int(hi), 0) for lo, hi in pads.reshape(-1, 2)])
    if op == "Reshape":
        shape = [int(s) for s in _static_ints(graph, node, node.inputs[1]).reshape(-1)]
        return jnp.reshape(get(node.inputs[0]), shape)
    if op == "Mean":
        axes = _static_ints(graph, node, node.inputs[1]).reshape(-1)
        x = get(node.inputs[0])
        return jnp.mean(x, axis=tuple(int(a) % x.ndim for a in axes),
                        keepdims=bool(node.attr("keep_dims", False)))
    raise UnsupportedOp(f"node {node.name!r}: unsupported op {op!r}")


@dataclasses.dataclass(frozen=True)
class Dropout:
    """Feature-map dropout inside the graph (model augmentation, DFANet-style): every
    convolution but the first reads its input with each unit kept with probability 1 - rate
    (and scaled by 1 / (1 - rate)); a new thinned network per key."""

    key: jax.Array
    rate: float


_CONV_OPS = ("Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "_FusedDepthwiseConv2dNative")


_ACTIVATION_OPS = ("Relu", "Relu6", "Maximum", "Minimum")


def evaluate(params: GraphParams, feeds: Mapping[str, jax.Array], outputs: Sequence[str],
             dtype=jnp.float32, dropout: Dropout | None = None,
             linear_backward: float = 0.0) -> list[jax.Array]:
    """The requested outputs for the given Placeholder values (name -> array), computed in
    `dtype` (float32; float64 with jax_enable_x64 only to measure rounding).

    dropout: thin the network at random (see Dropout); None evaluates it as stored.
    linear_backward: the last fraction of the activations (Relu, Relu6, and Maximum / Minimum
    with a constant, in topological order) pass the gradient through unchanged, as if they were
    the identity (LinBP, Guo et al. 2020, a transfer technique); the forward values are exact."""
    graph, weights = params.graph, params.weights
    nodes = graph.node_map()
    values: dict[str, Any] = {}
    first_conv = [True]
    order = topological_order(graph, outputs)
    linear: set[str] = set()
    if linear_backward > 0:
        acts = [n for n in order if nodes[n].op in _ACTIVATION_OPS
                and _tensor_input(nodes, nodes[n]) is not None]
        linear = set(acts[len(acts) - int(round(linear_backward * len(acts))):])

    def get(name):
        return values[name]

    def get_dropped(name):
        x = values[name]
        keep = jax.random.bernoulli(
            jax.random.fold_in(dropout.key, zlib.crc32(name.encode()) & 0x7FFFFFFF),
            1.0 - dropout.rate, x.shape)
        return jnp.where(keep, x / (1.0 - dropout.rate), 0.0)

    for name in order:
        node = nodes[name]
        if node.op == "Placeholder":
            if name not in feeds:
                raise GraphModelError(f"no value fed for input {name!r}")
            values[name] = jnp.asarray(feeds[name], dtype)
        elif node.op == "Const":
            if name in weights:
                values[name] = jnp.asarray(weights[name], dtype)
            else:
                values[name] = jnp.asarray(graph.int_constant(name))
        elif dropout is not None and dropout.rate > 0 and node.op in _CONV_OPS:
            if first_conv[0]:
                first_conv[0] = False
                values[name] = _eval_node(graph, node, get)
            else:
                values[name] = _eval_node(graph, node, lambda n, _in=node.inputs[0]: (
                    get_dropped(n) if n == _in else get(n)))
        else:
            values[name] = _eval_node(graph, node, get)
        if name in linear:
            a = values[_tensor_input(nodes, node)]
            values[name] = a + jax.lax.stop_gradient(values[name] - a)
    return [values[o] for o in outputs]


def _tensor_input(nodes: Mapping[str, Node], node: Node) -> str | None:
    """The one non-constant input of an activation node (None if there is not exactly one)."""
    ins = [n for n in map(_input_name, node.inputs) if n is not None and nodes[n].op != "Const"]
    return ins[0] if len(ins) == 1 else None


def apply(params: GraphParams, x: jax.Array, output_name: str | None = None,
          dtype=jnp.float32, dropout: Dropout | None = None,
          linear_backward: float = 0.0) -> jax.Array:
    """Evaluate a one-input graph at x (float32, the Placeholder's shape) and return the node
    `output_name` (default: the signature's first output); ':0' suffixes are accepted."""
    graph = params.graph
    if len(graph.inputs) != 1:
        raise GraphModelError(f"apply needs a one-input graph; inputs: {', '.join(graph.inputs)}")
    out = _input_name(output_name) if output_name else (graph.outputs[0] if graph.outputs else None)
    if out is None:
        raise GraphModelError("the graph has no signature outputs; name the output")
    chex.assert_rank(x, 4)
    return evaluate(params, {graph.inputs[0]: x}, [out], dtype, dropout, linear_backward)[0]
