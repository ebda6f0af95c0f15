"""IP-Adapter's image projection in Flax: the Plus resampler (Perceiver) and the plain linear
ImageProjModel; unconditional tokens. The decoupled cross-attention that reads the tokens is in
unet.py (Attention with ip=True).

Plus / Plus-Face (tencent-ailab/IP-Adapter ip_adapter/resampler.py; diffusers'
IPAdapterPlusImageProjection):

  latents = learned (Q, dim) queries;  x = proj_in(clip hidden_states[-2])      (B, 257, dim)
  depth x { latents += PerceiverAttention(x, latents);  latents += FF(latents) }
     PerceiverAttention: xn = norm1(x), ln = norm2(latents); q = to_q(ln);
                         k, v = to_kv([xn; ln]) (split in halves); softmax(q k^T / sqrt(dh)) v;
                         to_out (all bias-free)
     FF: LayerNorm -> Linear(dim, mult * dim, no bias) -> GELU (exact) -> Linear(no bias)
  tokens = norm_out(proj_out(latents))                                           (B, Q, out)

  SDXL Plus-Face (ip-adapter-plus-face_sdxl_vit-h): dim 1280, depth 4, dim_head 64, heads 20,
  16 queries, embedding_dim 1280 (CLIP ViT-H hidden), output_dim 2048, ff_mult 4.
  SD1.5 Plus: dim 768, heads 12, output 768 (same otherwise).

ImageProjModel (plain IP-Adapter): tokens = LayerNorm(reshape(Linear(image_embeds), (N, d))),
image_embeds = the CLIP projection output (1024 for ViT-H), N = 4.

Unconditional tokens: the projection of zeros (plain), or of the CLIP encoder's hidden states
on an all-zero *normalized* image (Plus; as IP-Adapter and diffusers do): `unconditional_tokens`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.checkpoints.tensors import CheckpointError

PLUS = "plus"
LINEAR = "linear"


@dataclasses.dataclass(frozen=True)
class ImageProjConfig:
    kind: str = PLUS              # "plus" (Perceiver resampler) or "linear" (ImageProjModel)
    embedding_dim: int = 1280     # input width: CLIP hidden (plus) or image_embeds (linear)
    output_dim: int = 2048        # = the UNet's cross_attention_dim
    num_tokens: int = 16          # queries (plus) / extra context tokens (linear)
    dim: int = 1280               # plus: width of the latents
    depth: int = 4
    dim_head: int = 64
    heads: int = 20
    ff_mult: int = 4

    @classmethod
    def sdxl_plus_face(cls) -> "ImageProjConfig":
        return cls(PLUS, 1280, 2048, 16, 1280, 4, 64, 20, 4)

    @classmethod
    def sd15_plus(cls) -> "ImageProjConfig":
        return cls(PLUS, 1280, 768, 16, 768, 4, 64, 12, 4)

    @classmethod
    def sd15_linear(cls) -> "ImageProjConfig":
        return cls(LINEAR, 1024, 768, 4)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@flax.struct.dataclass
class ImageProjParams:
    variables: dict[str, Any]
    config: ImageProjConfig = flax.struct.field(pytree_node=False)


def _ln(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name=name)


class PerceiverAttention(nn.Module):
    heads: int
    dim_head: int
    dim: int

    @nn.compact
    def __call__(self, x, latents):
        inner = self.heads * self.dim_head
        xn, ln = _ln("norm1")(x), _ln("norm2")(latents)
        b, q_len, _ = latents.shape
        q = nn.Dense(inner, use_bias=False, name="to_q")(ln)
        kv = nn.Dense(2 * inner, use_bias=False, name="to_kv")(jnp.concatenate([xn, ln], 1))
        k, v = jnp.split(kv, 2, axis=-1)
        split = lambda t: t.reshape(b, t.shape[1], self.heads, self.dim_head)
        s = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k), preferred_element_type=jnp.float32)
        p = jax.nn.softmax(s / np.sqrt(self.dim_head), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", p, split(v)).reshape(b, q_len, inner)
        return nn.Dense(self.dim, use_bias=False, name="to_out")(out)


class FeedForward(nn.Module):
    dim: int
    mult: int

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.dim * self.mult, use_bias=False, name="fc1")(_ln("norm")(x))
        return nn.Dense(self.dim, use_bias=False, name="fc2")(jax.nn.gelu(h, approximate=False))


class Resampler(nn.Module):
    cfg: ImageProjConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        lat = self.param("latents", nn.initializers.normal(c.dim ** -0.5), (1, c.num_tokens, c.dim))
        latents = jnp.broadcast_to(lat, (x.shape[0],) + lat.shape[1:]).astype(x.dtype)
        x = nn.Dense(c.dim, name="proj_in")(x)
        for i in range(c.depth):
            latents = latents + PerceiverAttention(c.heads, c.dim_head, c.dim,
                                                   name=f"layers_{i}_attn")(x, latents)
            latents = latents + FeedForward(c.dim, c.ff_mult, name=f"layers_{i}_ff")(latents)
        return _ln("norm_out")(nn.Dense(c.output_dim, name="proj_out")(latents))


class ImageProjModel(nn.Module):
    cfg: ImageProjConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        h = nn.Dense(c.num_tokens * c.output_dim, name="proj")(x)
        return _ln("norm")(h.reshape(x.shape[0], c.num_tokens, c.output_dim))


def module(cfg: ImageProjConfig) -> nn.Module:
    if cfg.kind == PLUS:
        return Resampler(cfg)
    if cfg.kind == LINEAR:
        return ImageProjModel(cfg)
    raise ValueError(f"image projection kind {cfg.kind!r}")


def _dummy(cfg: ImageProjConfig):
    return (jnp.zeros((1, 3, cfg.embedding_dim)) if cfg.kind == PLUS
            else jnp.zeros((1, cfg.embedding_dim)))


@functools.lru_cache(maxsize=8)
def expected_shapes(cfg: ImageProjConfig) -> dict[str, Any]:
    return jax.eval_shape(lambda: module(cfg).init(jax.random.PRNGKey(0), _dummy(cfg)))


def init(cfg: ImageProjConfig, key: jax.Array) -> ImageProjParams:
    return ImageProjParams(module(cfg).init(key, _dummy(cfg)), cfg)


def project(params: ImageProjParams, features: jax.Array) -> jax.Array:
    """Image tokens (B, num_tokens, output_dim) for the UNet's decoupled cross-attention.

    features: plus: CLIP vision hidden_states[-2] (B, 257, embedding_dim) (e.g.
    encoders.clip_vit.penultimate_hidden_state); linear: CLIP image_embeds (B, embedding_dim).
    A (B, num_images, ...) input (diffusers' layout) gives (B, num_images * num_tokens, out)."""
    cfg = params.config
    want = 3 if cfg.kind == PLUS else 2
    if features.shape[-1] != cfg.embedding_dim:
        raise ValueError(f"image features of width {features.shape[-1]}; the projection takes "
                         f"{cfg.embedding_dim}")
    if features.ndim == want + 1:
        b, m = features.shape[:2]
        out = project(params, features.reshape((b * m,) + features.shape[2:]))
        return out.reshape(b, m * cfg.num_tokens, cfg.output_dim)
    if features.ndim != want:
        raise ValueError(f"image features of shape {features.shape}; expected rank {want}")
    return module(cfg).apply(params.variables, features.astype(jnp.float32))


def zero_image_chips(size: int = 224, mean=None) -> np.ndarray:
    """A (1, size, size, 3) [0, 1] image equal to CLIP's mean: after CLIP's (x - mean) / std it
    is the all-zero normalized image IP-Adapter encodes for its unconditional tokens."""
    if mean is None:
        mean = (0.48145466, 0.4578275, 0.40821073)
    return np.broadcast_to(np.asarray(mean, np.float32), (1, size, size, 3)).copy()


def unconditional_tokens(params: ImageProjParams, clip_params=None) -> jax.Array:
    """(1, num_tokens, output_dim): plain: projection of zero image_embeds; plus: projection of
    the CLIP encoder's hidden_states[-2] on the zero normalized image (needs clip_params:
    encoders.clip_vit.CLIPParams)."""
    cfg = params.config
    if cfg.kind == LINEAR:
        return project(params, jnp.zeros((1, cfg.embedding_dim), jnp.float32))
    if clip_params is None:
        raise ValueError("Plus unconditional tokens need the CLIP image encoder (clip_params)")
    from idguardian_jax.encoders import clip_vit

    chips = zero_image_chips(clip_params.config.image_size)
    return project(params, clip_vit.penultimate_hidden_state(clip_params, jnp.asarray(chips)))


def image_tokens(params: ImageProjParams, clip_params, chips: jax.Array) -> jax.Array:
    """Plus: tokens of [0, 1] RGB chips (B, H, W, 3) through the project's CLIP port
    (penultimate hidden state, no post-LayerNorm) and the resampler; differentiable."""
    from idguardian_jax.encoders import clip_vit

    if params.config.kind == PLUS:
        return project(params, clip_vit.penultimate_hidden_state(clip_params, chips))
    return project(params, clip_vit.apply(clip_params, chips))


# ------------------------------------------------------------------------------------------
# Layout of the upstream checkpoints (IP-Adapter's image_proj.* keys)
# ------------------------------------------------------------------------------------------
def config_from_state_dict(sd: Mapping[str, Any], path: str, dim_head: int = 64
                           ) -> ImageProjConfig:
    """The projection's config from IP-Adapter's `image_proj` tensors (prefix removed)."""
    if "latents" in sd and "proj_in.weight" in sd:
        if "layers.0.0.to_q.weight" not in sd:
            raise CheckpointError(f"{path}: image_proj looks like a resampler but not in "
                                  f"IP-Adapter's layout (no 'layers.0.0.to_q.weight')")
        lat = np.shape(sd["latents"])
        depth = 0
        while f"layers.{depth}.0.to_q.weight" in sd:
            depth += 1
        inner = np.shape(sd["layers.0.0.to_q.weight"])[0]
        if inner % dim_head:
            raise CheckpointError(f"{path}: resampler attention width {inner} is not a multiple "
                                  f"of dim_head={dim_head}")
        ff = np.shape(sd["layers.0.1.1.weight"])[0] if "layers.0.1.1.weight" in sd else 4 * lat[2]
        return ImageProjConfig(PLUS, int(np.shape(sd["proj_in.weight"])[1]),
                               int(np.shape(sd["proj_out.weight"])[0]), int(lat[1]), int(lat[2]),
                               depth, dim_head, inner // dim_head, int(ff // lat[2]))
    if "proj.weight" in sd and "norm.weight" in sd:
        out = int(np.shape(sd["norm.weight"])[0])
        w = np.shape(sd["proj.weight"])
        return ImageProjConfig(LINEAR, int(w[1]), out, int(w[0] // out))
    kinds = [("proj.3.weight", "IP-Adapter Full (MLPProjModel)"),
             ("perceiver_resampler.proj_in.weight", "IP-Adapter FaceID Plus"),
             ("proj.0.weight", "IP-Adapter FaceID (MLP)")]
    for key, name in kinds:
        if key in sd:
            raise CheckpointError(f"{path}: {name} image projection is not supported (Plus "
                                  f"resampler and plain ImageProjModel are)")
    first = next(iter(sd), None)
    raise CheckpointError(f"{path}: unknown image_proj layout (first key {first!r})")


def torch_key_map(cfg: ImageProjConfig) -> dict[str, tuple[tuple[str, ...], str]]:
    """IP-Adapter image_proj key -> (our parameter path, transform: 'linear' | 'ln' | 'none')."""
    m: dict[str, tuple[tuple[str, ...], str]] = {}
    if cfg.kind == LINEAR:
        return {"proj.weight": (("proj", "kernel"), "linear"),
                "proj.bias": (("proj", "bias"), "none"),
                "norm.weight": (("norm", "scale"), "none"), "norm.bias": (("norm", "bias"), "none")}
    m["latents"] = (("latents",), "none")
    for name in ("proj_in", "proj_out"):
        m[f"{name}.weight"] = ((name, "kernel"), "linear")
        m[f"{name}.bias"] = ((name, "bias"), "none")
    m["norm_out.weight"] = (("norm_out", "scale"), "none")
    m["norm_out.bias"] = (("norm_out", "bias"), "none")
    for i in range(cfg.depth):
        a, f = f"layers_{i}_attn", f"layers_{i}_ff"
        for n in ("norm1", "norm2"):
            m[f"layers.{i}.0.{n}.weight"] = ((a, n, "scale"), "none")
            m[f"layers.{i}.0.{n}.bias"] = ((a, n, "bias"), "none")
        for n in ("to_q", "to_kv", "to_out"):
            m[f"layers.{i}.0.{n}.weight"] = ((a, n, "kernel"), "linear")
        m[f"layers.{i}.1.0.weight"] = ((f, "norm", "scale"), "none")
        m[f"layers.{i}.1.0.bias"] = ((f, "norm", "bias"), "none")
        m[f"layers.{i}.1.1.weight"] = ((f, "fc1", "kernel"), "linear")
        m[f"layers.{i}.1.3.weight"] = ((f, "fc2", "kernel"), "linear")
    return m
