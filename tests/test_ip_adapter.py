"""IP-Adapter image projection (Plus resampler, plain ImageProjModel) against diffusers'
IPAdapterPlusImageProjection / ImageProjection built by diffusers' own checkpoint converter;
the checkpoint layouts as upstream stores them (.safetensors with image_proj.* / ip_adapter.*,
torch .bin); unconditional tokens; the CLIP -> tokens path the deflection term uses."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import diffusion_reference as dr  # noqa: E402
import reference_models as rm  # noqa: E402
from idguardian_jax.encoders import clip_vit  # noqa: E402
from idguardian_jax.checkpoints.tensors import CheckpointError, read_safetensors  # noqa: E402
from idguardian_jax.diffusion import ip_adapter as ipa  # noqa: E402
from idguardian_jax.diffusion import loaders  # noqa: E402
from idguardian_jax.diffusion import unet as unet_lib  # noqa: E402

PROJ_TOL = 1e-4
_project = jax.jit(ipa.project)


@pytest.fixture(scope="module")
def sd_tiny(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("ip") / "sd-tiny")
    return folder, dr.write_pipeline("sd-tiny", folder, seed=11)


def _torch_proj(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.slow
def test_sdxl_plus_face_resampler_real_size():
    """The SDXL Plus-Face resampler at its real size (dim 1280, depth 4, 20 heads of 64,
    16 queries, CLIP ViT-H hidden 1280 in, 2048 out, ff x4; ~84M random weights) against
    diffusers' IPAdapterPlusImageProjection."""
    sd = dr.random_ip_adapter_plus({"cross_attention_dim": 2048}, [], 1280, seed=0,
                                   dim=1280, heads=20, num_queries=16)["image_proj"]
    proj = loaders.load_image_proj(sd, "plus-face")
    assert proj.config == ipa.ImageProjConfig.sdxl_plus_face()
    ref_model = dr.torch_image_projection(sd)
    assert sum(p.numel() for p in ref_model.parameters()) == \
        sum(np.size(x) for x in jax.tree_util.tree_leaves(proj.variables))
    x = np.random.default_rng(1).standard_normal((2, 257, 1280)).astype(np.float32)
    ours = np.asarray(_project(proj, x))
    ref = _torch_proj(ref_model, x)
    assert ours.shape == (2, 16, 2048)
    err = rm.max_abs(ours, ref)
    print(f"Plus-Face SDXL resampler: max-abs {err:.2e}, |tokens| {np.abs(ref).max():.2f}")
    assert err <= PROJ_TOL


@pytest.mark.parametrize("adapter", ["plus", "linear"])
def test_tiny_projections_vs_diffusers(sd_tiny, adapter):
    _, paths = sd_tiny
    sd = loaders.read_ip_adapter(paths[adapter])
    proj = loaders.load_image_proj(sd["image_proj"], paths[adapter])
    ref_model = dr.torch_image_projection(paths[adapter])
    rng = np.random.default_rng(2)
    if adapter == "plus":
        assert type(ref_model).__name__ == "IPAdapterPlusImageProjection"
        x = rng.standard_normal((3, 17, proj.config.embedding_dim)).astype(np.float32)
    else:
        assert type(ref_model).__name__ == "ImageProjection"
        assert proj.config.num_tokens == 4
        x = rng.standard_normal((3, proj.config.embedding_dim)).astype(np.float32)
    ours = np.asarray(_project(proj, x))
    assert rm.max_abs(ours, _torch_proj(ref_model, x)) <= PROJ_TOL
    # diffusers' (B, num_images, ...) layout
    multi = np.asarray(ipa.project(proj, jnp.asarray(x)[:, None]))
    assert rm.max_abs(multi, ours) <= 1e-5


