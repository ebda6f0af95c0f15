"""CLIP image encoders (Hugging Face CLIPVisionModelWithProjection) in Flax.

IP-Adapter's OpenCLIP ViT-H/14, PhotoMaker's ViT-L/14, older SDXL adapters' ViT-bigG/14, or any
size: read from a Hugging Face folder (config.json + model.safetensors, or a sharded
model.safetensors.index.json) without network, torch, transformers or the safetensors package.

The network (transformers models/clip/modeling_clip.py), NHWC here:

  patches = conv p x p / p (no bias); x = [class_embedding; patches] + position_embedding
  x = pre_layrnorm(x)
  L x { x = x + out_proj(attention(layer_norm1(x)));  x = x + fc2(act(fc1(layer_norm2(x)))) }
      (multi-head softmax attention, q scaled by head_dim^-0.5; act = config.hidden_act:
      'gelu' (exact, OpenCLIP ViT-H / bigG) or 'quick_gelu' x * sigmoid(1.702 x) (OpenAI ViT-L))
  pooler_output = post_layernorm(x[:, 0]);  image_embeds = pooler_output @ W_proj^T (no bias)
  hidden_states = (pre_layrnorm output, output of layer 1, ..., output of layer L): IP-Adapter
  Plus reads hidden_states[-2] (B, 257, 1280 for ViT-H; no post-LayerNorm).

Why a port of our own rather than transformers' FlaxCLIPVisionModel: transformers 5 removed the
Flax classes (the GPU machine has 5.x), and there is no Flax class with the projection anyway;
this port scans the layers (one compiled layer instead of 32-48: compile time and memory on
CPU), can rematerialize them, runs only the layers a hidden state needs, and reads the
safetensors file itself. It is checked against transformers' PyTorch model.

Preprocessing (the IDGuardian reference, differentiable): bilinear resize of the whole chip to
config.image_size (224; no crop, half-pixel centres, no antialiasing, as torch F.interpolate with
align_corners=False), then (x - mean) / std with CLIP's mean / std. (CLIPImageProcessor itself
resizes the shortest edge bicubically and centre-crops; on the square 224 chips the views give
both are the identity resize.)

Distance: cosine (1 - cos) of image_embeds. THRESHOLD: CLIP is no verification model and has no
documented same-person threshold; 0.115 is 1 - 0.885, the mean CLIP-I (cosine of CLIP image
embeddings) between real photos of the same subject that DreamBooth reports. A reference value
for reports, not a calibrated decision threshold.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.checkpoints.tensors import (CheckpointError, bilinear_resize, read_json_config,
                                                read_safetensors)
from idguardian_jax.encoders.base import Encoder

NAME = "clip_vit"
CHIP_SIZE = 224
THRESHOLD = 0.115  # see module docstring: a reference value, not a calibrated threshold
# ViT-H/14's projection (IP-Adapter, the IDGuardian surrogate); other checkpoints: projection_dim
EMBED_DIM = 1024
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# parameters() of transformers' CLIPVisionModelWithProjection for these configs
PARAM_COUNTS = {"vit-h-14": 632_076_800, "vit-l-14": 303_966_208, "vit-bigg-14": 1_844_907_264}
_ACTS = ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """The CLIPVisionConfig fields the network needs (transformers' defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    patch_size: int = 32
    image_size: int = 224
    projection_dim: int = 512
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    num_channels: int = 3

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config") -> "CLIPVisionConfig":
        """From a CLIPVisionConfig dict, or a full CLIPConfig's (vision_config + projection_dim)."""
        if "vision_config" in d:
            vd = dict(d["vision_config"] or {})
            if "projection_dim" in d:
                vd["projection_dim"] = d["projection_dim"]
            d = vd
        mt = d.get("model_type", "clip_vision_model")
        if mt not in ("clip_vision_model", "clip"):
            raise CheckpointError(f"{where}: model_type {mt!r} is not a CLIP vision model")
        names = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        if cfg.hidden_act not in _ACTS:
            raise CheckpointError(f"{where}: unsupported hidden_act {cfg.hidden_act!r}")
        if cfg.hidden_size % cfg.num_attention_heads or cfg.num_channels != 3:
            raise CheckpointError(f"{where}: inconsistent config {cfg}")
        return cfg


def _activation(name: str):
    if name == "gelu":
        return functools.partial(jax.nn.gelu, approximate=False)
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "relu":
        return jax.nn.relu
    return functools.partial(jax.nn.gelu, approximate=True)


def _layer_norm(cfg: CLIPVisionConfig, name: str):
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name=name)


