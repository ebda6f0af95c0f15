"""Loaders for local diffusers-format folders and IP-Adapter checkpoints, without torch.

A Stable Diffusion / SDXL pipeline folder (as `save_pretrained` / the Hub repos lay it out):

  model_index.json
  unet/config.json + diffusion_pytorch_model[.fp16].safetensors (or a sharded
      diffusion_pytorch_model.safetensors.index.json)
  vae/config.json + diffusion_pytorch_model[.fp16].safetensors
  text_encoder[_2]/config.json + model.safetensors, tokenizer[_2]/   (text.py)
  scheduler/scheduler_config.json                                     (schedule.py)

Tensors are read one at a time with `safetensors` (numpy) and mapped onto our Flax trees by
diffusion.state_dicts (every key used, every parameter filled).

IP-Adapter checkpoints as upstream stores them: `.safetensors` with 'image_proj.*' and
'ip_adapter.*' keys (h94/IP-Adapter), or a torch `.bin` holding {'image_proj': sd,
'ip_adapter': sd}, read only through torch.load(weights_only=True) (optional; needs torch;
`convert_ip_adapter_bin` writes the .safetensors once). 'ip_adapter.{2n+1}.to_k_ip.weight' /
'.to_v_ip.weight' belong to the n-th cross-attention layer in diffusers' attn_processors order
(unet.ip_layer_paths).

Failures raise `CheckpointError` (one line: the file, then what is wrong) or FileNotFoundError.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.checkpoints.tensors import (CheckpointError, _first_line, read_json_config,
                                                write_safetensors)
from idguardian_jax.diffusion import ip_adapter as ipa
from idguardian_jax.diffusion import state_dicts
from idguardian_jax.diffusion import schedule as schedule_lib
from idguardian_jax.diffusion import unet as unet_lib
from idguardian_jax.diffusion import vae as vae_lib



def check_unet_folder(path: str | os.PathLike) -> unet_lib.UNetConfig:
    """Validates a (possibly huge) UNet folder's config and tensor names / shapes from the
    safetensors headers, without reading weights. Returns the config."""
    folder = state_dicts.component_folder(path, "unet")
    cfg_path = os.path.join(folder, "config.json")
    cfg = unet_lib.UNetConfig.from_dict(read_json_config(cfg_path), cfg_path)
    files = state_dicts.weight_files(folder)
    state_dicts.check_layout(state_dicts.header_shapes(files),
                             unet_lib.expected_shapes(cfg)["params"],
                             files[0] if len(files) == 1 else folder, f"the UNet of {cfg_path}")
    return cfg


# ------------------------------------------------------------------------------------------
# UNet, VAE
# ------------------------------------------------------------------------------------------
def load_unet(path: str | os.PathLike, dtype=jnp.float32) -> unet_lib.UNetParams:
    """UNet2DConditionModel of a diffusers folder (the pipeline root or its unet/)."""
    folder = state_dicts.component_folder(path, "unet")
    cfg_path = os.path.join(folder, "config.json")
    cfg = unet_lib.UNetConfig.from_dict(read_json_config(cfg_path), cfg_path)
    files = state_dicts.weight_files(folder)
    where = files[0] if len(files) == 1 else folder
    what = f"the UNet of {cfg_path}"
    tree = state_dicts.assemble(files, unet_lib.expected_shapes(cfg)["params"], where, what, dtype)
    return unet_lib.UNetParams({"params": tree}, cfg)


_VAE_ATTN = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _vae_rename(key: str) -> str | None:
    if not key.startswith(("encoder.", "quant_conv.")):
        return None  # decoder.*, post_quant_conv.*: not needed
    m = re.match(r"(encoder\.mid_block\.attentions\.\d+\.)(to_q|to_k|to_v|to_out\.0)\.(.*)", key)
    if m:
        return f"{m.group(1)}{_VAE_ATTN[m.group(2)]}.{m.group(3)}"
    return key


def load_vae(path: str | os.PathLike, dtype=jnp.float32) -> vae_lib.VAEParams:
    """The encoder half of an AutoencoderKL of a diffusers folder (root or its vae/)."""
    folder = state_dicts.component_folder(path, "vae")
    cfg_path = os.path.join(folder, "config.json")
    cfg = vae_lib.VAEConfig.from_dict(read_json_config(cfg_path), cfg_path)
    files = state_dicts.weight_files(folder)
    where = files[0] if len(files) == 1 else folder
    tree = state_dicts.assemble(files, vae_lib.expected_shapes(cfg)["params"], where,
                                f"the VAE of {cfg_path}", dtype, _vae_rename)
    return vae_lib.VAEParams({"params": tree}, cfg)


# ------------------------------------------------------------------------------------------
# IP-Adapter
# ------------------------------------------------------------------------------------------
def _split_ip(flat: Mapping[str, Any], path: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    other = []
    for k, v in flat.items():
        head, _, rest = k.partition(".")
        if head in out and rest:
            out[head][rest] = v
        else:
            other.append(k)
    if not out["image_proj"] or not out["ip_adapter"]:
        first = next(iter(flat), None)
        raise CheckpointError(f"{path}: not an IP-Adapter checkpoint (no image_proj.* and "
                              f"ip_adapter.* tensors; first key {first!r})")
    if other:
        raise CheckpointError(f"{path}: not an IP-Adapter checkpoint: unexpected tensor "
                              f"{other[0]!r}")
    return out


def read_ip_adapter(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """{'image_proj': {...}, 'ip_adapter': {...}} of numpy arrays, from an upstream
    .safetensors (flat 'image_proj.*' / 'ip_adapter.*' keys) or (with torch) a .bin / .pt."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such IP-Adapter file")
    if path.endswith(".safetensors"):
        flat = {k: get() for k, _, get in state_dicts.iter_safetensors([path])}
        return _split_ip(flat, path)
    return _read_ip_adapter_torch(path)


