"""Protecting photos: the functional API on arrays (`protect`) and on files (`protect_files`).

One protection, end to end:
  1. faces are found and aligned once on the clean photo (MMOD detector, 5 landmarks, dlib chip);
  2. each encoder's clean embedding of each face is computed from the exact chip;
  3. the photo is cut to the region its face views read (views.plan_photo); photos with the same
     signature are batched, and PGD runs on the batch (engine.protect_batch: jit + vmap, sharded
     over the devices);
  4. the perturbed region is pasted back, rounded to 8 bits, and the result is measured the way an
     attacker would see it: faces found again on the protected photo, their chips cut again, and
     the distance to the clean embedding computed.
A photo's PRNG key comes from the seed and a hash of its pixels, so its result does not depend on
the batch it is in, the order of the inputs, or the number of devices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

import encoders as encoder_registry
from idguardian_jax import engine, images, objective, parallel, views
from idguardian_jax.attack import eot, pgd, transfer
from idguardian_jax.faces import align, analyze
from idguardian_jax.losses import identity

VERSION = "0.1.0"


# ------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------
def engine_config(config) -> engine.EngineConfig:
    """EngineConfig from an ml_collections config (configs/default.py)."""
    a, o, j = config.attack, config.objective, config.objective.jitter
    e = o.get("eot", None)

    def rng(name):
        v = e.get(name) if e is not None else None
        return None if not v else (float(v[0]), float(v[1]))

    return engine.EngineConfig(
        pgd=pgd.PGDConfig(eps=float(config.budget), steps=int(a.steps), step_size=float(a.step_size),
                          optimizer=a.optimizer, schedule=a.schedule,
                          final_fraction=float(a.final_fraction), random_start=bool(a.random_start),
                          momentum=float(a.get("momentum", 0.0))),
        objective=objective.ObjectiveConfig(
            encoders=encoders_of(config),
            objective="decoy" if o.decoy_photo else "away",
            cap=None if not o.cap else float(o.cap),
            quantize=bool(o.quantize),
            baseline=_baseline_config(config),
            jitter=objective.Jitter(float(j.shift_px), float(j.rotation), float(j.scale)),
            transfer=_transfer_config(o),
            eot=eot.EoTConfig(p_identity=float(e.p_identity) if e is not None else 0.0,
                              jpeg_quality=rng("jpeg_quality"), resize_scale=rng("resize_scale"),
                              blur_sigma=rng("blur_sigma"), noise_std=rng("noise_std"))),
        per_device=int(config.batch.per_device),
        loop=a.loop,
        deflection=_deflection_config(config))


def encoders_of(config) -> tuple[tuple[str, float], ...]:
    """The objective's encoders: `objective.encoders`, plus (objective.installed_encoders='all')
    every real encoder installed with `idguardian-models install` that is not listed, weight
    `objective.installed_weight`. Read from the local install only; nothing is fetched."""
    o = config.objective
    listed = tuple((str(n), float(w)) for n, w in o.encoders)
    if str(o.get("installed_encoders", "none")) != "all":
        return listed
    from idguardian_jax.checkpoints import human_models

    have = {n for n, _ in listed}
    weight = float(o.get("installed_weight", 1.0))
    return listed + tuple((e.name, weight) for e in human_models.installed_encoders()
                          if e.name not in have)


def _transfer_config(o) -> transfer.TransferConfig:
    """objective.transfer.* as a TransferConfig: each field present in the config, cast to the
    type of the dataclass's default; a missing field keeps that default."""
    t = o.get("transfer", None)
    if t is None:
        return transfer.TransferConfig()
    return transfer.TransferConfig(**{
        f.name: type(f.default)(t[f.name])
        for f in dataclasses.fields(transfer.TransferConfig) if f.name in t})


def _baseline_config(config):
    d = config.get("diffusion", None)
    if d is None or not d.get("baseline", ""):
        return None
    if d.baseline not in ("advdm", "photoguard"):
        raise UsageError(f"--config.diffusion.baseline must be advdm or photoguard, got {d.baseline!r}")
    return objective.BaselineTerm(kind=d.baseline, weight=float(d.baseline_weight),
                                  view=d.baseline_view, t_min=int(d.t_min), t_max=int(d.t_max))


def _diffusion_wanted(config) -> bool:
    d = config.get("diffusion", None)
    return d is not None and (bool(d.get("enabled", False)) or bool(d.get("baseline", "")))