class EncoderLayer(nn.Module):
    """One pre-norm transformer layer; (carry, _) -> (carry, carry) for nn.scan."""

    cfg: CLIPVisionConfig

    @nn.compact
    def __call__(self, x, _):
        c = self.cfg
        n, t, d = x.shape
        heads, hd = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        h = _layer_norm(c, "layer_norm1")(x)
        q = nn.Dense(d, name="q_proj")(h).reshape(n, t, heads, hd) * (hd ** -0.5)
        k = nn.Dense(d, name="k_proj")(h).reshape(n, t, heads, hd)
        v = nn.Dense(d, name="v_proj")(h).reshape(n, t, heads, hd)
        w = jax.nn.softmax(jnp.einsum("nqhd,nkhd->nhqk", q, k), axis=-1)
        h = jnp.einsum("nhqk,nkhd->nqhd", w, v).reshape(n, t, d)
        x = x + nn.Dense(d, name="out_proj")(h)
        h = _layer_norm(c, "layer_norm2")(x)
        h = nn.Dense(c.intermediate_size, name="fc1")(h)
        h = nn.Dense(d, name="fc2")(_activation(c.hidden_act)(h))
        x = x + h
        return x, x


class CLIPVisionTower(nn.Module):
    """Normalized pixels (N, S, S, 3) -> dict of image_embeds (N, P), pooler_output (N, D),
    last_hidden_state (N, T, D), hidden_states (L + 1, N, T, D)."""

    cfg: CLIPVisionConfig
    remat: bool = False  # recompute each layer in the backward pass (less memory)

    @nn.compact
    def __call__(self, pixels):
        c = self.cfg
        d, p = c.hidden_size, c.patch_size
        x = nn.Conv(d, (p, p), strides=p, padding="VALID", use_bias=False,
                    name="patch_embedding")(pixels)
        x = x.reshape(x.shape[0], -1, d)
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (d,))
        pos = self.param("position_embedding", nn.initializers.normal(0.02), (c.num_positions, d))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, d)).astype(x.dtype), x], 1)
        x = _layer_norm(c, "pre_layrnorm")(x + pos)
        layer = nn.remat(EncoderLayer, prevent_cse=False) if self.remat else EncoderLayer
        scan = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=c.num_hidden_layers)
        last, hs = scan(c, name="layers")(x, None)
        pooled = _layer_norm(c, "post_layernorm")(last[:, 0])
        embeds = nn.Dense(c.projection_dim, use_bias=False, name="visual_projection")(pooled)
        return {"image_embeds": embeds, "pooler_output": pooled, "last_hidden_state": last,
                "hidden_states": jnp.concatenate([x[None], hs], 0)}


@flax.struct.dataclass
class CLIPParams:
    """What `load` returns: Flax variables, with the config as static pytree metadata (so the
    params pass through jax.jit / device_put like any pytree)."""

    variables: dict[str, Any]
    config: CLIPVisionConfig = flax.struct.field(pytree_node=False)


def preprocess(chips: jax.Array, image_size: int = CHIP_SIZE, mean=CLIP_MEAN,
               std=CLIP_STD) -> jax.Array:
    """[0, 1] RGB chips (N, H, W, 3) -> bilinear resize to image_size -> (x - mean) / std."""
    x = bilinear_resize(chips, image_size)
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def _truncate(params: CLIPParams, num_layers: int) -> CLIPParams:
    v = dict(params.variables["params"])
    v["layers"] = jax.tree_util.tree_map(lambda a: a[:num_layers], v["layers"])
    return CLIPParams({"params": v}, dataclasses.replace(params.config,
                                                         num_hidden_layers=num_layers))


