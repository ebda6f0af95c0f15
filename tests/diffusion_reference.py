"""Tiny random SD-style and SDXL-style pipelines in diffusers' PyTorch format, plus IP-Adapter
checkpoints as upstream stores them, for the equivalence tests and for smoke runs.

    python tests/diffusion_reference.py sdxl-tiny OUT_DIR     (or sd-tiny)

writes a diffusers pipeline folder (save_pretrained, safetensors):

  OUT_DIR/model_index.json
  OUT_DIR/unet/            UNet2DConditionModel (random; norms with random affine parameters)
  OUT_DIR/vae/             AutoencoderKL (4 levels: latents are 1/8 of the image, as SD's)
  OUT_DIR/text_encoder[_2]/ CLIPTextModel (+ CLIPTextModelWithProjection for SDXL)
  OUT_DIR/tokenizer[_2]/   a byte-level CLIP tokenizer without merges (vocab of 514)
  OUT_DIR/scheduler/       DDPMScheduler, scaled_linear 0.00085..0.012, 1000 steps
  OUT_DIR/image_encoder/   CLIPVisionModelWithProjection (tests/reference_models.CLIP_TINY)
  OUT_DIR/ip_adapter/ip-adapter-plus_tiny.safetensors   Plus resampler ('image_proj.*' in
        tencent-ailab's layout: latents, proj_in, layers.i.0.{norm1,norm2,to_q,to_kv,to_out},
        layers.i.1.{0,1,3}, proj_out, norm_out) + 'ip_adapter.{2n+1}.to_{k,v}_ip.weight'
  OUT_DIR/ip_adapter/ip-adapter-plus_tiny.bin           the same as torch.save({'image_proj':
        ..., 'ip_adapter': ...}) (the older upstream format)
  OUT_DIR/ip_adapter/ip-adapter_tiny.safetensors        plain ImageProjModel (proj, norm)

The resampler keeps the real adapters' structure (depth 4, 64-d heads, ff_mult 4: diffusers
assumes these when it loads a Plus checkpoint) at small widths. Reference helpers load the
adapter into diffusers' own PyTorch UNet the way diffusers' `load_ip_adapter` does.
Needs torch, diffusers 0.37.x and transformers 4.x (imported lazily).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_models as rm  # noqa: E402

# ------------------------------------------------------------------------------------------
# Configurations
# ------------------------------------------------------------------------------------------
# SDXL-style: DownBlock2D then cross-attention blocks, linear projections, 2-deep transformer
# stacks (SDXL: 2 and 10), text_time added conditions (pooled 32 + 6 time ids x 8).
SDXL_TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64), layers_per_block=2, attention_head_dim=(2, 4),
    transformer_layers_per_block=(1, 2), cross_attention_dim=64, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=8)
# SD-1.5-style: cross-attention down blocks first, 1x1-conv projections, one layer per block.
SD_TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 48), layers_per_block=1, attention_head_dim=4,
    cross_attention_dim=32, use_linear_projection=False, norm_num_groups=8)
VAE_TINY = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
                layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=64)
TEXT_TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                 max_position_embeddings=77, projection_dim=32, hidden_act="gelu")
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", clip_sample=False,
                 steps_offset=1)
# IP-Adapter Plus at small width: real Plus / Plus-Face have dim 768 / 1280, heads 12 / 20.
PLUS_TINY = dict(dim=32, heads=2, dim_head=64, depth=4, num_queries=4, ff_mult=4)
KINDS = ("sd-tiny", "sdxl-tiny")

# unet/config.json of the real base models (the fields that differ from diffusers' defaults)
SDXL_BASE_UNET = dict(
    sample_size=128,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, addition_embed_type_num_heads=64,
    upcast_attention=None)
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SD21_UNET = dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True, upcast_attention=True)
REAL_UNETS = {"sdxl-base": SDXL_BASE_UNET, "sd15": SD15_UNET, "sd21": SD21_UNET}
# parameters() of diffusers' UNet2DConditionModel for these configs
REAL_UNET_PARAMS = {"sdxl-base": 2_567_463_684, "sd15": 859_520_964, "sd21": 865_910_724}


def _torch():
    import torch

    return torch


# ------------------------------------------------------------------------------------------
# Random models
# ------------------------------------------------------------------------------------------
def randomize_norms_(model, seed: int, spread: float = 0.2):
    """GroupNorm / LayerNorm affine parameters random (upstream initializes them to 1 / 0, which
    would hide a swapped or missing scale / bias)."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(1.0 + spread * torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(spread * torch.randn(m.bias.shape, generator=g))
    return model


