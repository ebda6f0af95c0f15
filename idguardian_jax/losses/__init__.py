"""Loss terms of the protection objective (pure functions of embeddings)."""
from idguardian_jax.losses.identity import identity_confusion  # noqa: F401
