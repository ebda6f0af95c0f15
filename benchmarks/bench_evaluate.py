r"""Evaluation speed: idguardian-evaluate's work on N photos at 512 x 512 (goal: 100 in < 2 min).

  python benchmarks/bench_evaluate.py [--photos=100] [--workdir=/tmp/bench_evaluate]
      [--runs=records,records_2workers,detect_clean] [--transforms=jpeg75]

Builds N 512 x 512 one-face photos from ../shared/faces (random square crops around the face that
dlib_reference.json records, resized; written only under --workdir), protects them with
configs/tiny.py (once per protection settings: a rerun with the same --workdir reuses them), then
times each run:
  records           clean faces' boxes from idguardian-protect's records (1 detection per photo)
  records_2workers  the same with 2 photos at once in threads
  detect_clean      the clean photos detected again too (2 detections per photo)
each followed by writing the report (JSON, CSV, HTML with thumbnails and plots). --transforms adds
post-processing variants (each one more detection per photo). Prints a Markdown table with the
seconds and where they went (detector, landmarks, descriptors, image metrics, ...).
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FACES = os.path.join(HERE, "..", "..", "shared", "faces")
PARTS = ("detect", "landmarks", "embed", "image_metrics", "thumbnails", "transforms", "read")


def make_photos(n: int, size: int, out_dir: str, seed: int = 0) -> list[str]:
    """n size x size PNGs: crops 1.6-2.6 face widths wide around each source's (first) face."""
    from PIL import Image

    with open(os.path.join(FACES, "dlib_reference.json")) as fh:
        ref = json.load(fh)["images"]
    sources = [(k, v["cnn_faces"][0]["rect"]) for k, v in sorted(ref.items())
               if len(v["cnn_faces"]) == 1 and v["cnn_faces"][0]["rect"][0] >= 0]
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"p{i:03d}.png") for i in range(n)]
    seen = {hashlib.sha1(np.asarray(Image.open(p)).tobytes()).digest()
            for p in paths if os.path.exists(p)}
    for i, path in enumerate(paths):
        if os.path.exists(path):
            continue
        name, (l, t, r, b) = sources[i % len(sources)]
        im = Image.open(os.path.join(FACES, name)).convert("RGB")
        w, h = im.size
        fw = r - l + 1
        while True:  # every photo distinct (no detection shared through the evaluator's memo)
            side = min(int(fw * rng.uniform(1.6, 2.6)), int(0.92 * min(w, h)))
            cx = (l + r) / 2 + rng.uniform(-0.12, 0.12) * side
            cy = (t + b) / 2 + rng.uniform(-0.12, 0.12) * side
            x0 = int(np.clip(cx - side / 2, 0, w - side))
            y0 = int(np.clip(cy - side / 2, 0, h - side))
            crop = im.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.LANCZOS)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            key = hashlib.sha1(np.asarray(crop).tobytes()).digest()
            if key not in seen:
                break
        seen.add(key)
        crop.save(path)
    return paths


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workdir", default="/tmp/bench_evaluate")
    ap.add_argument("--runs", default="records,records_2workers,detect_clean")
    ap.add_argument("--transforms", default="")
    args = ap.parse_args()
    if not os.path.isdir(FACES):
        sys.exit(f"{FACES}: the shared face photos are needed")
    from idguardian_jax.configs import tiny
    from idguardian_jax import evaluate, protect, settings
    from idguardian_jax.cli import common
    from idguardian_jax.evaluate import report
    from idguardian_jax.faces import analyze

    cfg = tiny.get_config()
    clean = os.path.join(args.workdir, f"clean{args.size}")
    # one folder per protection settings: idguardian-protect refuses to mix settings in a folder
    prot = os.path.join(args.workdir, f"protected{args.size}-{settings.settings_hash(cfg)}")
    make_photos(args.photos, args.size, clean)
    t = time.perf_counter()
    summary = protect.protect_files(common.list_inputs([clean])[:args.photos], prot, cfg,
                                    input_roots=[clean], progress=False)
    print(f"protect (tiny config; skipped when already done): {time.perf_counter() - t:.1f} s, "
          f"{summary['counts']}", file=sys.stderr)
    t = time.perf_counter()
    models = analyze.FaceModels.load()
    t_load = time.perf_counter() - t
    rows = []
    for name in [r for r in args.runs.split(",") if r]:
        workers = 2 if name.endswith("2workers") else 1
        reuse = name.startswith("records")
        ev = evaluate.Evaluator(models=models,
                                transforms=[x for x in args.transforms.split(",") if x])
        t = time.perf_counter()
        run = ev.evaluate_folders(clean, prot, reuse_protect_records=reuse, progress=False,
                                  workers=workers)
        t_eval = time.perf_counter() - t
        t = time.perf_counter()
        rep = report.build(run)
        report.write(os.path.join(args.workdir, f"report_{name}"), rep,
                     {p.path: p.thumbs for p in run.photos if p.thumbs})
        t_report = time.perf_counter() - t
        rows.append((name, run, rep, t_eval, t_report))
        print(f"{name}: {t_eval:.1f} s + report {t_report:.1f} s", file=sys.stderr)
    load = os.getloadavg()
    print(f"machine: {machine()}, date: {time.strftime('%Y-%m-%d')}, {args.photos} photos "
          f"{args.size}x{args.size} (one face each), transforms: {args.transforms or 'none'}, "
          f"load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; models loaded in "
          f"{t_load:.1f} s (not counted)\n")
    print("| run | photos evaluated | detections | evaluate (s) | report (s) | total (s) "
          "| per photo (s) | detector | landmarks | descriptors | image metrics | thumbnails "
          "| transforms | read |")
    print("|---" * 14 + "|")
    for name, run, rep, t_eval, t_report in rows:
        tm = run.timings
        per = (t_eval + t_report) / max(1, len(run.photos))
        print(f"| {name} | {rep['counts'].get('evaluated', 0)} | {int(tm.get('detections', 0))} | "
              f"{t_eval:.1f} | {t_report:.1f} | {t_eval + t_report:.1f} | {per:.2f} | "
              + " | ".join(f"{tm.get(k, 0):.1f}" for k in PARTS) + " |")
    print("\nColumns after 'per photo' are seconds summed over photos (thread-seconds with 2 "
          "workers).")


if __name__ == "__main__":
    main()
