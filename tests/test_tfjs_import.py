"""The TF.js graph-model importer on tiny hand-built graphs, against numpy (no npm needed)."""
import base64
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idguardian_jax.checkpoints import tfjs


def _s(text):
    return {"s": base64.b64encode(text.encode()).decode()}


def _ints(values):
    return {"list": {"i": [str(v) for v in values]}}


def _conv_attrs(strides=(1, 1, 1, 1), padding="VALID", explicit=(), dilations=(1, 1, 1, 1)):
    return {"strides": _ints(strides), "padding": _s(padding), "data_format": _s("NHWC"),
            "dilations": _ints(dilations), "explicit_paddings": _ints(explicit)}


class ModelWriter:
    """Writes model.json + one .bin shard: weights float32 / int32 / float16 / uint8."""

    def __init__(self):
        self.nodes, self.specs, self.blobs, self.values = [], [], [], {}

    def const(self, name, value, store="float32"):
        value = np.asarray(value)
        spec = {"name": name, "shape": list(value.shape),
                "dtype": "int32" if value.dtype.kind in "iu" else "float32"}
        if store == "float16":
            spec["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            self.blobs.append(value.astype("<f2").tobytes())
            decoded = value.astype(np.float16).astype(np.float32)
        elif store == "uint8":
            lo, hi = float(value.min()), float(value.max())
            scale = (hi - lo) / 255.0
            q = np.round((value - lo) / scale).astype(np.uint8)
            spec["quantization"] = {"dtype": "uint8", "min": lo, "scale": scale,
                                    "original_dtype": "float32"}
            self.blobs.append(q.tobytes())
            decoded = (q.astype(np.float64) * scale + lo).astype(np.float32)
        elif spec["dtype"] == "int32":
            self.blobs.append(value.astype("<i4").tobytes())
            decoded = value.astype(np.int64)
        else:
            self.blobs.append(value.astype("<f4").tobytes())
            decoded = value.astype(np.float32)
        self.specs.append(spec)
        self.values[name] = decoded
        self.nodes.append({"name": name, "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}}})
        return name

    def node(self, name, op, inputs, attr=None):
        self.nodes.append({"name": name, "op": op, "input": list(inputs), "attr": attr or {}})
        return name

    def write(self, folder, outputs):
        path = os.path.join(folder, "model.json")
        doc = {"format": "graph-model", "modelTopology": {"node": self.nodes},
               "signature": {"outputs": {f"{o}:0": {"name": f"{o}:0"} for o in outputs}},
               "weightsManifest": [{"paths": ["model.bin"], "weights": self.specs}]}
        with open(path, "w") as fh:
            json.dump(doc, fh)
        with open(os.path.join(folder, "model.bin"), "wb") as fh:
            fh.write(b"".join(self.blobs))
        return path


def np_conv(x, w, stride=1, pad=((0, 0), (0, 0)), groups=1, dilation=1):
    """Direct NHWC convolution, HWIO filter (I = C / groups)."""
    x = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    n, h, wd, c = x.shape
    kh, kw, ci, co = w.shape
    ekh, ekw = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
    oh, ow = (h - ekh) // stride + 1, (wd - ekw) // stride + 1
    out = np.zeros((n, oh, ow, co), np.float64)
    per = co // groups
    for g in range(groups):
        xs = x[..., g * ci:(g + 1) * ci]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i * dilation:i * dilation + stride * oh:stride,
                           j * dilation:j * dilation + stride * ow:stride]
                out[..., g * per:(g + 1) * per] += patch @ w[i, j][:, g * per:(g + 1) * per]
    return out


def same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _read(tmp_path, m, outputs):
    return tfjs.read_graph_model(m.write(str(tmp_path), outputs))


def test_weight_decoding_float16_uint8_int32(tmp_path, rng):
    m = ModelWriter()
    a = rng.normal(size=(3, 4)).astype(np.float32)
    b = rng.normal(size=(5,)).astype(np.float32)
    m.const("a16", a, "float16")
    m.const("b8", b, "uint8")
    m.const("c32", a)
    m.const("shape", np.array([4, 3], np.int32))
    m.node("x", "Placeholder", [])
    params = _read(tmp_path, m, ["x"])
    np.testing.assert_array_equal(params.weights["a16"], a.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(params.weights["b8"], m.values["b8"], rtol=0, atol=1e-6)
    assert np.abs(params.weights["b8"] - b).max() <= (b.max() - b.min()) / 255 / 2 + 1e-6
    np.testing.assert_array_equal(params.weights["c32"], a)
    # integer constants are static (part of the graph), not leaves
    assert "shape" not in params.weights
    np.testing.assert_array_equal(params.graph.int_constant("shape"), [4, 3])


def test_uint8_quantized_int32_is_rounded(tmp_path):
    manifest = [{"paths": ["w.bin"], "weights": [
        {"name": "k", "shape": [3], "dtype": "int32",
         "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.4}}]}]
    (tmp_path / "w.bin").write_bytes(bytes([0, 5, 9]))
    out = tfjs.decode_weights(manifest, str(tmp_path))
    np.testing.assert_array_equal(out["k"], [-1, 1, 3])  # round(-1, 1.0, 2.6)


def test_truncated_shard_names_the_weight(tmp_path):
    manifest = [{"paths": ["w.bin"], "weights": [{"name": "big", "shape": [10], "dtype": "float32"}]}]
    (tmp_path / "w.bin").write_bytes(b"\0" * 12)
    with pytest.raises(tfjs.GraphModelError, match="'big' runs past the end"):
        tfjs.decode_weights(manifest, str(tmp_path), "m.json")


def _conv_net(rng, tmp_path):
    """x -> Pad -> Conv2D(s2 VALID, float16 w) -> +b -> PReLU (as Maximum/Minimum/Mul) ->
    depthwise(SAME, uint8 w) -> _FusedConv2D(EXPLICIT, BiasAdd+Relu6) -> Mean -> Reshape ->
    _FusedMatMul(BiasAdd+Relu) and MatMul(transpose_b)."""
    m = ModelWriter()
    w1 = rng.normal(size=(3, 3, 3, 4)).astype(np.float32) * 0.5
    b1 = rng.normal(size=(4,)).astype(np.float32)
    gamma = np.abs(rng.normal(size=(4,))).astype(np.float32) * 0.3
    dw = rng.normal(size=(3, 3, 4, 2)).astype(np.float32)
    w3 = rng.normal(size=(1, 2, 8, 5)).astype(np.float32) * 0.5
    b3 = rng.normal(size=(5,)).astype(np.float32)
    fw = rng.normal(size=(5, 6)).astype(np.float32)
    fb = rng.normal(size=(6,)).astype(np.float32)
    tw = rng.normal(size=(7, 5)).astype(np.float32)
    m.node("input", "Placeholder", [])
    m.const("pads", np.array([[0, 0], [1, 1], [2, 0], [0, 0]], np.int32))
    m.const("w1", w1, "float16")
    m.const("b1", b1)
    m.const("zero", np.float32(0.0))
    m.const("gamma", gamma)
    m.const("dw", dw, "uint8")
    m.const("w3", w3)
    m.const("b3", b3)
    m.const("axes", np.array([1, 2], np.int32))
    m.const("shape", np.array([-1, 5], np.int32))
    m.const("fw", fw)
    m.const("fb", fb)
    m.const("tw", tw, "float16")
    m.node("pad", "Pad", ["input", "pads"])
    m.node("conv1", "Conv2D", ["pad", "w1"], _conv_attrs((1, 2, 2, 1), "VALID"))
    m.node("bias1", "AddV2", ["conv1", "b1"])
    m.node("pos", "Maximum", ["zero", "bias1"])
    m.node("neg", "Minimum", ["zero", "bias1"])
    m.node("scaled", "Mul", ["gamma", "neg"])
    m.node("prelu", "Add", ["pos", "scaled"])
    m.node("dwconv", "DepthwiseConv2dNative", ["prelu", "dw"], _conv_attrs((1, 1, 1, 1), "SAME"))
    m.node("fused", "_FusedConv2D", ["dwconv", "w3", "b3"],
           {**_conv_attrs((1, 1, 1, 1), "EXPLICIT", (0, 0, 1, 0, 0, 1, 0, 0)),
            "fused_ops": {"list": {"s": [base64.b64encode(b"BiasAdd").decode(),
                                         base64.b64encode(b"Relu6").decode()]}},
            "num_args": {"i": "1"}})
    m.node("mean", "Mean", ["fused", "axes"], {"keep_dims": {"b": False}})
    m.node("flat", "Reshape", ["mean", "shape"])
    m.node("dense", "_FusedMatMul", ["flat", "fw", "fb"],
           {"fused_ops": {"list": {"s": [base64.b64encode(b"BiasAdd").decode(),
                                         base64.b64encode(b"Relu").decode()]}},
            "transpose_a": {"b": False}, "transpose_b": {"b": False}})
    m.node("proj", "MatMul", ["flat", "tw"], {"transpose_a": {"b": False}, "transpose_b": {"b": True}})
    m.node("unused", "NoSuchOp", ["input"])
    params = _read(tmp_path, m, ["dense", "proj"])

    def reference(x):
        v = m.values
        y = np.pad(x, ((0, 0), (1, 1), (2, 0), (0, 0)))
        y = np_conv(y, v["w1"], stride=2) + v["b1"]
        y = np.maximum(0, y) + v["gamma"] * np.minimum(0, y)
        kh, kw, cin, mult = v["dw"].shape
        y = np_conv(y, v["dw"].reshape(kh, kw, 1, cin * mult),
                    pad=(same_pads(y.shape[1], 3, 1), same_pads(y.shape[2], 3, 1)), groups=cin)
        y = np_conv(y, v["w3"], pad=((1, 0), (0, 1))) + v["b3"]
        y = np.clip(y, 0, 6).mean(axis=(1, 2)).reshape(-1, 5)
        return np.maximum(y @ v["fw"] + v["fb"], 0), y @ v["tw"].T

    return params, reference


def test_conv_graph_matches_numpy(tmp_path, rng):
    params, reference = _conv_net(rng, tmp_path)
    x = rng.normal(size=(2, 9, 8, 3)).astype(np.float32) * 2
    dense, proj = tfjs.evaluate(params, {"input": x}, ["dense", "proj"])
    ref_dense, ref_proj = reference(x.astype(np.float64))
    assert dense.shape == (2, 6) and proj.shape == (2, 7)
    np.testing.assert_allclose(np.asarray(dense), ref_dense, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(proj), ref_proj, rtol=1e-4, atol=1e-5)
    # apply: one output, by name (':0' accepted) or the signature's first output
    np.testing.assert_allclose(np.asarray(tfjs.apply(params, x, "proj:0")), np.asarray(proj))
    np.testing.assert_allclose(np.asarray(tfjs.apply(params, x)), np.asarray(dense))


def test_jit_and_input_gradient_match_finite_differences(tmp_path, rng):
    params, reference = _conv_net(rng, tmp_path)
    x = rng.normal(size=(1, 9, 8, 3)).astype(np.float32)
    v = rng.normal(size=(1, 7)).astype(np.float32)

    def loss(x, p):
        return jnp.sum(tfjs.apply(p, x, "proj") * v)

    g = np.asarray(jax.jit(jax.grad(loss))(x, params))
    assert g.shape == x.shape and np.abs(g).max() > 0
    x64 = x.astype(np.float64)
    for idx in [(0, 0, 0, 0), (0, 4, 3, 1), (0, 8, 7, 2), (0, 2, 5, 0)]:
        e = np.zeros_like(x64)
        e[idx] = 1e-3
        fd = (np.sum(reference(x64 + e)[1] * v) - np.sum(reference(x64 - e)[1] * v)) / 2e-3
        np.testing.assert_allclose(g[idx], fd, rtol=2e-3, atol=2e-4)


def test_maximum_minimum_relu_gradients_follow_tensorflow(tmp_path):
    """At ties TF's Maximum / Minimum send the whole gradient to the first input, Relu none."""
    m = ModelWriter()
    m.node("x", "Placeholder", [])
    m.const("zero", np.zeros((1, 1, 1, 3), np.float32))
    m.node("mx", "Maximum", ["x", "zero"])
    m.node("mn", "Minimum", ["x", "zero"])
    m.node("r", "Relu", ["x"])
    params = _read(tmp_path, m, ["mx"])
    x = np.array([-1.0, 0.0, 2.0], np.float32).reshape(1, 1, 1, 3)
    for out, want in [("mx", [0, 1, 1]), ("mn", [1, 1, 0]), ("r", [0, 0, 1])]:
        g = jax.grad(lambda x: jnp.sum(tfjs.apply(params, x, out)))(x)
        np.testing.assert_array_equal(np.asarray(g).ravel(), want, err_msg=out)


def test_linear_backward_keeps_values_and_linearizes_the_last_activations(tmp_path):
    """LinBP: forward exact; the last fraction of activations pass the gradient unchanged."""
    m = ModelWriter()
    m.node("x", "Placeholder", [])
    m.const("six", np.full((1, 1, 1, 3), 6.0, np.float32))
    m.node("r1", "Relu", ["x"])
    m.node("m1", "Mul", ["r1", "six"])
    m.node("r2", "Relu", ["m1"])
    m.node("c2", "Minimum", ["r2", "six"])
    params = _read(tmp_path, m, ["c2"])
    x = np.array([-1.0, 0.5, 2.0], np.float32).reshape(1, 1, 1, 3)
    exact = tfjs.apply(params, x, "c2")
    np.testing.assert_array_equal(np.asarray(exact).ravel(), [0.0, 3.0, 6.0])

    def grad(frac):
        out = tfjs.apply(params, x, "c2", linear_backward=frac)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(exact))
        return np.asarray(jax.grad(
            lambda x: jnp.sum(tfjs.apply(params, x, "c2", linear_backward=frac)))(x)).ravel()

    np.testing.assert_array_equal(grad(0.0), [0, 6, 0])      # TF's gradient
    np.testing.assert_array_equal(grad(1 / 3), [0, 6, 6])    # the Minimum (last of 3) linear
    np.testing.assert_array_equal(grad(1.0), [6, 6, 6])      # all three linear


def test_unknown_op_names_op_and_node(tmp_path, rng):
    params, _ = _conv_net(rng, tmp_path)
    x = np.zeros((1, 9, 8, 3), np.float32)
    with pytest.raises(tfjs.UnsupportedOp, match=r"node 'unused': unsupported op 'NoSuchOp'"):
        tfjs.apply(params, x, "unused")


def test_prune_keeps_only_needed_nodes_and_round_trips_json(tmp_path, rng):
    params, _ = _conv_net(rng, tmp_path)
    pruned = params.graph.prune(["proj"])
    names = {n.name for n in pruned.nodes}
    assert "proj" in names and "dense" not in names and "unused" not in names and "fw" not in names
    again = tfjs.GraphModel.from_json(json.loads(json.dumps(pruned.to_json())))
    assert again == pruned and hash(again) == hash(pruned)
    x = rng.normal(size=(1, 9, 8, 3)).astype(np.float32)
    p2 = tfjs.GraphParams(graph=again, weights=params.weights)
    np.testing.assert_array_equal(np.asarray(tfjs.apply(p2, x, "proj")),
                                  np.asarray(tfjs.apply(params, x, "proj")))


def test_not_a_graph_model(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"modelTopology": {"class_name": "Sequential"},
                                                 "weightsManifest": []}))
    with pytest.raises(tfjs.GraphModelError, match="no 'node' list"):
        tfjs.read_graph_model(str(tmp_path / "m.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(tfjs.GraphModelError, match="bad.json: not a readable JSON"):
        tfjs.read_graph_model(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("padding,explicit", [("SAME", ()), ("VALID", ()),
                                              ("EXPLICIT", (0, 0, 2, 1, 0, 1, 0, 0))])
def test_strided_depthwise_and_pointwise_match_numpy(tmp_path, rng, padding, explicit):
    """Depthwise (multiplier 2, stride 2; computed as shifted products) and 1x1 convolutions
    (computed as matrix products, stride 2) against direct convolution."""
    m = ModelWriter()
    dw = rng.normal(size=(3, 3, 3, 2)).astype(np.float32)
    pw = rng.normal(size=(1, 1, 6, 4)).astype(np.float32)
    m.node("x", "Placeholder", [])
    m.const("dw", dw)
    m.const("pw", pw)
    m.node("d", "DepthwiseConv2dNative", ["x", "dw"], _conv_attrs((1, 2, 2, 1), padding, explicit))
    m.node("p", "Conv2D", ["d", "pw"], _conv_attrs((1, 2, 2, 1), padding, explicit))
    params = _read(tmp_path, m, ["p"])
    x = rng.normal(size=(2, 10, 9, 3)).astype(np.float32)

    def pads(h, w, k):
        if padding == "SAME":
            return same_pads(h, k, 2), same_pads(w, k, 2)
        if padding == "VALID":
            return (0, 0), (0, 0)
        return (explicit[2], explicit[3]), (explicit[4], explicit[5])

    d = np_conv(x.astype(np.float64), dw.reshape(3, 3, 1, 6), stride=2, pad=pads(10, 9, 3), groups=3)
    p = np_conv(d, pw, stride=2, pad=pads(*d.shape[1:3], 1))
    np.testing.assert_allclose(np.asarray(tfjs.apply(params, x, "d")), d, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(tfjs.apply(params, x, "p")), p, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,dil,pads", [(1, 1, ((1, 1), (1, 1))), (2, 1, ((0, 1), (0, 1))),
                                             (2, 1, ((1, 1), (2, 0))), (1, 2, ((2, 2), (2, 2))),
                                             (2, 1, ((0, 0), (0, 0))), (3, 1, ((1, 0), (0, 1)))])
@pytest.mark.slow
def test_depthwise_vjp_matches_grouped_convolution(stride, dil, pads):
    """The written-out VJP of depthwise_taps (input and kernel cotangents) against JAX's own
    gradient of lax's grouped convolution, on odd sizes where strides leave rows unread."""
    k = jax.random.key(3)
    x = jax.random.normal(k, (2, 11, 10, 3))
    w = jax.random.normal(jax.random.fold_in(k, 1), (3, 3, 3))

    def ref(x, w):
        y = jax.lax.conv_general_dilated(
            x, w[:, :, None, :], (stride, stride), pads, rhs_dilation=(dil, dil),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3,
            precision=jax.lax.Precision.HIGHEST)
        return jnp.sum(jnp.sin(y))

    def ours(x, w):
        return jnp.sum(jnp.sin(tfjs.depthwise_taps(x, w, pads, (stride, stride), (dil, dil))))

    assert np.isclose(float(ours(x, w)), float(ref(x, w)), rtol=1e-5)
    for got, want in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
