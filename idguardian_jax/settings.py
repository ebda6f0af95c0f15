"""The protection settings (configs/default.py): checked and described before any work, and
turned into the engine's dataclasses.

Every field of the config is checked for type, range and finiteness up front, so that a bad value
is one line naming the field (`--config.attack.steps: must be an integer >= 1, got -5`) and exit
status 2, never a traceback in the middle of a job. `describe` gives the help text of every field
(default and meaning) for `idguardian-protect --help`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Callable, Iterator

import ml_collections

from idguardian_jax import __version__
from idguardian_jax.attack import engine, eot, pgd, transfer
from idguardian_jax.losses import objective
from idguardian_jax.errors import UsageError


class SettingsError(ValueError):
    """A bad config value; str(e) is one line naming the field (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: what it means and the check of a value (None when the value is fine,
    else what is wrong, e.g. 'must be > 0')."""
    meaning: str
    check: Callable[[Any], str | None]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool))


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(v):
        want = ("an integer" + (f" >= {lo}" if lo is not None and hi is None else "")
                + (f" in {lo}..{hi}" if lo is not None and hi is not None else ""))
        if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"must be {want}"
        return None
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Callable[[Any], str | None]:
    def check(v):
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_open else '>='} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '<='} {hi:g}")
        want = "a finite number" + (" " + " and ".join(parts) if parts else "")
        if not _is_num(v) or not math.isfinite(v):
            return f"must be {want}"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {want}"
        if hi is not None and (v >= hi if hi_open else v > hi):
            return f"must be {want}"
        return None
    return check


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def text(v) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def choice(*options: str) -> Callable[[Any], str | None]:
    def check(v):
        if v not in options:
            return "must be one of " + ", ".join(repr(o) for o in options)
        return None
    return check


def value_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    """() (off) or a (low, high) pair of finite numbers with lo <= low <= high <= hi."""
    def check(v):
        if isinstance(v, (tuple, list)) and len(v) == 0:
            return None
        if (isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_num(x) and math.isfinite(x)
                                                                 for x in v)
                and lo <= v[0] <= v[1] <= hi):
            return None
        return f"must be () or a (low, high) pair with {lo:g} <= low <= high <= {hi:g}"
    return check


def encoder_weights(v) -> str | None:
    if not isinstance(v, (tuple, list)) or not v:
        return "must be a non-empty list of (encoder name, weight) pairs"
    for item in v:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
                and _is_num(item[1]) and math.isfinite(item[1]) and item[1] >= 0):
            return f"must be (encoder name, weight >= 0) pairs, got {item!r}"
    return None


def checkpoints(v) -> str | None:
    items = v.items() if hasattr(v, "items") else None
    if items is None or not all(isinstance(k, str) and isinstance(p, str) for k, p in items):
        return "must map encoder names to checkpoint paths (strings)"
    return None


# Every field of configs/default.py. The meanings are the help text of --help; the defaults and
# the measurements behind them are in configs/default.py and docs/DEFAULTS.md.
def encoder_names(v) -> str | None:
    if not isinstance(v, (tuple, list)) or not all(isinstance(n, str) for n in v):
        return "must be a list of encoder names"
    return None


def _odd_or_zero(v) -> str | None:
    if not _is_int(v) or v < 0 or (v and v % 2 == 0):
        return "must be 0 or an odd integer >= 1"
    return None


FIELDS: dict[str, Field] = {
    "seed": Field("seed of the random start / jitter (a photo's key also hashes its pixels)",
                  integer(0)),
    "budget": Field("L_inf budget on [0, 1] pixels: every written pixel moves by at most "
                    "round(budget * 255)", number(0, 1, lo_open=True)),
    "budget_psnr": Field("floor on the whole photo's PSNR in dB (0: off)", number(0)),
    "attack.steps": Field("PGD steps", integer(1)),
    "attack.step_size": Field("step size on [0, 1] pixels", number(0, 1, lo_open=True)),
    "attack.optimizer": Field("'sign' (PGD), 'rms' (gradient steps of a sign step's size) or "
                              "'adam'", choice("sign", "rms", "adam")),
    "attack.schedule": Field("step-size schedule", choice("constant", "cosine", "linear")),
    "attack.final_fraction": Field("last step size / first, for decaying schedules",
                                   number(0, 1)),
    "attack.random_start": Field("start from a random point of the budget", boolean),
    "attack.momentum": Field("MI-FGSM momentum decay of sign steps (0: off); a transfer "
                             "technique", number(0, 1, hi_open=True)),
    "attack.l2_projection": Field("where the PSNR floor binds: 'scale' every pixel down alike, or "
                                  "'exact' (the Euclidean projection: small changes go first)",
                                  choice("scale", "exact")),
    "attack.loop": Field("'scan' (one jit), 'host' (jitted step), 'auto'",
                         choice("scan", "host", "auto")),
    "objective.encoders": Field("(encoder name, weight) pairs the perturbation is aimed at",
                                encoder_weights),
    "objective.checkpoints": Field("encoder name -> checkpoint file (e.g. "
                                   "--config.objective.checkpoints.facenet=facenet.safetensors)",
                                   checkpoints),
    "objective.installed_encoders": Field("'all': add every real encoder installed with "
                                          "`idguardian-models install`; 'none': only those "
                                          "listed", choice("all", "none")),
    "objective.installed_weight": Field("weight of each installed encoder added", number(0)),
    "objective.transfer.diversity_prob": Field("input diversity: probability per view and step "
                                               "of a random zoom-out", number(0, 1)),
    "objective.transfer.diversity_scale": Field("input diversity: largest zoom-out (relative)",
                                                number(0, 1)),
    "objective.transfer.ti_kernel": Field("translation-invariant gradient smoothing: kernel side "
                                          "at a 112 px chip, odd (0: off)", _odd_or_zero),
    "objective.transfer.balance": Field("'loss': summed losses; 'gradient': each encoder's "
                                        "gradient at unit norm; 'threshold': unit gradients "
                                        "weighted by the distance still to each threshold",
                                        choice("loss", "gradient", "threshold")),
    "objective.transfer.balance_norm": Field("norm each encoder's gradient is scaled to in the "
                                             "balance ('l2' or 'l1')", choice("l1", "l2")),
    "objective.transfer.linear_backward": Field("fraction of the surrogates' last activations "
                                                "with a linear backward pass (LinBP; 0: off)",
                                                number(0, 1)),
    "objective.transfer.flip_prob": Field("input diversity: probability per view and step of a "
                                          "mirrored chip", number(0, 1)),
    "objective.transfer.threshold_margin": Field("balance 'threshold': goal past each encoder's "
                                                 "threshold (relative)", number(0)),
    "objective.transfer.threshold_floor": Field("balance 'threshold': share of the step kept by "
                                                "an encoder past its goal", number(0, 1)),
    "objective.transfer.feature_weight": Field("weight of the mid-network feature loss (0: off)",
                                               number(0)),
    "objective.transfer.dropout": Field("feature-map dropout rate of the surrogates (model "
                                        "augmentation; 0: off)", number(0, 1, hi_open=True)),
    "objective.transfer.spectrum_rho": Field("spectrum simulation: largest relative change of "
                                             "each DCT coefficient of a view (0: off)",
                                             number(0, 1)),
    "objective.transfer.spectrum_sigma": Field("spectrum simulation: standard deviation of the "
                                               "noise added to a view ([0, 1] pixels)", number(0)),
    "objective.transfer.samples": Field("random draws averaged per step in the identity terms' "
                                        "direction (gradient samples)", integer(1)),
    "objective.face_mask_margin": Field("perturb only inside each face's landmark hull grown by "
                                        "this margin (-1: the views' crop boxes)", number(-1)),
    "objective.face_mask_exempt": Field("encoders whose gradient may use their whole crop when "
                                        "the face mask is on (the others stay inside it)",
                                        encoder_names),
    "objective.decoy_photo": Field("pull toward this photo's face instead of away ('' off)", text),
    "objective.cap": Field("stop pushing past this distance (0: no cap)", number(0)),
    "objective.quantize": Field("the loop sees the 8-bit photo that will be written", boolean),
    "objective.jitter.shift_px": Field("re-alignment jitter: shift in chip pixels", number(0)),
    "objective.jitter.rotation": Field("re-alignment jitter: rotation in radians", number(0)),
    "objective.jitter.scale": Field("re-alignment jitter: relative scale", number(0)),
    "objective.eot.p_identity": Field("EoT: probability of no transformation in a step",
                                      number(0, 1)),
    "objective.eot.jpeg_quality": Field("EoT: JPEG quality range, () off", value_range(1, 100)),
    "objective.eot.resize_scale": Field("EoT: down-scale range, () off", value_range(0.01, 1)),
    "objective.eot.blur_sigma": Field("EoT: Gaussian blur sigma range (px), () off",
                                      value_range(0, 100)),
    "objective.eot.noise_std": Field("EoT: noise std range (of 255), () off", value_range(0, 255)),
    "diffusion.enabled": Field("IDGuardian's identity deflection through a diffusion model",
                               boolean),
    "diffusion.model_dir": Field("local diffusers folder (SD 1.x/2.x or SDXL)", text),
    "diffusion.ip_adapter": Field("local IP-Adapter weights", text),
    "diffusion.prompt": Field("text prompt of the deflection", text),
    "diffusion.t_min": Field("lowest diffusion timestep sampled", integer(0, 999)),
    "diffusion.t_max": Field("highest diffusion timestep sampled", integer(0, 999)),
    "diffusion.noise_samples": Field("noise samples per step", integer(1)),
    "diffusion.variant": Field("'upsample' (reference) or 'vae_vjp'",
                               choice("upsample", "vae_vjp")),
    "diffusion.ip_scale": Field("IP-Adapter scale", number(0)),
    "diffusion.weight": Field("weight of the deflection term", number(0)),
    "diffusion.dtype": Field("diffusion weights' dtype", choice("float32", "bfloat16", "float16")),
    "diffusion.baseline": Field("classic baseline in the loop: '', 'advdm' or 'photoguard'",
                                choice("", "advdm", "photoguard")),
    "diffusion.baseline_weight": Field("weight of the baseline term", number(0)),
    "diffusion.baseline_view": Field("the aligned crop each face is attacked through", text),
    "diffusion.photoguard_target": Field("gray level of PhotoGuard's target image", number(0, 1)),
    "detect.upsample": Field("dlib detector upsampling (as face_recognition)", integer(0, 4)),
    "batch.per_device": Field("photos per device per program call", integer(1)),
    "job.read_threads": Field("input pipeline threads", integer(1)),
    "job.prefetch": Field("photos read ahead", integer(1)),
    "job.report_every_s": Field("seconds between throughput lines", number(0, lo_open=True)),
    "job.allow_changed_settings": Field("redo a folder's photos under other settings", boolean),
    "output.format": Field("'png'; 'jpeg'/'webp' weaken the protection",
                           choice("png", "jpeg", "webp")),
    "output.quality": Field("quality of lossy formats", integer(1, 100)),
    "output.strip_metadata": Field("drop EXIF, ICC profile and text chunks", boolean),
    "output.keep_location": Field("keep EXIF GPS / XMP place names (dropped by default)", boolean),
    "output.on_no_face": Field("'report' (write nothing) or 'copy' (write unchanged)",
                               choice("report", "copy")),
    "output.max_pixels": Field("decompression-bomb guard (pixels)", integer(1)),
}


def leaves(config, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, value) of every field; objective.checkpoints is one field (a mapping)."""
    for k in sorted(config.keys()):
        v = config[k]
        name = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict) and name not in FIELDS:
            yield from leaves(v, name + ".")
        else:
            yield name, v


