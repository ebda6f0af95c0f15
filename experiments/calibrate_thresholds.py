r"""Calibrate each encoder's same-person threshold on labelled clean photos.

  python experiments/calibrate_thresholds.py --photos=../shared/faces \
      --identities=../shared/faces/identities.json --photos=DEEPFACE/ --identities=DEEPFACE/ids.json \
      --encoders=dlib_resnet,mobileface,faceres,faceres_deep --out=/tmp/thresholds.json

Every single-person photo's largest face is found (dlib's detector and landmarks, as protect and
evaluate do), each encoder's chip cut, and every pair of photos compared: same person (same label
in the same folder) or different. The threshold reported is the one with the best balanced
accuracy (TPR - FPR, Youden's J) on these pairs, with its TPR and FPR, the AUC, and the rates at
the threshold in use (encoders' registry value). Writes a JSON table and prints Markdown.
"""
from __future__ import annotations

import json

import labelled_faces
import numpy as np
from absl import app, flags

from idguardian_jax import encoders as encoder_registry
from idguardian_jax.configs import default as default_config
from idguardian_jax import protect
from idguardian_jax.faces import analyze

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("photos", [], "Folders of photos.")
flags.DEFINE_multi_string("identities", [], "JSON {file: person} per folder (same order).")
flags.DEFINE_list("encoders", ["dlib_resnet", "mobileface", "faceres", "faceres_deep"], "Encoders.")
flags.DEFINE_string("out", "/tmp/idguardian_thresholds.json", "Output JSON.")


def roc(sims_same: np.ndarray, sims_diff: np.ndarray) -> dict:
    """Best Youden threshold on similarities (same person above), with TPR / FPR and the AUC."""
    cand = np.unique(np.concatenate([sims_same, sims_diff]))
    best = None
    for t in cand:
        tpr = float(np.mean(sims_same >= t))
        fpr = float(np.mean(sims_diff >= t))
        if best is None or tpr - fpr > best[0]:
            best = (tpr - fpr, float(t), tpr, fpr)
    # midpoint between the chosen similarity and the next lower one, so that it is not a sample
    lower = cand[cand < best[1]]
    thr = best[1] if not len(lower) else (best[1] + float(lower.max())) / 2
    auc = float(np.mean(sims_same[:, None] > sims_diff[None, :])
                + 0.5 * np.mean(sims_same[:, None] == sims_diff[None, :]))
    return {"threshold_similarity": thr, "tpr": best[2], "fpr": best[3], "auc": auc}


def main(argv):
    del argv
    fm = analyze.FaceModels.load()
    rgbs, faces, persons = labelled_faces.load(FLAGS.photos, FLAGS.identities, fm)
    persons = np.array(persons)
    iu = np.triu_indices(len(persons), 1)
    same = persons[iu[0]] == persons[iu[1]]
    table = {"photos": len(persons), "people": int(len(set(persons))),
             "same_pairs": int(same.sum()), "different_pairs": int((~same).sum()),
             "folders": FLAGS.photos, "encoders": {}}
    for name in FLAGS.encoders:
        cfg = default_config.get_config()
        cfg.objective.encoders = ((name, 1.0),)
        cfg.objective.installed_encoders = "none"
        prot = protect.Protector(cfg, protect.Models.load(cfg, fm))
        embs = np.concatenate([prot.embeddings(r, prot.chip_plans(r, f))[name]
                               for r, f in zip(rgbs, faces)])
        enc = encoder_registry.get(name)
        if enc.distance == "euclidean":
            sims = -np.linalg.norm(embs[:, None] - embs[None], axis=-1)  # similarity = -distance
            in_use = -enc.threshold
        else:
            e = embs / np.linalg.norm(embs, axis=-1, keepdims=True)
            sims = e @ e.T
            in_use = 1.0 - enc.threshold
        s = sims[iu]
        r = roc(s[same], s[~same])
        r["in_use_similarity"] = in_use
        r["in_use_tpr"] = float(np.mean(s[same] >= in_use))
        r["in_use_fpr"] = float(np.mean(s[~same] >= in_use))
        r["same_mean"], r["different_mean"] = float(s[same].mean()), float(s[~same].mean())
        r["different_max"] = float(s[~same].max())
        table["encoders"][name] = r
    with open(FLAGS.out, "w") as fh:
        json.dump(table, fh, indent=1)
    print(f"{table['photos']} photos, {table['people']} people, {table['same_pairs']} same / "
          f"{table['different_pairs']} different pairs")
    print("| encoder | AUC | best threshold (similarity) | TPR / FPR there | threshold in use | "
          "TPR / FPR in use | same mean | different mean / max |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in table["encoders"].items():
        print(f"| {name} | {r['auc']:.3f} | {r['threshold_similarity']:.3f} | "
              f"{100 * r['tpr']:.1f}% / {100 * r['fpr']:.1f}% | {r['in_use_similarity']:.3f} | "
              f"{100 * r['in_use_tpr']:.1f}% / {100 * r['in_use_fpr']:.1f}% | {r['same_mean']:.3f} | "
              f"{r['different_mean']:.3f} / {r['different_max']:.3f} |")


if __name__ == "__main__":
    app.run(main)
