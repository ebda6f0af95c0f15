r"""Protection cost against photo size: one face, 512x512 / 1000x1500 / 2000x3000, warm.

  python benchmarks/bench_protect_sizes.py [--sizes=512x512,1000x1500,2000x3000] [--max_side=N]
      [--steps=N] [--repeat=N] [--photo=PATH] [--installed_encoders=none]
The photos are synthetic: the 512x512 one-face photo (../shared/faces/n000050_A_0003_01.png, else
skimage's astronaut) itself, and pasted unscaled on a smooth noisy background for the larger sizes
(benchmarks/common.synthetic_photo), so every photo holds the same ~205 px face.
Per size, after one warm-up run: detection (Protector.find_faces: detector + landmarks), the rest
of prepare (chips, clean embedding), PGD (protect_arrays without measuring), measurement
(Protector.measure: faces found again on the protected photo, descriptors) and the total.
--max_side / --measure override configs/default.py's detect.max_side / detect.measure
(--max_side=0 --measure=full: the full-canvas detector before and after, as before issue 13).
Wall-clock seconds, and in brackets the process's CPU seconds (all threads; less sensitive to other
jobs on a shared machine).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, synthetic_photo  # noqa: E402


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--photo", default=os.path.join(here, "..", "..", "shared", "faces",
                                                    "n000050_A_0003_01.png"))
    ap.add_argument("--sizes", default="512x512,1000x1500,2000x3000", help="WxH,...")
    ap.add_argument("--max_side", type=int, default=None)
    ap.add_argument("--measure", default=None, help="detect.measure: near | full")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--installed_encoders", default=None,
                    help="objective.installed_encoders: all (the default's four) | none (dlib alone)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="warm runs after the first (0: report the first run, compiles included)")
    args = ap.parse_args()
    from idguardian_jax.configs import default
    from idguardian_jax import images, protect, samples

    path = args.photo if os.path.exists(args.photo) else samples.resolve("sample:astronaut")
    face = images.read_photo(path).rgb
    cfg = default.get_config()
    if args.max_side is not None:
        cfg.detect.max_side = args.max_side
    if args.measure:
        cfg.detect.measure = args.measure
    if args.steps:
        cfg.attack.steps = args.steps
    if args.installed_encoders:
        cfg.objective.installed_encoders = args.installed_encoders
    pr = protect.Protector(cfg)
    rows = []
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        rgb = synthetic_photo(face, h, w)
        best = None
        for it in range(args.repeat + 1):  # the first run compiles
            t, c = [time.perf_counter()], [time.process_time()]

            def tick():
                t.append(time.perf_counter())
                c.append(time.process_time())

            faces = pr.find_faces(rgb)
            tick()
            prep = pr.prepare(0, rgb)
            tick()
            res = pr.protect_arrays([rgb], measure=False, prepared=[prep])
            tick()
            pr.measure(prep, res[0].protected)
            tick()
            # prepare finds the faces again: its own cost minus one detection
            row = []
            for v in (t, c):
                d = [b - a for a, b in zip(v[:-1], v[1:])]
                row.append((d[0], max(0.0, d[1] - d[0]), d[2], d[3]))
            if (it or not args.repeat) and (best is None or sum(row[0]) < sum(best[0])):
                best = row
        rows.append((f"{w}x{h}", len(faces), best))
    print(f"machine: {machine()}, date: {time.strftime('%Y-%m-%d %H:%M')}, "
          f"detect.max_side={cfg.detect.max_side}, detect.measure={cfg.detect.measure}, "
          f"{cfg.attack.steps} steps, encoders {', '.join(pr.encoder_names)}, "
          f"best of {args.repeat} warm run(s)\n")
    print("| photo | faces | detection | rest of prepare | PGD | measurement | total (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, n, (wall, cpu) in rows:
        cells = " | ".join(f"{w:.2f} ({c:.1f})" for w, c in zip(wall + (sum(wall),), cpu + (sum(cpu),)))
        print(f"| {name} | {n} | {cells} |")


if __name__ == "__main__":
    main()