def test_checkpoint_formats(sd_tiny, tmp_path):
    """.safetensors (flat image_proj.* / ip_adapter.*) and torch .bin ({'image_proj': ...,
    'ip_adapter': ...}) read the same; the .bin converts to upstream's .safetensors layout."""
    _, paths = sd_tiny
    a, b = loaders.read_ip_adapter(paths["plus"]), loaders.read_ip_adapter(paths["plus_bin"])
    for head in ("image_proj", "ip_adapter"):
        assert sorted(a[head]) == sorted(b[head])
        for k in a[head]:
            np.testing.assert_array_equal(a[head][k], b[head][k])
    out = str(tmp_path / "converted.safetensors")
    loaders.convert_ip_adapter_bin(paths["plus_bin"], out)
    flat = read_safetensors(out)
    assert sorted(flat) == sorted(read_safetensors(paths["plus"]))
    assert any(k.startswith("ip_adapter.1.to_k_ip") for k in flat)


@pytest.mark.slow
def test_clip_to_tokens_and_unconditional(sd_tiny):
    """Photo chips -> the project's CLIP port (hidden_states[-2]) -> resampler, against
    transformers' CLIP + diffusers' projection; unconditional tokens as IP-Adapter makes them
    (Plus: CLIP on the all-zero normalized image; plain: projection of zero embeddings)."""
    import transformers

    folder, paths = sd_tiny
    clip = clip_vit.load(paths["image_encoder"])
    tclip = transformers.CLIPVisionModelWithProjection.from_pretrained(
        paths["image_encoder"]).eval()
    size = clip.config.image_size
    chips = rm.random_images(2, 36, seed=4)
    proj = loaders.load_image_proj(loaders.read_ip_adapter(paths["plus"])["image_proj"], "plus")
    ref_model = dr.torch_image_projection(paths["plus"])
    with torch.no_grad():
        hidden = tclip(pixel_values=rm.clip_input(rm.nchw(torch.from_numpy(chips)), size),
                       output_hidden_states=True).hidden_states[-2]
        ref = ref_model(hidden).numpy()
        zero = tclip(pixel_values=torch.zeros(1, 3, size, size),
                     output_hidden_states=True).hidden_states[-2]
        ref_uncond = ref_model(zero).numpy()
    ours = np.asarray(jax.jit(ipa.image_tokens)(proj, clip, jnp.asarray(chips)))
    assert rm.max_abs(ours, ref) <= PROJ_TOL
    assert rm.max_abs(jax.jit(ipa.unconditional_tokens)(proj, clip), ref_uncond) <= PROJ_TOL
    with pytest.raises(ValueError, match="clip_params"):
        ipa.unconditional_tokens(proj)

    lin = loaders.load_image_proj(loaders.read_ip_adapter(paths["linear"])["image_proj"], "lin")
    ref_lin = dr.torch_image_projection(paths["linear"])
    zeros = np.zeros((1, lin.config.embedding_dim), np.float32)
    uncond = jax.jit(ipa.unconditional_tokens)(lin)
    assert rm.max_abs(uncond, _torch_proj(ref_lin, zeros)) <= PROJ_TOL


def _one_line(e, path):
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg


def test_ip_adapter_file_errors(sd_tiny, tmp_path):
    folder, paths = sd_tiny
    unet = loaders.load_unet(folder)
    with pytest.raises(FileNotFoundError):
        loaders.load_ip_adapter(str(tmp_path / "missing.safetensors"), unet)
    # truncated
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(open(paths["plus"], "rb").read()[:3000])
    with pytest.raises(CheckpointError) as e:
        loaders.load_ip_adapter(str(trunc), unet)
    _one_line(e, trunc)
    # foreign: a UNet's weights
    foreign = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="not an IP-Adapter checkpoint") as e:
        loaders.load_ip_adapter(foreign, unet)
    _one_line(e, foreign)
    # not a torch file at all
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00not a checkpoint" * 50)
    with pytest.raises(CheckpointError) as e:
        loaders.load_ip_adapter(str(garbage), unet)
    _one_line(e, garbage)

    from safetensors.numpy import save_file

    sd = loaders.read_ip_adapter(paths["plus"])

    def write(name, image_proj, ip_layers):
        p = str(tmp_path / name)
        flat = {f"image_proj.{k}": v for k, v in image_proj.items()}
        flat.update({f"ip_adapter.{k}": v for k, v in ip_layers.items()})
        save_file(flat, p)
        return p

    # an adapter with fewer cross-attention layers than the UNet
    fewer = {k: v for k, v in sd["ip_adapter"].items() if not k.startswith("1.")}
    p = write("fewer.safetensors", sd["image_proj"], fewer)
    with pytest.raises(CheckpointError, match="another base model") as e:
        loaders.load_ip_adapter(p, unet)
    _one_line(e, p)
    # FaceID-style LoRA layers
    lora = dict(sd["ip_adapter"], **{"0.to_k_lora.down.weight": np.zeros((4, 4), np.float32)})
    p = write("lora.safetensors", sd["image_proj"], lora)
    with pytest.raises(CheckpointError, match="LoRA") as e:
        loaders.load_ip_adapter(p, unet)
    _one_line(e, p)
    # IP-Adapter Full (MLPProjModel): not supported, said so
    full = {"proj.0.weight": np.zeros((8, 8), np.float32), "proj.3.weight": np.ones(32, np.float32)}
    p = write("full.safetensors", full, sd["ip_adapter"])
    with pytest.raises(CheckpointError, match="Full") as e:
        loaders.load_ip_adapter(p, unet)
    _one_line(e, p)
    # a to_k_ip of the wrong width
    bad = dict(sd["ip_adapter"])
    bad["3.to_k_ip.weight"] = bad["3.to_k_ip.weight"][:, :-1]
    p = write("shape.safetensors", sd["image_proj"], bad)
    with pytest.raises(CheckpointError, match="to_k_ip") as e:
        loaders.load_ip_adapter(p, unet)
    _one_line(e, p)
    # a missing resampler tensor
    proj_missing = {k: v for k, v in sd["image_proj"].items() if k != "layers.2.1.3.weight"}
    p = write("proj.safetensors", proj_missing, sd["ip_adapter"])
    with pytest.raises(CheckpointError, match="missing") as e:
        loaders.load_ip_adapter(p, unet)
    _one_line(e, p)


@pytest.mark.slow
def test_unet_gradient_through_adapter_with_remat(sd_tiny):
    """d<eps, w>/d(sample, image features) through the image projection, the decoupled
    cross-attention and the UNet, with jax.checkpoint on every block, against torch autograd
    through diffusers' UNet with the adapter (attacks that differentiate through the UNet)."""
    folder, paths = sd_tiny
    params, proj = loaders.load_ip_adapter(paths["linear"], loaders.load_unet(folder))
    rng = np.random.default_rng(4)
    sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([17, 803])
    text = rng.standard_normal((2, 7, params.config.cross_attention_dim[0])).astype(np.float32)
    feats = rng.standard_normal((2, proj.config.embedding_dim)).astype(np.float32)
    w = rng.standard_normal(sample.shape).astype(np.float32)

    model = dr.torch_unet_with_ip(folder, paths["linear"])
    xs = torch.from_numpy(sample).requires_grad_()
    fe = torch.from_numpy(feats).requires_grad_()
    out = model(xs, torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(text),
                added_cond_kwargs={"image_embeds": [fe[:, None]]}).sample
    (out * torch.from_numpy(w)).sum().backward()

    opts = unet_lib.Options(remat=True)

    def loss(x, f):
        tok = ipa.project(proj, f)
        return jnp.sum(unet_lib.apply(params, x, t, text, tok, options=opts) * w)

    gx, gf = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(sample), jnp.asarray(feats))
    scale = float(np.abs(xs.grad.numpy()).max())
    assert rm.max_abs(gx, xs.grad.numpy()) <= 1e-4 * max(scale, 1.0)
    assert rm.max_abs(gf, fe.grad.numpy()) <= 1e-4 * max(float(np.abs(fe.grad.numpy()).max()),
                                                          1.0)
