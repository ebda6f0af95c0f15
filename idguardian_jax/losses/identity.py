"""Identity confusion: move a face's embedding away from the person (or toward a decoy)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def embedding_distance(a: jax.Array, b: jax.Array, kind: str) -> jax.Array:
    """Per-row distance of (N, E) embeddings: 'euclidean' or 'cosine' (1 - cos)."""
    if kind == "euclidean":
        return jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1) + 1e-12)
    if kind == "cosine":
        an = a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + 1e-12)
        bn = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + 1e-12)
        return 1.0 - jnp.sum(an * bn, axis=-1)
    raise ValueError(f"unknown distance {kind!r}")


def identity_confusion(emb: jax.Array, clean: jax.Array, kind: str = "euclidean",
                       decoy: jax.Array | None = None, cap: float | None = None) -> jax.Array:
    """Loss to minimize, per face (N,).

    Away from the person (decoy None): -distance(emb, clean), optionally capped at `cap` so a face
    that is already far stops pulling the perturbation budget from the others.
    Toward a decoy identity: distance(emb, decoy).
    """
    if decoy is not None:
        return embedding_distance(emb, decoy, kind)
    d = embedding_distance(emb, clean, kind)
    if cap is not None:
        d = jnp.minimum(d, cap)
    return -d
