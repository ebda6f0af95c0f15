r"""Protection that survives what platforms do to photos (expectation over transformation).

  idguardian-protect --config=configs/robust.py --input=photos/ --output=protected/

Same budget and PSNR floor as configs/default.py. At every PGD step the protected photo passes
through one random differentiable post-processing before the face views are cut: JPEG at quality
50-95 (4:2:0, block grid of the full photo), resize down to 0.5-0.9 and back, Gaussian blur
sigma 0-1, Gaussian noise 0-3 levels; or none (p_identity). More steps, since each step sees one
transform. Measured effect and cost: docs/ROBUSTNESS.md.
"""
from idguardian_jax.configs import default


def get_config():
    c = default.get_config()
    c.attack.steps = 100
    c.objective.eot.p_identity = 0.2
    c.objective.eot.jpeg_quality = (50.0, 95.0)
    c.objective.eot.resize_scale = (0.5, 0.9)
    c.objective.eot.blur_sigma = (0.0, 1.0)
    c.objective.eot.noise_std = (0.0, 3.0)
    return c
