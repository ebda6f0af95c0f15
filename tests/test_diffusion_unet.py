"""The Flax UNet with IP-Adapter, the VAE encoder, the noise schedule and the text conditioning
against diffusers' / transformers' PyTorch models, on tiny random SD-style and SDXL-style
pipelines written in diffusers' format (tests/diffusion_reference.py).

Reference for the UNet: diffusers' UNet2DConditionModel loaded from the folder, with the
IP-Adapter checkpoint read and loaded as diffusers' load_ip_adapter does
(_load_ip_adapter_weights: IPAdapterAttnProcessor2_0 on every attn2, the image projection as
encoder_hid_proj, image features passed as added_cond_kwargs['image_embeds'])."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusion_reference as dr  # noqa: E402
import reference_models as rm  # noqa: E402
from idguardian_jax.checkpoints.tensors import CheckpointError  # noqa: E402
from idguardian_jax.diffusion import ip_adapter as ipa  # noqa: E402
from idguardian_jax.diffusion import loaders, state_dicts  # noqa: E402
from idguardian_jax.diffusion import schedule as sched  # noqa: E402
from idguardian_jax.diffusion import text as text_lib  # noqa: E402
from idguardian_jax.diffusion import unet as unet_lib  # noqa: E402
from idguardian_jax.diffusion import vae as vae_lib  # noqa: E402

UNET_TOL = 1e-3


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion")
    out = {}
    for kind in ("sdxl-tiny", "sd-tiny"):
        folder = str(root / kind)
        out[kind] = (folder, dr.write_pipeline(kind, folder, seed=3))
    return out


# One jitted forward for every case (IP scale traced: scale 0 reuses the compiled program).
_apply = jax.jit(lambda p, x, t, ctx, tok, added, s: unet_lib.apply(p, x, t, ctx, tok, added,
                                                                     ip_scale=s))


def _inputs(cfg: unet_lib.UNetConfig, kind: str, latent: int, seed: int):
    rng = np.random.default_rng(seed)
    b = 2
    sample = rng.standard_normal((b, 4, latent, latent)).astype(np.float32)
    t = np.array([17, 803])
    text = rng.standard_normal((b, 7, cfg.cross_attention_dim[0])).astype(np.float32)
    added = None
    if cfg.is_sdxl_style:
        added = {"text_embeds": rng.standard_normal((b, cfg.text_embeds_dim)).astype(np.float32),
                 "time_ids": np.array([[224, 224, 0, 0, 224, 224], [512, 384, 8, 4, 512, 512]],
                                      np.float32)}
    return sample, t, text, added


def _torch_eps(model, sample, t, text, added, image_embeds=None):
    kw = {k: torch.from_numpy(v) for k, v in (added or {}).items()}
    if image_embeds is not None:
        kw["image_embeds"] = [torch.from_numpy(image_embeds)[:, None]]  # (B, 1 image, ...)
    with torch.no_grad():
        return model(torch.from_numpy(sample), torch.from_numpy(t),
                     encoder_hidden_states=torch.from_numpy(text),
                     added_cond_kwargs=kw).sample.numpy()


# kind, adapter file, latent size (9: not divisible by 2**levels, as SD1.5 at 224 px)
CASES = [("sdxl-tiny", "plus", 8), ("sd-tiny", "plus_bin", 9), ("sd-tiny", "linear", 9)]
_project = jax.jit(ipa.project)


@pytest.mark.slow
@pytest.mark.parametrize("kind,adapter,latent", CASES)
def test_unet_ip_adapter_parity(pipelines, kind, adapter, latent):
    folder, paths = pipelines[kind]
    base = loaders.load_unet(folder)
    params, proj = loaders.load_ip_adapter(paths[adapter], base)
    cfg = params.config
    assert cfg.ip_adapter and cfg.num_ip_tokens == proj.config.num_tokens
    sample, t, text, added = _inputs(cfg, kind, latent, seed=len(kind) + latent)
    rng = np.random.default_rng(1)
    if proj.config.kind == ipa.PLUS:  # CLIP hidden_states[-2]: (B, 17, 32) for the tiny CLIP
        feats = rng.standard_normal((2, 17, proj.config.embedding_dim)).astype(np.float32)
    else:  # CLIP image_embeds
        feats = rng.standard_normal((2, proj.config.embedding_dim)).astype(np.float32)

    ref_ip = _torch_eps(dr.torch_unet_with_ip(folder, paths[adapter]), sample, t, text, added,
                        feats)
    ref_plain = _torch_eps(dr.torch_unet_with_ip(folder, None), sample, t, text, added)
    tokens = _project(proj, jnp.asarray(feats))
    ours_ip = np.asarray(_apply(params, sample, t, text, tokens, added, 1.0))
    ours_scale0 = np.asarray(_apply(params, sample, t, text, tokens, added, 0.0))

    err_ip, err_plain = rm.max_abs(ours_ip, ref_ip), rm.max_abs(ours_scale0, ref_plain)
    effect = rm.max_abs(ref_ip, ref_plain)
    print(f"{kind}/{adapter} latent {latent}: max-abs {err_ip:.2e} (IP), {err_plain:.2e} "
          f"(scale 0 vs no adapter); IP effect {effect:.2f}, |eps| {np.abs(ref_ip).max():.2f}")
    assert err_ip <= UNET_TOL
    assert err_plain <= UNET_TOL
    assert effect > 0.05  # the image tokens matter: the comparison is sensitive to them


def test_context_split_and_misuse(pipelines):
    """IP-Adapter's split of [text; image] context; image tokens for a UNet without IP layers."""
    ctx = jnp.arange(2 * 9 * 3, dtype=jnp.float32).reshape(2, 9, 3)
    a, b = unet_lib.split_context(ctx, 4)
    assert a.shape == (2, 5, 3) and b.shape == (2, 4, 3)
    np.testing.assert_array_equal(np.concatenate([a, b], 1), ctx)
    params = loaders.load_unet(pipelines["sd-tiny"][0])
    assert not params.config.ip_adapter
    sample, t, text, added = _inputs(params.config, "sd-tiny", 8, seed=5)
    with pytest.raises(ValueError, match="no IP-Adapter layers"):
        unet_lib.apply(params, sample, t, text, jnp.zeros((2, 4, 32)), added)
    with pytest.raises(ValueError, match="channels"):
        unet_lib.apply(params, sample, t, text, layout="NHWC")


