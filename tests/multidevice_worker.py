"""Run by test_multidevice.py in a fresh process (XLA_FLAGS set before jax starts).

usage: python tests/multidevice_worker.py OUT.json PHOTO...
Protects the photos with configs/tiny.py on all local devices and writes the devices and the
sha256 of each protected photo.
"""
import hashlib
import json
import sys

import jax
import numpy as np
from PIL import Image

from idguardian_jax.configs import tiny
from idguardian_jax import protect


def main():
    out, paths = sys.argv[1], sys.argv[2:]
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    results = protect.protect(photos, config=tiny.get_config())
    with open(out, "w") as fh:
        json.dump({"devices": jax.device_count(),
                   "sha256": [hashlib.sha256(r.protected.tobytes()).hexdigest() for r in results]},
                  fh)


if __name__ == "__main__":
    main()
