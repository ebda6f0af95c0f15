"""Loaders for local diffusers-format folders and IP-Adapter checkpoints, without torch.

A Stable Diffusion / SDXL pipeline folder (as `save_pretrained` / the Hub repos lay it out):

  model_index.json
  unet/config.json + diffusion_pytorch_model[.fp16].safetensors (or a sharded
      diffusion_pytorch_model.safetensors.index.json)
  vae/config.json + diffusion_pytorch_model[.fp16].safetensors
  text_encoder[_2]/config.json + model.safetensors, tokenizer[_2]/   (text.py)
  scheduler/scheduler_config.json                                     (schedule.py)

Tensors are read one at a time with `safetensors` (numpy) and mapped onto our Flax trees:
PyTorch 'a.N.b' -> Flax 'a_N/b'; Linear weight (out, in) -> kernel (in, out); Conv OIHW -> HWIO;
norm weight -> scale; the BasicTransformerBlocks of a Transformer2D ('transformer_blocks.K')
are stacked on a leading axis. Every key must be used and every parameter filled.

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
import json
import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.checkpoints.tensors import CheckpointError, _first_line, write_safetensors
from idguardian_jax.diffusion import ip_adapter as ipa
from idguardian_jax.diffusion import schedule as schedule_lib
from idguardian_jax.diffusion import unet as unet_lib
from idguardian_jax.diffusion import vae as vae_lib

WEIGHT_STEM = "diffusion_pytorch_model"


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
def _read_json(path: str) -> dict:
    try:
        with open(path) as fh:
            d = json.load(fh)
    except ValueError as e:
        raise CheckpointError(f"{path}: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: not a model config (a JSON {type(d).__name__})")
    return d


def component_folder(path: str | os.PathLike, name: str) -> str:
    """`path` itself if it is the component folder (has config.json), else path/name."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such folder")
    sub = os.path.join(path, name)
    if os.path.isdir(sub) and os.path.isfile(os.path.join(sub, "config.json")):
        return sub
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    raise FileNotFoundError(f"{path}: no {name}/config.json (expected a diffusers pipeline folder "
                            f"or its {name} folder)")


def weight_files(folder: str, stem: str = WEIGHT_STEM) -> list[str]:
    """The safetensors file(s) of a component folder: stem.safetensors, stem.fp16.safetensors,
    or the shards of stem[.fp16].safetensors.index.json."""
    for variant in ("", ".fp16", ".bf16"):
        single = os.path.join(folder, f"{stem}{variant}.safetensors")
        if os.path.isfile(single):
            return [single]
        index = os.path.join(folder, f"{stem}{variant}.safetensors.index.json")
        if os.path.isfile(index):
            d = _read_json(index)
            try:
                shards = sorted(set(d["weight_map"].values()))
            except (KeyError, AttributeError, TypeError):
                raise CheckpointError(f"{index}: not a safetensors index (no weight_map)") from None
            files = [os.path.join(folder, s) for s in shards]
            for f in files:
                if not os.path.isfile(f):
                    raise CheckpointError(f"{index}: lists {os.path.basename(f)}, which is missing")
            return files
    bins = [f for f in os.listdir(folder) if f.endswith((".bin", ".ckpt", ".pt"))]
    hint = (f" (only safetensors are read; found {bins[0]}: re-save it with "
            f"save_pretrained(safe_serialization=True))" if bins else "")
    raise CheckpointError(f"{folder}: no {stem}.safetensors{hint}")


def iter_safetensors(files: list[str]) -> Iterator[tuple[str, str, Callable[[], np.ndarray]]]:
    """(key, file, getter) for every tensor of the files, read lazily (one tensor in memory)."""
    from safetensors import safe_open

    for f in files:
        try:
            handle = safe_open(f, framework="numpy")
            keys = list(handle.keys())
        except Exception as e:  # SafetensorError, OSError, ValueError: damaged / foreign file
            raise CheckpointError(f"{f}: not a safetensors file, or truncated ({_first_line(e)})"
                                  ) from None

        def getter(k, h=handle, f=f):
            try:
                return h.get_tensor(k)
            except Exception as e:
                raise CheckpointError(f"{f}: tensor {k!r} unreadable, file truncated? "
                                      f"({_first_line(e)})") from None

        for k in keys:
            yield k, f, (lambda k=k, g=getter: g(k))


