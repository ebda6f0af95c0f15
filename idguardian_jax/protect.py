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
import functools
import hashlib
import sys
import time
from typing import Sequence

import jax
import numpy as np

from idguardian_jax import encoders as encoder_registry
from idguardian_jax import images, measure, parallel, settings, views, writer
from idguardian_jax.attack import engine
from idguardian_jax.errors import UsageError
from idguardian_jax.faces import align, analyze
from idguardian_jax.losses import identity
from idguardian_jax.losses.targets import DiffusionTargets, Targets
from idguardian_jax.models import Models
from idguardian_jax.results import FaceReport, PhotoResult

# The functional API's names, kept here for callers of `protect.*` (their homes: settings, models,
# results, writer).
default_config = settings.default_config
__all__ = ["FaceReport", "Models", "PhotoResult", "Protector", "UsageError", "default_config",
           "protect", "protect_files"]


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    """fn as one compiled program (per shape), for the per-photo conditioning: run op by op, a
    VAE and a CLIP tower compile each of their operations on first use (encoders.embed_uint8)."""
    return jax.jit(fn)


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
    diffusion: DiffusionTargets | None = None  # the clean faces' diffusion conditioning


class Protector:
    """Holds the models, the mesh and the compiled programs for one configuration."""

    def __init__(self, config, models: Models | None = None, mesh=None):
        self.config = config
        self.models = models or Models.load(config)
        self.mesh = mesh or parallel.make_mesh()
        self.cfg = settings.engine_config(config)
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
            chips = np.stack([align.extract_chip(rgb, p, views.rounding_for(enc)) for p in plans])
            out[name] = self.embed_chips(name, chips)
        return out

    def embed_chips(self, name: str, chips: np.ndarray) -> np.ndarray:
        """(N, E) embeddings by encoder `name` of (N, S, S, 3) uint8 chips."""
        return encoder_registry.embed_uint8(name, self.models.params[name], chips)

    def _diffusion_conditioning(self, rgb, chip_plans, plan) -> DiffusionTargets:
        """Per face, computed once per photo: for the deflection, the clean latents (F, 4, h, w)
        and IP tokens (F, N, D) of the CLIP view; for the PhotoGuard baseline, the latent of a
        flat gray target (F, 4, h, w) of the baseline's view."""
        from idguardian_jax.diffusion import vae
        from idguardian_jax.losses import deflection

        dp = self.models.diffusion
        out = {}
        if self.cfg.deflection is not None:
            plans = [chip_plans["clip_vit"][int(i)] for i in plan.slot_faces["clip_vit"]]
            chips = np.stack([align.extract_chip(rgb, p, "round") for p in plans]).astype(np.float32) / 255
            z0, tokens = _compiled(deflection.clean_conditioning)(dp, chips)
            out.update(z0=np.asarray(z0), tokens=np.asarray(tokens))
        b = self.cfg.objective.baseline
        if b is not None and b.kind == "photoguard":
            gs = plan.groups[b.view]
            f, size = sum(g.count for g in gs), gs[0].rows
            gray = np.full((f, size, size, 3), float(self.config.diffusion.photoguard_target), np.float32)
            out["z_target"] = np.asarray(_compiled(vae.encode)(dp.vae, gray))
        return DiffusionTargets(**out)

    def _dummy_conditioning(self, groups: dict) -> DiffusionTargets:
        """Zeros shaped like _diffusion_conditioning's output for a signature (computed
        abstractly with jax.eval_shape)."""
        from idguardian_jax.diffusion import vae
        from idguardian_jax.losses import deflection

        dp = self.models.diffusion

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
        return DiffusionTargets(**out)

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
            # perturb only the faces themselves (objective.face_mask_margin), except where an
            # exempt encoder's crop reads (objective.face_mask_exempt: its gradient only)
            mask = views.face_mask(plan.region, [f.landmarks68 for f in faces], float(margin))
            if self.cfg.objective.mask_exempt:
                plan.views = dataclasses.replace(plan.views, mask=mask)
            else:
                plan.support = plan.support * mask
        clean = self.embeddings(rgb, chip_plans)
        # per-slot order of the plan (faces are grouped by view shape)
        clean = {n: e[plan.slot_faces[n]] for n, e in clean.items()}
        diffusion = None
        if self.models.diffusion is not None:
            diffusion = self._diffusion_conditioning(rgb, chip_plans, plan)
        return _Prepared(index, rgb, faces, plan, clean, photo_key(rgb, self.config.seed),
                         chip_plans, diffusion)

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
        x, support, l2_max, photo_views, targets, keys = (
            jax.tree_util.tree_map(lambda *a: np.stack(a), *[r[i] for r in rows]) for i in range(6))
        delta, losses, after, before = engine.protect_batch(
            self.models.surrogates, x, support, l2_max, photo_views, targets, keys,
            groups=groups, cfg=self.cfg, mesh=self.mesh)
        return {i: (x[i], delta[i], losses[i], {n: v[i] for n, v in after.items()})
                for i in range(len(group))}

    def _inputs(self, p: _Prepared) -> tuple:
        """One photo's row of the loop: (x (H, W, 3) in [0, 1], support (H, W), L2 radius,
        PhotoViews, Targets, key data (2,))."""
        x = views.crop_region(p.rgb, p.plan.region).astype(np.float32) / 255
        decoy = {}
        if self.decoy is not None:
            decoy = {n: np.repeat(self.decoy[n], len(p.clean[n]), axis=0)
                     for n in p.plan.groups if n in p.clean}
        clean = {n: p.clean[n] for n in p.plan.groups if n in p.clean}
        return (x, p.plan.support, np.float32(self.l2_radius(p.rgb.shape)), p.plan.views,
                Targets(clean, decoy, p.diffusion), p.key)

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
        per_encoder, clean = {}, {}
        for name, gs in groups.items():
            f = sum(g.count for g in gs)
            level = np.array([[g.window[0], g.window[1]] for g in gs for _ in range(g.count)], np.int32)
            affine = np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (f, 1, 1))
            per_encoder[name] = views.FaceViews(np.zeros((f, 2), np.int32), affine, level,
                                                np.ones((f,), np.float32))
            if name in self.models.params:
                clean[name] = np.zeros((f, self.embed_dims()[name]), np.float32)
        decoy = {n: c.copy() for n, c in clean.items()} if self.decoy is not None else {}
        diffusion = self._dummy_conditioning(groups) if self.models.diffusion is not None else None
        mask = np.zeros((h, w), np.float32) if self.cfg.objective.mask_exempt else None
        return (np.zeros((h, w, 3), np.float32), np.zeros((h, w), np.float32), np.float32(1e15),
                views.PhotoViews(per_encoder, np.zeros((2,), np.int32), mask),
                Targets(clean, decoy, diffusion), np.zeros((2,), np.uint32))

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
            if floor <= 0 or images.psnr(protected, p.rgb) >= floor or scale < 0.05:
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
        return PhotoResult("protected", protected, reports, images.psnr(protected, p.rgb), change,
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
        again, matched = measure.found_again(protected, [f.box for f in p.faces], self.find_faces,
                                             near=near_only)
        analyze.describe(protected, again, m)
        reports = []
        for i, f in enumerate(p.faces):
            r = FaceReport(box=[int(v) for v in f.box], score=f.score)
            ref = dlib_clean[i].descriptor
            r.distance_before = float(np.linalg.norm(dlib_again_clean[i].descriptor - ref))
            ma = None if matched[i] is None else again[matched[i]]
            r.found_again = ma is not None
            if ma is not None:
                r.distance_after = float(np.linalg.norm(ma.descriptor - ref))
                r.protected = r.distance_after >= dlib_thr
            else:
                r.protected = True  # the face is no longer detected at all
            for name in self.embedding_names:
                enc = encoder_registry.get(name)
                slot = {int(fi): s for s, fi in enumerate(p.plan.slot_faces[name])}[i]
                entry = {"threshold": enc.threshold, "after": None, "in_loop": None}
                if in_loop is not None and name in in_loop:
                    entry["in_loop"] = float(in_loop[name][slot])
                if ma is not None:
                    emb = self.embed_chips(name, measure.chip(enc, protected, ma)[None])[0]
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


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
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
    from idguardian_jax import jobs

    try:  # every setting is checked before any work
        settings.validate(config)
    except settings.SettingsError as e:
        raise UsageError(str(e)) from None
    fmt = config.output.format
    if fmt not in images.OUTPUT_FORMATS:
        raise UsageError(f"--config.output.format must be one of {', '.join(images.OUTPUT_FORMATS)}")
    if fmt != "png":
        sys.stderr.write("warning: " + images.LOSSY_WARNING.format(fmt=fmt.upper()) + "\n")
    planned = writer.plan_outputs(inputs, output_dir, fmt, input_roots, guard_folders)
    protector = protector or Protector(config)
    return jobs.run_job(planned, output_dir, config, protector, progress)
