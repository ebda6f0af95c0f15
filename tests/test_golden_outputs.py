"""Protected photos pixel-identical to a recorded run: a guard against unintended changes.

The sha256 of idguardian-protect's outputs with configs/tiny.py on three shared photos were first
recorded with the code before the stage refactor (commit 15817c2, issue 14) and held through it;
they were recorded again when the clean embeddings became compiled programs (encoders.embed_uint8,
whose last bits differ from op-by-op evaluation). A change that moves any output pixel must say
so and record again. The test compares the decoded pixels (the files also embed the settings
hash, which changes whenever a config field is added). Byte identity holds only where the
floating-point arithmetic is the same: a fingerprint (dlib's ResNet and its input gradient on a
fixed chip, jitted) recorded with the hashes tells whether this machine computes as the
recording one did; where it does not, the test is skipped with that reason
(tests/test_dlib_resnet.py and the parity tests check those numbers to tolerance everywhere).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from idguardian_jax.configs import tiny
from idguardian_jax import protect

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden_outputs.json")


def fingerprint() -> str:
    """sha256 of dlib's descriptor of a fixed random chip and of its input gradient (jitted)."""
    import jax
    import jax.numpy as jnp

    from idguardian_jax import encoders

    enc = encoders.get("dlib_resnet")
    params = encoders.load_params("dlib_resnet")
    chip = np.random.default_rng(0).uniform(0, 1, (1, 150, 150, 3)).astype(np.float32)
    desc = jax.jit(enc.apply)(params, jnp.asarray(chip))
    grad = jax.jit(jax.grad(lambda c: jnp.sum(enc.apply(params, c) ** 3)))(jnp.asarray(chip))
    return hashlib.sha256(np.asarray(desc).tobytes() + np.asarray(grad).tobytes()).hexdigest()


@pytest.mark.slow
def test_outputs_are_byte_identical_to_before_the_refactor(faces_dir, tmp_path):
    with open(GOLDEN) as fh:
        gold = json.load(fh)
    here = fingerprint()
    if here != gold["fingerprint"]:
        pytest.skip(f"this machine's float32 results differ from the recording machine's "
                    f"(fingerprint {here[:12]} vs {gold['fingerprint'][:12]}): byte identity "
                    f"is only defined where the arithmetic is the same")
    inputs = [(os.path.join(faces_dir, name), name) for name in sorted(gold["pixels_sha256"])]
    protect.protect_files(inputs, str(tmp_path / "out"), tiny.get_config(), progress=False)
    got = {}
    for name in gold["pixels_sha256"]:
        out = tmp_path / "out" / (os.path.splitext(name)[0] + ".png")
        with Image.open(out) as im:
            assert "idguardian" in im.info  # the provenance is written (its settings hash may change)
            got[name] = hashlib.sha256(np.asarray(im).tobytes()).hexdigest()  # every channel written
    assert got == gold["pixels_sha256"]


if __name__ == "__main__":  # python tests/test_golden_outputs.py: the fingerprint of this machine
    print(fingerprint())
