"""1 device and 8 forced host devices give byte-identical protected photos."""
import json
import os
import subprocess
import sys

import pytest

WORKER = os.path.join(os.path.dirname(__file__), "multidevice_worker.py")


def _run(tmp_path, n_devices, photos):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={n_devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = tmp_path / f"out{n_devices}.json"
    subprocess.run([sys.executable, WORKER, str(out)] + photos, check=True, env=env,
                   timeout=900)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_one_and_eight_devices_identical(tmp_path, faces_dir):
    # three photos whose face regions share one shape bucket (320 px): each process compiles the
    # loop once (a second bucket cost ~15 s of compilation per process)
    photos = [os.path.join(faces_dir, n) for n in
              ("n000050_A_0003_01.png", "n000050_A_0010_01.png", "n000050_A_0075_01.png")]
    one = _run(tmp_path, 1, photos)
    eight = _run(tmp_path, 8, photos)
    assert one["devices"] == 1 and eight["devices"] == 8
    assert one["sha256"] == eight["sha256"]