def random_unet(config: dict[str, Any], seed: int = 0):
    torch = _torch()
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return randomize_norms_(UNet2DConditionModel(**config), seed + 1).eval()


def random_vae(config: dict[str, Any] = VAE_TINY, seed: int = 0, scaling_factor: float = 0.18215):
    torch = _torch()
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return randomize_norms_(AutoencoderKL(**config, scaling_factor=scaling_factor), seed + 1).eval()


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer(folder: str, pad_token: str = "<|endoftext|>") -> int:
    """A CLIPTokenizer over bytes without merges (every word splits into characters); returns
    the vocabulary size."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vf, mf = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vf, "w") as fh:
        json.dump(vocab, fh)
    with open(mf, "w") as fh:
        fh.write("#version: 0.2\n")
    tok = CLIPTokenizer(vf, mf, pad_token=pad_token, model_max_length=77)
    tok.save_pretrained(folder)
    return len(vocab)


def random_text_encoder(vocab_size: int, with_projection: bool, seed: int):
    torch = _torch()
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(vocab_size=vocab_size, bos_token_id=vocab_size - 2,
                                      eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
                                      **TEXT_TINY)
    cls = (transformers.CLIPTextModelWithProjection if with_projection
           else transformers.CLIPTextModel)
    return randomize_norms_(cls(cfg), seed + 1).eval()


def cross_attention_widths(unet) -> list[int]:
    """Width of each cross-attention layer (attn2) in diffusers' attn_processors order."""
    out = []
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn2.processor"):
            mod = unet.get_submodule(name[: -len(".processor")])
            out.append(mod.to_q.out_features)
    return out


def random_ip_adapter_plus(unet_config: dict, widths: Sequence[int], embedding_dim: int,
                           seed: int = 0, **kw) -> dict[str, dict[str, np.ndarray]]:
    """{'image_proj': resampler tensors (tencent layout), 'ip_adapter': to_k_ip / to_v_ip}."""
    c = dict(PLUS_TINY, **kw)
    rng = np.random.default_rng(seed)
    dim, inner, out_dim = c["dim"], c["heads"] * c["dim_head"], unet_config["cross_attention_dim"]

    def lin(o, i):
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    def ln(n):
        return ((1 + 0.2 * rng.standard_normal(n)).astype(np.float32),
                (0.2 * rng.standard_normal(n)).astype(np.float32))

    p: dict[str, np.ndarray] = {}
    p["latents"] = (rng.standard_normal((1, c["num_queries"], dim))
                    / np.sqrt(dim)).astype(np.float32)
    p["proj_in.weight"], p["proj_in.bias"] = lin(dim, embedding_dim), ln(dim)[1]
    for i in range(c["depth"]):
        for n in ("norm1", "norm2"):
            p[f"layers.{i}.0.{n}.weight"], p[f"layers.{i}.0.{n}.bias"] = ln(dim)
        p[f"layers.{i}.0.to_q.weight"] = lin(inner, dim)
        p[f"layers.{i}.0.to_kv.weight"] = lin(2 * inner, dim)
        p[f"layers.{i}.0.to_out.weight"] = lin(dim, inner)
        p[f"layers.{i}.1.0.weight"], p[f"layers.{i}.1.0.bias"] = ln(dim)
        p[f"layers.{i}.1.1.weight"] = lin(c["ff_mult"] * dim, dim)
        p[f"layers.{i}.1.3.weight"] = lin(dim, c["ff_mult"] * dim)
    p["proj_out.weight"], p["proj_out.bias"] = lin(out_dim, dim), ln(out_dim)[1]
    p["norm_out.weight"], p["norm_out.bias"] = ln(out_dim)
    return {"image_proj": p, "ip_adapter": _ip_layers(widths, out_dim, rng)}