def _deflection_config(config):
    from idguardian_jax.losses import deflection

    d = config.get("diffusion", None)
    if d is None or not d.get("enabled", False):
        return None
    return deflection.DeflectionConfig(t_min=int(d.t_min), t_max=int(d.t_max),
                                       noise_samples=int(d.noise_samples), variant=d.variant,
                                       ip_scale=float(d.ip_scale), weight=float(d.weight))


def settings_hash(config) -> str:
    """Identifies everything that changes the protected pixels (rerun skips on a match)."""
    relevant = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
                for k in ("seed", "budget", "budget_psnr", "attack", "objective", "detect",
                          "diffusion") if k in config}
    relevant["encoders_used"] = encoders_of(config)
    # every output setting: what is written (format, quality, metadata, location, no-face copy)
    # and which photos are read at all (max_pixels)
    relevant["output"] = config.output.to_dict()
    relevant["version"] = VERSION
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Models:
    faces: analyze.FaceModels
    params: dict[str, Any]  # encoder name -> params

    @classmethod
    def load(cls, config, faces: analyze.FaceModels | None = None) -> "Models":
        faces = faces or analyze.FaceModels.load()
        params = {}
        checkpoints = config.objective.get("checkpoints", {}) or {}
        deflect = bool(config.get("diffusion", {}).get("enabled", False))
        for name, weight in encoders_of(config):
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
        if _diffusion_wanted(config):
            params["_diffusion"] = _load_diffusion(config, params)
        return cls(faces, params)


def _load_diffusion(config, params):
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


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FaceReport:
    """Distances are dlib's (the yardstick, always measured); `encoders` holds, per encoder of the
    objective, {'after': distance to the clean embedding, 'threshold': same person below it}."""

    box: list[int]
    score: float | None
    distance_in_loop: float | None = None       # the loop's own view, no jitter, 8-bit photo
    distance_before: float | None = None        # clean photo, same pipeline (0 unless nondeterministic)
    distance_after: float | None = None         # protected photo, faces found again
    found_again: bool | None = None             # the detector still finds this face
    protected: bool | None = None               # distance_after above dlib's threshold
    encoders: dict[str, dict] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PhotoResult:
    """status: 'protected', 'no_face', 'error' (and 'skipped', 'copied' for files)."""

    status: str
    protected: np.ndarray | None = None
    faces: list[FaceReport] = dataclasses.field(default_factory=list)
    psnr: float | None = None
    max_change: int | None = None
    seconds: float | None = None
    losses: list[float] | None = None
    error: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def record(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("protected")
        return d


def describe_face(face: dict) -> list[str]:
    """Lines a newcomer reads right, one per encoder of a face record (FaceReport as a dict):
    the similarity (cosine encoders) or distance (dlib) of the protected face, found again on
    the written photo, to the clean face, against the encoder's same-person threshold."""
    lines = []
    for name, e in face.get("encoders", {}).items():
        enc = encoder_registry.get(name)
        after, thr = e.get("after"), float(e["threshold"])
        if after is None:
            lines.append(f"{name}: face no longer detected: not recognized")
            continue
        if enc.distance == "cosine":
            sim, same = 1.0 - after, 1.0 - thr
            verdict = "recognized" if after < thr else "not recognized"
            lines.append(f"{name}: similarity to the clean face 1.00 -> {sim:.2f} (same person at "
                         f">= {same:.2f}): {verdict}")
        else:
            verdict = "recognized" if after < thr else "not recognized"
            lines.append(f"{name}: distance to the clean face 0.00 -> {after:.2f} (same person "
                         f"below {thr:.2f}): {verdict}")
    return lines


def dlib_alone_note(config) -> str | None:
    """The one-line note protect prints when dlib is the only encoder (no real encoder of
    another family installed or configured), else None."""
    if [n for n, w in encoders_of(config) if w] == ["dlib_resnet"]:
        return ("note: only dlib's face recognizer is in the objective, so the protection is "
                "computed and measured against dlib alone; `idguardian-models install` adds "
                "real encoders of other families (mobileface, faceres) to the default")
    return None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 photos of one shape; summed exactly in row blocks (int64), so memory
    stays small for large photos (a float64 copy of a 6000x6000 photo is 864 MB)."""
    rows = max(1, (1 << 22) // max(1, int(np.prod(a.shape[1:]))))
    total = 0
    for r in range(0, a.shape[0], rows):
        d = a[r:r + rows].astype(np.int32) - b[r:r + rows].astype(np.int32)
        total += int(np.dot(d.ravel().astype(np.int64), d.ravel().astype(np.int64)))
    mse = total / float(max(1, a.size))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def photo_key(rgb: np.ndarray, seed: int) -> np.ndarray:
    """(2,) uint32 key data from the seed and the photo's pixels (order and batch independent)."""
    h = hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).digest()
    k = jax.random.fold_in(jax.random.key(int(seed)), int.from_bytes(h[:4], "little") & 0x7FFFFFFF)
    return np.asarray(jax.random.key_data(k))


