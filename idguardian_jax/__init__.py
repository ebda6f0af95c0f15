"""idguardian-jax: proactive protection of face photos against identity-preserving generation."""

__version__ = "0.1.0"  # also pyproject.toml's [project] version; part of every settings hash
