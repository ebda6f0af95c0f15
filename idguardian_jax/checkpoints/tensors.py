"""Checkpoint tensors in the formats upstream projects publish, as numpy, plus the mapping from a
PyTorch state dict onto Flax variables.

Readers: .safetensors (the `safetensors` package; no torch), .npz (`allow_pickle=False`), and
PyTorch files (`torch.load(weights_only=True)`, torch imported only then). Nothing is unpickled
beyond what torch's weights-only loader allows. Every failure is a `CheckpointError` whose message
is one line: the file, then what is wrong.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

class CheckpointError(ValueError):
    """A checkpoint file that is damaged, of another network, or unreadable here. The message is
    one line: the file, then what is wrong."""


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}".rstrip(": ")


def read_json_config(path: str, what: str = "a model config") -> dict:
    """A JSON object from a config file (config.json, scheduler_config.json, an .index.json);
    CheckpointError naming the file when it is not JSON or not an object."""
    try:
        with open(path) as fh:
            d = json.load(fh)
    except ValueError as e:
        raise CheckpointError(f"{path}: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: not {what} (a JSON {type(d).__name__})")
    return d


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays (bf16 as ml_dtypes.bfloat16)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = os.fspath(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors file, or truncated ({_first_line(e)})") from None


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write numpy arrays as a .safetensors file, atomically."""
    from safetensors.numpy import save

    blob = save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                metadata=None if metadata is None else {str(k): str(v) for k, v in metadata.items()})
    _atomic_write(path, lambda fh: fh.write(blob))


def _atomic_write(path, write: Callable[[Any], Any]) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _unwrap_state_dict(obj: Any, path: str) -> dict[str, Any]:
    """The tensor dict inside a torch checkpoint: the object itself, or a dict under one of the
    usual keys (arcface_torch training checkpoints use 'state_dict_backbone')."""
    if isinstance(obj, Mapping):
        for key in ("state_dict_backbone", "state_dict", "model", "backbone"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap_state_dict(obj[key], path)
        return dict(obj)
    raise CheckpointError(f"{path}: not a state dict: the file holds a {type(obj).__name__}")


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A PyTorch state dict file (torch.save) as float32/int numpy arrays. Needs torch."""
    path = os.fspath(path)
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading a PyTorch checkpoint needs torch (pip install torch); or convert it "
            f"once where torch is installed: python -m encoders.facenet convert SRC DST.safetensors"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for damaged / foreign files
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    out = {}
    for k, v in _unwrap_state_dict(obj, path).items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            out[str(k)] = (v.float() if v.is_floating_point() else v).numpy()
    return out


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable .npz file ({_first_line(e)})") from None


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """name -> array from a .safetensors, .npz or PyTorch (.pt/.pth/.bin/.ckpt) file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        sd = read_safetensors(path)
    elif ext == ".npz":
        sd = read_npz(path)
    else:
        sd = read_torch_state_dict(path)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def write_tensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray]) -> None:
    """Write a state dict as .safetensors or .npz (by the extension)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    if ext == ".safetensors":
        write_safetensors(path, tensors, {"format": "pt"})
    elif ext == ".npz":
        _atomic_write(path, lambda fh: np.savez(fh, **tensors))
    else:
        raise ValueError(f"{path}: write .safetensors or .npz")


def _torch_module_path(parts: Sequence[str]) -> list[str]:
    """'repeat_1', '0', 'branch1', '1' -> 'repeat_1_0', 'branch1_1' (Sequential indices merge)."""
    out: list[str] = []
    for p in parts:
        if p.isdigit() and out:
            out[-1] = f"{out[-1]}_{p}"
        else:
            out.append(p)
    return out


def _flax_to_torch_name(path: Sequence[str], leaf: str) -> str:
    mod = ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in path)
    return f"{mod}.{leaf}"


def state_dict_to_variables(sd: Mapping[str, np.ndarray], expected: Mapping[str, Any], path: str,
                            what: str, ignore: Callable[[str], bool] = lambda k: False
                            ) -> dict[str, Any]:
    """Map a PyTorch state dict onto Flax variables of the shapes in `expected`
    ({'params': ..., 'batch_stats': ...} of ShapeDtypeStructs), with the module naming used by
    the encoders here: torch 'a.0.b.weight' -> Flax module path ('a_0', 'b'); conv weights
    OIHW -> HWIO, linear weights (out, in) -> (in, out), batch norm weight/bias/running_mean/
    running_var -> params scale/bias, batch_stats mean/var, PReLU weight -> params 'slope' (C,).
    Raises CheckpointError naming the file and the first missing / unexpected / misshapen key."""
    params = expected.get("params", {})
    stats = expected.get("batch_stats", {})

    def node(tree, mod):
        for p in mod:
            if not isinstance(tree, Mapping) or p not in tree:
                return None
            tree = tree[p]
        return tree if isinstance(tree, Mapping) else None

    out: dict[str, Any] = {"params": {}, "batch_stats": {}} if stats else {"params": {}}
    unexpected = []
    for key, value in sd.items():
        if key.endswith("num_batches_tracked") or ignore(key):
            continue
        *mod_parts, leaf = key.split(".")
        mod = _torch_module_path(mod_parts)
        pnode, snode = node(params, mod), node(stats, mod)
        coll, name, v = "params", None, np.asarray(value)
        if leaf in ("running_mean", "running_var") and snode is not None:
            coll, name = "batch_stats", "mean" if leaf == "running_mean" else "var"
        elif pnode is not None and leaf == "weight":
            if "kernel" in pnode:
                name = "kernel"
                v = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T
            elif "scale" in pnode:
                name = "scale"
            elif "slope" in pnode:
                name, v = "slope", v.reshape(-1)
        elif pnode is not None and leaf == "bias" and "bias" in pnode:
            name = "bias"
        if name is None:
            unexpected.append(key)
            continue
        want = (stats if coll == "batch_stats" else params)
        want = node(want, mod)[name]
        if tuple(v.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{path}: not {what}: {key!r} has shape {tuple(np.shape(value))}, expected "
                f"{_torch_shape(want.shape, name)}")
        dst = out[coll]
        for p in mod:
            dst = dst.setdefault(p, {})
        dst[name] = v.astype(np.float32)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{path}: not {what}: unexpected key {unexpected[0]!r}{more}")
    missing = []
    for coll, tree in (("params", params), ("batch_stats", stats)):
        for kpath, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = [k.key for k in kpath]
            got = out.get(coll, {})
            for k in keys:
                got = got.get(k, {}) if isinstance(got, Mapping) else {}
            if isinstance(got, Mapping):
                leaf = {"kernel": "weight", "scale": "weight", "slope": "weight", "mean":
                        "running_mean", "var": "running_var"}.get(keys[-1], keys[-1])
                missing.append(_flax_to_torch_name(keys[:-1], leaf))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: not {what}: missing key {missing[0]!r}{more}")
    return out


def _torch_shape(shape, name) -> tuple:
    shape = tuple(shape)
    if name == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if name == "kernel" and len(shape) == 2:
        return shape[::-1]
    return shape


def count_params(variables: Mapping[str, Any]) -> int:
    """Number of trainable parameters ('params' collection; batch-norm statistics excluded),
    the number torch's `parameters()` counts."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variables["params"])))


