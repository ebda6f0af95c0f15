r"""Leave-one-encoder-out transfer: protect with every real encoder but one, judge with the one left out.

  python experiments/transfer.py --photos=HELDOUT/ --identities=HELDOUT/ids.json \
      --variants=default --leave_out=mobileface,faceres,dlib_resnet --out=/tmp/transfer

For each variant (a named set of config overrides, VARIANTS below, or `--set a.b=value` on the
default config) and each left-out encoder family, every labelled single-person photo is protected
with the installed encoders minus that family, then judged by the left-out encoder as an attacker
would: faces found again on the protected photo (dlib's detector and landmarks), the judge's own
chip cut, cosine similarity (or dlib distance) to the face's clean embedding and to every other
clean photo of the same person. A face is **not recognized** when every one of those comparisons
is on the "different person" side of the judge's threshold (or the face is no longer found).
The same after a Pillow JPEG at quality 75. Writes OUT/transfer.csv and OUT/transfer.md.

Families: faceres and faceres_deep are one family (the same HSE training); leaving out 'faceres'
removes both from the attack.
"""
from __future__ import annotations

import csv
import importlib
import io
import json
import os
import time

import labelled_faces
import numpy as np
from absl import app, flags
from PIL import Image

from idguardian_jax import encoders as encoder_registry
from idguardian_jax.configs import default as default_config
from idguardian_jax import images, protect, settings
from idguardian_jax.faces import analyze, boxes
from idguardian_jax.losses import identity

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("photos", [], "Folders of photos (each with identities).")
flags.DEFINE_multi_string("identities", [], "JSON {file: person} per --photos folder (same order).")
flags.DEFINE_list("variants", ["default"], "Names from VARIANTS.")
flags.DEFINE_list("leave_out", ["mobileface", "faceres", "dlib_resnet"], "Judge encoders.")
flags.DEFINE_multi_string("set", [], "Extra overrides a.b=value applied to every variant.")
flags.DEFINE_string("out", "/tmp/idguardian_transfer", "Output folder for tables.")
flags.DEFINE_integer("limit", 0, "At most this many photos per folder (0: all).")
flags.DEFINE_bool("redetect", True, "Find faces again on the protected photo (attacker-faithful).")
flags.DEFINE_bool("jpeg", True, "Also judge after JPEG quality 75.")
flags.DEFINE_bool("whitebox", False, "Attack with every installed encoder (the judges too).")
flags.DEFINE_string("base", "default", "The configs/ module the variants override (e.g. robust).")

FAMILIES = {"faceres": ("faceres", "faceres_deep"), "faceres_deep": ("faceres", "faceres_deep")}

# Named config overrides (dotted keys on configs/default.py).
_BASE = {"budget": 8 / 255, "budget_psnr": 36.0, "attack.steps": 100, "attack.step_size": 1 / 255}
_PLAIN = {"attack.momentum": 0.0, "objective.transfer.diversity_prob": 0.0,
          "objective.transfer.ti_kernel": 0, "objective.transfer.balance": "loss",
          "objective.transfer.dropout": 0.0}