@pytest.mark.parametrize("name", ["sdxl-base"])
def test_real_unet_layouts(name):
    """SDXL base (also "sd15", "sd21" in dr.REAL_UNETS): parameter count, every PyTorch tensor
    name and shape (of a meta-device diffusers model) onto our tree, cross-attention layers in
    diffusers' order, and the IP-Adapter layers of a real adapter (16 tokens)."""
    with torch.device("meta"):
        from diffusers import UNet2DConditionModel

        model = UNet2DConditionModel(**dr.REAL_UNETS[name])
    cfg = unet_lib.UNetConfig.from_dict(dict(model.config), name).with_ip_adapter(16)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sum(int(np.prod(s)) for s in shapes.values()) == dr.REAL_UNET_PARAMS[name]
    exp = unet_lib.expected_shapes(cfg)["params"]
    widths = dr.cross_attention_widths(model)
    layers = unet_lib.ip_layer_paths(cfg)
    assert len(layers) == len(widths) == {"sdxl-base": 70, "sd15": 16, "sd21": 16}[name]
    ours = [exp[a][b]["transformer_blocks"]["attn2"]["to_q"]["kernel"].shape[-1]
            for (a, b), _ in layers]
    assert ours == widths
    n_ip = 2 * sum(widths) * cfg.cross_attention_dim[0]
    assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(exp)) == \
        dr.REAL_UNET_PARAMS[name] + n_ip
    state_dicts.check_layout(shapes, _drop_ip(exp), name, "the UNet")


def _drop_ip(tree):
    if not isinstance(tree, dict):
        return tree
    return {k: _drop_ip(v) for k, v in tree.items() if not k.endswith("_ip")}


