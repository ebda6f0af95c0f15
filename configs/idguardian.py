r"""IDGuardian, both stages: cross-encoder identity confusion + identity deflection in the
generative flow (the paper's Algorithm 1 defaults: eps 8/255, alpha 0.005, 200 steps; CLIP ViT-H
image_embeds + FaceNet VGGFace2; IP-Adapter Plus-Face on SDXL base 1.0 with the prompt
"A photo of a person"; t ~ U{0..999}; s* upsampled from 3 latent channels).

  idguardian-protect --config=configs/idguardian.py \
      --config.objective.checkpoints.clip_vit=/models/IP-Adapter/models/image_encoder \
      --config.objective.checkpoints.facenet=/models/20180402-114759-vggface2.pt \
      --config.diffusion.model_dir=/models/stable-diffusion-xl-base-1.0 \
      --config.diffusion.ip_adapter=/models/IP-Adapter/sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors \
      --input=photos/ --output=protected/

All paths are local (nothing is downloaded): a diffusers-format folder (unet/, vae/,
text_encoder(_2)/, tokenizer(_2)/, scheduler/ with safetensors weights) and the IP-Adapter file
as tencent-ailab publishes it (`.safetensors`; a `.bin` can be converted once with
idguardian_jax.diffusion.loaders.convert_ip_adapter_bin, which needs torch). The reference runs on
a 224 px face crop; here each face's CLIP view (224 px, InsightFace-aligned) is the image the
deflection sees, pulled back to the full-resolution photo. On GPU use
--config.diffusion.dtype=bfloat16 (or float16, the reference's). A step of SDXL at 224 px is
several seconds on a CPU: this configuration is meant for accelerators.
"""
from idguardian_jax.configs import idguardian_extract


def get_config():
    c = idguardian_extract.get_config()
    c.diffusion.enabled = True
    return c
