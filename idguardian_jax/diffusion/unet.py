"""UNet2DConditionModel of Stable Diffusion 1.x / 2.x and SDXL in Flax, with IP-Adapter's
decoupled cross-attention.

The network is diffusers' UNet2DConditionModel (PyTorch) restated for the configurations SD and
SDXL use ("CrossAttnDownBlock2D" / "DownBlock2D", "UNetMidBlock2DCrossAttn",
"CrossAttnUpBlock2D" / "UpBlock2D", positional time embedding, SDXL's "text_time" added
conditions); NHWC inside:

  emb = time_embedding(sinusoid(t)) [+ add_embedding([text_embeds; sinusoid(time_ids)])]
  x = conv_in(sample); skips = [x]
  down:  per layer x = resnet(x, emb) [; x = transformer2d(x, ctx)]; skips += [x]; downsample
  mid:   resnet, transformer2d, resnet
  up:    per layer x = resnet([x; skips.pop()], emb) [; transformer2d]; upsample (to the skip size)
  eps = conv_out(silu(group_norm(x)))

  transformer2d: GroupNorm(eps 1e-6) -> proj_in (1x1 conv, or linear for SD2/SDXL) ->
                 depth x BasicTransformerBlock -> proj_out -> + residual
  BasicTransformerBlock: x += attn1(LN(x)); x += attn2(LN(x), text); x += GEGLU-FF(LN(x))
  attn2 with IP-Adapter (tencent-ailab/IP-Adapter, diffusers' IPAdapterAttnProcessor2_0):
      out = to_out( softmax(Q K_t^T / sqrt(d)) V_t + scale * softmax(Q K_i^T / sqrt(d)) V_i )
      K_t, V_t = to_k(text), to_v(text);  K_i, V_i = to_k_ip(ip_tokens), to_v_ip(ip_tokens)
      (bias-free, shared query Q = to_q(LN(x)), heads as attn2's)

Why our own blocks rather than diffusers' FlaxUNet2DConditionModel: it has no hook for the
IP-Adapter branch, and its Flax transformer blocks are not the PyTorch network (Transformer2D
GroupNorm eps 1e-5 instead of 1e-6, tanh-approximate GELU in GEGLU, 32 groups hard-coded, no
upsample-to-size when the latent is not divisible by 2**levels, e.g. SD1.5 at 224 px). What does
match PyTorch is reused through `adapter`: the time-step embedding and the down-sampling conv.
Ours adds: the transformer blocks of one Transformer2D are one `nn.scan` (SDXL's 10-deep stacks
compile once), optional `nn.remat` of every resnet / transformer block, a compute dtype
(bf16 / fp16; GroupNorm / LayerNorm statistics and softmax stay in float32), and the attention
implementation as a switch (XLA, cuDNN flash attention on GPU, or diffusers' chunked attention).

Parameters are a plain pytree (`UNetParams`: Flax variables + the config as static metadata); the
transformer blocks of each Transformer2D are stacked along a leading depth axis. Loading from a
diffusers folder and IP-Adapter checkpoints: `loaders.py`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.checkpoints.tensors import CheckpointError
from idguardian_jax.diffusion import adapter

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
ATTENTION_IMPLS = ("xla", "cudnn", "chunked")

# Config fields of diffusers' UNet2DConditionModel this port does not implement, with the only
# value it accepts (a config that sets them otherwise is refused, not silently misread).
_FIXED = {
    "center_input_sample": False, "downsample_padding": 1, "mid_block_scale_factor": 1,
    "act_fn": "silu", "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "dual_cross_attention": False, "class_embed_type": None, "num_class_embeds": None,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default",
    "class_embeddings_concat": False, "cross_attention_norm": None, "num_attention_heads": None,
}


def _per_block(v, n: int, name: str, where: str) -> tuple:
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise CheckpointError(f"{where}: {name} has {len(v)} entries for {n} blocks")
        return tuple(v)
    return (v,) * n


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The UNet2DConditionModel config fields this port reads, normalized per block."""

    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    # depth of the Transformer2D after each resnet: down[i][j], up[i][j] (j over num_layers+1)
    down_transformer_depths: tuple[tuple[int, ...], ...] = ((1, 1),) * 4
    up_transformer_depths: tuple[tuple[int, ...], ...] = ((1, 1, 1),) * 4
    mid_transformer_depth: int = 1
    heads: tuple[int, ...] = (8, 8, 8, 8)  # diffusers' attention_head_dim (= number of heads)
    cross_attention_dim: tuple[int, ...] = (768, 768, 768, 768)
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    upcast_attention: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    time_embedding_dim: int | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    sample_size: int | None = None
    # IP-Adapter: attn2 of every transformer block has to_k_ip / to_v_ip (bias-free, from
    # ip_token_dim to the block's width); num_ip_tokens is what IP-Adapter's split of a
    # concatenated [text; image] context uses.
    ip_adapter: bool = False
    num_ip_tokens: int = 0
    ip_token_dim: int | None = None

    @property
    def temb_dim(self) -> int:
        return self.time_embedding_dim or self.block_out_channels[0] * 4

    @property
    def is_sdxl_style(self) -> bool:
        return self.addition_embed_type == "text_time"

    @property
    def text_embeds_dim(self) -> int | None:
        """Width of SDXL's pooled text embedding in added_cond (6 time ids; 5 for the refiner)."""
        if not self.is_sdxl_style:
            return None
        return (self.projection_class_embeddings_input_dim
                - self.num_time_ids * self.addition_time_embed_dim)

    @property
    def num_time_ids(self) -> int:
        refiner = (5 * self.addition_time_embed_dim + self.cross_attention_dim[-1]
                   == self.projection_class_embeddings_input_dim)
        return 5 if refiner else 6

    @property
    def num_upsamplers(self) -> int:
        return len(self.block_out_channels) - 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config") -> "UNetConfig":
        """From diffusers' unet/config.json. Raises CheckpointError for unsupported features."""
        cname = d.get("_class_name", "UNet2DConditionModel")
        if cname not in ("UNet2DConditionModel", "FlaxUNet2DConditionModel"):
            raise CheckpointError(f"{where}: a {cname}, not a UNet2DConditionModel")
        for k, ok in _FIXED.items():
            v = d.get(k, ok)
            if k == "mid_block_scale_factor" and v is not None and float(v) == 1.0:
                continue
            if k == "resnet_out_scale_factor" and v is not None and float(v) == 1.0:
                continue
            if v != ok:
                extra = (" (a UNet saved with an IP-Adapter inside: load the base UNet and the "
                         "adapter file separately)" if k == "encoder_hid_dim_type" else "")
                raise CheckpointError(f"{where}: {k}={v!r} is not supported (only {ok!r}){extra}")
        down = tuple(d.get("down_block_types", cls.down_block_types))
        up = tuple(d.get("up_block_types", cls.up_block_types))
        n = len(down)
        if len(up) != n:
            raise CheckpointError(f"{where}: {len(down)} down blocks but {len(up)} up blocks")
        for t in down:
            if t not in DOWN_TYPES:
                raise CheckpointError(f"{where}: down block type {t!r} is not supported")
        for t in up:
            if t not in UP_TYPES:
                raise CheckpointError(f"{where}: up block type {t!r} is not supported")
        mid = d.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        if mid not in ("UNetMidBlock2DCrossAttn", None):
            raise CheckpointError(f"{where}: mid_block_type {mid!r} is not supported")
        boc = tuple(int(c) for c in d.get("block_out_channels", cls.block_out_channels))
        if len(boc) != n:
            raise CheckpointError(f"{where}: block_out_channels has {len(boc)} entries for {n} "
                                  f"blocks")
        lpb = tuple(int(x) for x in _per_block(d.get("layers_per_block", 2), n,
                                               "layers_per_block", where))
        heads = tuple(int(x) for x in _per_block(d.get("attention_head_dim", 8), n,
                                                 "attention_head_dim", where))
        cross = tuple(int(x) for x in _per_block(d.get("cross_attention_dim", 1280), n,
                                                 "cross_attention_dim", where))
        if len(set(cross)) != 1:
            raise CheckpointError(f"{where}: per-block cross_attention_dim is not supported")
        only_cross = d.get("only_cross_attention", False)
        if any(_per_block(only_cross, n, "only_cross_attention", where)):
            raise CheckpointError(f"{where}: only_cross_attention is not supported")
        tlpb = d.get("transformer_layers_per_block", 1)
        tlpb = _per_block(tlpb, n, "transformer_layers_per_block", where)
        if any(isinstance(x, (list, tuple)) for x in tlpb):
            down_depths = tuple(tuple(int(y) for y in x) for x in tlpb)
            rev = d.get("reverse_transformer_layers_per_block")
            if rev is None:
                raise CheckpointError(f"{where}: nested transformer_layers_per_block needs "
                                      f"reverse_transformer_layers_per_block")
            up_depths = tuple(tuple(int(y) for y in x) for x in rev)
            mid_depth = int(tlpb[-1][-1])
        else:
            down_depths = tuple((int(x),) * lpb[i] for i, x in enumerate(tlpb))
            rev = d.get("reverse_transformer_layers_per_block")
            if rev is not None:
                up_depths = tuple(tuple(int(y) for y in x) for x in rev)
            else:
                rlpb = lpb[::-1]
                up_depths = tuple((int(x),) * (rlpb[i] + 1) for i, x in enumerate(tlpb[::-1]))
            mid_depth = int(tlpb[-1])
        for i, depths in enumerate(down_depths):
            if len(depths) != lpb[i]:
                raise CheckpointError(f"{where}: transformer depths of down block {i} do not fit "
                                      f"layers_per_block")
        groups = d.get("norm_num_groups", 32)
        if groups is None:
            raise CheckpointError(f"{where}: norm_num_groups=None is not supported")
        add = d.get("addition_embed_type")
        if add not in (None, "text_time"):
            raise CheckpointError(f"{where}: addition_embed_type {add!r} is not supported")
        if add == "text_time" and (d.get("addition_time_embed_dim") is None or
                                   d.get("projection_class_embeddings_input_dim") is None):
            raise CheckpointError(f"{where}: text_time needs addition_time_embed_dim and "
                                  f"projection_class_embeddings_input_dim")
        ss = d.get("sample_size")
        return cls(
            in_channels=int(d.get("in_channels", 4)), out_channels=int(d.get("out_channels", 4)),
            down_block_types=down, up_block_types=up, mid_block_type=mid,
            block_out_channels=boc, layers_per_block=lpb, down_transformer_depths=down_depths,
            up_transformer_depths=up_depths, mid_transformer_depth=mid_depth, heads=heads,
            cross_attention_dim=cross,
            use_linear_projection=bool(d.get("use_linear_projection", False)),
            upcast_attention=bool(d.get("upcast_attention", False) or False),
            flip_sin_to_cos=bool(d.get("flip_sin_to_cos", True)),
            freq_shift=int(d.get("freq_shift", 0)), norm_num_groups=int(groups),
            norm_eps=float(d.get("norm_eps", 1e-5)),
            time_embedding_dim=d.get("time_embedding_dim"),
            addition_embed_type=add, addition_time_embed_dim=d.get("addition_time_embed_dim"),
            projection_class_embeddings_input_dim=d.get("projection_class_embeddings_input_dim"),
            sample_size=ss if isinstance(ss, int) or ss is None else int(ss[0]))

    def with_ip_adapter(self, num_tokens: int, token_dim: int | None = None) -> "UNetConfig":
        return dataclasses.replace(self, ip_adapter=True, num_ip_tokens=int(num_tokens),
                                   ip_token_dim=int(token_dim or self.cross_attention_dim[0]))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> "UNetConfig":
        """Inverse of to_dict (lists back to tuples)."""
        def tup(v):
            return tuple(tup(x) for x in v) if isinstance(v, list) else v
        return cls(**{k: tup(v) for k, v in d.items()})