def _read_ip_adapter_torch(path: str) -> dict[str, dict[str, np.ndarray]]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path}: a PyTorch IP-Adapter file needs torch once to convert it "
                              f"(convert_ip_adapter_bin), or use the upstream .safetensors"
                              ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})"
                              ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not an IP-Adapter checkpoint (holds a "
                              f"{type(obj).__name__})")
    flat = {}
    if "image_proj" in obj and isinstance(obj.get("image_proj"), Mapping):
        for head in ("image_proj", "ip_adapter"):
            for k, v in (obj.get(head) or {}).items():
                flat[f"{head}.{k}"] = v
        extra = [k for k in obj if k not in ("image_proj", "ip_adapter")]
        if extra:
            raise CheckpointError(f"{path}: not an IP-Adapter checkpoint: unexpected entry "
                                  f"{extra[0]!r}")
    else:
        flat = dict(obj)
    out = {}
    for k, v in flat.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
    return _split_ip(out, path)


def convert_ip_adapter_bin(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """An upstream IP-Adapter .bin (torch) -> .safetensors with upstream's flat key names."""
    sd = read_ip_adapter(src)
    flat = {f"{h}.{k}": v for h in ("image_proj", "ip_adapter") for k, v in sd[h].items()}
    write_safetensors(dst, flat, {"format": "pt"})


def load_image_proj(sd: Mapping[str, np.ndarray], path: str, dim_head: int = 64,
                    dtype=jnp.float32) -> ipa.ImageProjParams:
    """Our image projection from IP-Adapter's image_proj tensors (prefix removed)."""
    cfg = ipa.config_from_state_dict(sd, path, dim_head)
    keymap = ipa.torch_key_map(cfg)
    asm = state_dicts.Assembler(ipa.expected_shapes(cfg)["params"], path,
                                f"an IP-Adapter image projection ({cfg.kind})", dtype)
    for k, v in sd.items():
        if k not in keymap:
            raise CheckpointError(f"{path}: not an IP-Adapter {cfg.kind} image projection: "
                                  f"unexpected tensor 'image_proj.{k}'")
        p, t = keymap[k]
        asm.put(p, None, v, f"image_proj.{k}", path, t)
    return ipa.ImageProjParams({"params": asm.finish()}, cfg)


def attach_ip_layers(params: unet_lib.UNetParams, ip_sd: Mapping[str, np.ndarray], path: str,
                     num_tokens: int, token_dim: int, dtype=None) -> unet_lib.UNetParams:
    """The UNet with IP-Adapter's to_k_ip / to_v_ip (ip_adapter.* tensors) in every
    cross-attention layer."""
    cfg = params.config.with_ip_adapter(num_tokens, token_dim)
    layers = unet_lib.ip_layer_paths(cfg)
    want_keys = set()
    for n in range(len(layers)):
        want_keys |= {f"{2 * n + 1}.to_k_ip.weight", f"{2 * n + 1}.to_v_ip.weight"}
    got = set(ip_sd)
    if any("lora" in k for k in got):
        raise CheckpointError(f"{path}: LoRA IP-Adapters (FaceID) are not supported")
    if got != want_keys:
        n_file = len({k.split(".")[0] for k in got})
        raise CheckpointError(f"{path}: has {n_file} IP cross-attention layers, the UNet has "
                              f"{len(layers)} (an adapter for another base model?)")
    exp = state_dicts.flat_shapes(unet_lib.expected_shapes(cfg)["params"])
    dtype = dtype or jax.tree_util.tree_leaves(params.variables)[0].dtype
    asm = state_dicts.Assembler({}, path, "an IP-Adapter for this UNet", dtype)
    asm.exp = {p: s for p, s in exp.items() if p[-2] in ("to_k_ip", "to_v_ip")}
    for n, (tpath, k) in enumerate(layers):
        for name in ("to_k_ip", "to_v_ip"):
            key = f"{2 * n + 1}.{name}.weight"
            asm.put(tpath + ("transformer_blocks", "attn2", name, "kernel"), k, ip_sd[key],
                    f"ip_adapter.{key}", path)
    ip_tree = asm.finish()

    def merge(a, b):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if k in out and isinstance(v, Mapping) else v
        return out

    return unet_lib.UNetParams({"params": merge(params.variables["params"], ip_tree)}, cfg)


def load_ip_adapter(path: str | os.PathLike, unet_params: unet_lib.UNetParams,
                    dim_head: int = 64, dtype=jnp.float32
                    ) -> tuple[unet_lib.UNetParams, ipa.ImageProjParams]:
    """(UNet with the adapter's decoupled cross-attention, image projection) of an upstream
    IP-Adapter checkpoint (e.g. ip-adapter-plus-face_sdxl_vit-h.safetensors). dim_head: the
    resampler's head width (64 in every released Plus adapter; the file does not store it)."""
    path = os.fspath(path)
    sd = read_ip_adapter(path)
    proj = load_image_proj(sd["image_proj"], path, dim_head, dtype)
    cross = unet_params.config.cross_attention_dim[0]
    if proj.config.output_dim != cross:
        raise CheckpointError(f"{path}: image tokens of width {proj.config.output_dim}, the UNet's "
                              f"cross_attention_dim is {cross} (an adapter for another base "
                              f"model?)")
    unet = attach_ip_layers(unet_params, sd["ip_adapter"], path, proj.config.num_tokens,
                            proj.config.output_dim)
    return unet, proj


# ------------------------------------------------------------------------------------------
# A whole pipeline folder
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Pipeline:
    root: str
    kind: str                      # "sd" or "sdxl"
    unet: unet_lib.UNetParams
    vae: vae_lib.VAEParams
    schedule: schedule_lib.Schedule


def load_pipeline(root: str | os.PathLike, *, dtype=jnp.float32, ip_adapter: str | None = None
                  ) -> tuple[Pipeline, ipa.ImageProjParams | None]:
    """UNet (+ IP-Adapter), VAE encoder and schedule of a local SD / SDXL pipeline folder.
    Text conditioning: text.encode_prompt(root, prompt) (cached)."""
    root = os.fspath(root)
    unet = load_unet(root, dtype)
    proj = None
    if ip_adapter:
        unet, proj = load_ip_adapter(ip_adapter, unet, dtype=dtype)
    vae = load_vae(root, dtype)
    sched = schedule_lib.load(root) if os.path.isdir(os.path.join(root, "scheduler")) else \
        schedule_lib.from_config()
    kind = "sdxl" if unet.config.is_sdxl_style else "sd"
    return Pipeline(root, kind, unet, vae, sched), proj