# ------------------------------------------------------------------------------------------
# The protector
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Prepared:
    index: int
    rgb: np.ndarray
    faces: list[analyze.Face]
    plan: views.PhotoPlan | None
    clean: dict[str, np.ndarray]  # encoder -> (F, E) in the plan's slot order
    key: np.ndarray
    chip_plans: dict[str, list] = dataclasses.field(default_factory=dict)


class Protector:
    """Holds the models, the mesh and the compiled programs for one configuration."""

    def __init__(self, config, models: Models | None = None, mesh=None):
        self.config = config
        self.models = models or Models.load(config)
        self.mesh = mesh or parallel.make_mesh()
        self.cfg = engine_config(config)
        self.decoy = None
        if config.objective.decoy_photo:
            self.decoy = self._decoy_embeddings(config.objective.decoy_photo)

    @property
    def encoder_names(self) -> list[str]:
        return [name for name, _ in self.cfg.objective.encoders]

    @property
    def embedding_names(self) -> list[str]:
        """Encoders that embed (have weights); the others are views only (a baseline's crop)."""
        return [name for name in self.encoder_names if name in self.models.params]

    def find_faces(self, rgb: np.ndarray, near=None) -> list[analyze.Face]:
        """Faces of a photo as dlib's detector at config.detect.upsample finds them: on the full
        canvas (detect.max_side 0) or on a bounded canvas refined at full resolution; with `near`
        (boxes), only the detections near those boxes (detect.measure: 'near')."""
        d = self.config.detect
        max_side = d.get("max_side", 0) or 0
        if not isinstance(max_side, int) or max_side < 0:
            raise UsageError(f"--config.detect.max_side must be an integer >= 0 (0: the full "
                             f"canvas), got {max_side!r}")
        if d.get("measure", "near") not in ("near", "full"):
            raise UsageError(f"--config.detect.measure must be near or full, got {d.measure!r}")
        return analyze.find_faces(rgb, self.models.faces, d.upsample,
                                  with68=analyze.needs_68(self.encoder_names),
                                  max_side=max_side, near=near)

    def chip_plans(self, rgb: np.ndarray, faces) -> dict[str, list]:
        """encoder name -> one ChipPlan per face (how that encoder's pipeline cuts the chip)."""
        return {n: [analyze.chip_plan_for(encoder_registry.get(n), f, rgb.shape) for f in faces]
                for n in self.encoder_names}

    def embeddings(self, rgb: np.ndarray, chip_plans: dict[str, list]) -> dict[str, np.ndarray]:
        """encoder name -> (F, E) embeddings of the exact (uint8) chips (encoders with weights)."""
        out = {}
        for name, plans in chip_plans.items():
            if name not in self.embedding_names:
                continue
            enc = encoder_registry.get(name)
            chips = np.stack([align.extract_chip(rgb, p, analyze.rounding_for(enc)) for p in plans])
            out[name] = np.asarray(enc.apply(self.models.params[name], chips.astype(np.float32) / 255))
        return out

    def _diffusion_conditioning(self, rgb, chip_plans, plan) -> dict[str, np.ndarray]:
        """Per face, computed once per photo: for the deflection, the clean latents (F, 4, h, w)
        and IP tokens (F, N, D) of the CLIP view; for the PhotoGuard baseline, the latent of a
        flat gray target (F, 4, h, w) of the baseline's view."""
        from idguardian_jax.diffusion import vae
        from idguardian_jax.losses import deflection

        dp = self.models.params["_diffusion"]
        out = {}
        if self.cfg.deflection is not None:
            plans = [chip_plans["clip_vit"][int(i)] for i in plan.arrays["clip_vit"]["face"]]
            chips = np.stack([align.extract_chip(rgb, p, "round") for p in plans]).astype(np.float32) / 255
            z0, tokens = deflection.clean_conditioning(dp, chips)
            out.update(z0=np.asarray(z0), tokens=np.asarray(tokens))
        b = self.cfg.objective.baseline
        if b is not None and b.kind == "photoguard":
            gs = plan.groups[b.view]
            f, size = sum(g.count for g in gs), gs[0].rows
            gray = np.full((f, size, size, 3), float(self.config.diffusion.photoguard_target), np.float32)
            out["z_target"] = np.asarray(vae.encode(dp.vae, gray))
        return out

    def _dummy_conditioning(self, groups: dict) -> dict[str, np.ndarray]:
        """Zeros shaped like _diffusion_conditioning's output for a signature (computed
        abstractly with jax.eval_shape)."""
        from idguardian_jax.diffusion import vae
        from idguardian_jax.losses import deflection

        dp = self.models.params["_diffusion"]

        def chips(name):
            gs = groups[name]
            return jax.ShapeDtypeStruct((sum(g.count for g in gs), gs[0].rows, gs[0].cols, 3),
                                        np.float32)

        out = {}
        if self.cfg.deflection is not None:
            z0, tokens = jax.eval_shape(deflection.clean_conditioning, dp, chips("clip_vit"))
            out.update(z0=np.zeros(z0.shape, np.float32), tokens=np.zeros(tokens.shape, np.float32))
        b = self.cfg.objective.baseline
        if b is not None and b.kind == "photoguard":
            z = jax.eval_shape(vae.encode, dp.vae, chips(b.view))
            out["z_target"] = np.zeros(z.shape, np.float32)
        return out

    def _decoy_embeddings(self, path: str) -> dict[str, np.ndarray]:
        photo = images.read_photo(path)
        faces = self.find_faces(photo.rgb)
        if not faces:
            raise ValueError(f"{path}: no face found in the decoy photo")
        face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        return self.embeddings(photo.rgb, self.chip_plans(photo.rgb, [face]))

    def prepare(self, index: int, rgb: np.ndarray, faces=None) -> _Prepared:
        """Find the faces (unless given), plan every view, embed the clean faces."""
        faces = self.find_faces(rgb) if faces is None else faces
        if not faces:
            return _Prepared(index, rgb, [], None, {}, photo_key(rgb, self.config.seed))
        chip_plans = self.chip_plans(rgb, faces)
        plan = views.plan_photo(rgb.shape[:2], chip_plans)
        margin = self.config.objective.get("face_mask_margin", -1.0)
        if margin is not None and margin >= 0 and all(f.landmarks68 is not None for f in faces):
            # perturb only the faces themselves (objective.face_mask_margin)
            plan.support = plan.support * views.face_mask(
                plan.region, [f.landmarks68 for f in faces], float(margin))
        clean = self.embeddings(rgb, chip_plans)
        # per-slot order of the plan (faces are grouped by view shape)
        clean = {n: e[plan.arrays[n]["face"]] for n, e in clean.items()}
        if "_diffusion" in self.models.params:
            clean["_diffusion"] = self._diffusion_conditioning(rgb, chip_plans, plan)
        return _Prepared(index, rgb, faces, plan, clean, photo_key(rgb, self.config.seed),
                         chip_plans)

    def run(self, prepared: Sequence[_Prepared]) -> dict[int, tuple]:
        """PGD on every prepared photo with faces, batched by signature: index -> outputs."""
        by_sig: dict[tuple, list[_Prepared]] = {}
        for p in prepared:
            if p.plan is not None:
                by_sig.setdefault(p.plan.signature, []).append(p)
        results = {}
        for group in by_sig.values():
            sig = group[0].plan.signature
            out = self.run_group(group, (sig[0], sig[1], group[0].plan.groups))
            for i, p in enumerate(group):
                results[p.index] = out[i]
        return results

    def run_group(self, group: Sequence[_Prepared], shape) -> dict[int, tuple]:
        """PGD on photos of one signature (shape = (height, width, groups)); position -> outputs.

        With several processes every process calls this together for the same shape, some with
        no photos: they contribute dummy rows (whose results are dropped)."""
        h, w, groups = shape
        rows = [self._inputs(p) for p in group]
        if not rows:
            rows = [self._dummy_inputs(h, w, groups)]
        x, support, l2_max, arrays, clean, decoy, keys = (
            jax.tree_util.tree_map(lambda *a: np.stack(a), *[r[i] for r in rows]) for i in range(7))
        delta, losses, after, before = engine.protect_batch(
            self.models.params, x, support, l2_max, arrays, clean, decoy, keys,
            groups=groups, cfg=self.cfg, mesh=self.mesh)
        return {i: (x[i], delta[i], losses[i], {n: v[i] for n, v in after.items()})
                for i in range(len(group))}

    def _inputs(self, p: _Prepared) -> tuple:
        x = views.crop_region(p.rgb, p.plan.region).astype(np.float32) / 255
        arrays = {n: {k: v for k, v in a.items() if k != "face"} for n, a in p.plan.arrays.items()}
        decoy = {}
        if self.decoy is not None:
            decoy = {n: np.repeat(self.decoy[n], len(p.clean[n]), axis=0)
                     for n in p.plan.groups if n in p.clean}
        clean = {n: p.clean[n] for n in p.plan.groups if n in p.clean}
        if "_diffusion" in p.clean:
            clean["_diffusion"] = p.clean["_diffusion"]
        return (x, p.plan.support, np.float32(self.l2_radius(p.rgb.shape)), arrays, clean,
                decoy, p.key)

    def embed_dims(self) -> dict[str, int]:
        """encoder name -> embedding size of the loaded weights."""
        if not hasattr(self, "_embed_dims"):
            dims = {}
            for name in self.embedding_names:
                enc = encoder_registry.get(name)
                shape = jax.ShapeDtypeStruct((1, enc.chip_size, enc.chip_size, 3), np.float32)
                dims[name] = jax.eval_shape(enc.apply, self.models.params[name], shape).shape[-1]
            self._embed_dims = dims
        return self._embed_dims

    def _dummy_inputs(self, h: int, w: int, groups: dict) -> tuple:
        """A placeholder row of a signature (zeros; a valid identity view) for batch padding."""
        arrays, clean = {}, {}
        for name, gs in groups.items():
            f = sum(g.count for g in gs)
            level = np.array([[g.window[0], g.window[1]] for g in gs for _ in range(g.count)], np.int32)
            affine = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (f, 1, 1))
            arrays[name] = {"start": np.zeros((f, 2), np.int32), "affine": affine,
                            "level_shape": level, "chip_per_px": np.ones((f,), np.float32)}
            if name in self.models.params:
                clean[name] = np.zeros((f, self.embed_dims()[name]), np.float32)
        arrays["_photo"] = {"offset": np.zeros((2,), np.int32)}
        decoy = {n: c.copy() for n, c in clean.items()} if self.decoy is not None else {}
        if "_diffusion" in self.models.params:
            clean["_diffusion"] = self._dummy_conditioning(groups)
        return (np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32), np.float32(1e15),
                arrays, clean, decoy, np.zeros((2,), np.uint32))

    def l2_radius(self, shape) -> float:
        """L2 radius (on [0, 1] pixels) that keeps the full-photo PSNR above the floor.

        PSNR = 10 log10(1 / MSE) on [0, 1] values, MSE = ||delta||^2 / (H W 3). The loop aims
        0.1 dB above the floor so that rounding to 8 bits rarely crosses it (finish() checks).
        """
        floor = float(self.config.get("budget_psnr", 0.0) or 0.0)
        if floor <= 0:
            return 1e15  # no limit (finite: optax's L2 projection would give nan for inf)
        n = float(shape[0]) * float(shape[1]) * 3.0
        return float(np.sqrt(n * 10.0 ** (-(floor + 0.1) / 10.0)))

    def finish(self, p: _Prepared, out, measure: bool = True) -> PhotoResult:
        """Paste back, round to 8 bits, and (if measure) measure as an attacker would."""
        x, delta, losses, in_loop = out
        floor = float(self.config.get("budget_psnr", 0.0) or 0.0)
        scale = 1.0
        while True:  # rounding can lower the PSNR a little: shrink until the floor holds
            region = np.clip(np.round((x + scale * delta) * 255.0), 0, 255).astype(np.uint8)
            protected = views.paste_region(p.rgb, region, p.plan.region)
            if floor <= 0 or psnr(protected, p.rgb) >= floor or scale < 0.05:
                break
            scale *= 0.97
        budget = int(round(self.cfg.pgd.eps * 255))
        change = int(np.abs(protected.astype(np.int16) - p.rgb.astype(np.int16)).max())
        if change > budget:
            raise AssertionError(f"internal error: change {change} exceeds the budget {budget}")
        if measure:
            reports = self.measure(p, protected, in_loop)
        else:
            reports = [FaceReport(box=[int(v) for v in f.box], score=f.score) for f in p.faces]
        return PhotoResult("protected", protected, reports, psnr(protected, p.rgb), change,
                           losses=[float(v) for v in losses])

    def measure(self, p: _Prepared, protected: np.ndarray, in_loop=None) -> list[FaceReport]:
        """Each clean face, measured like an attacker: faces found again on the protected photo,
        chips cut again, distance to the clean embedding (dlib always; every objective encoder)."""
        m = self.models.faces
        dlib_thr = encoder_registry.get("dlib_resnet").threshold
        dlib_clean = analyze.describe(p.rgb, [dataclasses.replace(f) for f in p.faces], m)
        dlib_again_clean = analyze.describe(p.rgb, [dataclasses.replace(f) for f in p.faces], m)
        # The clean faces found again: only dlib's detections near them (equal to the full
        # re-detection's there, detect_regions.refine), unless detect.measure is 'full'.
        near_only = self.config.detect.get("measure", "near") == "near"
        near = [f.box for f in p.faces] if near_only else None
        again = self.find_faces(protected, near=near)
        analyze.describe(protected, again, m)
        reports = []
        for i, f in enumerate(p.faces):
            r = FaceReport(box=[int(v) for v in f.box], score=f.score)
            ref = dlib_clean[i].descriptor
            r.distance_before = float(np.linalg.norm(dlib_again_clean[i].descriptor - ref))
            ma = _match(f.box, again)
            r.found_again = ma is not None
            if ma is not None:
                r.distance_after = float(np.linalg.norm(ma.descriptor - ref))
                r.protected = r.distance_after >= dlib_thr
            else:
                r.protected = True  # the face is no longer detected at all
            for name in self.embedding_names:
                enc = encoder_registry.get(name)
                slot = {int(fi): s for s, fi in enumerate(p.plan.arrays[name]["face"])}[i]
                entry = {"threshold": enc.threshold, "after": None, "in_loop": None}
                if in_loop is not None and name in in_loop:
                    entry["in_loop"] = float(in_loop[name][slot])
                if ma is not None:
                    plan = analyze.chip_plan_for(enc, ma, protected.shape)
                    emb = self.embeddings(protected, {name: [plan]})[name][0]
                    d = np.asarray(identity.embedding_distance(emb[None], p.clean[name][slot][None],
                                                               enc.distance))[0]
                    entry["after"] = float(d)
                r.encoders[name] = entry
            if "dlib_resnet" in r.encoders:
                r.distance_in_loop = r.encoders["dlib_resnet"]["in_loop"]
            reports.append(r)
        return reports

    def protect_arrays(self, rgbs: Sequence[np.ndarray], measure: bool = True,
                       prepared: Sequence[_Prepared] | None = None) -> list[PhotoResult]:
        """Protect uint8 RGB photos; `prepared` (from prepare) skips finding the faces again."""
        t0 = time.time()
        if prepared is None:
            prepared = [self.prepare(i, np.asarray(rgb, np.uint8)) for i, rgb in enumerate(rgbs)]
        outs = self.run(prepared)
        results = []
        for p in prepared:
            if p.plan is None:
                results.append(PhotoResult("no_face", None, notes=["no face found: not protected"]))
            else:
                results.append(self.finish(p, outs[p.index], measure))
        per = (time.time() - t0) / max(len(rgbs), 1)
        for r in results:
            r.seconds = per
        return results


