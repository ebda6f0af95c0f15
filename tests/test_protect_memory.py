"""Peak memory of protecting a large photo is set by the detection canvas and the faces (issue 13).

A subprocess loads the models, protects a 1500x1500 synthetic one-face photo once (compiling
every program the larger photo needs: same small canvas, same face, same PGD region), then caps
its address space (RLIMIT_AS) at what it has mapped plus CAP_MIB and protects a 3000x3000 photo
with the same face. The full-canvas detector (detect.max_side=0, the code before issue 13) needs
~2 GiB more for that photo (a 6001x6002 upsampled image, a ~6000x9600x3 float32 canvas and
~0.8 GB of first-layer activations per band) and fails under the cap; the bounded detector
(configs/default.py) passes.
"""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO = os.path.join(os.environ.get("IDGUARDIAN_FACES_DIR", os.path.join(ROOT, "..", "shared", "faces")),
                     "n000050_A_0003_01.png")
# Address space allowed above what the warmed-up process has mapped. The bounded run of the
# 3000x3000 photo measured ~+200 MiB of RSS; the full canvas needs > 2 GiB.
CAP_MIB = 768

SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    sys.path.insert(0, {bench!r})
    from common import synthetic_photo
    from idguardian_jax.configs import default
    from idguardian_jax import images, protect

    cfg = default.get_config()
    cfg.attack.steps = 1
    cfg.detect.max_side = {max_side}
    face = images.read_photo({photo!r}).rgb
    pr = protect.Protector(cfg)
    pr.protect_arrays([synthetic_photo(face, 1500, 1500)])   # compiles everything
    big = synthetic_photo(face, 3000, 3000)
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    cap = vm + {cap} * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    res, = pr.protect_arrays([big])
    print("OK", res.status, len(res.faces), res.faces[0].found_again, flush=True)
""")


def _run(max_side: int) -> subprocess.CompletedProcess:
    code = SCRIPT.format(bench=os.path.join(ROOT, "benchmarks"), photo=PHOTO, max_side=max_side,
                         cap=CAP_MIB)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


@pytest.mark.faces
def test_large_photo_protects_under_a_memory_cap():
    if not os.path.isfile(PHOTO):
        pytest.skip(f"real face photo not found at {PHOTO}")
    out = _run(1024)
    assert out.returncode == 0 and "OK protected 1 True" in out.stdout, out.stderr[-2000:]


@pytest.mark.faces
@pytest.mark.slow
def test_full_canvas_detector_exceeds_the_cap():
    """The cap is meaningful: the full-canvas detector (before issue 13) does not fit under it."""
    if not os.path.isfile(PHOTO):
        pytest.skip(f"real face photo not found at {PHOTO}")
    out = _run(0)
    # measured: numpy's MemoryError for the (21592, 6144, 3) float32 canvas (1.48 GiB)
    assert out.returncode != 0 and "OK" not in out.stdout
    assert any(m in out.stderr for m in ("MemoryError", "Unable to allocate", "RESOURCE_EXHAUSTED",
                                         "std::bad_alloc")), out.stderr[-2000:]
