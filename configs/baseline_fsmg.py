r"""Baseline: Anti-DreamBooth's FSMG (Van Le et al., ICCV 2023): AdvDM's objective on a surrogate
model already fine-tuned (DreamBooth) on the person's clean photos. Fine-tune elsewhere, then point
model_dir at the fine-tuned diffusers folder:

  idguardian-protect --config=configs/baseline_fsmg.py \
      --config.diffusion.model_dir=/models/dreambooth-person-42 \
      --config.diffusion.prompt="a photo of sks person" --input=photos/ --output=out/
"""
from idguardian_jax.configs import baseline_advdm


def get_config():
    c = baseline_advdm.get_config()
    c.diffusion.prompt = "a photo of sks person"
    return c
