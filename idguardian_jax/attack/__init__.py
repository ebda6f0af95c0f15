"""Projected gradient descent on an image perturbation, knowing nothing about faces or models."""
from idguardian_jax.attack.pgd import PGDConfig, make_optimizer, project, run_pgd  # noqa: F401
