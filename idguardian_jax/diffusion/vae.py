"""The VAE encoder of SD / SDXL (diffusers' FlaxAutoencoderKL, through `adapter`): images ->
latents = mode of the latent distribution (its mean) x scaling_factor, and its vector-Jacobian
product (to pull a latent-space direction back to pixels).

Only the encoder half is loaded (encoder.* and quant_conv.*); the decoder is never needed here.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp

from idguardian_jax.checkpoints.tensors import CheckpointError
from idguardian_jax.diffusion import adapter


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215      # SD 1.x/2.x; SDXL's VAE: 0.13025
    shift_factor: float | None = None    # (SD3 / Flux VAEs; None for SD / SDXL)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config") -> "VAEConfig":
        cname = d.get("_class_name", "AutoencoderKL")
        if cname not in ("AutoencoderKL", "FlaxAutoencoderKL"):
            raise CheckpointError(f"{where}: a {cname}, not an AutoencoderKL")
        for k, ok in (("act_fn", "silu"), ("use_quant_conv", True),
                      ("mid_block_add_attention", True)):
            if d.get(k, ok) != ok:
                raise CheckpointError(f"{where}: {k}={d.get(k)!r} is not supported (only {ok!r})")
        down = tuple(d.get("down_block_types", cls.down_block_types))
        if any(t != "DownEncoderBlock2D" for t in down):
            raise CheckpointError(f"{where}: down block types {down} are not supported")
        boc = tuple(int(c) for c in d.get("block_out_channels", cls.block_out_channels))
        if len(boc) != len(down):
            raise CheckpointError(f"{where}: block_out_channels does not fit down_block_types")
        ss = d.get("sample_size", 512)
        return cls(
            in_channels=int(d.get("in_channels", 3)), out_channels=int(d.get("out_channels", 3)),
            down_block_types=down,
            up_block_types=tuple(d.get("up_block_types", ("UpDecoderBlock2D",) * len(down))),
            block_out_channels=boc, layers_per_block=int(d.get("layers_per_block", 1)),
            latent_channels=int(d.get("latent_channels", 4)),
            norm_num_groups=int(d.get("norm_num_groups", 32)),
            sample_size=int(ss if isinstance(ss, int) else ss[0]),
            scaling_factor=float(d.get("scaling_factor", 0.18215)),
            shift_factor=None if d.get("shift_factor") is None else float(d["shift_factor"]))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@flax.struct.dataclass
class VAEParams:
    """Flax variables of the encoder half ({'params': {'encoder', 'quant_conv'}})."""

    variables: dict[str, Any]
    config: VAEConfig = flax.struct.field(pytree_node=False)


def flax_module(cfg: VAEConfig, dtype=jnp.float32):
    cls = adapter.autoencoder_kl()
    return cls(in_channels=cfg.in_channels, out_channels=cfg.out_channels,
               down_block_types=cfg.down_block_types, up_block_types=cfg.up_block_types,
               block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
               act_fn="silu", latent_channels=cfg.latent_channels,
               norm_num_groups=cfg.norm_num_groups, sample_size=cfg.sample_size,
               scaling_factor=cfg.scaling_factor, dtype=dtype)


@functools.lru_cache(maxsize=8)
def expected_shapes(cfg: VAEConfig) -> dict[str, Any]:
    """{'params': {'encoder': ..., 'quant_conv': ...}} as ShapeDtypeStructs."""
    m = flax_module(cfg)
    s = cfg.downscale
    x = jnp.zeros((1, cfg.in_channels, s, s), jnp.float32)
    shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x, method=m.encode))
    p = shapes["params"]
    return {"params": {"encoder": p["encoder"], "quant_conv": p["quant_conv"]}}


def encode(params: VAEParams, images: jax.Array, *, layout: str = "NHWC",
           input_range: str = "unit", latent_layout: str = "NCHW", dtype=jnp.float32
           ) -> jax.Array:
    """Scaled latents: mode (mean) of the VAE's latent distribution x scaling_factor
    (minus shift_factor first, where the config has one).

    images: (B, H, W, 3) for layout 'NHWC' or (B, 3, H, W) for 'NCHW'; input_range 'unit'
      ([0, 1], mapped to 2x - 1 inside, as the IDGuardian reference) or 'signed' ([-1, 1]).
    Returns (B, 4, H/8, W/8) for latent_layout 'NCHW' (what unet.apply takes by default) or
    (B, H/8, W/8, 4) for 'NHWC'; float32. Differentiable w.r.t. images."""
    cfg = params.config
    if layout not in ("NHWC", "NCHW") or latent_layout not in ("NHWC", "NCHW"):
        raise ValueError("layouts are 'NHWC' or 'NCHW'")
    if input_range not in ("unit", "signed"):
        raise ValueError("input_range is 'unit' ([0, 1]) or 'signed' ([-1, 1])")
    x = images.astype(jnp.float32)
    if input_range == "unit":
        x = x * 2.0 - 1.0
    if layout == "NHWC":
        x = jnp.transpose(x, (0, 3, 1, 2))  # FlaxAutoencoderKL.encode takes NCHW
    if x.shape[1] != cfg.in_channels:
        raise ValueError(f"images have {x.shape[1]} channels, the VAE takes {cfg.in_channels}")
    m = flax_module(cfg, dtype)
    out = m.apply(params.variables, x.astype(dtype), method=m.encode)
    z = out.latent_dist.mode().astype(jnp.float32)  # NHWC
    if cfg.shift_factor is not None:
        z = z - cfg.shift_factor
    z = z * cfg.scaling_factor
    return jnp.transpose(z, (0, 3, 1, 2)) if latent_layout == "NCHW" else z


def encode_vjp(params: VAEParams, images: jax.Array, **kw
               ) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """(latents, vjp) where vjp(cotangent of the latents' shape) -> cotangent of the images
    (same layout / range convention as `encode`): J^T c, e.g. a latent-space direction pulled
    back to pixels."""
    latents, f = jax.vjp(lambda x: encode(params, x, **kw), images)
    return latents, lambda c: f(jnp.asarray(c, latents.dtype))[0]


def pullback(params: VAEParams, images: jax.Array, cotangent: jax.Array, **kw) -> jax.Array:
    """J^T cotangent of encode at images (one call; jit it with the caller)."""
    return encode_vjp(params, images, **kw)[1](cotangent)


def encode_and_pullback(params: VAEParams, images: jax.Array, cotangent: jax.Array, **kw
                        ) -> tuple[jax.Array, jax.Array]:
    """(latents, J^T cotangent) in one pass (jit-friendly)."""
    latents, f = encode_vjp(params, images, **kw)
    return latents, f(cotangent)
