"""One step of IDGuardian (Algorithm 1) in JAX equals a plain PyTorch re-statement of it."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import diffusion_reference as dr  # noqa: E402
import reference_models as rm  # noqa: E402

from encoders import clip_vit, facenet  # noqa: E402
from idguardian_jax.diffusion import loaders, text  # noqa: E402
from idguardian_jax.losses import deflection  # noqa: E402

S = 64  # face image size (latents 8x8)
PROMPT = "A photo of a person"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sdxl"))
    paths = dr.write_pipeline("sdxl-tiny", root)
    fn_model = rm.random_facenet(0, classify_head=8631).eval()
    fn_path = os.path.join(root, "facenet.pt")
    torch.save(fn_model.state_dict(), fn_path)
    pipe, proj = loaders.load_pipeline(root, ip_adapter=paths["plus"])
    pe = text.encode_prompt(root, PROMPT)
    p = deflection.DiffusionParams(
        unet=pipe.unet, vae=pipe.vae, proj=proj, clip=clip_vit.load(paths["image_encoder"]),
        schedule=pipe.schedule, text=jnp.asarray(pe.batch(1)),
        added={k: jnp.asarray(v) for k, v in pe.added_cond(S, S).items()})
    return root, paths, fn_model, facenet.load(fn_path), p, pe


def _torch_direction(root, paths, fn_model, pe, x_adv, x, t, noise):
    """Algorithm 1's total = g_id/||g_id|| - s_up/||s_up||, written plainly with diffusers,
    transformers and facenet-pytorch (NCHW tensors)."""
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPVisionModelWithProjection

    clip = CLIPVisionModelWithProjection.from_pretrained(paths["image_encoder"]).eval()
    unet = dr.torch_unet_with_ip(root, paths["plus"])
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae").eval()
    sched = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    size = clip.config.image_size

    def clip_in(img):
        return (F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False) - mean) / std

    xa = torch.from_numpy(x_adv).permute(0, 3, 1, 2).requires_grad_(True)
    xc = torch.from_numpy(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        e_clip = clip(pixel_values=clip_in(xc)).image_embeds
        e_fn = fn_model(F.interpolate(xc, size=(160, 160), mode="bilinear", align_corners=False) * 2 - 1)
    l_id = (F.cosine_similarity(clip(pixel_values=clip_in(xa)).image_embeds, e_clip).sum()
            + F.cosine_similarity(fn_model(F.interpolate(xa, size=(160, 160), mode="bilinear",
                                                         align_corners=False) * 2 - 1), e_fn).sum())
    g = torch.autograd.grad(l_id, xa)[0]
    with torch.no_grad():
        z = vae.encode(xc * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
        tt = torch.from_numpy(t).long()
        zt = sched.add_noise(z, torch.from_numpy(noise), tt)
        h_adv = clip(pixel_values=clip_in(xa.detach()), output_hidden_states=True).hidden_states[-2]
        h_cln = clip(pixel_values=clip_in(xc), output_hidden_states=True).hidden_states[-2]
        added = {k: torch.from_numpy(np.asarray(v)) for k, v in pe.added_cond(S, S).items()}
        txt = torch.from_numpy(np.asarray(pe.batch(1)))

        def eps(h):
            return unet(zt, tt, encoder_hidden_states=txt,
                        added_cond_kwargs=dict(added, image_embeds=[h[:, None]])).sample

        sig = torch.sqrt(1 - sched.alphas_cumprod[tt]).view(-1, 1, 1, 1)
        s = -(eps(h_adv) - eps(h_cln)) / sig
        s_up = F.interpolate(s[:, :3], size=(S, S), mode="bilinear", align_corners=False)
    total = g / (g.norm() + 1e-8) - s_up / (s_up.norm() + 1e-8)
    return total.permute(0, 2, 3, 1).numpy(), s_up.permute(0, 2, 3, 1).numpy()


def test_one_step_matches_pytorch_restatement(models):
    root, paths, fn_model, fn_params, p, pe = models
    rng = np.random.default_rng(7)
    x = rng.uniform(size=(1, S, S, 3)).astype(np.float32)
    x_adv = np.clip(x + rng.uniform(-8 / 255, 8 / 255, size=x.shape), 0, 1).astype(np.float32)
    t = np.array([417], np.int32)
    z_clean, tokens_clean = deflection.clean_conditioning(p, jnp.asarray(x))
    noise = rng.standard_normal(z_clean.shape).astype(np.float32)
    ours = np.asarray(jax.jit(deflection.algorithm1_direction)(
        jnp.asarray(x_adv), jnp.asarray(x), p, fn_params, z_clean, tokens_clean,
        jnp.asarray(t), jnp.asarray(noise)))
    ref, s_up = _torch_direction(root, paths, fn_model, pe, x_adv, x, t, noise)
    assert np.abs(s_up).max() > 0  # the deflection term is not trivially zero
    differ = np.sign(ours) != np.sign(ref)
    small = np.abs(ref) < 1e-6
    print(f"sign differences: {differ.sum()} of {differ.size}, all where |total| < 1e-6: "
          f"{not (differ & ~small).any()}; max |ours - ref| {np.abs(ours - ref).max():.2e}")
    assert not (differ & ~small).any()
    stepped = deflection.algorithm1_step(jnp.asarray(x_adv), jnp.asarray(x), p, fn_params, z_clean,
                                         tokens_clean, jnp.asarray(t), jnp.asarray(noise))
    assert float(jnp.abs(stepped - x).max()) <= 8 / 255 + 1e-6
