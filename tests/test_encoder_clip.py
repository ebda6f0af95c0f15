"""CLIP vision tower + projection against transformers' CLIPVisionModelWithProjection (PyTorch),
on random weights saved as a Hugging Face folder (save_pretrained, safetensors)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_models as rm
from idguardian_jax.encoders import clip_vit
from idguardian_jax.checkpoints.tensors import CheckpointError, read_safetensors, write_safetensors


def _torch_embed(model, image_size):
    return lambda x: model(pixel_values=rm.clip_input(rm.nchw(x), image_size)).image_embeds


def _inputs(n, size, seed, dim):
    chips = rm.random_images(n, size, seed)
    return chips, np.random.default_rng(seed + 1).normal(size=(n, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    model = rm.random_clip(rm.CLIP_TINY, seed=0)
    folder = str(tmp_path_factory.mktemp("clip") / "image_encoder")
    rm.write_clip_folder(folder, model)
    return model, folder


def test_param_counts_of_the_port():
    for name, cfg in (("vit-h-14", rm.CLIP_VIT_H_14), ("vit-l-14", rm.CLIP_VIT_L_14),
                      ("vit-bigg-14", rm.CLIP_VIT_BIGG_14)):
        n = clip_vit.config_param_count(clip_vit.CLIPVisionConfig.from_dict(cfg))
        assert n == clip_vit.PARAM_COUNTS[name], name


def test_upstream_param_counts():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        for name, cfg in (("vit-h-14", rm.CLIP_VIT_H_14), ("vit-l-14", rm.CLIP_VIT_L_14)):
            m = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**cfg))
            assert sum(p.numel() for p in m.parameters()) == clip_vit.PARAM_COUNTS[name], name


@pytest.mark.slow
def test_tiny_parity(tiny):
    """40x40 chips, resized to the config's 28 px inside (as the IDGuardian reference does)."""
    model, folder = tiny
    params = clip_vit.load(folder)
    assert params.config == clip_vit.CLIPVisionConfig.from_dict(rm.CLIP_TINY)
    assert clip_vit.param_count(params) == sum(p.numel() for p in model.parameters())
    size = rm.CLIP_TINY["image_size"]
    chips, w = _inputs(2, 40, 5, rm.CLIP_TINY["projection_dim"])
    r = rm.compare("clip tiny", _torch_embed(model, size), clip_vit.apply, params, chips, w)
    rm.assert_parity(r)
    r = rm.compare_f64("clip tiny", model, lambda m: _torch_embed(m, size), clip_vit.apply,
                       params, chips, w)
    assert r["max_abs"] <= 1e-12 and r["grad_rel"] <= 1e-10, r

    import torch

    with torch.no_grad():
        ref = model(pixel_values=rm.clip_input(torch.from_numpy(chips).permute(0, 3, 1, 2), size),
                    output_hidden_states=True)
    out = jax.jit(clip_vit.forward)(params, jnp.asarray(chips))
    assert out["hidden_states"].shape[0] == len(ref.hidden_states) == rm.CLIP_TINY[
        "num_hidden_layers"] + 1
    for i, h in enumerate(ref.hidden_states):
        assert rm.max_abs(out["hidden_states"][i], h.numpy()) <= 1e-4, i
    assert rm.max_abs(out["last_hidden_state"], ref.last_hidden_state.numpy()) <= 1e-4
    pen = jax.jit(clip_vit.penultimate_hidden_state)(params, jnp.asarray(chips))
    assert rm.max_abs(pen, ref.hidden_states[-2].numpy()) <= 1e-4

    def loss(x, remat):  # IP-Adapter Plus's input and the embedding, with / without remat
        e, h = clip_vit.apply_with_hidden(params, x, remat=remat)
        return jnp.sum(e * w) + jnp.sum(h[-2])
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    assert rm.rel_err(grad(jnp.asarray(chips), True), grad(jnp.asarray(chips), False)) <= 1e-5