def random_ip_adapter_linear(unet_config: dict, widths: Sequence[int], embedding_dim: int,
                             num_tokens: int = 4, seed: int = 0
                             ) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out_dim = unet_config["cross_attention_dim"]
    p = {"proj.weight": (rng.standard_normal((num_tokens * out_dim, embedding_dim))
                         / np.sqrt(embedding_dim)).astype(np.float32),
         "proj.bias": (0.2 * rng.standard_normal(num_tokens * out_dim)).astype(np.float32),
         "norm.weight": (1 + 0.2 * rng.standard_normal(out_dim)).astype(np.float32),
         "norm.bias": (0.2 * rng.standard_normal(out_dim)).astype(np.float32)}
    return {"image_proj": p, "ip_adapter": _ip_layers(widths, out_dim, rng)}


def _ip_layers(widths, cross, rng) -> dict[str, np.ndarray]:
    out = {}
    for n, w in enumerate(widths):
        for name in ("to_k_ip", "to_v_ip"):
            out[f"{2 * n + 1}.{name}.weight"] = (rng.standard_normal((w, cross))
                                                  / np.sqrt(cross)).astype(np.float32)
    return out


def write_ip_adapter(path: str, sd: dict[str, dict[str, np.ndarray]]) -> str:
    """As upstream: .safetensors with flat 'image_proj.*' / 'ip_adapter.*' keys, or a torch
    .bin of the nested dict."""
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        flat = {f"{h}.{k}": np.ascontiguousarray(v) for h in ("image_proj", "ip_adapter")
                for k, v in sd[h].items()}
        save_file(flat, path, metadata={"format": "pt"})
    else:
        torch = _torch()
        torch.save({h: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd[h].items()}
                    for h in ("image_proj", "ip_adapter")}, path)
    return path


# ------------------------------------------------------------------------------------------
# A whole pipeline folder
# ------------------------------------------------------------------------------------------
def write_pipeline(kind: str, out: str, seed: int = 0) -> dict[str, str]:
    """Writes the folder; returns paths of the IP-Adapter files and the image encoder."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {KINDS}")
    torch = _torch()
    from diffusers import DDPMScheduler

    sdxl = kind == "sdxl-tiny"
    os.makedirs(out, exist_ok=True)
    ucfg = SDXL_TINY_UNET if sdxl else SD_TINY_UNET
    unet = random_unet(ucfg, seed)
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    vae = random_vae(VAE_TINY, seed + 10, 0.13025 if sdxl else 0.18215)
    vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    DDPMScheduler(**SCHEDULER).save_pretrained(os.path.join(out, "scheduler"))
    encoders = [("text_encoder", "tokenizer", False, "<|endoftext|>")]
    if sdxl:
        encoders.append(("text_encoder_2", "tokenizer_2", True, "!"))
    for i, (te, tok, proj, pad) in enumerate(encoders):
        vocab = write_tokenizer(os.path.join(out, tok), pad)
        random_text_encoder(vocab, proj, seed + 20 + i).save_pretrained(
            os.path.join(out, te), safe_serialization=True)
    clip = rm.random_clip(rm.CLIP_TINY, seed + 30)
    rm.write_clip_folder(os.path.join(out, "image_encoder"), clip)
    widths = cross_attention_widths(unet)
    ipdir = os.path.join(out, "ip_adapter")
    os.makedirs(ipdir, exist_ok=True)
    plus = random_ip_adapter_plus(ucfg, widths, rm.CLIP_TINY["hidden_size"], seed + 40)
    linear = random_ip_adapter_linear(ucfg, widths, rm.CLIP_TINY["projection_dim"], seed=seed + 50)
    paths = {
        "plus": write_ip_adapter(os.path.join(ipdir, "ip-adapter-plus_tiny.safetensors"), plus),
        "plus_bin": write_ip_adapter(os.path.join(ipdir, "ip-adapter-plus_tiny.bin"), plus),
        "linear": write_ip_adapter(os.path.join(ipdir, "ip-adapter_tiny.safetensors"), linear),
        "image_encoder": os.path.join(out, "image_encoder"),
    }
    cls = "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
    index = {"_class_name": cls, "_diffusers_version": "0.37.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDPMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"]}
    if sdxl:
        index.update({"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                      "tokenizer_2": ["transformers", "CLIPTokenizer"]})
    with open(os.path.join(out, "model_index.json"), "w") as fh:
        json.dump(index, fh, indent=2)
    del torch
    return paths


# ------------------------------------------------------------------------------------------
# References: diffusers' PyTorch models with the adapter loaded as diffusers does
# ------------------------------------------------------------------------------------------
def read_ip_adapter_like_diffusers(path: str) -> dict[str, dict[str, Any]]:
    """What diffusers' IPAdapterMixin.load_ip_adapter reads from a file (torch tensors)."""
    torch = _torch()
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        sd: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
        with safe_open(path, framework="pt", device="cpu") as f:
            for key in f.keys():
                if key.startswith("image_proj."):
                    sd["image_proj"][key.replace("image_proj.", "")] = f.get_tensor(key)
                elif key.startswith("ip_adapter."):
                    sd["ip_adapter"][key.replace("ip_adapter.", "")] = f.get_tensor(key)
        return sd
    return torch.load(path, map_location="cpu", weights_only=True)


