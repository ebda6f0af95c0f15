"""A few steps, for tests and smoke runs: idguardian-protect --config=configs/tiny.py ..."""
from idguardian_jax.configs import default


def get_config():
    c = default.get_config()
    c.attack.steps = 3
    c.budget = 8 / 255
    c.budget_psnr = 0.0
    c.attack.step_size = 2 / 255
    c.objective.installed_encoders = "none"   # dlib alone: fast and independent of installs
    return c