@flax.struct.dataclass
class UNetParams:
    """Flax variables ({'params': ...}) with the config as static pytree metadata."""

    variables: dict[str, Any]
    config: UNetConfig = flax.struct.field(pytree_node=False)

    def astype(self, dtype) -> "UNetParams":
        """Floating parameters cast to dtype (bf16 / fp16 halve the memory of the weights)."""
        cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
        return UNetParams(jax.tree_util.tree_map(cast, self.variables), self.config)


@dataclasses.dataclass(frozen=True)
class Options:
    """Static options of one forward (hashable; part of the compiled program)."""

    dtype: Any = jnp.float32          # compute dtype of convs / matmuls (bf16, fp16 on GPU)
    remat: bool = False               # jax.checkpoint every resnet and transformer block
    remat_policy: str | None = None   # a jax.checkpoint_policies name, e.g. "dots_saveable"
    attention: str = "xla"            # "xla" | "cudnn" (GPU, fp16/bf16) | "chunked"



def options_for(params: "UNetParams", **kw) -> Options:
    """Options computing in the dtype the weights are stored in: bf16 / fp16 weights give bf16 /
    fp16 convolutions and matmuls (with the default float32 compute, every half-precision weight
    would be cast up at each call: float32 speed and more memory than float32 weights)."""
    leaves = [x for x in jax.tree_util.tree_leaves(params.variables)
              if jnp.issubdtype(x.dtype, jnp.floating)]
    return Options(dtype=leaves[0].dtype if leaves else jnp.float32, **kw)