VARIANTS: dict[str, dict] = {
    "default": {},
    "ensemble": {**_BASE, **_PLAIN},
    "balance": {**_BASE, **_PLAIN, "objective.transfer.balance": "gradient"},
    "mi_di": {**_BASE, **_PLAIN, "objective.transfer.balance": "gradient", "attack.momentum": 0.9,
              "objective.transfer.diversity_prob": 0.7},
    "mi_di_ti": {**_BASE, **_PLAIN, "objective.transfer.balance": "gradient", "attack.momentum": 0.9,
                 "objective.transfer.diversity_prob": 0.7, "objective.transfer.ti_kernel": 5},
    "mi_di_ti_mask": {**_BASE, **_PLAIN, "objective.transfer.balance": "gradient",
                      "attack.momentum": 0.9, "objective.transfer.diversity_prob": 0.7,
                      "objective.transfer.ti_kernel": 5, "objective.face_mask_margin": 0.1},
    "mi_di_ti_feat": {**_BASE, **_PLAIN, "objective.transfer.balance": "gradient",
                      "attack.momentum": 0.9, "objective.transfer.diversity_prob": 0.7,
                      "objective.transfer.ti_kernel": 5, "objective.transfer.feature_weight": 1.0},
    "mobile_w3": {"objective.encoders": (("dlib_resnet", 1.0), ("mobileface", 3.0))},
    "eps4": {"budget": 4 / 255},
    "eps12": {"budget": 12 / 255},
    "eps16": {"budget": 16 / 255},
    "mi_di_ti_drop": {**_BASE, **_PLAIN, "objective.transfer.balance": "gradient",
                      "attack.momentum": 0.9, "objective.transfer.diversity_prob": 0.7,
                      "objective.transfer.ti_kernel": 5, "objective.transfer.dropout": 0.03},
    # on top of the default
    "drop10": {"objective.transfer.dropout": 0.1},
    "ti11": {"objective.transfer.ti_kernel": 11},
    "steps200": {"attack.steps": 200, "attack.step_size": 0.5 / 255},
    "eot_resize": {"objective.eot.resize_scale": (0.5, 0.9), "objective.eot.p_identity": 0.3},
    "decoy_obama": {"objective.decoy_photo": "../shared/faces/obama.jpg"},
    "mask30": {"objective.face_mask_margin": 0.3},
    "thr": {"objective.transfer.balance": "threshold"},
    "flip": {"objective.transfer.flip_prob": 0.5},
    "linbp50": {"objective.transfer.linear_backward": 0.5},
    "thr_f0": {"objective.transfer.balance": "threshold", "objective.transfer.threshold_floor": 0.0},
    "nomask": {"objective.face_mask_margin": -1.0},
    "plain": {"objective.transfer.diversity_prob": 0.0, "objective.transfer.ti_kernel": 0},
    "plain_nomask": {"objective.transfer.diversity_prob": 0.0, "objective.transfer.ti_kernel": 0,
                     "objective.face_mask_margin": -1.0},
    "mf_solo_nomask": {"objective.installed_encoders": "none", "objective.encoders": (("mobileface", 1.0),),
                       "objective.face_mask_margin": -1.0},
    "mask_exempt_mf": {"objective.face_mask_exempt": ("mobileface",)},
    "mask_exempt_mf_fr": {"objective.face_mask_exempt": ("mobileface", "faceres", "faceres_deep")},
    "mf_solo": {"objective.installed_encoders": "none", "objective.encoders": (("mobileface", 1.0),)},
    "thr_s200": {"objective.transfer.balance": "threshold", "attack.steps": 200,
                 "attack.step_size": 0.5 / 255},
    "thr_l1": {"objective.transfer.balance": "threshold", "objective.transfer.balance_norm": "l1"},
    "ssa": {"objective.transfer.spectrum_rho": 0.5},
    "ssa4": {"objective.transfer.spectrum_rho": 0.5, "objective.transfer.samples": 4},
    "samples4": {"objective.transfer.samples": 4},
    "exact": {"attack.l2_projection": "exact"},
    "rms": {"attack.optimizer": "rms", "attack.l2_projection": "exact"},
    "rms_nomask": {"attack.optimizer": "rms", "attack.l2_projection": "exact",
                   "objective.face_mask_margin": -1.0},
    "thr_f0_m50": {"objective.transfer.balance": "threshold", "objective.transfer.threshold_floor": 0.0,
                   "objective.transfer.threshold_margin": 0.5},
}


def _set(cfg, key: str, value):
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node[p]
    old = node.get(parts[-1])  # a field the base config does not have is added
    if isinstance(old, bool):
        value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    elif isinstance(old, int) and not isinstance(value, (tuple, list)):
        value = int(float(value))
    elif isinstance(old, float):
        value = float(value)
    node[parts[-1]] = value


def _parse_set(items):
    out = {}
    for it in items:
        k, v = it.split("=", 1)
        out[k] = v
    return out


def _family(name: str) -> tuple[str, ...]:
    return FAMILIES.get(name, (name,))


def _installed() -> list[str]:
    from idguardian_jax.checkpoints import human_models

    return [e.name for e in human_models.installed_encoders()]


class Judge:
    """One encoder used only to judge: clean embeddings per photo, embeddings of any photo's faces
    (found again, or at the clean faces' landmarks)."""

    def __init__(self, name: str, face_models):
        self.name = name
        cfg = default_config.get_config()
        cfg.objective.encoders = ((name, 1.0),)
        cfg.objective.installed_encoders = "none"
        self.prot = protect.Protector(cfg, protect.Models.load(cfg, face_models))
        self.enc = encoder_registry.get(name)

    def embed(self, rgb, faces) -> np.ndarray:
        plans = self.prot.chip_plans(rgb, faces)
        return self.prot.embeddings(rgb, plans)[self.name]

    def same(self, a: np.ndarray, b: np.ndarray):
        """(recognized as the same person, distance), each (len(a), len(b))."""
        d = np.asarray(identity.embedding_distance(a[:, None], b[None], self.enc.distance))
        return d < self.enc.threshold, d


