r"""Every identity encoder: forward and forward+backward seconds per image at its input size.

  python tests/reference_models.py clip vit-h /tmp/real/clip_h        # random weights, real sizes
  python tests/reference_models.py facenet /tmp/real/facenet.pt
  python tests/reference_models.py arcface-onnx r100 /tmp/real/r100.onnx
  python tests/reference_models.py arcface-pt r50 /tmp/real/r50.pth
  python tests/reference_models.py clip vit-l /tmp/real/clip_l
  python benchmarks/bench_encoders.py --dir=/tmp/real [--batch=1]
Speed does not depend on the weight values. Prints a Markdown table for BENCHMARKS.md.
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, timeit  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/real")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from idguardian_jax import encoders

    rows = [("dlib_resnet", None), ("facenet", "facenet.pt"), ("arcface", "r50.pth"),
            ("arcface", "r100.onnx"), ("clip_vit", "clip_l"), ("clip_vit", "clip_h")]
    print(f"machine: {machine()}, date: {time.strftime('%Y-%m-%d')}, batch {args.batch}\n")
    print("| encoder | checkpoint | input | parameters | forward s/image | forward+backward s/image |")
    print("|---|---|---|---|---|---|")
    for name, ck in rows:
        path = None if ck is None else os.path.join(args.dir, ck)
        if path is not None and not os.path.exists(path):
            continue
        enc = encoders.get(name)
        params = encoders.load_params(name, path)
        module = sys.modules[enc.load.__module__]
        n = module.param_count(params)
        x = jnp.asarray(np.random.default_rng(0).uniform(
            size=(args.batch, enc.chip_size, enc.chip_size, 3)).astype(np.float32))
        fwd = jax.jit(lambda p, x: enc.apply(p, x))
        fb = jax.jit(jax.grad(lambda x, p: jnp.sum(enc.apply(p, x) ** 2)))
        tf = timeit(lambda: fwd(params, x), repeat=args.repeat) / args.batch
        tb = timeit(lambda: fb(x, params), repeat=args.repeat) / args.batch
        print(f"| {name} | {ck or 'bundled'} | {enc.chip_size} | {n:,} | {tf:.4f} | {tb:.4f} |",
              flush=True)


if __name__ == "__main__":
    main()
