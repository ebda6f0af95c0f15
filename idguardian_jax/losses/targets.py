"""What the loss aims at and with what: typed pytrees passed into the jitted loop.

`Targets` holds, per photo, the clean embeddings the perturbation pushes away from (or the decoy
ones it pulls toward) and the diffusion conditioning of the clean faces; `Surrogates` holds the
frozen parameters of every model the loss runs (the encoders by registry name, and the diffusion
model when the deflection or a baseline term is on). Both are plain pytrees: numpy on the host,
jax arrays in the loop, with a leading batch axis when batched (Surrogates are replicated, not
batched).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DiffusionTargets:
    """The clean faces as the diffusion model sees them (None where the term is off).

    z0: (F, 4, h, w) VAE latents of the clean CLIP views; tokens: (F, N, D) IP-Adapter image
    tokens of the clean views (the deflection). z_target: (F, 4, h, w) latent of the gray target
    (the PhotoGuard baseline)."""

    z0: Any = None
    tokens: Any = None
    z_target: Any = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Targets:
    """clean: encoder name -> (F, E) clean embeddings, in the plan's face-slot order.
    decoy: encoder name -> (F, E) decoy embeddings (objective 'decoy'), else empty.
    diffusion: DiffusionTargets, or None without diffusion terms."""

    clean: dict[str, Any]
    decoy: dict[str, Any] = dataclasses.field(default_factory=dict)
    diffusion: DiffusionTargets | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Surrogates:
    """encoders: registry name -> frozen params of each encoder with weights in the objective
    (an encoder kept only for its view has none). diffusion: losses.deflection.DiffusionParams,
    or None."""

    encoders: dict[str, Any]
    diffusion: Any = None
