r"""Protection speed: seconds per 512x512 one-face photo at default settings, compile separately.

  python benchmarks/bench_protect.py [--photo=PATH] [--steps=N] [--config=robust] [--repeat=5]
      [--installed_encoders=none] [--flipped_kernels=false]
Default photo: ../shared/faces/n000050_A_0003_01.png (512x512, one face), else skimage's astronaut.
Reports: face finding (detection + landmarks + clean embedding), compile of the step program,
per PGD step, whole protection (warm), and the step cost relative to the sum of the ensemble's
encoders' forward+backward on one chip each (the parameters passed as arguments, as the step
gets them), PGD runs and encoder timings interleaved round by round (min and median).
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
    ap.add_argument("--repeat", type=int, default=5,
                    help="warm PGD runs, each followed by a round of the encoders' timings")
    ap.add_argument("--installed_encoders", default=None,
                    help="objective.installed_encoders ('none': dlib alone)")
    ap.add_argument("--flipped_kernels", default="true", choices=("true", "false"),
                    help="false: dlib's ResNet without its kernels' flipped copies (A/B of "
                         "encoders/frozen_conv.py)")
    args = ap.parse_args()
    import importlib

    from idguardian_jax import images, protect, samples

    if args.flipped_kernels == "false":
        from idguardian_jax.encoders import dlib_resnet

        dlib_resnet.derive = lambda net: {}  # load() then gives no 'derived' kernels

    path = args.photo if os.path.exists(args.photo) else samples.resolve("sample:astronaut")
    rgb = images.read_photo(path).rgb
    if rgb.shape[:2] != (512, 512):
        from PIL import Image

        rgb = np.asarray(Image.fromarray(rgb).resize((512, 512), Image.LANCZOS))
    cfg = importlib.import_module(f"idguardian_jax.configs.{args.config}").get_config()
    if args.steps:
        cfg.attack.steps = args.steps
    if args.installed_encoders is not None:
        cfg.objective.installed_encoders = args.installed_encoders
    pr = protect.Protector(cfg)
    t = time.perf_counter()
    prep = pr.prepare(0, rgb)
    t_find = time.perf_counter() - t
    steps = cfg.attack.steps
    # first call: compiles init/step/finish; the later calls are warm
    t = time.perf_counter()
    res = pr.protect_arrays([rgb], measure=False, prepared=[prep])
    t_first = time.perf_counter() - t
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
        fbs[name] = jax.jit(jax.grad(lambda x, p, enc=enc: jnp.sum(enc.apply(p, x) ** 2))), params, x
    # this VM's speed drifts by +-15 % and more between minutes: PGD runs and the encoders'
    # timings are interleaved, round by round, and both reported as min and median over rounds
    pgd_runs, enc_runs = [], {name: [] for name in fbs}
    for _ in range(max(1, args.repeat)):
        t = time.perf_counter()
        pr.protect_arrays([rgb], measure=False, prepared=[prep])
        pgd_runs.append(time.perf_counter() - t)
        for name, (fb, params, x) in fbs.items():
            enc_runs[name].append(timeit(lambda: fb(x, params), stat="min"))
    t_warm = min(pgd_runs)
    compile_s = t_first - t_warm
    fb_min = {n: min(v) for n, v in enc_runs.items()}
    fb_med = {n: float(np.median(v)) for n, v in enc_runs.items()}
    t_fb, t_fb_med = sum(fb_min.values()), sum(fb_med.values())
    per_step, per_step_med = t_warm / steps, float(np.median(pgd_runs)) / steps
    print(f"machine: {machine()}, date: {time.strftime('%Y-%m-%d')}, photo: "
          f"{os.path.basename(path)} 512x512, {len(prep.faces)} face, {steps} steps, "
          f"loop={pr.cfg.resolved_loop()}, configs/{args.config}.py, encoders: "
          f"{', '.join(pr.embedding_names)}\n")
    print("| measurement | seconds |\n|---|---|")
    print(f"| find faces + clean embedding (detector, landmarks, chip, descriptor) | {t_find:.2f} |")
    print(f"| compile (first call minus warm call) | {compile_s:.2f} |")
    print(f"| PGD, warm, whole photo ({steps} steps; min of {len(pgd_runs)} runs) | {t_warm:.2f} |")
    print(f"| per PGD step (min / median of the runs) | {per_step:.4f} / {per_step_med:.4f} |")
    print(f"| measure after (find faces again, every encoder) | {t_measure:.2f} |")
    print(f"| total per photo, warm (find + PGD + measure) | {t_find + t_warm + t_measure:.2f} |")
    for name in fbs:
        print(f"| {name} forward+backward, one chip (min / median of rounds) | "
              f"{fb_min[name]:.4f} / {fb_med[name]:.4f} |")
    print(f"| sum of the encoders' forward+backward (min / median) | {t_fb:.4f} / {t_fb_med:.4f} |")
    print(f"| step / that sum (min / min; median / median) | {per_step / t_fb:.2f}x; "
          f"{per_step_med / t_fb_med:.2f}x |")


if __name__ == "__main__":
    main()