def _flat_shapes(tree, prefix=()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat_shapes(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


STACKED = ("transformer_blocks",)


def torch_path(key: str) -> tuple[tuple[str, ...], str, int | None]:
    """'down_blocks.1.attentions.0.transformer_blocks.3.attn2.to_q.weight' ->
    (('down_blocks_1', 'attentions_0', 'transformer_blocks', 'attn2', 'to_q'), 'weight', 3)."""
    parts = key.split(".")
    mods: list[str] = []
    stack = None
    for p in parts[:-1]:
        if p.isdigit() and mods:
            if mods[-1] in STACKED and stack is None:
                stack = int(p)
                continue
            mods[-1] = f"{mods[-1]}_{p}"
        else:
            mods.append(p)
    return tuple(mods), parts[-1], stack


def _flax_shape(ts: tuple) -> tuple:
    """PyTorch Linear (out, in) / Conv OIHW shape -> Flax kernel shape."""
    if len(ts) == 4:
        return (ts[2], ts[3], ts[1], ts[0])
    return ts[::-1] if len(ts) == 2 else ts


def _torch_shape(shape, leaf) -> tuple:
    shape = tuple(shape)
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return shape[::-1]
    return shape


class _Assembler:
    """Fills the leaves of an expected Flax tree from PyTorch tensors (with stacking)."""

    def __init__(self, expected: Mapping[str, Any], where: str, what: str, dtype):
        self.exp = _flat_shapes(expected)
        self.where, self.what, self.dtype = where, what, np.dtype(dtype)
        self.out: dict[tuple[str, ...], np.ndarray] = {}
        self.filled: dict[tuple[str, ...], set] = {}

    def target(self, key: str) -> tuple[tuple[str, ...], int | None, str] | None:
        mods, leaf, stack = torch_path(key)
        if leaf == "weight":
            for name in ("kernel", "scale", "embedding"):
                if mods + (name,) in self.exp:
                    return mods + (name,), stack, name
            return None
        if leaf == "bias" and mods + ("bias",) in self.exp:
            return mods + ("bias",), stack, "bias"
        if mods + (leaf,) in self.exp:
            return mods + (leaf,), stack, leaf
        return None

    def plan(self, path: tuple[str, ...], stack: int | None, torch_shape, key: str, file: str,
             transform: str | None = None) -> str:
        """Checks that a tensor of torch_shape fits the leaf; returns the transform."""
        want = self.exp[path]
        leaf = path[-1]
        t = transform or ("linear" if leaf == "kernel" else "none")
        ts = tuple(int(x) for x in torch_shape)
        got = _flax_shape(ts) if t == "linear" else ts
        shape = tuple(want.shape[1:]) if stack is not None else tuple(want.shape)
        if stack is not None and stack >= want.shape[0]:
            raise CheckpointError(f"{file}: not {self.what}: {key!r} is block {stack} of a stack "
                                  f"of {want.shape[0]}")
        if stack in self.filled.get(path, ()):
            raise CheckpointError(f"{file}: not {self.what}: {key!r} is given twice (or under "
                                  f"an old and a new name)")
        if got != shape:
            exp = _torch_shape(shape, "kernel") if t == "linear" else shape
            raise CheckpointError(f"{file}: not {self.what}: {key!r} has shape {ts}, expected "
                                  f"{tuple(exp)}")
        self.filled.setdefault(path, set()).add(stack)
        return t

    def put(self, path: tuple[str, ...], stack: int | None, value: np.ndarray, key: str,
            file: str, transform: str | None = None) -> None:
        v = np.asarray(value)
        t = self.plan(path, stack, v.shape, key, file, transform)
        if t == "linear":
            v = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T
        if stack is None:
            self.out[path] = np.ascontiguousarray(v, self.dtype)
        else:
            buf = self.out.get(path)
            if buf is None:
                buf = self.out[path] = np.empty(tuple(self.exp[path].shape), self.dtype)
            buf[stack] = v

    def check_complete(self) -> None:
        missing = []
        for path, want in self.exp.items():
            got = self.filled.get(path, set())
            stacked = any(p in STACKED for p in path[:-1])
            need = set(range(want.shape[0])) if stacked else {None}
            if not need <= got:
                idx = sorted(need - got, key=lambda x: -1 if x is None else x)[0]
                missing.append(_torch_name(path, idx))
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(f"{self.where}: not {self.what}: missing tensor "
                                  f"{missing[0]!r}{more}")

    def finish(self) -> dict[str, Any]:
        self.check_complete()
        return _unflatten({p: jax.device_put(v) for p, v in self.out.items()})


def _torch_name(path: tuple[str, ...], idx) -> str:
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(path[-1], path[-1])
    parts = []
    for p in path[:-1]:
        parts.append(re.sub(r"_(\d+)$", r".\1", p))
        if p in STACKED and idx is not None:
            parts.append(str(idx))
    return ".".join(parts + [leaf])


def _assemble(files: list[str], expected, where: str, what: str, dtype,
              rename: Callable[[str], str | None] = lambda k: k) -> dict[str, Any]:
    asm = _Assembler(expected, where, what, dtype)
    for key, file, get, (path, stack, _) in _routed(asm, iter_safetensors(files), rename, what):
        asm.put(path, stack, get(), key, file)
    return asm.finish()


def _routed(asm: "_Assembler", items, rename: Callable[[str], str | None], what: str):
    """(key, where, payload, target) for each (key, where, payload) whose renamed key the
    expected tree has; keys renamed to None are skipped; any other key raises at the end."""
    unexpected = []
    for key, where, payload in items:
        name = rename(key)
        if name is None:
            continue
        t = asm.target(name)
        if t is None:
            unexpected.append((key, where))
            continue
        yield key, where, payload, t
    if unexpected:
        key, where = unexpected[0]
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{where}: not {what}: unexpected tensor {key!r}{more}")


def check_layout(shapes: Mapping[str, Sequence[int]], expected, where: str, what: str,
                 rename: Callable[[str], str | None] = lambda k: k) -> None:
    """Checks torch names / shapes (e.g. a safetensors header, a meta-device state dict)
    against an expected Flax tree, reading no tensor data: every key used, every leaf filled."""
    asm = _Assembler(expected, where, what, np.float32)
    items = ((key, where, shape) for key, shape in shapes.items())
    for key, _, shape, (path, stack, _) in _routed(asm, items, rename, what):
        asm.plan(path, stack, shape, key, where)
    asm.check_complete()


def header_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor of safetensors files, from their headers only."""
    from safetensors import safe_open

    out = {}
    for f in files:
        try:
            with safe_open(f, framework="numpy") as h:
                for k in h.keys():
                    out[k] = tuple(h.get_slice(k).get_shape())
        except Exception as e:
            raise CheckpointError(f"{f}: not a safetensors file, or truncated ({_first_line(e)})"
                                  ) from None
    return out


def check_unet_folder(path: str | os.PathLike) -> unet_lib.UNetConfig:
    """Validates a (possibly huge) UNet folder's config and tensor names / shapes from the
    safetensors headers, without reading weights. Returns the config."""
    folder = component_folder(path, "unet")
    cfg_path = os.path.join(folder, "config.json")
    cfg = unet_lib.UNetConfig.from_dict(_read_json(cfg_path), cfg_path)
    files = weight_files(folder)
    check_layout(header_shapes(files), unet_lib.expected_shapes(cfg)["params"],
                 files[0] if len(files) == 1 else folder, f"the UNet of {cfg_path}")
    return cfg


# ------------------------------------------------------------------------------------------
# UNet, VAE
# ------------------------------------------------------------------------------------------
def load_unet(path: str | os.PathLike, dtype=jnp.float32) -> unet_lib.UNetParams:
    """UNet2DConditionModel of a diffusers folder (the pipeline root or its unet/)."""
    folder = component_folder(path, "unet")
    cfg_path = os.path.join(folder, "config.json")
    cfg = unet_lib.UNetConfig.from_dict(_read_json(cfg_path), cfg_path)
    files = weight_files(folder)
    where = files[0] if len(files) == 1 else folder
    what = f"the UNet of {cfg_path}"
    tree = _assemble(files, unet_lib.expected_shapes(cfg)["params"], where, what, dtype)
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
    folder = component_folder(path, "vae")
    cfg_path = os.path.join(folder, "config.json")
    cfg = vae_lib.VAEConfig.from_dict(_read_json(cfg_path), cfg_path)
    files = weight_files(folder)
    where = files[0] if len(files) == 1 else folder
    tree = _assemble(files, vae_lib.expected_shapes(cfg)["params"], where,
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
        flat = {k: get() for k, _, get in iter_safetensors([path])}
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
    asm = _Assembler(ipa.expected_shapes(cfg)["params"], path,
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
    exp = _flat_shapes(unet_lib.expected_shapes(cfg)["params"])
    dtype = dtype or jax.tree_util.tree_leaves(params.variables)[0].dtype
    asm = _Assembler({}, path, "an IP-Adapter for this UNet", dtype)
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
