"""Projected gradient descent on an image perturbation, knowing nothing about faces or models."""
from idguardian_jax.attack.pgd import PGDConfig, init, make_optimizer, project, run_pgd, step  # noqa: F401