def _jpeg(rgb, quality=75):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def main(argv):
    del argv
    os.makedirs(FLAGS.out, exist_ok=True)
    face_models = analyze.FaceModels.load()
    installed = ["dlib_resnet"] + _installed()
    t0 = time.time()
    rgbs, faces, persons = labelled_faces.load(FLAGS.photos, FLAGS.identities, face_models,
                                               FLAGS.limit)
    print(f"{len(rgbs)} photos, faces found in {time.time() - t0:.1f} s")
    judges = {n: Judge(n, face_models) for n in FLAGS.leave_out}
    clean = {n: np.concatenate([j.embed(r, f) for r, f in zip(rgbs, faces)]) for n, j in judges.items()}
    persons_a = np.array(persons)
    extra = _parse_set(FLAGS.set)
    rows, done = [], {}
    for variant in FLAGS.variants:
        for left in FLAGS.leave_out:
            cfg = importlib.import_module(f"idguardian_jax.configs.{FLAGS.base}").get_config()
            for k, v in {**VARIANTS[variant], **extra}.items():
                _set(cfg, k, v)
            ens = tuple((n, w) for n, w in settings.encoders_of(cfg)
                        if n in installed and (FLAGS.whitebox or n not in _family(left)))
            if not ens:
                continue
            cfg.objective.encoders = ens
            cfg.objective.installed_encoders = "none"
            if (variant, ens) in done:  # --whitebox: one attack, every judge
                protected, secs = done[(variant, ens)]
            else:
                prot = protect.Protector(cfg, protect.Models.load(cfg, face_models))
                t = time.time()
                prepared = [prot.prepare(i, r, f) for i, (r, f) in enumerate(zip(rgbs, faces))]
                outs = prot.run(prepared)
                protected = [prot.finish(p, outs[p.index], measure=False) for p in prepared]
                secs = (time.time() - t) / len(prepared)
                done[(variant, ens)] = protected, secs
            judge = judges[left]
            for kind in ("png", "jpeg75") if FLAGS.jpeg else ("png",):
                ok, sims, psnrs, face_psnrs = [], [], [], []
                for i, res in enumerate(protected):
                    img = res.protected if kind == "png" else _jpeg(res.protected)
                    if FLAGS.redetect:
                        again = analyze.find_faces(img, face_models, 1, with68=True)
                        j, = boxes.match([faces[i][0].box], [g.box for g in again])
                        ma = None if j is None else again[j]
                    else:
                        ma = faces[i][0]
                    psnrs.append(res.psnr)
                    l, t_, r_, b_ = faces[i][0].box  # PSNR inside dlib's face box
                    face_psnrs.append(images.psnr(
                        res.protected[max(t_, 0):b_ + 1, max(l, 0):r_ + 1],
                        rgbs[i][max(t_, 0):b_ + 1, max(l, 0):r_ + 1]))
                    if ma is None:
                        ok.append(True)
                        sims.append(np.nan)
                        continue
                    e = judge.embed(img, [ma])
                    gallery = clean[left][persons_a == persons[i]]  # includes its own clean face
                    same, d = judge.same(e, gallery)
                    ok.append(not bool(same.any()))
                    own = judge.same(e, clean[left][i:i + 1])[1][0, 0]
                    sims.append(1.0 - own if judge.enc.distance == "cosine" else own)
                row = dict(variant=variant if FLAGS.base == "default" else f"{FLAGS.base}:{variant}",
                           left_out=left, attack="+".join(n for n, _ in ens),
                           output=kind, faces=len(ok), not_recognized=float(np.mean(ok)),
                           mean_similarity=float(np.nanmean(sims)), psnr_min=float(np.min(psnrs)),
                           psnr_mean=float(np.mean(psnrs)),
                           face_psnr_mean=float(np.mean(face_psnrs)), seconds_per_photo=secs,
                           budget=round(float(cfg.budget) * 255, 2), steps=int(cfg.attack.steps))
                rows.append(row)
                print(json.dumps(row), flush=True)
    with open(os.path.join(FLAGS.out, "transfer.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(FLAGS.out, "transfer.md"), "w") as fh:
        fh.write("| variant | left out (judge) | attack ensemble | output | faces | not recognized | "
                 "mean similarity (dlib: distance) | PSNR min / mean | face PSNR | s per photo |\n")
        fh.write("|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            fh.write(f"| {r['variant']} | {r['left_out']} | {r['attack']} | {r['output']} | "
                     f"{r['faces']} | {100 * r['not_recognized']:.0f}% | {r['mean_similarity']:.3f} | "
                     f"{r['psnr_min']:.1f} / {r['psnr_mean']:.1f} | {r['face_psnr_mean']:.1f} | "
                     f"{r['seconds_per_photo']:.1f} |\n")
    print(open(os.path.join(FLAGS.out, "transfer.md")).read())


if __name__ == "__main__":
    app.run(main)
