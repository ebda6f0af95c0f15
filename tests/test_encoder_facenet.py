"""FaceNet (InceptionResnetV1) port against facenet-pytorch on random weights.

The upstream network has fixed widths, so the "tiny" check runs the full network on small
80x80 inputs; the real-size check runs it on 160x160 chips as the encoder does.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_models as rm
from idguardian_jax.encoders import facenet

VGG_HEAD = 8631


@pytest.fixture(scope="module")
def torch_model():
    pytest.importorskip("torch")
    pytest.importorskip("requests")  # facenet_pytorch's module imports it
    try:
        rm.import_facenet_pytorch()
    except ImportError as e:
        pytest.skip(f"facenet-pytorch not importable: {e}")
    return rm.random_facenet(seed=0, classify_head=VGG_HEAD)


@pytest.fixture(scope="module")
def pt_file(torch_model, tmp_path_factory):
    import torch

    path = str(tmp_path_factory.mktemp("facenet") / "20180402-114759-vggface2.pt")
    torch.save(torch_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def params(pt_file):
    return facenet.load(pt_file)


def _torch_embed(model, standardization="idguardian"):
    def fn(x):
        x = x * 2 - 1 if standardization == "idguardian" else (x * 255 - 127.5) / 128
        return model(rm.nchw(x))
    return fn


def _apply_at_input_size(p, x):
    return facenet.apply(p, x, size=None)


def _inputs(n, size, seed):
    chips = rm.random_images(n, size, seed)
    w = np.random.default_rng(seed + 1).normal(size=(n, facenet.EMBED_DIM)).astype(np.float32)
    return chips, w


def test_param_count_of_the_port():
    assert facenet.count_params(facenet.variable_shapes()) == facenet.PARAM_COUNT


def test_upstream_param_count(torch_model):
    assert sum(p.numel() for p in rm.import_facenet_pytorch()(
        pretrained=None, classify=False).parameters()) == facenet.PARAM_COUNT


@pytest.fixture(scope="module")
def torch_model64(torch_model):
    import copy

    return copy.deepcopy(torch_model).double()


@pytest.mark.slow
def test_parity_small_input(torch_model, torch_model64, params):
    """The whole network on 80x80 inputs: float32 parity, and float64 on both sides (the same
    function up to float64 rounding)."""
    chips, w = _inputs(2, 80, 10)
    r = rm.compare("facenet 80px", _torch_embed(torch_model), _apply_at_input_size, params, chips,
                   w, torch_fn64=_torch_embed(torch_model64))
    rm.assert_parity(r)
    r = rm.compare_f64("facenet 80px", torch_model, _torch_embed, _apply_at_input_size, params,
                       chips, w)
    assert r["max_abs"] <= 1e-12 and r["grad_rel"] <= 1e-10, r


@pytest.mark.slow
def test_parity_160(torch_model, torch_model64, params):
    chips, w = _inputs(2, 160, 20)
    r = rm.compare("facenet 160px", _torch_embed(torch_model), facenet.apply, params, chips, w,
                   torch_fn64=_torch_embed(torch_model64))
    rm.assert_parity(r)  # (float64 equality of the same weights: test_parity_small_input)


def test_loaded_params_and_variant(pt_file, params):
    p, info = facenet.load(pt_file, use_cache=False, with_info=True)
    assert info == {"variant": "vggface2"}
    assert facenet.param_count(p) == facenet.PARAM_COUNT
    jax.tree_util.tree_map(np.testing.assert_array_equal, p, params)


@pytest.mark.slow
def test_convert_to_safetensors_and_npz(pt_file, params, tmp_path, monkeypatch):
    for ext in (".safetensors", ".npz"):
        dst = str(tmp_path / f"facenet{ext}")
        facenet.convert(pt_file, dst)
        monkeypatch.setitem(__import__("sys").modules, "torch", None)  # no torch needed now
        p = facenet.load(dst)
        monkeypatch.undo()
        jax.tree_util.tree_map(np.testing.assert_array_equal, p, params)


def test_casia_variant(pt_file, tmp_path):
    sd = facenet.read_tensors(pt_file)
    sd["logits.weight"] = np.zeros((10575, 512), np.float32)
    sd["logits.bias"] = np.zeros((10575,), np.float32)
    path = str(tmp_path / "casia.npz")
    facenet.write_tensors(path, sd)
    _, info = facenet.load(path, with_info=True)
    assert info["variant"] == "casia-webface"


def test_preprocess_options():
    x = jnp.asarray(rm.random_images(1, 160, 3))
    np.testing.assert_allclose(facenet.preprocess(x), x * 2 - 1, atol=1e-7)
    np.testing.assert_allclose(facenet.preprocess(x, "facenet_pytorch"),
                               (x * 255 - 127.5) / 128, atol=1e-6)
    assert facenet.preprocess(jnp.zeros((1, 224, 224, 3))).shape == (1, 160, 160, 3)
    with pytest.raises(ValueError):
        facenet.preprocess(x, "other")


@pytest.mark.parametrize("src,dst", [(224, 160), (100, 160), (512, 224), (40, 28)])
def test_bilinear_resize_matches_torch(src, dst):
    torch = pytest.importorskip("torch")
    x = rm.random_images(2, src, 4)
    want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(dst, dst),
                                           mode="bilinear", align_corners=False)
    got = facenet.bilinear_resize(jnp.asarray(x), dst)
    assert rm.max_abs(got, want.permute(0, 2, 3, 1).numpy()) < 1e-5


# ----------------------------------------------------------------------------- bad files
def _one_line_error(fn, path, *needles):
    with pytest.raises(facenet.CheckpointError) as e:
        fn(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_missing_key(pt_file, tmp_path):
    import torch

    sd = torch.load(pt_file, weights_only=True)
    del sd["repeat_2.3.branch1.1.bn.running_var"]
    path = str(tmp_path / "missing.pt")
    torch.save(sd, path)
    _one_line_error(facenet.load, path, "missing key", "repeat_2.3.branch1.1.bn.running_var")


def test_wrong_shape_and_foreign_state_dict(pt_file, tmp_path):
    sd = facenet.read_tensors(pt_file)
    sd["last_linear.weight"] = np.zeros((512, 1790), np.float32)
    path = str(tmp_path / "shape.npz")
    facenet.write_tensors(path, sd)
    _one_line_error(facenet.load, path, "'last_linear.weight'", "(512, 1790)", "(512, 1792)")
    foreign = str(tmp_path / "resnet.npz")
    facenet.write_tensors(foreign, {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
                                    "fc.weight": np.zeros((10, 64), np.float32)})
    _one_line_error(facenet.load, foreign, "not a facenet-pytorch InceptionResnetV1 state dict")


def test_truncated_files(pt_file, tmp_path):
    st = str(tmp_path / "f.safetensors")
    facenet.convert(pt_file, st)
    data = open(st, "rb").read()
    for name, blob in (("cut.safetensors", data[: len(data) // 2]), ("head.safetensors", data[:6]),
                       ("cut.pt", open(pt_file, "rb").read()[:100_000])):
        path = str(tmp_path / name)
        with open(path, "wb") as fh:
            fh.write(blob)
        _one_line_error(facenet.load, path)
    _one_line_error(facenet.load, str(tmp_path / "cut.safetensors"), "truncated")


def test_torch_missing_is_a_clear_error(pt_file, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    _one_line_error(lambda p: facenet.load(p, use_cache=False), pt_file, "needs torch")


def test_registration():
    e = facenet.ENCODER
    assert (e.name, e.chip_size, e.view, e.distance, e.embed_dim) == (
        "facenet", 160, "facenet", "cosine", 512)
    assert 0 < e.threshold < 2
    with pytest.raises(FileNotFoundError):
        facenet.load(None)
    with pytest.raises(FileNotFoundError):
        facenet.load(os.path.join("no", "such", "file.pt"))
