r"""Baseline: AdvDM (Liang et al., ICML 2023) in this project's loop: maximize the diffusion
model's denoising loss on each face's aligned 224 px crop, gradient through the VAE and UNet.

  idguardian-protect --config=configs/baseline_advdm.py \
      --config.diffusion.model_dir=/models/stable-diffusion-v1-5 --input=photos/ --output=out/

Budget 8/255, step 0.005, 100 signed steps (AdvDM's common settings at this budget). No identity
encoder weights are needed: the clip_vit entry (weight 0) only places the crop.
"""
from idguardian_jax.configs import default


def get_config():
    c = default.get_config()
    c.budget = 8 / 255
    c.budget_psnr = 0.0
    c.attack.steps = 100
    c.attack.step_size = 0.005
    c.objective.encoders = (("clip_vit", 0.0),)
    # The baselines' papers attack the fixed image, without this project's landmark jitter.
    c.objective.jitter.shift_px = 0.0
    c.objective.jitter.rotation = 0.0
    c.objective.jitter.scale = 0.0
    c.diffusion.baseline = "advdm"
    return c
