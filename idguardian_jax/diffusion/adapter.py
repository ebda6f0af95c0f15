"""The one place that imports diffusers' and transformers' Flax classes.

diffusers 0.37.x is the last release with Flax classes and transformers 4.x the last line with
Flax models (pin `diffusers<0.38`, `transformers<5`); everything else in
`idguardian_jax.diffusion` goes through the names exported here, so a later replacement (own
ports) touches this file only.

What is taken from upstream, and why only this:
- `timestep_embedding_modules()`: diffusers' FlaxTimesteps + FlaxTimestepEmbedding (sinusoidal
  time embedding, identical to PyTorch's Timesteps / TimestepEmbedding).
- `downsample_module()`: diffusers' FlaxDownsample2D of the UNet (3x3 stride-2 conv, padding 1).
- `memory_efficient_attention`: diffusers' chunked attention (Rabe & Staats), for long sequences.
- `autoencoder_kl()`: diffusers' FlaxAutoencoderKL (the VAE; we call its `encode`).
- `ddpm_scheduler()`: diffusers' FlaxDDPMScheduler (betas / alphas_cumprod of a scheduler config).
- `clip_text_models()` / `clip_tokenizer()`: transformers' FlaxCLIPTextModel(WithProjection)
  and CLIPTokenizer (the text encoders of SD / SDXL; computed once per prompt and cached).

The UNet's attention / transformer / resnet / upsample blocks are our own (unet.py): diffusers'
Flax UNet has no IP-Adapter hook, and its Flax transformer blocks differ from the PyTorch model
(GroupNorm eps 1e-5 instead of 1e-6 in Transformer2D, tanh-approximate GELU in GEGLU, fixed 32
groups, no upsample-to-size for latents not divisible by 2**levels).

Flax classes of diffusers log a deprecation warning at import and at every module setup; those
records (and only those) are filtered out here.
"""
from __future__ import annotations

import functools
import logging

_DEPRECATION_MARKERS = ("Flax classes are deprecated", "TensorFlow and JAX classes are deprecated")
_DIFFUSERS_FLAX_LOGGERS = (
    "diffusers.models.attention_flax",
    "diffusers.models.resnet_flax",
    "diffusers.models.embeddings_flax",
    "diffusers.models.vae_flax",
    "diffusers.models.modeling_flax_utils",
    "diffusers.models.unets.unet_2d_blocks_flax",
    "diffusers.models.unets.unet_2d_condition_flax",
    "diffusers.schedulers.scheduling_ddpm_flax",
    "diffusers.schedulers.scheduling_utils_flax",
    "transformers.modeling_flax_utils",
    "transformers.models.clip.modeling_flax_clip",
)


class _DropFlaxDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(m in msg for m in _DEPRECATION_MARKERS)


def _install_filters() -> None:
    f = _DropFlaxDeprecation()
    for name in _DIFFUSERS_FLAX_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(x, _DropFlaxDeprecation) for x in logger.filters):
            logger.addFilter(f)


_install_filters()


class MissingDependency(ImportError):
    pass


def _need(what: str, exc: BaseException):
    raise MissingDependency(
        f"{what} needs diffusers 0.37.x and transformers 4.x with Flax "
        f"(pip install 'diffusers>=0.30,<0.38' 'transformers>=4.57,<5'): {exc}") from None


@functools.cache
def _diffusers():
    try:
        from diffusers.models import attention_flax, embeddings_flax, resnet_flax, vae_flax
        from diffusers.schedulers import scheduling_ddpm_flax
    except ImportError as e:  # pragma: no cover - depends on the environment
        _need("the diffusion models", e)
    return {"attention": attention_flax, "embeddings": embeddings_flax, "resnet": resnet_flax,
            "vae": vae_flax, "ddpm": scheduling_ddpm_flax}


def timestep_embedding_modules():
    """(FlaxTimesteps, FlaxTimestepEmbedding) classes of diffusers."""
    m = _diffusers()["embeddings"]
    return m.FlaxTimesteps, m.FlaxTimestepEmbedding


def downsample_module():
    """diffusers' FlaxDownsample2D of the UNet (param path: conv)."""
    return _diffusers()["resnet"].FlaxDownsample2D


def memory_efficient_attention(query, key, value, query_chunk_size: int, key_chunk_size: int):
    """diffusers' chunked attention; query/key/value (batch..., seq, heads, head_dim)."""
    fn = _diffusers()["attention"].jax_memory_efficient_attention
    return fn(query, key, value, query_chunk_size=query_chunk_size, key_chunk_size=key_chunk_size)


def autoencoder_kl():
    """diffusers' FlaxAutoencoderKL class."""
    return _diffusers()["vae"].FlaxAutoencoderKL


def ddpm_scheduler():
    """diffusers' FlaxDDPMScheduler class."""
    return _diffusers()["ddpm"].FlaxDDPMScheduler


@functools.cache
def _transformers_clip():
    try:
        import transformers
        from transformers import CLIPTextConfig, CLIPTokenizer
        from transformers.models.clip import modeling_flax_clip
    except ImportError as e:  # pragma: no cover
        _need("text conditioning", e)
    if int(transformers.__version__.split(".")[0]) >= 5:  # pragma: no cover
        _need("text conditioning",
              ImportError(f"transformers {transformers.__version__} has no Flax"))
    return {"config": CLIPTextConfig, "tokenizer": CLIPTokenizer,
            "text": modeling_flax_clip.FlaxCLIPTextModel,
            "text_proj": modeling_flax_clip.FlaxCLIPTextModelWithProjection}


def clip_text_models():
    """(CLIPTextConfig, FlaxCLIPTextModel, FlaxCLIPTextModelWithProjection) of transformers."""
    t = _transformers_clip()
    return t["config"], t["text"], t["text_proj"]


def clip_tokenizer():
    return _transformers_clip()["tokenizer"]


def silence_transformers_flax_warnings() -> None:
    """transformers logs its Flax deprecation through its own logger at from_pretrained time."""
    _install_filters()
