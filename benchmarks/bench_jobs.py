r"""Dataset-job throughput versus processes x devices (correct scaling, not speed, on a CPU).

  python benchmarks/bench_jobs.py --photos=16 [--faces_dir=../shared/faces]
Makes N 256 px face photos in a temp folder (from the shared photos), protects them with
configs/tiny.py as 1x1, 1x4, 1x8 and 2x4 (processes x forced CPU devices), checks that every run
writes byte-identical photos, and reports photos/s and the time each process waited for its input
pipeline (a pipeline that keeps up waits ~0 s after the first photos).
"""
import argparse
import hashlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=16)
    ap.add_argument("--faces_dir", default=os.path.join(ROOT, "..", "shared", "faces"))
    ap.add_argument("--layouts", default="1x1,1x4,1x8,2x4")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    src = os.path.join(tmp, "in")
    os.makedirs(src)
    names = sorted(n for n in os.listdir(args.faces_dir) if n.startswith("n000050") and "_chip" not in n)
    for i in range(args.photos):
        im = Image.open(os.path.join(args.faces_dir, names[i % len(names)])).convert("RGB")
        im = im.resize((256, 256), Image.LANCZOS).rotate((i // len(names)) * 3)
        im.save(os.path.join(src, f"{i:04d}.png"))
    config = os.path.join(ROOT, "configs", "tiny.py")
    results, digests = [], {}
    for layout in args.layouts.split(","):
        n_proc, n_dev = (int(v) for v in layout.split("x"))
        out = os.path.join(tmp, f"out_{layout}")
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={n_dev}")
        cmd = [sys.executable, "-m", "idguardian_jax.cli.protect", f"--config={config}",
               f"--input={src}", f"--output={out}", "--progress=false",
               f"--config.batch.per_device=1"]
        t = time.time()
        if n_proc == 1:
            logs = [subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout]
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            procs = [subprocess.Popen(cmd + [f"--coordinator_address=127.0.0.1:{port}",
                                             f"--num_processes={n_proc}", f"--process_id={i}"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True) for i in range(n_proc)]
            logs = [p.communicate()[0] for p in procs]
        wall = time.time() - t
        waits = [float(m) for log in logs for m in re.findall(r"waiting for input ([\d.]+) s", log)]
        busy = [float(m) for log in logs for m in re.findall(r"protecting ([\d.]+) s", log)]
        h = hashlib.sha256()
        for root, _, files in sorted(os.walk(out)):
            for f in sorted(files):
                if f.endswith(".png"):
                    h.update(Image.open(os.path.join(root, f)).convert("RGB").tobytes())
        digests[layout] = h.hexdigest()
        results.append((layout, wall, args.photos / wall, waits, busy))
    same = len(set(digests.values())) == 1
    print(f"{args.photos} photos (256 px, one face), configs/tiny.py, {time.strftime('%Y-%m-%d')}; "
          f"outputs identical across layouts: {same}\n")
    print("| processes x devices | wall s (incl. start + compile) | photos/s | input wait s per process | protect s per process |")
    print("|---|---|---|---|---|")
    for layout, wall, rate, waits, busy in results:
        print(f"| {layout} | {wall:.1f} | {rate:.2f} | {', '.join(f'{w:.1f}' for w in waits)} | "
              f"{', '.join(f'{b:.1f}' for b in busy)} |")


if __name__ == "__main__":
    main()