# ==========================================================================================
# Blocks
# ==========================================================================================
def _group_norm(groups: int, eps: float, name: str) -> nn.GroupNorm:
    # two-pass variance (as torch), statistics in float32 whatever the compute dtype
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


def _layer_norm(name: str, eps: float = 1e-5) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


def _largest_divisor(n: int, cap: int) -> int:
    for c in range(min(n, cap), 0, -1):
        if n % c == 0:
            return c
    return 1


def attend(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, impl: str = "xla") -> jax.Array:
    """softmax(Q K^T / sqrt(d)) V over heads; q (B, Tq, H*D), k/v (B, Tk, H*D) -> (B, Tq, H*D).
    Scores and softmax in float32 for any input dtype."""
    b, tq, inner = q.shape
    d = inner // heads
    q4 = q.reshape(b, tq, heads, d)
    k4 = k.reshape(b, k.shape[1], heads, d)
    v4 = v.reshape(b, v.shape[1], heads, d)
    if impl == "chunked":
        tk = k.shape[1]
        out = adapter.memory_efficient_attention(
            q4, k4, v4, query_chunk_size=_largest_divisor(tq, 1024),
            key_chunk_size=_largest_divisor(tk, 4096))
    elif impl == "cudnn":
        out = jax.nn.dot_product_attention(q4, k4, v4, implementation="cudnn")
    elif impl == "xla":
        s = jnp.einsum("bqhd,bkhd->bhqk", q4, k4, preferred_element_type=jnp.float32)
        p = jax.nn.softmax(s * (1.0 / math.sqrt(d)), axis=-1).astype(v4.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", p, v4)
    else:
        raise ValueError(f"attention implementation {impl!r}: one of {ATTENTION_IMPLS}")
    return out.reshape(b, tq, inner).astype(q.dtype)


class Attention(nn.Module):
    """diffusers' Attention (to_q/k/v bias-free, to_out.0 with bias), optionally with the
    IP-Adapter branch (to_k_ip / to_v_ip) added before to_out."""

    heads: int
    dim_head: int
    out_dim: int
    ip: bool = False
    dtype: Any = jnp.float32
    impl: str = "xla"

    @nn.compact
    def __call__(self, x, context=None, ip_tokens=None, ip_scale=1.0):
        inner = self.heads * self.dim_head
        dense = functools.partial(nn.Dense, inner, use_bias=False, dtype=self.dtype)
        ctx = x if context is None else context
        q = dense(name="to_q")(x)
        h = attend(q, dense(name="to_k")(ctx), dense(name="to_v")(ctx), self.heads, self.impl)
        if self.ip and ip_tokens is not None:
            ki = dense(name="to_k_ip")(ip_tokens)
            vi = dense(name="to_v_ip")(ip_tokens)
            scale = jnp.asarray(ip_scale, jnp.float32)
            if scale.ndim == 1:  # per-example scale (B,)
                scale = scale[:, None, None]
            h = h + (scale * attend(q, ki, vi, self.heads, self.impl)).astype(h.dtype)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="to_out_0")(h)