def torch_unet_with_ip(folder: str, ip_path: str | None):
    """diffusers' UNet2DConditionModel from the folder, with the IP-Adapter loaded through
    UNet2DConditionLoadersMixin._load_ip_adapter_weights (IPAdapterAttnProcessor2_0 on every
    attn2, the image projection as encoder_hid_proj)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet",
                                                low_cpu_mem_usage=False).eval()
    if ip_path:
        unet._load_ip_adapter_weights([read_ip_adapter_like_diffusers(ip_path)],
                                      low_cpu_mem_usage=False)
    return unet


def torch_image_projection(source):
    """diffusers' IPAdapterPlusImageProjection / ImageProjection, built by diffusers' own
    converter from an IP-Adapter file or from an `image_proj` dict (numpy or torch)."""
    torch = _torch()
    from diffusers import UNet2DConditionModel

    if isinstance(source, str):
        sd = read_ip_adapter_like_diffusers(source)["image_proj"]
    else:
        sd = {k: torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v
              for k, v in source.items()}
    # the converter uses `self` only for low_cpu_mem_usage
    return UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(
        None, sd, low_cpu_mem_usage=False).eval()


# ------------------------------------------------------------------------------------------
# Algorithm 1 of the IDGuardian paper, re-stated plainly in PyTorch (the reference for one step)
# ------------------------------------------------------------------------------------------
def torch_algorithm1_direction(root, paths, fn_model, pe, x_adv, x, t, noise, S, models=None):
    """Algorithm 1's total = g_id/||g_id|| - s_up/||s_up|| for a face image (1, S, S, 3) in [0, 1],
    written plainly with diffusers, transformers and facenet-pytorch (the paper's reference step;
    NCHW tensors inside). `models` = (clip, unet, vae, scheduler) to reuse loaded ones."""
    torch = _torch()
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPVisionModelWithProjection

    if models is None:
        models = (CLIPVisionModelWithProjection.from_pretrained(paths["image_encoder"]).eval(),
                  torch_unet_with_ip(root, paths["plus"]),
                  AutoencoderKL.from_pretrained(root, subfolder="vae").eval(),
                  DDPMScheduler.from_pretrained(root, subfolder="scheduler"))
    clip, unet, vae, sched = models
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    size = clip.config.image_size

    def clip_in(img):
        return (F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False) - mean) / std

    xa = torch.from_numpy(x_adv).permute(0, 3, 1, 2).requires_grad_(True)
    xc = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        e_clip = clip(pixel_values=clip_in(xc)).image_embeds
        e_fn = fn_model(F.interpolate(xc, size=(160, 160), mode="bilinear", align_corners=False) * 2 - 1)
    l_id = (F.cosine_similarity(clip(pixel_values=clip_in(xa)).image_embeds, e_clip).sum()
            + F.cosine_similarity(fn_model(F.interpolate(xa, size=(160, 160), mode="bilinear",
                                                         align_corners=False) * 2 - 1), e_fn).sum())
    g = torch.autograd.grad(l_id, xa)[0]
    with torch.no_grad():
        z = vae.encode(xc * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
        tt = torch.from_numpy(t).long()
        zt = sched.add_noise(z, torch.from_numpy(noise), tt)
        h_adv = clip(pixel_values=clip_in(xa.detach()), output_hidden_states=True).hidden_states[-2]
        h_cln = clip(pixel_values=clip_in(xc), output_hidden_states=True).hidden_states[-2]
        added = {k: torch.from_numpy(np.asarray(v)) for k, v in pe.added_cond(S, S).items()}
        txt = torch.from_numpy(np.asarray(pe.batch(1)))

        def eps(h):
            return unet(zt, tt, encoder_hidden_states=txt,
                        added_cond_kwargs=dict(added, image_embeds=[h[:, None]])).sample

        sig = torch.sqrt(1 - sched.alphas_cumprod[tt]).view(-1, 1, 1, 1)
        s = -(eps(h_adv) - eps(h_cln)) / sig
        s_up = F.interpolate(s[:, :3], size=(S, S), mode="bilinear", align_corners=False)
    total = g / (g.norm() + 1e-8) - s_up / (s_up.norm() + 1e-8)
    return total.permute(0, 2, 3, 1).numpy(), s_up.permute(0, 2, 3, 1).numpy()


def torch_algorithm1_direction_on_device(models, fn_model, pe, x_adv, x, t, noise, S):
    """torch_algorithm1_direction's step with built models (clip, unet, vae, scheduler) on the
    device and in the dtype of the UNet's parameters (e.g. CUDA, bfloat16: the step benchmark's
    real-size random models), also for SD-1.5-style UNets (pe.added_cond None). Inputs as there
    (numpy float32, NHWC); returns (total, s_up) as float32 numpy (norms taken in float32). On
    CPU in float32 it computes what torch_algorithm1_direction computes."""
    torch = _torch()
    import torch.nn.functional as F

    clip, unet, vae, sched = models
    w = next(unet.parameters())
    dev, dt = w.device, w.dtype
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=dev, dtype=dt).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=dev, dtype=dt).view(1, 3, 1, 1)
    size = clip.config.image_size

    def clip_in(img):
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        return (img - mean) / std

    def fn_in(img):
        return F.interpolate(img, size=(160, 160), mode="bilinear", align_corners=False) * 2 - 1

    def dev_t(a):
        return torch.from_numpy(np.array(a, np.float32)).to(device=dev, dtype=dt)

    xa = dev_t(x_adv).permute(0, 3, 1, 2).detach().requires_grad_(True)
    xc = dev_t(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        e_clip = clip(pixel_values=clip_in(xc)).image_embeds
        e_fn = fn_model(fn_in(xc))
    l_id = (F.cosine_similarity(clip(pixel_values=clip_in(xa)).image_embeds, e_clip).sum()
            + F.cosine_similarity(fn_model(fn_in(xa)), e_fn).sum())
    g = torch.autograd.grad(l_id, xa)[0]
    with torch.no_grad():
        z = vae.encode(xc * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
        tt = torch.from_numpy(np.asarray(t)).long()
        zt = sched.add_noise(z, dev_t(noise), tt.to(dev))
        h_adv = clip(pixel_values=clip_in(xa.detach()), output_hidden_states=True).hidden_states[-2]
        h_cln = clip(pixel_values=clip_in(xc), output_hidden_states=True).hidden_states[-2]
        ac = pe.added_cond(S, S)
        added = {} if ac is None else {k: dev_t(v) for k, v in ac.items()}
        txt = dev_t(pe.batch(1))

        def eps(h):
            return unet(zt, tt.to(dev), encoder_hidden_states=txt,
                        added_cond_kwargs=dict(added, image_embeds=[h[:, None]])).sample

        ac_t = sched.alphas_cumprod.cpu()[tt]  # add_noise may have moved the table to dev
        sig = torch.sqrt(1 - ac_t).view(-1, 1, 1, 1).to(device=dev, dtype=dt)
        s = -(eps(h_adv) - eps(h_cln)) / sig
        s_up = F.interpolate(s[:, :3], size=(S, S), mode="bilinear", align_corners=False).float()
    g = g.float()
    total = g / (g.norm() + 1e-8) - s_up / (s_up.norm() + 1e-8)
    return (total.permute(0, 2, 3, 1).cpu().numpy(), s_up.permute(0, 2, 3, 1).cpu().numpy())



def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    paths = write_pipeline(a.kind, a.out, a.seed)
    print(a.out)
    for k, v in paths.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
