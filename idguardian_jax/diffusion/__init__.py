"""Diffusion-model building blocks of IDGuardian's injection stage (JAX / Flax).

- unet.py: SD 1.x/2.x / SDXL UNet with IP-Adapter decoupled cross-attention,
  `apply(params, sample, t, text_embeds, ip_tokens, added_cond) -> eps`.
- ip_adapter.py: image projection (Plus Perceiver resampler, plain ImageProjModel).
- vae.py: VAE encoder (mode x scaling factor) and its VJP.
- schedule.py: DDPM / DDIM training schedule, add_noise.
- text.py: prompt embeddings (Flax CLIP text encoders), cached.
- loaders.py: local diffusers folders (safetensors, no torch) and IP-Adapter checkpoints.
- adapter.py: the only module importing diffusers / transformers Flax classes
  (pins: diffusers>=0.30,<0.38, transformers>=4.57,<5).

Submodules are imported on use (`from idguardian_jax.diffusion import unet`), so importing this
package costs nothing and needs neither diffusers nor transformers.
"""