def _iou(a, b) -> float:
    l, t = max(a[0], b[0]), max(a[1], b[1])
    r, bb = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, r - l + 1) * max(0, bb - t + 1)
    area = lambda x: (x[2] - x[0] + 1) * (x[3] - x[1] + 1)  # noqa: E731
    return inter / float(area(a) + area(b) - inter)


def _match(box, faces, min_iou: float = 0.3):
    best = max(faces, key=lambda f: _iou(box, f.box), default=None)
    return best if best is not None and _iou(box, best.box) >= min_iou else None


def protect(images_rgb: np.ndarray | Sequence[np.ndarray], config=None,
            protector: Protector | None = None) -> list[PhotoResult]:
    """Protect photos given as arrays.

    images_rgb: one (H, W, 3) uint8 RGB photo or a sequence of them (any sizes).
    config: an ml_collections config (default: configs/default.py).
    Returns one PhotoResult per photo; `.protected` is the (H, W, 3) uint8 protected photo, or None
    when no face was found. Every pixel differs from the input by at most round(budget * 255).

    >>> from idguardian_jax import protect  # doctest: +SKIP
    >>> result, = protect.protect(photo)  # doctest: +SKIP
    >>> result.faces[0].distance_after > 0.6  # doctest: +SKIP
    """
    if isinstance(images_rgb, np.ndarray) and images_rgb.ndim == 3:
        images_rgb = [images_rgb]
    for i, a in enumerate(images_rgb):
        a = np.asarray(a)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"photo {i}: expected (H, W, 3) uint8 RGB, got {a.shape} {a.dtype}")
    if protector is None:
        protector = Protector(config if config is not None else default_config())
    return protector.protect_arrays(list(images_rgb))