def validate(config) -> None:
    """Raise SettingsError (one line naming the field) for the first bad value."""
    for name, v in leaves(config):
        field = FIELDS.get(name)
        if field is None:
            continue  # a field added by a config of its own: checked by the code that reads it
        why = field.check(v)
        if why:
            raise SettingsError(f"--config.{name}: {why}, got {v!r}")
    d = config.get("diffusion", None)
    if d is not None and "t_min" in d and "t_max" in d and d.t_min > d.t_max:
        raise SettingsError(f"--config.diffusion.t_min: must be <= --config.diffusion.t_max, got "
                            f"{d.t_min} > {d.t_max}")


def describe(config) -> str:
    """Help text: every --config.* field with its value in `config` and its meaning."""
    lines = []
    for name, v in leaves(config):
        field = FIELDS.get(name)
        shown = v.to_dict() if hasattr(v, "to_dict") else v
        lines.append(f"  --config.{name}={shown!r}" + (f"\n      {field.meaning}" if field else ""))
    return "\n".join(lines)


def package_configs_dir() -> str:
    from idguardian_jax import configs

    return os.path.dirname(os.path.abspath(configs.__file__))


def shipped_config_names() -> list[str]:
    return sorted(os.path.splitext(n)[0] for n in os.listdir(package_configs_dir())
                  if n.endswith(".py") and not n.startswith("_"))


