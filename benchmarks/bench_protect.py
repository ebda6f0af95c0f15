r"""Protection speed: seconds per 512x512 one-face photo at default settings, compile separately.

  python benchmarks/bench_protect.py [--photo=PATH] [--steps=N] [--config=robust]
Default photo: ../shared/faces/n000050_A_0003_01.png (512x512, one face), else skimage's astronaut.
Reports: face finding (detection + landmarks + clean embedding), compile of the step program,
per PGD step, whole protection (warm), and the step cost relative to the sum of the ensemble's
encoders' forward+backward on one chip each.
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
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--photo", default=os.path.join(here, "..", "..", "shared", "faces",
                                                    "n000050_A_0003_01.png"))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--config", default="default", help="a module of configs/ (e.g. robust)")
    args = ap.parse_args()
    import importlib

    from idguardian_jax import images, protect, samples

    path = args.photo if os.path.exists(args.photo) else samples.resolve("sample:astronaut")
    rgb = images.read_photo(path).rgb
    if rgb.shape[:2] != (512, 512):
        from PIL import Image

        rgb = np.asarray(Image.fromarray(rgb).resize((512, 512), Image.LANCZOS))
    cfg = importlib.import_module(f"idguardian_jax.configs.{args.config}").get_config()
    if args.steps:
        cfg.attack.steps = args.steps
    pr = protect.Protector(cfg)
    t = time.perf_counter()
    prep = pr.prepare(0, rgb)
    t_find = time.perf_counter() - t
    steps = cfg.attack.steps
    # first call: compiles init/step/finish; the second call is warm
    t = time.perf_counter()
    pr.protect_arrays([rgb], measure=False, prepared=[prep])
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    res = pr.protect_arrays([rgb], measure=False, prepared=[prep])
    t_warm = time.perf_counter() - t
    compile_s = t_first - t_warm
    t = time.perf_counter()
    pr.measure(prep, res[0].protected)
    t_measure = time.perf_counter() - t
    from idguardian_jax import encoders as encoder_registry

    fbs = {}
    for name in pr.embedding_names:
        enc = encoder_registry.get(name)
        params = pr.models.params[name]
        x = jnp.asarray(np.random.default_rng(0).uniform(
            size=(1, enc.chip_size, enc.chip_size, 3)).astype(np.float32))
        fb = jax.jit(jax.grad(lambda x, enc=enc, params=params: jnp.sum(enc.apply(params, x) ** 2)))
        fbs[name] = timeit(lambda: fb(x))
    t_fb = sum(fbs.values())
    per_step = t_warm / steps
    print(f"machine: {machine()}, date: {time.strftime('%Y-%m-%d')}, photo: "
          f"{os.path.basename(path)} 512x512, {len(prep.faces)} face, {steps} steps, "
          f"loop={pr.cfg.resolved_loop()}, configs/{args.config}.py, encoders: "
          f"{', '.join(pr.embedding_names)}\n")
    print("| measurement | seconds |\n|---|---|")
    print(f"| find faces + clean embedding (detector, landmarks, chip, descriptor) | {t_find:.2f} |")
    print(f"| compile (first call minus warm call) | {compile_s:.2f} |")
    print(f"| PGD, warm, whole photo ({steps} steps) | {t_warm:.2f} |")
    print(f"| per PGD step | {per_step:.4f} |")
    print(f"| measure after (find faces again, every encoder) | {t_measure:.2f} |")
    print(f"| total per photo, warm (find + PGD + measure) | {t_find + t_warm + t_measure:.2f} |")
    for name, v in fbs.items():
        print(f"| {name} forward+backward, one chip | {v:.4f} |")
    print(f"| sum of the encoders' forward+backward | {t_fb:.4f} |")
    print(f"| step / that sum | {per_step / t_fb:.2f}x |")


if __name__ == "__main__":
    main()