def default_config():
    from configs import default

    return default.get_config()


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
SUMMARY_NAME = "idguardian_summary.jsonl"


from idguardian_jax.jobs import UsageError  # noqa: E402  (bad arguments: exit status 2)


def _inside(child: str, parent: str) -> bool:
    child, parent = os.path.realpath(child), os.path.realpath(parent)
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_output_folder(output_dir: str, input_folders: Sequence[str] = (),
                        input_files: Sequence[str] = ()) -> None:
    """UsageError when the output folder equals, contains or sits inside an input folder (or the
    folder of an --input_list), or contains an input file: a rerun would read outputs as inputs,
    and outputs could land on the user's files."""
    for folder in input_folders:
        if _inside(output_dir, folder):
            how = ("is" if os.path.realpath(output_dir) == os.path.realpath(folder)
                   else "is inside")
            raise UsageError(f"{output_dir}: the output folder {how} the input folder "
                             f"{folder}; choose a folder outside it")
        if _inside(folder, output_dir):
            raise UsageError(f"{output_dir}: the output folder contains the input folder "
                             f"{folder}; choose a folder outside it")
    out_real = os.path.realpath(output_dir).rstrip(os.sep) + os.sep
    for path in input_files:
        if (os.path.realpath(path) + os.sep).startswith(out_real):
            raise UsageError(f"{output_dir}: the output folder contains the input {path}; "
                             f"choose a folder outside the inputs")


