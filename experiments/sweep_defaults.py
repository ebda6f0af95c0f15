r"""Sweep budget / steps / step size on a folder of face photos, judged by the real dlib library.

  python experiments/sweep_defaults.py --faces_dir=../shared/faces --out_dir=/tmp/sweep \
      --judge_python=/tmp/dlibenv/bin/python --eps=3,4,6 --steps=25,50,100

For each setting, every photo listed in FACES_DIR/identities.json is protected (faces found once on
the clean photos) and written as PNG, then experiments/judge_with_dlib.py runs under
--judge_python (an environment with `dlib-bin`) and reports the share of faces that real dlib no
longer matches (to their own clean face and to the person's other photos) at 0.6. Writes
OUT_DIR/sweep.csv and OUT_DIR/sweep.md.
"""
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from idguardian_jax.configs import default
from idguardian_jax import images, protect

FLAGS = flags.FLAGS
flags.DEFINE_string("faces_dir", "../shared/faces", "Photos + identities.json.")
flags.DEFINE_string("out_dir", "/tmp/idguardian_sweep", "Where protected photos and tables go.")
flags.DEFINE_string("judge_python", None, "A python with dlib installed (required).")
flags.DEFINE_list("eps", ["3", "4", "6"], "Budgets in 1/255 units.")
flags.DEFINE_list("steps", ["25", "50", "100"], "Step counts.")
flags.DEFINE_list("step_size", ["1"], "Step sizes in 1/255 units.")
flags.DEFINE_list("jitter", ["on"], "Re-alignment jitter: on and/or off.")
flags.DEFINE_list("schedule", ["constant"], "Step-size schedules.")


def _models_dir():
    from idguardian_jax.checkpoints import bundled

    return os.path.dirname(bundled.model_path(bundled.RESNET))


def main(argv):
    del argv
    if not FLAGS.judge_python:
        raise app.UsageError("--judge_python is required (a python with dlib-bin)")
    ids = json.load(open(os.path.join(FLAGS.faces_dir, "identities.json")))
    names = sorted(ids)
    photos = [images.read_photo(os.path.join(FLAGS.faces_dir, n)) for n in names]
    base = default.get_config()
    prot0 = protect.Protector(base)
    t = time.time()
    prepared = [prot0.prepare(i, p.rgb) for i, p in enumerate(photos)]
    print(f"faces found in {time.time() - t:.1f} s: {sum(len(p.faces) for p in prepared)}")
    judge = os.path.join(os.path.dirname(os.path.abspath(__file__)), "judge_with_dlib.py")
    rows = []
    for eps in FLAGS.eps:
        for steps in FLAGS.steps:
            for ss in FLAGS.step_size:
                for jit_ in FLAGS.jitter:
                    for sched in FLAGS.schedule:
                        cfg = default.get_config()
                        cfg.budget = float(eps) / 255
                        cfg.attack.steps = int(steps)
                        cfg.attack.step_size = float(ss) / 255
                        cfg.attack.schedule = sched
                        if jit_ == "off":
                            cfg.objective.jitter.shift_px = 0.0
                            cfg.objective.jitter.rotation = 0.0
                            cfg.objective.jitter.scale = 0.0
                        tag = f"eps{eps}_steps{steps}_ss{ss}_jit{jit_}_{sched}"
                        out = os.path.join(FLAGS.out_dir, tag)
                        pr = protect.Protector(cfg, models=prot0.models, mesh=prot0.mesh)
                        t = time.time()
                        res = pr.protect_arrays([p.rgb for p in photos], measure=False,
                                                prepared=prepared)
                        secs = time.time() - t
                        psnrs = []
                        for n, ph, r in zip(names, photos, res):
                            if r.protected is not None:
                                target = os.path.join(out, os.path.splitext(n)[0] + ".png")
                                images.write_photo(target, r.protected, ph)
                                psnrs.append(r.psnr)
                        j = subprocess.run(
                            [FLAGS.judge_python, judge, "--clean", FLAGS.faces_dir, "--protected", out,
                             "--identities", os.path.join(FLAGS.faces_dir, "identities.json"),
                             "--face_identities", os.path.join(FLAGS.faces_dir, "face_identities.json"),
                             "--models", _models_dir(), "--out", os.path.join(out, "judge.json")],
                            capture_output=True, text=True, check=True)
                        judged = json.load(open(os.path.join(out, "judge.json")))
                        ds = [f["distance_self"] for f in judged["faces"] if f["distance_self"] is not None]
                        row = {"eps_255": eps, "steps": steps, "step_size_255": ss, "jitter": jit_,
                               "schedule": sched, "faces": judged["summary"]["faces"],
                               "success_rate": judged["summary"]["rate"],
                               "min_distance": min(ds) if ds else None,
                               "median_distance": float(np.median(ds)) if ds else None,
                               "min_psnr": min(psnrs), "median_psnr": float(np.median(psnrs)),
                               "seconds_per_photo": secs / len(photos)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "sweep.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(FLAGS.out_dir, "sweep.md"), "w") as fh:
        cols = list(rows[0])
        fh.write("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
        for r in rows:
            fh.write("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                       for v in r.values()) + " |\n")


if __name__ == "__main__":
    app.run(main)
