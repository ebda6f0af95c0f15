"""On-disk cache of parsed weights, so later starts skip parsing.

Parsed parameters are nested dicts of numpy arrays (plus JSON-able metadata). They are stored as
one `.npz` per (source file content, parser name, parser version) in the cache folder:
`$IDGUARDIAN_CACHE_DIR`, else `$XDG_CACHE_HOME/idguardian_jax`, else `~/.cache/idguardian_jax`.
Cache files are written atomically and read with `allow_pickle=False`; a damaged cache entry is
ignored and rebuilt. If the folder is not writable the cache is silently skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Callable

import numpy as np

_META_KEY = "__meta__"


def cache_dir() -> str:
    d = os.environ.get("IDGUARDIAN_CACHE_DIR")
    if d:
        return d
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "idguardian_jax")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """{'a': {'b': x}} -> {'a/b': x}. Leaves must be arrays."""
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        if "/" in k:
            raise ValueError(f"key {k!r} contains '/'")
        name = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, name))
        else:
            out[name] = np.asarray(v)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, v in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def save_npz_atomic(path: str, arrays: dict[str, np.ndarray], meta: Any = None) -> None:
    """Write arrays (and JSON metadata) to `path` atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = dict(arrays)
    if meta is not None:
        payload[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path: str) -> tuple[dict[str, np.ndarray], Any]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != _META_KEY}
        meta = json.loads(bytes(z[_META_KEY]).decode()) if _META_KEY in z.files else None
    return arrays, meta


def cached_parse(
    source: str | os.PathLike,
    parser_name: str,
    parser_version: int,
    parse: Callable[[str], tuple[dict[str, Any], Any]],
    use_cache: bool = True,
) -> tuple[dict[str, Any], Any]:
    """Returns parse(source) -> (tree of arrays, metadata), cached by the file's content hash."""
    source = os.fspath(source)
    if not use_cache:
        return parse(source)
    key = f"{parser_name}-v{parser_version}-{file_sha256(source)[:32]}.npz"
    path = os.path.join(cache_dir(), key)
    if os.path.exists(path):
        try:
            arrays, meta = load_npz(path)
            return unflatten(arrays), meta
        except Exception:  # damaged cache entry: rebuild it below
            pass
    tree, meta = parse(source)
    try:
        save_npz_atomic(path, flatten(tree), meta)
    except OSError:
        pass  # read-only cache folder: run without cache
    return tree, meta
