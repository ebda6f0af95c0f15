r"""The MMOD detector's achieved FLOP/s against the machine's matmul FLOP/s (issue 13, scope 4).

  python benchmarks/bench_detect_flops.py [--photo=PATH] [--repeat=3]
FLOPs: 2 * multiply-adds of every convolution over dlib's whole output extents (detect._valid_sizes)
for the photo at upsample 1 (what detect.detect_faces computes; the bucket padding and band overlap
it also computes are not counted). Matmul: float32 2048x2048 @ 2048x2048 in XLA, median of --repeat.
Also the bounded detector on the same photo (detect_regions.detect_faces_bounded, max_side 1024).
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


def conv_flops(layers, params, rows: int, cols: int) -> float:
    from idguardian_jax.faces import detect as D

    sizes = D._valid_sizes(layers, rows, cols)
    total, ci = 0.0, 0
    for i, spec in enumerate(layers):
        if spec[0] != "conv":
            continue
        kh, kw, cin, cout = np.asarray(params["layers"][f"{i:02d}"]["kernel"]).shape
        out_r, out_c = sizes[ci + 1]
        total += 2.0 * out_r * out_c * kh * kw * cin * cout
        ci += 1
    return total


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--photo", default=os.path.join(here, "..", "..", "shared", "faces",
                                                    "n000050_A_0003_01.png"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from idguardian_jax import images
    from idguardian_jax.faces import detect as D, detect_regions as R

    det = D.load_detector()
    rgb = images.read_photo(args.photo).rgb
    geo = R.PyramidGeometry(*rgb.shape[:2], det, 1)
    flops = conv_flops(det.layers, det.params, geo.rows, geo.cols)
    a = jnp.asarray(np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32))
    mm = jax.jit(lambda x: x @ x)
    t_mm = timeit(lambda: mm(a), repeat=args.repeat)
    mm_flops = 2.0 * 2048 ** 3 / t_mm
    t_full = timeit(lambda: D.score_map(rgb, det, 1)[0], repeat=args.repeat)
    t_det = timeit(lambda: D.detect_faces(rgb, det, 1), repeat=args.repeat, warmup=0)
    t_bnd = timeit(lambda: R.detect_faces_bounded(rgb, det, 1024, 1), repeat=args.repeat)
    print(f"machine: {machine()}, date: {time.strftime('%Y-%m-%d %H:%M')}, photo "
          f"{os.path.basename(args.photo)} {rgb.shape[1]}x{rgb.shape[0]}, canvas {geo.cols}x{geo.rows}\n")
    print("| measurement | value |\n|---|---|")
    print(f"| float32 matmul 2048^3 | {mm_flops / 1e9:.1f} GFLOP/s |")
    print(f"| detector convolutions on the full canvas (upsample 1) | {flops / 1e9:.1f} GFLOP |")
    print(f"| score_map (canvas + CNN), warm | {t_full:.2f} s = {flops / t_full / 1e9:.1f} GFLOP/s "
          f"({flops / t_full / mm_flops:.0%} of matmul) |")
    print(f"| detect_faces, full canvas | {t_det:.2f} s |")
    print(f"| detect_faces_bounded, max_side 1024 | {t_bnd:.2f} s |")


if __name__ == "__main__":
    main()
