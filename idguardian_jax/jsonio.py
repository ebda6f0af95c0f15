"""Atomic writes of text/JSON outputs (temporary file in the same folder, then rename)."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    from idguardian_jax import images

    fd, tmp = tempfile.mkstemp(dir=folder, prefix=images.TMP_PREFIX, suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        images.apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")