def output_name(rel: str) -> str:
    """The report path of an input as a clean relative path (no '..', no leading '/')."""
    rel = os.path.normpath(rel if not os.path.isabs(rel) else os.path.basename(rel))
    parts = [p for p in rel.split(os.sep) if p not in ("", ".", "..")]
    return os.path.join(*parts) if parts else "photo"


def plan_outputs(inputs: Sequence[tuple[str, str]], output_dir: str, fmt: str,
                 input_roots: Sequence[str] = (),
                 guard_folders: Sequence[str] = ()) -> list[tuple[str, str, str | None, str | None]]:
    """(open path, report path) -> (open, report, output path or None, error or None).

    The output mirrors the report path under output_dir with the format's extension
    (`sub/a.jpg` -> `OUTPUT/sub/a.png`). Naming rule for inputs that would share an output
    (`a.jpg` and `a.png` in one folder): each of them keeps its own extension in the name,
    `a.jpg.png` and `a.png.png`; any that still collide are reported, not written.
    Refuses (UsageError) an output folder that equals, contains or sits inside an input folder
    (input_roots that are folders) or a guard folder (the folder of an --input_list), or that
    contains an input file.
    """
    check_output_folder(output_dir, [r for r in input_roots if os.path.isdir(r)]
                        + list(guard_folders), [o for o, _ in inputs])
    ext = images.output_extension(fmt)
    names = [output_name(rel) for _, rel in inputs]
    default = [os.path.splitext(n)[0] + ext for n in names]
    sharing: dict[str, int] = {}
    for d in default:
        sharing[d] = sharing.get(d, 0) + 1
    seen: dict[str, str] = {}
    out = []
    for (open_path, rel), name, d in zip(inputs, names, default):
        target = os.path.join(output_dir, d if sharing[d] == 1 else name + ext)
        err = None
        if target in seen:
            err = f"{open_path}: its output {target} is also the output of {seen[target]}; not written"
        else:
            seen[target] = open_path
        out.append((open_path, rel, None if err else target, err))
    return out