def resolve_config_path(value: str) -> str:
    """--config=NAME (a config shipped with the package: robust, tiny, idguardian...) or a path.
    A path that does not exist but names a shipped config (configs/robust.py run from another
    folder) resolves to the shipped one."""
    if os.path.exists(value):
        return value
    base = os.path.basename(value)
    name = base[:-3] if base.endswith(".py") else base
    if (os.sep not in value or os.path.basename(os.path.dirname(value)) == "configs") \
            and name in shipped_config_names():
        return os.path.join(package_configs_dir(), name + ".py")
    return value


# ------------------------------------------------------------------------------------------
# The engine's dataclasses from a config
# ------------------------------------------------------------------------------------------
def engine_config(config) -> engine.EngineConfig:
    """EngineConfig from an ml_collections config (configs/default.py)."""
    a, o, j = config.attack, config.objective, config.objective.jitter
    e = o.get("eot", None)

    def rng(name):
        v = e.get(name) if e is not None else None
        return None if not v else (float(v[0]), float(v[1]))

    tc = _transfer_config(o)
    if o.get("face_mask_exempt", ()) and not tc.balanced:
        raise UsageError("--config.objective.face_mask_exempt needs each encoder's own gradient: "
                         "set --config.objective.transfer.balance to 'gradient' or 'threshold'")
    return engine.EngineConfig(
        pgd=pgd.PGDConfig(eps=float(config.budget), steps=int(a.steps), step_size=float(a.step_size),
                          optimizer=a.optimizer, schedule=a.schedule,
                          final_fraction=float(a.final_fraction), random_start=bool(a.random_start),
                          momentum=float(a.get("momentum", 0.0)),
                          l2_projection=str(a.get("l2_projection", "scale"))),
        objective=objective.ObjectiveConfig(
            encoders=encoders_of(config),
            objective="decoy" if o.decoy_photo else "away",
            cap=None if not o.cap else float(o.cap),
            quantize=bool(o.quantize),
            baseline=_baseline_config(config),
            jitter=objective.Jitter(float(j.shift_px), float(j.rotation), float(j.scale)),
            transfer=tc,
            mask_exempt=tuple(str(n) for n in o.get("face_mask_exempt", ())),
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


def diffusion_wanted(config) -> bool:
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
    relevant["version"] = __version__
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dlib_alone_note(config) -> str | None:
    """The one-line note protect prints when dlib is the only encoder (no real encoder of
    another family installed or configured), else None."""
    if [n for n, w in encoders_of(config) if w] == ["dlib_resnet"]:
        return ("note: only dlib's face recognizer is in the objective, so the protection is "
                "computed and measured against dlib alone; `idguardian-models install` adds "
                "real encoders of other families (mobileface, faceres) to the default")
    return None


def default_config():
    from idguardian_jax.configs import default

    return default.get_config()