def test_unet_loader_errors(pipelines, tmp_path):
    folder, paths = pipelines["sdxl-tiny"]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        loaders.load_unet(str(tmp_path / "nowhere"))
    # truncated weights
    bad = tmp_path / "trunc"
    shutil.copytree(os.path.join(folder, "unet"), bad / "unet")
    f = bad / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as e:
        loaders.load_unet(str(bad))
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    # a foreign file: the VAE's weights in the UNet's place
    shutil.copy(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"), f)
    with pytest.raises(CheckpointError, match="not the UNet") as e:
        loaders.load_unet(str(bad))
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    # the SD UNet's weights under the SDXL config: a shape / key mismatch, one line
    shutil.copy(os.path.join(pipelines["sd-tiny"][0], "unet",
                             "diffusion_pytorch_model.safetensors"), f)
    with pytest.raises(CheckpointError) as e:
        loaders.check_unet_folder(str(bad))
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    # an unsupported config
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["time_cond_proj_dim"] = 256
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="time_cond_proj_dim"):
        loaders.load_unet(str(bad))
    # an adapter for another base model
    base = loaders.load_unet(folder)
    with pytest.raises(CheckpointError, match="another base model"):
        loaders.load_ip_adapter(pipelines["sd-tiny"][1]["plus"], base)
    assert loaders.check_unet_folder(folder) == base.config


def test_vae_encode_and_vjp(pipelines):
    from diffusers import AutoencoderKL

    folder, _ = pipelines["sdxl-tiny"]
    params = loaders.load_vae(folder)
    assert params.config.scaling_factor == 0.13025
    ref_model = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
    x = rm.random_images(2, 40, seed=7)  # (2, 40, 40, 3) in [0, 1], NHWC
    xt = torch.from_numpy(rm.random_images(2, 40, seed=7, channels_last=False)).requires_grad_()
    lat = ref_model.encode(xt * 2 - 1).latent_dist.mode() * ref_model.config.scaling_factor
    w = np.random.default_rng(0).standard_normal(tuple(lat.shape)).astype(np.float32)
    (lat * torch.from_numpy(w)).sum().backward()

    z, g = jax.jit(vae_lib.encode_and_pullback)(params, jnp.asarray(x), jnp.asarray(w))
    assert z.shape == (2, 4, 5, 5)
    assert rm.max_abs(z, lat.detach().numpy()) <= 1e-5
    g = np.asarray(g)  # NHWC, like the images
    assert rm.max_abs(g.transpose(0, 3, 1, 2), xt.grad.numpy()) <= 1e-5
    # NCHW images and NHWC latents
    z2 = jax.jit(lambda p, im: vae_lib.encode(p, im, layout="NCHW", latent_layout="NHWC"))(
        params, jnp.asarray(x.transpose(0, 3, 1, 2)))
    assert rm.max_abs(np.asarray(z2).transpose(0, 3, 1, 2), z) <= 1e-6


def test_schedule_add_noise(pipelines):
    from diffusers import DDPMScheduler

    folder, _ = pipelines["sdxl-tiny"]
    s = sched.load(folder)
    ref = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert s.num_train_timesteps == 1000 and s.prediction_type == "epsilon"
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod), ref.alphas_cumprod.numpy(),
                               rtol=2e-6, atol=1e-6)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((4, 4, 6, 6)).astype(np.float32)
    e = rng.standard_normal((4, 4, 6, 6)).astype(np.float32)
    t = np.array([0, 1, 500, 999])
    r = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(e), torch.from_numpy(t)).numpy()
    assert rm.max_abs(sched.add_noise(s, x0, e, t), r) <= 2e-6
    assert rm.max_abs(sched.add_noise(s, x0[2:3], e[2:3], 500), r[2:3]) <= 2e-6
    np.testing.assert_allclose(np.asarray(sched.sigma(s, t)),
                               np.sqrt(1 - ref.alphas_cumprod.numpy()[t]), rtol=1e-5)
    # the default (no folder) is SD / SDXL's schedule; v-prediction converts back to epsilon
    assert rm.max_abs(sched.from_config().alphas_cumprod, s.alphas_cumprod) == 0
    v = sched.Schedule(s.alphas_cumprod, "v_prediction")
    xt = sched.add_noise(s, x0, e, t)
    assert rm.max_abs(sched.to_epsilon(v, sched.velocity(s, x0, e, t), xt, t), e) <= 1e-4