class FeedForward(nn.Module):
    """GEGLU feed-forward: net.0.proj (dim -> 2 * 4 dim), h * gelu(gate) (exact GELU), net.2."""

    dim: int
    mult: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = _GEGLU(self.dim * self.mult, self.dtype, name="net_0")(x)
        return nn.Dense(self.dim, dtype=self.dtype, name="net_2")(h)


class _GEGLU(nn.Module):
    inner: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(2 * self.inner, dtype=self.dtype, name="proj")(x)
        a, gate = jnp.split(h, 2, axis=-1)
        return a * jax.nn.gelu(gate, approximate=False)


class TransformerBlock(nn.Module):
    """diffusers' BasicTransformerBlock (layer_norm type), scan-shaped: (x, ctx...) -> (x, None)."""

    dim: int
    heads: int
    ip: bool = False
    dtype: Any = jnp.float32
    impl: str = "xla"

    @nn.compact
    def __call__(self, x, context, ip_tokens, ip_scale):
        dh = self.dim // self.heads
        attn = functools.partial(Attention, self.heads, dh, self.dim, dtype=self.dtype,
                                 impl=self.impl)
        cast = lambda y: y.astype(self.dtype)
        x = x + attn(name="attn1")(cast(_layer_norm("norm1")(x)))
        x = x + attn(ip=self.ip, name="attn2")(cast(_layer_norm("norm2")(x)), context,
                                               ip_tokens, ip_scale)
        x = x + FeedForward(self.dim, dtype=self.dtype, name="ff")(cast(_layer_norm("norm3")(x)))
        return x, None