def protect_files(inputs: Sequence[tuple[str, str]], output_dir: str, config,
                  input_roots: Sequence[str] = (), protector: Protector | None = None,
                  progress: bool = True, guard_folders: Sequence[str] = ()) -> dict:
    """Protect photo files into output_dir (mirroring the input tree). Returns the summary.

    inputs: (path to open, path to report) pairs, e.g. from cli.common.list_inputs.
    One JSON record per photo is appended to output_dir/idguardian_summary*.jsonl as it
    finishes; a rerun skips photos whose record shows the same input, settings and an intact
    output. A failing photo is recorded with its error and the batch goes on. Under
    jax.distributed each process protects its own shard (idguardian_jax.jobs).
    """
    from idguardian_jax import jobs, settings

    try:  # every setting is checked before any work
        settings.validate(config)
    except settings.SettingsError as e:
        raise UsageError(str(e)) from None
    fmt = config.output.format
    if fmt not in images.OUTPUT_FORMATS:
        raise UsageError(f"--config.output.format must be one of {', '.join(images.OUTPUT_FORMATS)}")
    if fmt != "png":
        sys.stderr.write("warning: " + images.LOSSY_WARNING.format(fmt=fmt.upper()) + "\n")
    planned = plan_outputs(inputs, output_dir, fmt, input_roots, guard_folders)
    try:
        protector = protector or Protector(config)
        return jobs.run_job(planned, output_dir, config, protector, progress)
    except jobs.UsageError as e:
        raise UsageError(str(e)) from None


