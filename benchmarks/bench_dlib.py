r"""dlib models: start-up (parse vs cached) and descriptor forward / forward+backward per chip.

  python benchmarks/bench_dlib.py
Prints a Markdown table to paste into BENCHMARKS.md.
"""
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, timeit  # noqa: E402

_LOAD = ("import time; t=time.perf_counter(); "
         "from idguardian_jax.faces import analyze; analyze.FaceModels.load(); "
         "print(time.perf_counter()-t)")


def start_times():
    """Seconds to load all three dlib models in a fresh process: empty cache, then cached."""
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, IDGUARDIAN_CACHE_DIR=d)
        run = lambda: float(subprocess.run([sys.executable, "-c", _LOAD], env=env, check=True,  # noqa: E731
                                           capture_output=True, text=True).stdout.split()[-1])
        return run(), run()


def descriptor_times(batch: int):
    from idguardian_jax.encoders import dlib_resnet

    params = dlib_resnet.load()
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(batch, 150, 150, 3)).astype(np.float32))
    fwd = jax.jit(lambda x: dlib_resnet.apply(params, x))
    fb = jax.jit(jax.grad(lambda x: jnp.sum(dlib_resnet.apply(params, x) ** 2)))
    return timeit(lambda: fwd(x)) / batch, timeit(lambda: fb(x)) / batch


def main():
    cold, warm = start_times()
    print(f"machine: {machine()}, date: {time.strftime('%Y-%m-%d')}\n")
    print("| measurement | seconds |\n|---|---|")
    print(f"| load detector + landmarks + descriptor, empty cache (parse) | {cold:.2f} |")
    print(f"| load detector + landmarks + descriptor, cached | {warm:.2f} |")
    for b in (1, 8):
        f, fb = descriptor_times(b)
        print(f"| descriptor forward per chip (batch {b}) | {f:.4f} |")
        print(f"| descriptor forward+backward per chip (batch {b}) | {fb:.4f} |")


if __name__ == "__main__":
    main()