def _remat(cls, opts: Options, static_argnums=()):
    if not opts.remat:
        return cls
    policy = getattr(jax.checkpoint_policies, opts.remat_policy) if opts.remat_policy else None
    return nn.remat(cls, prevent_cse=False, policy=policy, static_argnums=static_argnums)


class Transformer2D(nn.Module):
    """diffusers' Transformer2DModel (continuous input); the `depth` BasicTransformerBlocks are
    one nn.scan with parameters stacked on a leading axis ('transformer_blocks')."""

    channels: int
    heads: int
    depth: int
    linear_projection: bool
    groups: int
    ip: bool
    opts: Options

    @nn.compact
    def __call__(self, x, context, ip_tokens, ip_scale):
        b, h, w, c = x.shape
        dt = self.opts.dtype
        residual = x
        y = _group_norm(self.groups, 1e-6, "norm")(x).astype(dt)
        if self.linear_projection:
            y = nn.Dense(c, dtype=dt, name="proj_in")(y.reshape(b, h * w, c))
        else:
            y = nn.Conv(c, (1, 1), padding="VALID", dtype=dt, name="proj_in")(y)
            y = y.reshape(b, h * w, c)
        block = _remat(TransformerBlock, self.opts)
        scan = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=self.depth)
        y, _ = scan(c, self.heads, ip=self.ip, dtype=dt, impl=self.opts.attention,
                    name="transformer_blocks")(y, context, ip_tokens, ip_scale)
        if self.linear_projection:
            y = nn.Dense(c, dtype=dt, name="proj_out")(y).reshape(b, h, w, c)
        else:
            y = nn.Conv(c, (1, 1), padding="VALID", dtype=dt,
                        name="proj_out")(y.reshape(b, h, w, c))
        return y + residual


class ResnetBlock(nn.Module):
    """diffusers' ResnetBlock2D (time_embedding_norm 'default', output scale 1)."""

    out_channels: int
    groups: int
    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb):
        dt = self.dtype
        conv = functools.partial(nn.Conv, self.out_channels, (3, 3), padding=((1, 1), (1, 1)),
                                 dtype=dt)
        h = nn.silu(_group_norm(self.groups, self.eps, "norm1")(x)).astype(dt)
        h = conv(name="conv1")(h)
        t = nn.Dense(self.out_channels, dtype=dt, name="time_emb_proj")(nn.silu(temb).astype(dt))
        h = h + t[:, None, None, :]
        h = nn.silu(_group_norm(self.groups, self.eps, "norm2")(h)).astype(dt)
        h = conv(name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), padding="VALID", dtype=dt,
                        name="conv_shortcut")(x.astype(dt))
        return x.astype(h.dtype) + h