def _sha256(path: str) -> str:
    from idguardian_jax import jobs

    return jobs.sha256_file(path)


def _no_face(rec: dict, photo: images.Photo, target: str, config, claim=None) -> None:
    """claim(target): called before writing (jobs.JobDir.claim: records the output as the job's
    own, or raises ImageWriteError when a file the tool did not write is there)."""
    if config.output.on_no_face == "copy":
        if claim is not None:
            claim(target)
        images.write_photo(target, photo.rgb, photo, config.output.format,
                           config.output.strip_metadata, int(config.output.quality),
                           keep_location=bool(config.output.get("keep_location", False)))
        rec["status"] = "copied"
        rec["output_sha256"] = _sha256(target)
        rec["notes"].append("no face found: copied unchanged, NOT protected")
    else:
        rec["status"] = "no_face"
        rec["output"] = None
        rec["notes"].append("no face found: not protected, nothing written "
                            "(--config.output.on_no_face=copy writes it unchanged)")


def _write_protected(rec: dict, res: PhotoResult, photo: images.Photo, target: str, config,
                     eps: float, claim=None) -> None:
    """Write the protected photo (claim as in _no_face); its PNG provenance carries the settings
    hash and input hash that let a restart adopt it (jobs.JobDir.adoptable)."""
    provenance = {"idguardian": json.dumps({"version": VERSION, "settings": rec.get("settings"),
                                            "input_sha256": rec.get("input_sha256"),
                                            "budget_255": int(round(eps * 255))})}
    if claim is not None:
        claim(target)
    images.write_photo(target, res.protected, photo, config.output.format,
                       config.output.strip_metadata, int(config.output.quality),
                       extra_text=None if config.output.strip_metadata else provenance,
                       keep_location=bool(config.output.get("keep_location", False)))
    back = images.read_photo(target, apply_exif_orientation=True)
    change = int(np.abs(back.rgb.astype(np.int16) - photo.rgb.astype(np.int16)).max())
    budget = int(round(eps * 255))
    rec.update(status="protected", faces=[dataclasses.asdict(f) for f in res.faces],
               psnr=None if res.psnr is None else round(psnr(back.rgb, photo.rgb), 3),
               max_change=change, budget_255=budget, output_sha256=_sha256(target),
               final_loss=None if not res.losses else res.losses[-1])
    if change > budget:
        if config.output.format == "png":
            raise AssertionError(f"{target}: written pixels differ by {change} > budget {budget}")
        rec["notes"].append(f"lossy {config.output.format} output: max change {change} exceeds the "
                            f"budget {budget} (compression)")
