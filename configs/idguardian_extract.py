r"""IDGuardian's identity-extraction stage: cross-encoder identity confusion.

The paper's reference ensemble (Xiong et al., CVPR 2026, Algorithm 1, identity part): the CLIP
ViT-H/14 image encoder of IP-Adapter (`image_embeds`) and FaceNet InceptionResnetV1 (VGGFace2),
weights 1 / 1, cosine distance between protected and clean features; budget 8/255, step 0.005,
200 signed steps. Weights are read from local files (nothing is downloaded):

  idguardian-protect --config=configs/idguardian_extract.py \
      --config.objective.checkpoints.clip_vit=/models/ip-adapter/image_encoder \
      --config.objective.checkpoints.facenet=/models/20180402-114759-vggface2.pt \
      --input=photos/ --output=protected/

clip_vit: a Hugging Face CLIPVisionModelWithProjection folder (config.json + model.safetensors);
facenet: a facenet-pytorch state dict (.pt, needs torch) or its converted .safetensors
(idguardian-convert). Faces are found and aligned with dlib's models as in the default config;
each encoder reads an InsightFace-style aligned crop (CLIP 224 px, FaceNet 160 px). The dlib
descriptor is always measured afterwards as the yardstick. 200 steps of ViT-H are meant for a GPU;
on a CPU use --config.attack.steps=20 for a try.
"""
from idguardian_jax.configs import default


def get_config():
    c = default.get_config()
    c.budget = 8 / 255
    c.budget_psnr = 0.0          # the reference has no PSNR floor
    c.attack.steps = 200
    c.attack.step_size = 0.005
    c.objective.encoders = (("clip_vit", 1.0), ("facenet", 1.0))
    c.objective.checkpoints.clip_vit = ""
    c.objective.checkpoints.facenet = ""
    return c
