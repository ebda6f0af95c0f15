r"""How much the surrogate encoders agree: cosine between their photo gradients, and the share of
each encoder's own best progress that one balanced sign step gives it.

  python experiments/gradient_alignment.py --photos=HELDOUT/ --identities=HELDOUT/ids.json

For each labelled photo (its largest face, configs/default.py with every installed encoder), at a
few random points of the budget (uniform in +-4/255 inside the perturbation's support) and random
draws of the loop's view randomness, each encoder's identity loss gradient w.r.t. the photo is
computed (idguardian_jax.losses.objective.encoder_loss, as the balanced loop does). Printed:

- the mean pairwise cosine of those gradients: near 0 means a step good for one encoder does
  nothing for the other to first order, i.e. the perturbation has no reason to transfer;
- per encoder, its *share*: <sign(D), g_e> / ||g_e||_1, the first-order progress the combined
  sign step D gives it as a fraction of what a sign step on its own gradient would, for D the sum
  of L2-normalized gradients ('l2', the default balance), of L1-normalized ones ('l1'), or of the
  encoders' signs ('vote').

With --sigmas, the cosines again after a Gaussian blur of both gradients (sigma in photo pixels):
the agreement of their low-frequency parts, which a smooth perturbation could exploit. With
--average > 1, each encoder's gradient is first averaged over that many view draws at the same
point (the expected gradient over the loop's randomness, as transfer.samples would use).
"""
from __future__ import annotations

import functools

import jax
import labelled_faces
import numpy as np
from absl import app, flags

from idguardian_jax import protect
from idguardian_jax.losses import objective
from idguardian_jax.faces import analyze

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("photos", [], "Folders of photos (each with identities).")
flags.DEFINE_multi_string("identities", [], "JSON {file: person} per --photos folder.")
flags.DEFINE_integer("limit", 0, "At most this many photos per folder (0: all).")
flags.DEFINE_integer("draws", 3, "Random points and view draws per photo.")
flags.DEFINE_list("sigmas", [], "Also the cosines of Gaussian-blurred gradients (photo px).")
flags.DEFINE_integer("average", 1, "View draws averaged per gradient at each point.")


def _blur(g: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W, 3) gradient blurred per channel by a Gaussian of `sigma` pixels (separable)."""
    from scipy import ndimage
    return ndimage.gaussian_filter(g, (sigma, sigma, 0), mode="constant")


def main(argv):
    del argv
    face_models = analyze.FaceModels.load()
    rgbs, faces, _ = labelled_faces.load(FLAGS.photos, FLAGS.identities, face_models, FLAGS.limit)
    cfg = protect.default_config()
    prot = protect.Protector(cfg, protect.Models.load(cfg, face_models))
    names = [n for n, _ in prot.cfg.objective.encoders]
    rng = np.random.default_rng(0)
    sigmas = [float(v) for v in FLAGS.sigmas]
    cos = {(a, b): [] for a in names for b in names if a < b}
    cos_s = {(s, a, b): [] for s in sigmas for a, b in cos}
    shares = {(k, n): [] for k in ("l2", "l1", "vote") for n in names}
    for i, (rgb, f) in enumerate(zip(rgbs, faces)):
        p = prot.prepare(i, rgb, f)
        x, support, _, views, targets, _ = prot._inputs(p)
        sup = np.asarray(support)[..., None]
        for d in range(FLAGS.draws):
            delta = (rng.uniform(-4 / 255, 4 / 255, x.shape) * sup).astype(np.float32)
            key = jax.random.key(1000 * i + d)
            gs = {}
            for n in names:
                f_n = functools.partial(objective.encoder_loss, n, x01=x, views=views,
                                        targets=targets, surrogates=prot.models.surrogates,
                                        key=key, groups=p.plan.groups, cfg=prot.cfg.objective)
                grad = jax.jit(jax.grad(f_n))
                gs[n] = sum(np.asarray(grad(delta, key=jax.random.fold_in(key, a)))
                            for a in range(FLAGS.average)) * sup / FLAGS.average
            for a, b in cos:
                cos[(a, b)].append(_cos(gs[a], gs[b]))
                for s in sigmas:
                    cos_s[(s, a, b)].append(_cos(_blur(gs[a], s), _blur(gs[b], s)))
            directions = {"l2": sum(g / np.linalg.norm(g) for g in gs.values()),
                          "l1": sum(g / np.sum(np.abs(g)) for g in gs.values()),
                          "vote": sum(np.sign(g) for g in gs.values())}
            for k, dvec in directions.items():
                for n, g in gs.items():
                    shares[(k, n)].append(float(np.sum(np.sign(dvec) * g) / np.sum(np.abs(g))))
    print(f"{len(rgbs)} photos x {FLAGS.draws} draws")
    print("| pair | gradient cosine (mean, min..max) |\n|---|---|")
    for (a, b), v in cos.items():
        print(f"| {a} / {b} | {np.mean(v):.3f} ({np.min(v):.3f}..{np.max(v):.3f}) |")
    if sigmas:
        print("\n| pair | " + " | ".join(f"blur sigma {s:g} px" for s in sigmas) + " |\n|---|"
              + "---|" * len(sigmas))
        for a, b in cos:
            print(f"| {a} / {b} | " + " | ".join(f"{np.mean(cos_s[(s, a, b)]):.3f}"
                                                 for s in sigmas) + " |")
    print("\n| encoder | share, l2 balance | share, l1 balance | share, sign vote |\n|---|---|---|---|")
    for n in names:
        print(f"| {n} | " + " | ".join(f"{np.mean(shares[(k, n)]):.3f}" for k in ("l2", "l1", "vote"))
              + " |")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


if __name__ == "__main__":
    app.run(main)