def _nearest_to(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """torch F.interpolate(mode='nearest') of NHWC to `size`: src = floor(dst * in / out)."""
    _, h, w, _ = x.shape
    oh, ow = size
    if (oh, ow) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    iy = np.minimum(np.floor(np.arange(oh) * (h / oh)).astype(np.int32), h - 1)
    ix = np.minimum(np.floor(np.arange(ow) * (w / ow)).astype(np.int32), w - 1)
    return x[:, iy][:, :, ix]


class Upsample(nn.Module):
    """diffusers' Upsample2D(use_conv=True): nearest x2 (or to the skip's size, as diffusers
    does when the latent is not divisible by 2**levels), then a 3x3 conv."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, size):
        x = _nearest_to(x, size)
        return nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                       name="conv")(x)


class UNetModule(nn.Module):
    cfg: UNetConfig
    opts: Options = Options()

    @nn.compact
    def __call__(self, sample, timesteps, context, ip_tokens=None, ip_scale=1.0,
                 text_embeds=None, time_ids=None):
        """sample NHWC; timesteps (B,); context (B, T, cross_dim); returns NHWC."""
        c, o = self.cfg, self.opts
        dt = o.dtype
        Timesteps, TimestepEmbedding = adapter.timestep_embedding_modules()
        Downsample = adapter.downsample_module()
        resnet_cls = _remat(ResnetBlock, o)
        groups, eps = c.norm_num_groups, c.norm_eps
        ip = c.ip_adapter and ip_tokens is not None
        if ip_tokens is not None:
            ip_tokens = ip_tokens.astype(dt)
        context = context.astype(dt)

        t_emb = Timesteps(c.block_out_channels[0], flip_sin_to_cos=c.flip_sin_to_cos,
                          freq_shift=c.freq_shift, name="time_proj")(timesteps.astype(jnp.float32))
        emb = TimestepEmbedding(c.temb_dim, dtype=dt, name="time_embedding")(t_emb.astype(dt))
        if c.is_sdxl_style:
            if text_embeds is None or time_ids is None:
                raise ValueError("an SDXL-style UNet needs added_cond text_embeds and time_ids")
            tproj = Timesteps(c.addition_time_embed_dim, flip_sin_to_cos=c.flip_sin_to_cos,
                              freq_shift=c.freq_shift, name="add_time_proj")
            te = tproj(jnp.ravel(time_ids).astype(jnp.float32)).reshape(text_embeds.shape[0], -1)
            add = jnp.concatenate([text_embeds.astype(jnp.float32), te], axis=-1).astype(dt)
            emb = emb + TimestepEmbedding(c.temb_dim, dtype=dt, name="add_embedding")(add)

        def transformer(ch, heads, depth, name):
            return Transformer2D(ch, heads, depth, c.use_linear_projection, groups, ip, o,
                                 name=name)

        x = nn.Conv(c.block_out_channels[0], (3, 3), padding=((1, 1), (1, 1)), dtype=dt,
                    name="conv_in")(sample.astype(dt))
        skips = [x]
        n = len(c.down_block_types)
        for i, kind in enumerate(c.down_block_types):
            ch = c.block_out_channels[i]
            for j in range(c.layers_per_block[i]):
                x = resnet_cls(ch, groups, eps, dt, name=f"down_blocks_{i}_resnets_{j}")(x, emb)
                if kind == "CrossAttnDownBlock2D":
                    x = transformer(ch, c.heads[i], c.down_transformer_depths[i][j],
                                    f"down_blocks_{i}_attentions_{j}")(x, context, ip_tokens,
                                                                       ip_scale)
                skips.append(x)
            if i < n - 1:
                x = Downsample(ch, dtype=dt, name=f"down_blocks_{i}_downsamplers_0")(x)
                skips.append(x)

        if c.mid_block_type == "UNetMidBlock2DCrossAttn":
            ch = c.block_out_channels[-1]
            x = resnet_cls(ch, groups, eps, dt, name="mid_block_resnets_0")(x, emb)
            x = transformer(ch, c.heads[-1], c.mid_transformer_depth,
                            "mid_block_attentions_0")(x, context, ip_tokens, ip_scale)
            x = resnet_cls(ch, groups, eps, dt, name="mid_block_resnets_1")(x, emb)

        rev_ch = c.block_out_channels[::-1]
        rev_heads = c.heads[::-1]
        rev_lpb = c.layers_per_block[::-1]
        for i, kind in enumerate(c.up_block_types):
            ch = rev_ch[i]
            for j in range(rev_lpb[i] + 1):
                x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
                x = resnet_cls(ch, groups, eps, dt, name=f"up_blocks_{i}_resnets_{j}")(x, emb)
                if kind == "CrossAttnUpBlock2D":
                    x = transformer(ch, rev_heads[i], c.up_transformer_depths[i][j],
                                    f"up_blocks_{i}_attentions_{j}")(x, context, ip_tokens,
                                                                     ip_scale)
            if i < n - 1:
                size = skips[-1].shape[1:3]
                x = Upsample(ch, dtype=dt, name=f"up_blocks_{i}_upsamplers_0")(x, size)

        x = nn.silu(_group_norm(groups, eps, "conv_norm_out")(x)).astype(dt)
        x = nn.Conv(c.out_channels, (3, 3), padding=((1, 1), (1, 1)), dtype=dt,
                    name="conv_out")(x)
        return x


# Flax module names above are flat ('down_blocks_0_resnets_1'); the parameter tree uses the
# nested diffusers paths ('down_blocks_0' / 'resnets_1'), so names map 1:1 onto PyTorch keys.
_NEST_PREFIXES = ("down_blocks_", "up_blocks_", "mid_block_")


def _nest(tree: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        for p in _NEST_PREFIXES:
            if k.startswith(p):
                if p == "mid_block_":
                    head, rest = "mid_block", k[len(p):]
                else:
                    idx, rest = k[len(p):].split("_", 1)
                    head = p + idx
                out.setdefault(head, {})[rest] = v
                break
        else:
            out[k] = v
    return out


def _flatten_names(tree: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if k.startswith(("down_blocks_", "up_blocks_")) or k == "mid_block":
            for sub, vv in v.items():
                out[f"{k}_{sub}"] = vv
        else:
            out[k] = v
    return out


# ==========================================================================================
# Public API
# ==========================================================================================
def _dummy_inputs(cfg: UNetConfig, batch: int = 1, size: int | None = None):
    s = size or 2 ** cfg.num_upsamplers
    sample = jnp.zeros((batch, s, s, cfg.in_channels), jnp.float32)
    t = jnp.zeros((batch,), jnp.float32)
    ctx = jnp.zeros((batch, 2, cfg.cross_attention_dim[0]), jnp.float32)
    ip = (jnp.zeros((batch, max(cfg.num_ip_tokens, 1), cfg.ip_token_dim or
                     cfg.cross_attention_dim[0]), jnp.float32) if cfg.ip_adapter else None)
    te = tid = None
    if cfg.is_sdxl_style:
        te = jnp.zeros((batch, cfg.text_embeds_dim), jnp.float32)
        tid = jnp.zeros((batch, cfg.num_time_ids), jnp.float32)
    return sample, t, ctx, ip, te, tid


@functools.lru_cache(maxsize=16)
def expected_shapes(cfg: UNetConfig) -> dict[str, Any]:
    """{'params': tree of ShapeDtypeStruct} in the nested diffusers naming (no computation;
    cached per config: treat as read-only)."""
    sample, t, ctx, ip, te, tid = _dummy_inputs(cfg)
    shapes = jax.eval_shape(
        lambda: UNetModule(cfg).init(jax.random.PRNGKey(0), sample, t, ctx, ip, 1.0, te, tid))
    return {"params": _nest(shapes["params"])}


def init(cfg: UNetConfig, key: jax.Array) -> UNetParams:
    """Random parameters (Flax default initializers; for shape checks and benchmarks)."""
    sample, t, ctx, ip, te, tid = _dummy_inputs(cfg)
    v = jax.jit(lambda k: UNetModule(cfg).init(k, sample, t, ctx, ip, 1.0, te, tid))(key)
    return UNetParams({"params": _nest(v["params"])}, cfg)


def _timesteps(t, batch: int) -> jax.Array:
    t = jnp.asarray(t)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (batch,))
    return t.astype(jnp.float32)


def apply(params: UNetParams, sample: jax.Array, timesteps, text_embeds: jax.Array,
          ip_tokens: jax.Array | None = None, added_cond: Mapping[str, jax.Array] | None = None,
          *, ip_scale=1.0, layout: str = "NCHW", options: Options = Options()) -> jax.Array:
    """The UNet's prediction (epsilon for SD / SDXL base) for a noisy latent.

    sample: (B, C, H, W) for layout 'NCHW' (diffusers' convention) or (B, H, W, C) for 'NHWC';
      any H, W (SD1.5 at 224 px gives 28x28 latents, not divisible by 8: handled as diffusers).
    timesteps: int / float scalar or (B,) (0..999).
    text_embeds: (B, T, cross_attention_dim) encoder hidden states of the prompt (B may be 1:
      broadcast).
    ip_tokens: (B, N, cross_attention_dim) IP-Adapter image tokens (the image projection's
      output), or None for the plain UNet (no IP branch; also the result of ip_scale=0).
    added_cond: SDXL only: {'text_embeds': (B, 1280) pooled, 'time_ids': (B, 6)} (B may be 1).
    ip_scale: float or (B,) array; IP-Adapter's scale (1.0 in IDGuardian).
    Returns the prediction in the layout of `sample`, float32.
    """
    cfg = params.config
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout {layout!r}: 'NCHW' or 'NHWC'")
    x = jnp.transpose(sample, (0, 2, 3, 1)) if layout == "NCHW" else sample
    b = x.shape[0]
    if x.shape[-1] != cfg.in_channels:
        raise ValueError(f"sample has {x.shape[-1]} channels in layout {layout}, the UNet takes "
                         f"{cfg.in_channels}")
    ctx = jnp.broadcast_to(text_embeds, (b,) + text_embeds.shape[1:])
    if ip_tokens is not None:
        if not cfg.ip_adapter:
            raise ValueError("ip_tokens given but the UNet has no IP-Adapter layers (load one "
                             "with loaders.load_ip_adapter)")
        ip_tokens = jnp.broadcast_to(ip_tokens, (b,) + ip_tokens.shape[1:])
    te = tid = None
    if cfg.is_sdxl_style:
        if not added_cond or "text_embeds" not in added_cond or "time_ids" not in added_cond:
            raise ValueError("an SDXL-style UNet needs added_cond={'text_embeds', 'time_ids'}")
        te = jnp.broadcast_to(added_cond["text_embeds"], (b, cfg.text_embeds_dim))
        tid = jnp.broadcast_to(jnp.asarray(added_cond["time_ids"]), (b, cfg.num_time_ids))
    variables = {"params": _flatten_names(params.variables["params"])}
    out = UNetModule(cfg, options).apply(variables, x, _timesteps(timesteps, b), ctx, ip_tokens,
                                         ip_scale, te, tid)
    out = out.astype(jnp.float32)
    return jnp.transpose(out, (0, 3, 1, 2)) if layout == "NCHW" else out


def split_context(encoder_hidden_states: jax.Array, num_image_tokens: int
                  ) -> tuple[jax.Array, jax.Array]:
    """IP-Adapter's split of a concatenated context [text; image] by a static token count."""
    end = encoder_hidden_states.shape[1] - num_image_tokens
    return encoder_hidden_states[:, :end], encoder_hidden_states[:, end:]


def apply_concat(params: UNetParams, sample: jax.Array, timesteps,
                 encoder_hidden_states: jax.Array, added_cond=None, *,
                 num_image_tokens: int | None = None, **kw) -> jax.Array:
    """`apply` with IP-Adapter's calling convention: context = [text tokens; image tokens],
    the last num_image_tokens (default: the loaded adapter's) being the image tokens."""
    n = params.config.num_ip_tokens if num_image_tokens is None else num_image_tokens
    if n <= 0:
        return apply(params, sample, timesteps, encoder_hidden_states, None, added_cond, **kw)
    text, image = split_context(encoder_hidden_states, n)
    return apply(params, sample, timesteps, text, image, added_cond, **kw)


def sdxl_time_ids(height: int, width: int, crop_top_left=(0, 0), target_size=None,
                  batch: int = 1) -> jnp.ndarray:
    """SDXL's added time ids [orig_h, orig_w, crop_top, crop_left, target_h, target_w]."""
    th, tw = target_size or (height, width)
    ids = jnp.asarray([height, width, crop_top_left[0], crop_top_left[1], th, tw], jnp.float32)
    return jnp.broadcast_to(ids, (batch, 6))


def ip_layer_paths(cfg: UNetConfig) -> list[tuple[tuple[str, ...], int]]:
    """The cross-attention layers in diffusers' attn_processors order (down blocks, up blocks,
    mid block; within a Transformer2D by transformer block): (path of the Transformer2D in the
    parameter tree, index of the block in its stacked 'transformer_blocks'). IP-Adapter
    checkpoints number them 'ip_adapter.{2 n + 1}' (attn1 / attn2 alternate)."""
    out = []
    for i, kind in enumerate(cfg.down_block_types):
        if kind == "CrossAttnDownBlock2D":
            for j, depth in enumerate(cfg.down_transformer_depths[i]):
                out += [((f"down_blocks_{i}", f"attentions_{j}"), k) for k in range(depth)]
    for i, kind in enumerate(cfg.up_block_types):
        if kind == "CrossAttnUpBlock2D":
            for j, depth in enumerate(cfg.up_transformer_depths[i]):
                out += [((f"up_blocks_{i}", f"attentions_{j}"), k) for k in range(depth)]
    if cfg.mid_block_type == "UNetMidBlock2DCrossAttn":
        out += [(("mid_block", "attentions_0"), k) for k in range(cfg.mid_transformer_depth)]
    return out


def param_count(params: UNetParams) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params.variables)))