def test_full_clip_model_folder(tmp_path):
    """A full CLIPModel folder (config with vision_config + text side) loads its vision half."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    vc = {k: v for k, v in rm.CLIP_TINY.items() if k != "projection_dim"}
    cfg = transformers.CLIPConfig(
        vision_config=vc, projection_dim=rm.CLIP_TINY["projection_dim"],
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=50, max_position_embeddings=8))
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    params = clip_vit.load(str(tmp_path))
    chips = rm.random_images(1, 28, 3)
    with torch.no_grad():
        want = model.get_image_features(
            pixel_values=rm.clip_input(torch.from_numpy(chips).permute(0, 3, 1, 2), 28))
    assert rm.max_abs(clip_vit.apply(params, jnp.asarray(chips)), want.numpy()) <= 1e-5


def test_sharded_and_half_precision_folders(tiny, tmp_path):
    model, folder = tiny
    ref = clip_vit.load(folder)
    sharded = str(tmp_path / "sharded")
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="20KB")
    assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, clip_vit.load(sharded), ref)
    half = str(tmp_path / "half")
    import copy

    copy.deepcopy(model).half().save_pretrained(half, safe_serialization=True)
    p16 = clip_vit.load(half)
    assert p16.variables["params"]["visual_projection"]["kernel"].dtype == jnp.float32
    want16 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float16).astype(np.float32), ref)
    jax.tree_util.tree_map(np.testing.assert_array_equal, p16, want16)


@pytest.mark.slow
def test_vit_h_parity(tmp_path):
    """IP-Adapter's ViT-H/14 (632M parameters) at 224 px: image_embeds, hidden_states[-2] and
    input gradients, batch 1."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    model = rm.random_clip(rm.CLIP_VIT_H_14, seed=1)
    folder = rm.write_clip_folder(str(tmp_path / "image_encoder"), model)
    params = clip_vit.load(folder)
    assert clip_vit.param_count(params) == clip_vit.PARAM_COUNTS["vit-h-14"]
    chips, w = _inputs(1, 224, 7, 1024)
    x = torch.from_numpy(chips).requires_grad_(True)
    ref = model(pixel_values=rm.clip_input(rm.nchw(x), 224), output_hidden_states=True)
    (ref.image_embeds * torch.from_numpy(w)).sum().backward()
    del model

    def loss(p, x):
        e, h = clip_vit.apply_with_hidden(p, x)
        return jnp.sum(e * w), (e, h[-2])
    (_, (e, pen)), g = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True))(
        params, jnp.asarray(chips))
    r = {"max_abs": rm.max_abs(e, ref.image_embeds.detach().numpy()),
         "out_scale": float(ref.image_embeds.detach().abs().max()),
         "hidden[-2]_max_abs": rm.max_abs(pen, ref.hidden_states[-2].detach().numpy()),
         "grad_rel": rm.rel_err(g, x.grad.numpy())}
    print("clip ViT-H/14: " + ", ".join(f"{k} {v:.2e}" for k, v in r.items()))
    assert r["hidden[-2]_max_abs"] <= 1e-4
    rm.assert_parity(r)


# ----------------------------------------------------------------------------- bad folders
def _one_line_error(path, *needles):
    with pytest.raises(CheckpointError) as e:
        clip_vit.load(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    for n in needles:
        assert n in msg, msg
    return msg


def _copy(folder, dst):
    shutil.copytree(folder, dst)
    return str(dst)


def test_truncated_safetensors(tiny, tmp_path):
    d = _copy(tiny[1], tmp_path / "cut")
    st = os.path.join(d, "model.safetensors")
    blob = open(st, "rb").read()
    with open(st, "wb") as fh:
        fh.write(blob[: len(blob) // 2])
    _one_line_error(st, "truncated")
    with open(st, "wb") as fh:
        fh.write(blob[:5])
    _one_line_error(st, "not a safetensors file")


def test_missing_tensor_and_wrong_config(tiny, tmp_path):
    d = _copy(tiny[1], tmp_path / "missing")
    st = os.path.join(d, "model.safetensors")
    tensors = {k: np.array(v) for k, v in read_safetensors(st).items()}
    del tensors["vision_model.encoder.layers.1.mlp.fc2.bias"]
    write_safetensors(st, tensors)
    _one_line_error(st, "missing tensor", "'vision_model.encoder.layers.1.mlp.fc2.bias'")

    d = _copy(tiny[1], tmp_path / "config")
    cfg_path = os.path.join(d, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["hidden_size"], cfg["num_attention_heads"] = 64, 4
    json.dump(cfg, open(cfg_path, "w"))
    _one_line_error(os.path.join(d, "model.safetensors"), "does not fit config.json")

    cfg["model_type"] = "siglip_vision_model"
    json.dump(cfg, open(cfg_path, "w"))
    _one_line_error(cfg_path, "not a CLIP vision model")
    os.unlink(cfg_path)
    _one_line_error(d, "no config.json")


def test_registration():
    e = clip_vit.ENCODER
    assert (e.name, e.chip_size, e.view, e.distance, e.embed_dim) == (
        "clip_vit", 224, "clip", "cosine", 1024)
    with pytest.raises(FileNotFoundError):
        clip_vit.load(None)
