r"""Baseline: PhotoGuard's encoder attack (Salman et al., ICML 2023) in this project's loop: pull
the VAE latent of each face's aligned 224 px crop toward the latent of a flat gray image.

  idguardian-protect --config=configs/baseline_photoguard.py \
      --config.diffusion.model_dir=/models/stable-diffusion-v1-5 --input=photos/ --output=out/
"""
from idguardian_jax.configs import baseline_advdm


def get_config():
    c = baseline_advdm.get_config()
    c.diffusion.baseline = "photoguard"
    return c