@pytest.mark.slow
def test_text_conditioning_cached(pipelines, monkeypatch):
    """SDXL: both encoders' hidden_states[-2] concatenated + pooled text_embeds of encoder 2;
    SD: last_hidden_state; computed once, then read from the cache without loading a model."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    prompt = "A photo of a person"
    first = {}
    for kind in ("sdxl-tiny", "sd-tiny"):
        folder, _ = pipelines[kind]
        pe = first[kind] = text_lib.encode_prompt(folder, prompt)
        parts = [("text_encoder", "tokenizer", CLIPTextModel)]
        if kind == "sdxl-tiny":
            parts.append(("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection))
        embeds, pooled = [], None
        for te, tok, cls in parts:
            tk = CLIPTokenizer.from_pretrained(folder, subfolder=tok)
            ids = tk([prompt], padding="max_length", max_length=tk.model_max_length,
                     truncation=True, return_tensors="pt").input_ids
            with torch.no_grad():
                model = cls.from_pretrained(folder, subfolder=te).eval()
                out = model(ids, output_hidden_states=True)
            if kind == "sdxl-tiny":
                embeds.append(out.hidden_states[-2][0].numpy())
                if te == "text_encoder_2":
                    pooled = out.text_embeds[0].numpy()
            else:
                embeds.append(out.last_hidden_state[0].numpy())
        assert pe.embeds.shape == (77, 64 if kind == "sdxl-tiny" else 32)
        assert rm.max_abs(pe.embeds, np.concatenate(embeds, -1)) <= 1e-5
        if kind == "sdxl-tiny":
            assert rm.max_abs(pe.pooled, pooled) <= 1e-5
            ac = pe.added_cond(224, 224)
            assert ac["time_ids"].tolist() == [[224, 224, 0, 0, 224, 224]]
        else:
            assert pe.pooled is None
    monkeypatch.setattr(text_lib, "compute_prompt_embeds",
                        lambda *a: (_ for _ in ()).throw(AssertionError("not cached")))
    again = text_lib.encode_prompt(pipelines["sdxl-tiny"][0], prompt)
    assert rm.max_abs(again.embeds, first["sdxl-tiny"].embeds) == 0
    assert rm.max_abs(again.pooled, first["sdxl-tiny"].pooled) == 0



@pytest.mark.slow
def test_half_precision_weights_compute_in_half(pipelines):
    """bf16 weights: options_for computes in bf16 (no per-call cast up to float32) and stays
    close to the float32 prediction."""
    folder, paths = pipelines["sdxl-tiny"]
    params, proj = loaders.load_ip_adapter(paths["plus"], loaders.load_unet(folder))
    assert unet_lib.options_for(params).dtype == jnp.float32
    half = params.astype(jnp.bfloat16)
    opts = unet_lib.options_for(half, remat=True)
    assert opts.dtype == jnp.bfloat16 and opts.remat
    sample, t, text, added = _inputs(params.config, "sdxl-tiny", 8, seed=3)
    feats = np.random.default_rng(2).standard_normal((2, 17, proj.config.embedding_dim))
    tokens = _project(proj, jnp.asarray(feats, jnp.float32))
    ref = np.asarray(unet_lib.apply(params, sample, t, text, tokens, added))
    hlo = jax.jit(lambda p: unet_lib.apply(p, sample, t, text, tokens, added, options=opts)
                  ).lower(half).as_text()
    assert "bf16" in hlo and "convolution" in hlo
    out = np.asarray(jax.jit(lambda p: unet_lib.apply(p, sample, t, text, tokens, added,
                                                      options=opts))(half))
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert rm.max_abs(out, ref) <= 0.1 * max(float(np.abs(ref).max()), 1.0)