def forward(params: CLIPParams, chips: jax.Array, *, remat: bool = False,
            num_layers: int | None = None) -> dict[str, jax.Array]:
    """All outputs for float32 RGB chips in [0, 1] (N, H, W, 3): image_embeds (N, P),
    pooler_output (N, D), last_hidden_state (N, T, D), hidden_states (L + 1, N, T, D) stacked
    (hidden_states[-2] is IP-Adapter Plus's input). num_layers < L runs only the first layers
    (then image_embeds / pooler_output are of that truncated network)."""
    chex.assert_rank(chips, 4)
    chex.assert_axis_dimension(chips, -1, 3)
    if num_layers is not None and num_layers != params.config.num_hidden_layers:
        params = _truncate(params, num_layers)
    model = CLIPVisionTower(params.config, remat=remat)
    return model.apply(params.variables, preprocess(chips, params.config.image_size))


def apply(params: CLIPParams, chips: jax.Array) -> jax.Array:
    """image_embeds (N, projection_dim) of float32 RGB chips in [0, 1], not normalized."""
    return forward(params, chips)["image_embeds"]


def apply_with_hidden(params: CLIPParams, chips: jax.Array,
                      remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """(image_embeds (N, P), hidden_states (L + 1, N, T, D)) in one pass."""
    out = forward(params, chips, remat=remat)
    return out["image_embeds"], out["hidden_states"]


def penultimate_hidden_state(params: CLIPParams, chips: jax.Array) -> jax.Array:
    """hidden_states[-2] (N, T, D) computed with the first L - 1 layers only."""
    return forward(params, chips, num_layers=params.config.num_hidden_layers - 1)[
        "last_hidden_state"]


# ==========================================================================================
# Loading a Hugging Face folder
# ==========================================================================================
_LAYER_KEYS = {  # our (module, leaf) -> HF name inside vision_model.encoder.layers.{i}
    ("q_proj", "kernel"): "self_attn.q_proj.weight", ("q_proj", "bias"): "self_attn.q_proj.bias",
    ("k_proj", "kernel"): "self_attn.k_proj.weight", ("k_proj", "bias"): "self_attn.k_proj.bias",
    ("v_proj", "kernel"): "self_attn.v_proj.weight", ("v_proj", "bias"): "self_attn.v_proj.bias",
    ("out_proj", "kernel"): "self_attn.out_proj.weight",
    ("out_proj", "bias"): "self_attn.out_proj.bias",
    ("layer_norm1", "scale"): "layer_norm1.weight", ("layer_norm1", "bias"): "layer_norm1.bias",
    ("layer_norm2", "scale"): "layer_norm2.weight", ("layer_norm2", "bias"): "layer_norm2.bias",
    ("fc1", "kernel"): "mlp.fc1.weight", ("fc1", "bias"): "mlp.fc1.bias",
    ("fc2", "kernel"): "mlp.fc2.weight", ("fc2", "bias"): "mlp.fc2.bias",
}
_TOP_KEYS = {
    ("patch_embedding", "kernel"): "vision_model.embeddings.patch_embedding.weight",
    ("class_embedding",): "vision_model.embeddings.class_embedding",
    ("position_embedding",): "vision_model.embeddings.position_embedding.weight",
    ("pre_layrnorm", "scale"): "vision_model.pre_layrnorm.weight",
    ("pre_layrnorm", "bias"): "vision_model.pre_layrnorm.bias",
    ("post_layernorm", "scale"): "vision_model.post_layernorm.weight",
    ("post_layernorm", "bias"): "vision_model.post_layernorm.bias",
    ("visual_projection", "kernel"): "visual_projection.weight",
}


def _files(path: str) -> tuple[str, list[str]]:
    """(config.json path, safetensors files) of a model folder (or of a file inside it)."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        raise CheckpointError(f"{folder}: no config.json (expected a Hugging Face "
                              f"CLIPVisionModelWithProjection folder)")
    if os.path.isfile(path) and path.endswith(".safetensors"):
        return config, [path]
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        return config, [single]
    if os.path.isfile(index):
        try:
            with open(index) as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        return config, [os.path.join(folder, s) for s in shards]
    raise CheckpointError(f"{folder}: no model.safetensors (only safetensors weights are read; "
                          f"re-save a pytorch_model.bin with save_pretrained(safe_serialization="
                          f"True))")


def _read_config(config_path: str) -> CLIPVisionConfig:
    d = read_json_config(config_path)
    try:
        return CLIPVisionConfig.from_dict(d, config_path)
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{config_path}: bad CLIP vision config ({e})") from None


def expected_shapes(cfg: CLIPVisionConfig) -> dict[str, Any]:
    return jax.eval_shape(CLIPVisionTower(cfg).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, cfg.image_size, cfg.image_size, 3)))


def _to_ours(v: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel":
        return v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T
    return v


def load(path: str | os.PathLike | None = None, dtype=jnp.float32) -> CLIPParams:
    """Parameters of a Hugging Face CLIPVisionModelWithProjection (or full CLIPModel) folder:
    config.json + model.safetensors (or sharded with model.safetensors.index.json), fp32 / fp16 /
    bf16 weights, cast to `dtype`. Raises CheckpointError (one line naming the file) for a
    truncated or foreign file, a missing tensor or a shape that does not fit config.json."""
    if path is None:
        raise FileNotFoundError(
            "CLIP weights are not bundled: pass a Hugging Face CLIPVisionModelWithProjection "
            "folder (e.g. IP-Adapter's models/image_encoder with config.json + model.safetensors)")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such folder")
    config_path, files = _files(path)
    cfg = _read_config(config_path)
    tensors: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for f in files:
        if not os.path.isfile(f):
            raise CheckpointError(f"{f}: missing shard listed in the index")
        for k, v in read_safetensors(f).items():
            tensors[k], where[k] = v, f
    want = expected_shapes(cfg)["params"]
    shown = files[0] if len(files) == 1 else os.path.dirname(files[0])

    def take(name: str, shape: tuple, leaf: str) -> np.ndarray:
        if name not in tensors:
            hint = (" (a CLIPVisionModel without projection?)" if name == "visual_projection.weight"
                    else "")
            raise CheckpointError(f"{shown}: not the CLIP vision model of its config.json: "
                                  f"missing tensor {name!r}{hint}")
        v = _to_ours(np.asarray(tensors[name]), leaf)
        if v.shape != tuple(shape):
            raise CheckpointError(f"{where[name]}: tensor {name!r} has shape "
                                  f"{tuple(tensors[name].shape)}, which does not fit config.json "
                                  f"({cfg.hidden_size} hidden, {cfg.num_hidden_layers} layers, "
                                  f"patch {cfg.patch_size}, image {cfg.image_size}, projection "
                                  f"{cfg.projection_dim})")
        return v  # a (transposed) view of the file; copied once by the caller

    params: dict[str, Any] = {}
    for keys, name in _TOP_KEYS.items():
        node = want
        for k in keys:
            node = node[k]
        dst = params
        for k in keys[:-1]:
            dst = dst.setdefault(k, {})
        leaf = keys[-1] if len(keys) > 1 else ""
        dst[keys[-1]] = jax.device_put(np.ascontiguousarray(take(name, node.shape, leaf), dtype))
    layers: dict[str, Any] = {}
    for (mod, leaf), name in _LAYER_KEYS.items():
        shape = want["layers"][mod][leaf].shape[1:]
        stacked = np.empty((cfg.num_hidden_layers,) + tuple(shape), dtype)
        for i in range(cfg.num_hidden_layers):
            stacked[i] = take(f"vision_model.encoder.layers.{i}.{name}", shape, leaf)
        layers.setdefault(mod, {})[leaf] = jax.device_put(stacked)
    extra = f"vision_model.encoder.layers.{cfg.num_hidden_layers}.layer_norm1.weight"
    if extra in tensors:
        raise CheckpointError(f"{where[extra]}: has more encoder layers than config.json's "
                              f"num_hidden_layers={cfg.num_hidden_layers}")
    params["layers"] = layers
    return CLIPParams({"params": params}, cfg)


def param_count(params: CLIPParams) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params.variables)))


def config_param_count(cfg: CLIPVisionConfig) -> int:
    """Parameters of the network for a config, from shapes only (no weights)."""
    return int(sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(expected_shapes(cfg))))


ENCODER = Encoder(
    name=NAME, chip_size=CHIP_SIZE, view="clip", padding=0.0, load=load, apply=apply,
    distance="cosine", threshold=THRESHOLD, embed_dim=EMBED_DIM,
    to_tree=lambda p: (p.variables, dataclasses.asdict(p.config)),
    from_tree=lambda tree, meta: CLIPParams(tree, CLIPVisionConfig.from_dict(meta)))