def bilinear_resize(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """Bilinear resize of NHWC images as torch F.interpolate(mode='bilinear',
    align_corners=False) does (half-pixel centres, no antialiasing); the identity when the size
    already matches. Differentiable."""
    h, w = (size, size) if isinstance(size, int) else size
    if x.shape[1:3] == (h, w):
        return x
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear", antialias=False)


# ------------------------------------------------------------------------------------------
# Our converted format: a Flax parameter tree in one .safetensors file
# ------------------------------------------------------------------------------------------
FLAX_FORMAT = "idguardian-flax-v1"


def save_flax(path: str | os.PathLike, tree: Mapping[str, Any], encoder: str,
              meta: Mapping[str, Any] | None = None) -> None:
    """A nested dict of arrays (Flax variables) as one .safetensors file, keys 'a/b/c'; the
    encoder name and its JSON-able metadata (e.g. a model config) go in the file's metadata."""
    import json

    from idguardian_jax.checkpoints import cache

    flat = {k: np.asarray(v) for k, v in cache.flatten(dict(tree)).items()}
    write_safetensors(path, flat, {"format": FLAX_FORMAT, "encoder": encoder,
                                   "meta": json.dumps(dict(meta or {}))})


def read_flax(path: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(encoder name, Flax tree, metadata) of a file written by save_flax; None for other files."""
    import json

    from safetensors import SafetensorError, safe_open

    from idguardian_jax.checkpoints import cache

    path = os.fspath(path)
    if not (os.path.isfile(path) and path.endswith(".safetensors")):
        return None
    try:
        with safe_open(path, framework="numpy") as f:
            md = f.metadata() or {}
            if md.get("format") != FLAX_FORMAT:
                return None
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors file, or truncated ({_first_line(e)})") from None
    return md.get("encoder", ""), cache.unflatten(flat), json.loads(md.get("meta") or "{}")
