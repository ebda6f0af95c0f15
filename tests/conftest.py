"""Shared test fixtures: paths to ../shared/faces (used by path, never copied)."""
import json
import os
import shutil
import sys
import tempfile

import pytest

# One parsed-weight cache and one XLA compilation cache for the whole run, shared by every test,
# every xdist worker and every subprocess the tests start (set before JAX is imported). CI points
# IDGUARDIAN_CACHE_DIR at a folder of its own; locally a temporary folder is used, never the
# user's cache.
# The folder this process made (None in xdist workers, which inherit the controller's variable);
# removed when the run ends (each run used to leave 190-450 MB under /tmp).
OWN_CACHE_DIR = None
if "IDGUARDIAN_CACHE_DIR" not in os.environ:
    OWN_CACHE_DIR = tempfile.mkdtemp(prefix="idguardian-test-cache-")
    os.environ["IDGUARDIAN_CACHE_DIR"] = OWN_CACHE_DIR
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.environ["IDGUARDIAN_CACHE_DIR"], "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACES_DIR = os.environ.get("IDGUARDIAN_FACES_DIR", os.path.join(ROOT, "..", "shared", "faces"))


@pytest.fixture(scope="session")
def faces_dir():
    if not os.path.isfile(os.path.join(FACES_DIR, "dlib_reference.json")):
        pytest.skip(f"real face photos not found at {FACES_DIR} (set IDGUARDIAN_FACES_DIR)")
    return FACES_DIR


@pytest.fixture(scope="session")
def dlib_reference(faces_dir):
    with open(os.path.join(faces_dir, "dlib_reference.json")) as fh:
        return json.load(fh)


def pytest_unconfigure(config):
    """Remove the temporary cache this run made (the controller only: workers share it)."""
    if OWN_CACHE_DIR and not hasattr(config, "workerinput"):
        shutil.rmtree(OWN_CACHE_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _torch_reference_without_onednn():
    """torch's oneDNN backward kernels segfault on some CPUs (reference_models.disable_onednn);
    every torch reference in the suite runs on torch's native kernels."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "backends"):
        torch.backends.mkldnn.enabled = False
    yield
