r"""Peak memory (RSS) of protecting one photo against its size: one face on a large canvas.

  python benchmarks/bench_detect_memory.py [--sizes=1000,2000,4000,6000] [--max_side=N]
      [--steps=2] [--timeout=300]
Each size runs in a fresh process (benchmarks/bench_detect_memory.py --one=SIZE): a SIZExSIZE
synthetic photo (benchmarks/common.synthetic_photo: the 512x512 shared face photo pasted on a noisy
background) is protected with configs/default.py (PGD steps cut to --steps; PGD only touches the
face's region) and the process reports its peak RSS (getrusage ru_maxrss) and the peak after
loading the models. --max_side=0 is the full-canvas detector (the code before issue 13).
"""
import argparse
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def one(size: int, max_side: int | None, steps: int, photo: str) -> None:
    from common import synthetic_photo
    from idguardian_jax.configs import default
    from idguardian_jax import images, protect

    cfg = default.get_config()
    cfg.attack.steps = steps
    if max_side is not None:
        cfg.detect.max_side = max_side
    face = images.read_photo(photo).rgb
    pr = protect.Protector(cfg)
    rgb = synthetic_photo(face, size, size)
    base = peak_mib()
    t = time.perf_counter()
    res, = pr.protect_arrays([rgb])
    dt = time.perf_counter() - t
    print(f"RESULT size={size} faces={len(res.faces)} status={res.status} base_mib={base:.0f} "
          f"peak_mib={peak_mib():.0f} seconds={dt:.1f}", flush=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,2000,4000,6000")
    ap.add_argument("--max_side", type=int, default=None)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--photo", default=os.path.join(here, "..", "..", "shared", "faces",
                                                    "n000050_A_0003_01.png"))
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.one, args.max_side, args.steps, args.photo)
    from common import machine

    print(f"machine: {machine()}, date: {time.strftime('%Y-%m-%d %H:%M')}, max_side="
          f"{'config' if args.max_side is None else args.max_side}, {args.steps} PGD steps\n")
    print("| photo | peak RSS (MiB) | after loading models and making the photo (MiB) | seconds (cold, with compiles) |")
    print("|---|---|---|---|")
    for size in [int(s) for s in args.sizes.split(",")]:
        cmd = [sys.executable, os.path.abspath(__file__), f"--one={size}", f"--steps={args.steps}",
               f"--photo={args.photo}"]
        if args.max_side is not None:
            cmd.append(f"--max_side={args.max_side}")
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout).stdout
        except subprocess.TimeoutExpired:
            print(f"| {size}x{size} | (over {args.timeout:.0f} s: stopped) | | |", flush=True)
            continue
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT")), None)
        if line is None:
            print(f"| {size}x{size} | (failed) | | |", flush=True)
            continue
        kv = dict(p.split("=") for p in line.split()[1:])
        print(f"| {size}x{size} | {kv['peak_mib']} | {kv['base_mib']} | {kv['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
