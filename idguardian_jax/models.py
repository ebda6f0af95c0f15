"""Loading the models one configuration needs: dlib's face models, every encoder of the
objective (installed real encoders, bundled dlib, or checkpoints the user names) and, with
config.diffusion, the diffusion model, IP-Adapter and prompt. Local files only: nothing is fetched.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from idguardian_jax import encoders as encoder_registry
from idguardian_jax import settings
from idguardian_jax.errors import UsageError
from idguardian_jax.faces import analyze
from idguardian_jax.losses.targets import Surrogates


@dataclasses.dataclass
class Models:
    """dlib's face models; params: encoder name -> frozen params (encoders with weights);
    diffusion: the losses.deflection.DiffusionParams of config.diffusion, or None."""

    faces: analyze.FaceModels
    params: dict[str, Any]
    diffusion: Any = None

    @property
    def surrogates(self) -> Surrogates:
        """What the jitted loss runs: every encoder's params and the diffusion model."""
        return Surrogates(self.params, self.diffusion)

    @classmethod
    def load(cls, config, faces: analyze.FaceModels | None = None) -> "Models":
        faces = faces or analyze.FaceModels.load()
        params = {}
        checkpoints = config.objective.get("checkpoints", {}) or {}
        deflect = bool(config.get("diffusion", {}).get("enabled", False))
        for name, weight in settings.encoders_of(config):
            encoder_registry.get(name)  # an unknown name fails here, clearly
            if float(weight) == 0.0 and not (deflect and name == "clip_vit") \
                    and not checkpoints.get(name):
                continue  # kept only for its view (e.g. a baseline's crop): no weights needed
            if name == "dlib_resnet" and not checkpoints.get(name):
                params[name] = faces.resnet
                continue
            path = checkpoints.get(name)
            if not path:
                from idguardian_jax.checkpoints import human_models

                if name in human_models.SPECS:  # installed once with `idguardian-models install`
                    try:
                        params[name] = encoder_registry.load_params(name, None)
                    except human_models.InstallError as e:
                        raise UsageError(str(e))
                    continue
                raise UsageError(f"encoder {name} needs its weights: set "
                                 f"--config.objective.checkpoints.{name}=PATH")
            params[name] = encoder_registry.load_params(name, path)
        diffusion = load_diffusion(config, params) if settings.diffusion_wanted(config) else None
        return cls(faces, params, diffusion)


def load_diffusion(config, params):
    """The diffusion model, IP-Adapter and prompt of config.diffusion (local files only)."""
    import jax.numpy as jnp

    from idguardian_jax.diffusion import loaders, text
    from idguardian_jax.losses import deflection

    d = config.diffusion
    if d.enabled and "clip_vit" not in params:
        raise UsageError("the deflection term reads faces through IP-Adapter's CLIP image "
                         "encoder: add ('clip_vit', weight) to --config.objective.encoders")
    if not d.model_dir or (d.enabled and not d.ip_adapter):
        raise UsageError("set --config.diffusion.model_dir=DIFFUSERS_FOLDER"
                         + (" and --config.diffusion.ip_adapter=IP_ADAPTER.safetensors"
                            if d.enabled else ""))
    view = d.get("baseline_view", "clip_vit")
    if d.get("baseline", "") and view not in [n for n, _ in config.objective.encoders]:
        raise UsageError(f"the baseline reads each face through the {view} view: add "
                         f"('{view}', 0.0) to --config.objective.encoders")
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[d.dtype]
    pipe, proj = loaders.load_pipeline(d.model_dir, dtype=dtype,
                                       ip_adapter=d.ip_adapter if d.enabled else None)
    size = encoder_registry.get("clip_vit").chip_size
    pe = text.encode_prompt(d.model_dir, d.prompt)
    added = pe.added_cond(size, size) if pipe.kind == "sdxl" else None
    return deflection.DiffusionParams(
        unet=pipe.unet, vae=pipe.vae, proj=proj, clip=params.get("clip_vit"), schedule=pipe.schedule,
        text=jnp.asarray(pe.batch(1)),
        added=None if added is None else {k: jnp.asarray(v) for k, v in added.items()})
