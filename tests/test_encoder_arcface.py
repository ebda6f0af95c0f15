"""ArcFace (IResNet) port against arcface_torch's definition and onnxruntime, on random weights.

Checkpoints are written the two upstream ways: an arcface_torch state dict (.pt) and an ONNX file
exported with torch's TorchScript exporter, with batch norms folded into the convolutions as in
InsightFace's released files, or kept. onnxruntime runs the ONNX files as the reference output;
input gradients come from torch autograd on the same model.
"""
import os
import sys

import jax
import numpy as np
import pytest

import reference_models as rm
from idguardian_jax.encoders import arcface

TINY = dict(layers=(1, 2, 1, 1), widths=(8, 16, 16, 32), num_features=16)


def _torch_embed(model, mean=127.5, std=127.5):
    return lambda x: model(rm.nchw((x * 255.0 - mean) / std))


def _inputs(n, seed, dim):
    chips = rm.random_images(n, 112, seed)
    return chips, np.random.default_rng(seed + 1).normal(size=(n, dim)).astype(np.float32)


def _ort(path, chips, mean=127.5, std=127.5):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = ((chips * 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    model = rm.random_iresnet(TINY["layers"], TINY["widths"], TINY["num_features"], seed=0)
    d = tmp_path_factory.mktemp("arcface")
    files = {"pt": rm.write_iresnet_state_dict(str(d / "backbone.pth"), model)}
    if _has("onnx"):
        files["onnx_folded"] = rm.export_onnx(model, str(d / "folded.onnx"), 112, fold=True)
        files["onnx_unfolded"] = rm.export_onnx(model, str(d / "unfolded.onnx"), 112, fold=False)
    return model, files


def _has(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def _file(tiny, kind):
    if kind not in tiny[1]:
        pytest.skip("onnx is not installed")
    return tiny[1][kind]


def test_param_counts_of_the_port():
    for name, n in arcface.PARAM_COUNTS.items():
        shapes = arcface.variable_shapes(layers=arcface.LAYERS[name])
        assert arcface.count_params(shapes) == n, name


def test_upstream_param_counts():
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        for name, n in arcface.PARAM_COUNTS.items():
            assert sum(p.numel() for p in rm.make_iresnet(name).parameters()) == n, name


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pt", "onnx_folded", "onnx_unfolded"])
def test_tiny_parity(tiny, kind):
    model, _ = tiny
    path = _file(tiny, kind)
    params, info = arcface.load(path, with_info=True)
    assert info["folded"] == (kind == "onnx_folded")
    assert info["source"] == ("state_dict" if kind == "pt" else "onnx")
    if not info["folded"]:
        assert arcface.param_count(params) == sum(p.numel() for p in model.parameters())
    chips, w = _inputs(2, 7, TINY["num_features"])
    want = None if kind == "pt" else _ort(path, chips)
    r = rm.compare(f"arcface tiny {kind}", _torch_embed(model), arcface.apply, params, chips, w,
                   want=want)
    rm.assert_parity(r)
    if kind == "pt":
        r = rm.compare_f64("arcface tiny pt", model, _torch_embed, arcface.apply, params, chips, w)
        assert r["max_abs"] <= 1e-12 and r["grad_rel"] <= 1e-10, r


def test_graph_normalization_mxnet_style(tmp_path):
    """Files that normalize inside the graph (Sub / Mul on 0..255 input, as MXNet conversions):
    the constants become the input mean / std."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    inner = rm.random_iresnet(TINY["layers"], TINY["widths"], TINY["num_features"], seed=3)

    class WithNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner((x - 127.5) * 0.0078125)

    path = rm.export_onnx(WithNorm(), str(tmp_path / "mx.onnx"), 112)
    params = arcface.load(path)
    np.testing.assert_allclose(params["input_mean"], [127.5] * 3)
    np.testing.assert_allclose(params["input_std"], [128.0] * 3)
    chips, w = _inputs(1, 9, TINY["num_features"])
    r = rm.compare("arcface sub/mul graph", _torch_embed(inner, 127.5, 128.0), arcface.apply,
                   params, chips, w, want=_ort(path, chips, 0.0, 1.0))
    rm.assert_parity(r)


def test_convert_roundtrip_without_onnx(tiny, tmp_path, monkeypatch):
    path = _file(tiny, "onnx_folded")
    params = arcface.load(path)
    for ext in (".safetensors", ".npz"):
        dst = str(tmp_path / f"r{ext}")
        arcface.convert(path, dst)
        monkeypatch.setitem(sys.modules, "onnx", None)
        monkeypatch.setitem(sys.modules, "torch", None)
        again, info = arcface.load(dst, with_info=True)
        monkeypatch.undo()
        assert info["folded"]
        jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


@pytest.mark.slow
def test_r50_state_dict_parity(tmp_path):
    pytest.importorskip("torch")
    model = rm.random_iresnet("r50", seed=1)
    path = rm.write_iresnet_state_dict(str(tmp_path / "r50.pth"), model)
    params, info = arcface.load(path, with_info=True)
    assert info["variant"] == "r50"
    assert arcface.param_count(params) == arcface.PARAM_COUNTS["r50"]
    chips, w = _inputs(1, 11, 512)
    r = rm.compare("arcface r50 .pth", _torch_embed(model), arcface.apply, params, chips, w)
    rm.assert_parity(r)
    r = rm.compare_f64("arcface r50 .pth", model, _torch_embed, arcface.apply, params, chips, w)
    assert r["max_abs"] <= 1e-10 and r["grad_rel"] <= 1e-10, r


@pytest.mark.slow
def test_r100_onnx_parity(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    model = rm.random_iresnet("r100", seed=2)
    path = rm.export_onnx(model, str(tmp_path / "glintr100.onnx"), 112, fold=True)
    params, info = arcface.load(path, with_info=True)
    assert info == {"variant": "r100", "folded": True, "source": "onnx"}
    chips, w = _inputs(1, 12, 512)
    r = rm.compare("arcface r100 .onnx (folded)", _torch_embed(model), arcface.apply, params,
                   chips, w, want=_ort(path, chips))
    rm.assert_parity(r)


# ----------------------------------------------------------------------------- bad files
def _one_line_error(path, *needles, **kw):
    with pytest.raises(arcface.CheckpointError) as e:
        arcface.load(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_missing_key(tiny, tmp_path):
    import torch

    sd = torch.load(_file(tiny, "pt"), weights_only=True)
    del sd["layer2.1.bn3.running_mean"]
    path = str(tmp_path / "missing.pth")
    torch.save(sd, path)
    _one_line_error(path, "missing key", "'layer2.1.bn3.running_mean'")


def test_onnx_of_another_network(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    nn = torch.nn
    other = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 112 * 112, 4))
    path = rm.export_onnx(other.eval(), str(tmp_path / "other.onnx"), 112)
    _one_line_error(path, "not an InsightFace IResNet", "Relu", "PRelu")


def test_state_dict_of_another_network(tmp_path):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "facenet.pt")
    torch.save({"conv2d_1a.conv.weight": torch.zeros(32, 3, 3, 3)}, path)
    _one_line_error(path, "not an arcface_torch IResNet state dict", "'conv1.weight'")


def test_truncated_files(tiny, tmp_path):
    src = _file(tiny, "onnx_folded")
    data = open(src, "rb").read()
    cut = str(tmp_path / "cut.onnx")
    with open(cut, "wb") as fh:
        fh.write(data[: len(data) // 3])
    _one_line_error(cut, "ONNX")
    st = str(tmp_path / "r.safetensors")
    arcface.convert(src, st)
    blob = open(st, "rb").read()
    with open(st, "wb") as fh:
        fh.write(blob[:-1000])
    _one_line_error(st, "truncated")


def test_onnx_missing_is_a_clear_error(tiny, monkeypatch):
    path = _file(tiny, "onnx_folded")
    monkeypatch.setitem(sys.modules, "onnx", None)
    _one_line_error(path, "needs the onnx package", use_cache=False)


def test_registration():
    e = arcface.ENCODER
    assert (e.name, e.chip_size, e.view, e.distance, e.embed_dim) == (
        "arcface", 112, "arcface", "cosine", 512)
    assert abs(e.threshold - 0.72) < 1e-9
    with pytest.raises(FileNotFoundError):
        arcface.load(None)
    with pytest.raises(FileNotFoundError):
        arcface.load(os.path.join("no", "such", "model.onnx"))
