"""Shared test fixtures: paths to ../shared/faces (used by path, never copied)."""
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACES_DIR = os.environ.get("IDGUARDIAN_FACES_DIR", os.path.join(ROOT, "..", "shared", "faces"))


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Parsed-weight cache in a temp folder, so tests never touch the user's cache."""
    if "IDGUARDIAN_CACHE_DIR" not in os.environ:
        os.environ["IDGUARDIAN_CACHE_DIR"] = str(tmp_path_factory.mktemp("idguardian-cache"))
    yield


@pytest.fixture(scope="session")
def faces_dir():
    if not os.path.isfile(os.path.join(FACES_DIR, "dlib_reference.json")):
        pytest.skip(f"real face photos not found at {FACES_DIR} (set IDGUARDIAN_FACES_DIR)")
    return FACES_DIR


@pytest.fixture(scope="session")
def dlib_reference(faces_dir):
    with open(os.path.join(faces_dir, "dlib_reference.json")) as fh:
        return json.load(fh)
