"""Sample photos that ship with installable packages, named `sample:<name>` on command lines.

`sample:astronaut` is the portrait of astronaut Eileen Collins (NASA, public domain) that
scikit-image ships in its data module (`pip install idguardian-jax[sample]`). Nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import os

PREFIX = "sample:"
_SKIMAGE_FILES = {"astronaut": "astronaut.png"}


def is_sample(path: str) -> bool:
    return path.startswith(PREFIX)


def resolve(path: str) -> str:
    """'sample:astronaut' -> absolute path of the file; raises FileNotFoundError with a hint."""
    name = path[len(PREFIX):]
    if name not in _SKIMAGE_FILES:
        raise FileNotFoundError(f"{path}: unknown sample; available: "
                                f"{', '.join(PREFIX + n for n in sorted(_SKIMAGE_FILES))}")
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{path}: needs scikit-image (pip install 'idguardian-jax[sample]')")
    full = os.path.join(list(spec.submodule_search_locations)[0], "data", _SKIMAGE_FILES[name])
    if not os.path.isfile(full):
        raise FileNotFoundError(f"{path}: {full} is missing from the installed scikit-image")
    return full
