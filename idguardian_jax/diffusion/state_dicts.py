"""Reading diffusers' PyTorch state dicts (safetensors) onto our Flax trees, without torch.

A component folder holds config.json and diffusion_pytorch_model[.fp16].safetensors (or shards
listed in an .index.json). Tensors are read one at a time and routed by name: PyTorch 'a.N.b' ->
Flax 'a_N/b'; Linear weight (out, in) -> kernel (in, out); Conv OIHW -> HWIO; norm weight ->
scale; the BasicTransformerBlocks of a Transformer2D ('transformer_blocks.K') are stacked on a
leading axis (`Assembler`). Every key must be used and every parameter filled; failures raise
CheckpointError (one line: the file, then what is wrong).
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from idguardian_jax.checkpoints.tensors import CheckpointError, _first_line, read_json_config

WEIGHT_STEM = "diffusion_pytorch_model"


def component_folder(path: str | os.PathLike, name: str) -> str:
    """`path` itself if it is the component folder (has config.json), else path/name."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such folder")
    sub = os.path.join(path, name)
    if os.path.isdir(sub) and os.path.isfile(os.path.join(sub, "config.json")):
        return sub
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    raise FileNotFoundError(f"{path}: no {name}/config.json (expected a diffusers pipeline folder "
                            f"or its {name} folder)")


def weight_files(folder: str, stem: str = WEIGHT_STEM) -> list[str]:
    """The safetensors file(s) of a component folder: stem.safetensors, stem.fp16.safetensors,
    or the shards of stem[.fp16].safetensors.index.json."""
    for variant in ("", ".fp16", ".bf16"):
        single = os.path.join(folder, f"{stem}{variant}.safetensors")
        if os.path.isfile(single):
            return [single]
        index = os.path.join(folder, f"{stem}{variant}.safetensors.index.json")
        if os.path.isfile(index):
            d = read_json_config(index)
            try:
                shards = sorted(set(d["weight_map"].values()))
            except (KeyError, AttributeError, TypeError):
                raise CheckpointError(f"{index}: not a safetensors index (no weight_map)") from None
            files = [os.path.join(folder, s) for s in shards]
            for f in files:
                if not os.path.isfile(f):
                    raise CheckpointError(f"{index}: lists {os.path.basename(f)}, which is missing")
            return files
    bins = [f for f in os.listdir(folder) if f.endswith((".bin", ".ckpt", ".pt"))]
    hint = (f" (only safetensors are read; found {bins[0]}: re-save it with "
            f"save_pretrained(safe_serialization=True))" if bins else "")
    raise CheckpointError(f"{folder}: no {stem}.safetensors{hint}")


def iter_safetensors(files: list[str]) -> Iterator[tuple[str, str, Callable[[], np.ndarray]]]:
    """(key, file, getter) for every tensor of the files, read lazily (one tensor in memory)."""
    from safetensors import safe_open

    for f in files:
        try:
            handle = safe_open(f, framework="numpy")
            keys = list(handle.keys())
        except Exception as e:  # SafetensorError, OSError, ValueError: damaged / foreign file
            raise CheckpointError(f"{f}: not a safetensors file, or truncated ({_first_line(e)})"
                                  ) from None

        def getter(k, h=handle, f=f):
            try:
                return h.get_tensor(k)
            except Exception as e:
                raise CheckpointError(f"{f}: tensor {k!r} unreadable, file truncated? "
                                      f"({_first_line(e)})") from None

        for k in keys:
            yield k, f, (lambda k=k, g=getter: g(k))


def flat_shapes(tree, prefix=()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flat_shapes(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


STACKED = ("transformer_blocks",)


def torch_path(key: str) -> tuple[tuple[str, ...], str, int | None]:
    """'down_blocks.1.attentions.0.transformer_blocks.3.attn2.to_q.weight' ->
    (('down_blocks_1', 'attentions_0', 'transformer_blocks', 'attn2', 'to_q'), 'weight', 3)."""
    parts = key.split(".")
    mods: list[str] = []
    stack = None
    for p in parts[:-1]:
        if p.isdigit() and mods:
            if mods[-1] in STACKED and stack is None:
                stack = int(p)
                continue
            mods[-1] = f"{mods[-1]}_{p}"
        else:
            mods.append(p)
    return tuple(mods), parts[-1], stack


def _flax_shape(ts: tuple) -> tuple:
    """PyTorch Linear (out, in) / Conv OIHW shape -> Flax kernel shape."""
    if len(ts) == 4:
        return (ts[2], ts[3], ts[1], ts[0])
    return ts[::-1] if len(ts) == 2 else ts


def _torch_shape(shape, leaf) -> tuple:
    shape = tuple(shape)
    if leaf == "kernel" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:
        return shape[::-1]
    return shape


class Assembler:
    """Fills the leaves of an expected Flax tree from PyTorch tensors (with stacking)."""

    def __init__(self, expected: Mapping[str, Any], where: str, what: str, dtype):
        self.exp = flat_shapes(expected)
        self.where, self.what, self.dtype = where, what, np.dtype(dtype)
        self.out: dict[tuple[str, ...], np.ndarray] = {}
        self.filled: dict[tuple[str, ...], set] = {}

    def target(self, key: str) -> tuple[tuple[str, ...], int | None, str] | None:
        mods, leaf, stack = torch_path(key)
        if leaf == "weight":
            for name in ("kernel", "scale", "embedding"):
                if mods + (name,) in self.exp:
                    return mods + (name,), stack, name
            return None
        if leaf == "bias" and mods + ("bias",) in self.exp:
            return mods + ("bias",), stack, "bias"
        if mods + (leaf,) in self.exp:
            return mods + (leaf,), stack, leaf
        return None

    def plan(self, path: tuple[str, ...], stack: int | None, torch_shape, key: str, file: str,
             transform: str | None = None) -> str:
        """Checks that a tensor of torch_shape fits the leaf; returns the transform."""
        want = self.exp[path]
        leaf = path[-1]
        t = transform or ("linear" if leaf == "kernel" else "none")
        ts = tuple(int(x) for x in torch_shape)
        got = _flax_shape(ts) if t == "linear" else ts
        shape = tuple(want.shape[1:]) if stack is not None else tuple(want.shape)
        if stack is not None and stack >= want.shape[0]:
            raise CheckpointError(f"{file}: not {self.what}: {key!r} is block {stack} of a stack "
                                  f"of {want.shape[0]}")
        if stack in self.filled.get(path, ()):
            raise CheckpointError(f"{file}: not {self.what}: {key!r} is given twice (or under "
                                  f"an old and a new name)")
        if got != shape:
            exp = _torch_shape(shape, "kernel") if t == "linear" else shape
            raise CheckpointError(f"{file}: not {self.what}: {key!r} has shape {ts}, expected "
                                  f"{tuple(exp)}")
        self.filled.setdefault(path, set()).add(stack)
        return t

    def put(self, path: tuple[str, ...], stack: int | None, value: np.ndarray, key: str,
            file: str, transform: str | None = None) -> None:
        v = np.asarray(value)
        t = self.plan(path, stack, v.shape, key, file, transform)
        if t == "linear":
            v = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T
        if stack is None:
            self.out[path] = np.ascontiguousarray(v, self.dtype)
        else:
            buf = self.out.get(path)
            if buf is None:
                buf = self.out[path] = np.empty(tuple(self.exp[path].shape), self.dtype)
            buf[stack] = v

    def check_complete(self) -> None:
        missing = []
        for path, want in self.exp.items():
            got = self.filled.get(path, set())
            stacked = any(p in STACKED for p in path[:-1])
            need = set(range(want.shape[0])) if stacked else {None}
            if not need <= got:
                idx = sorted(need - got, key=lambda x: -1 if x is None else x)[0]
                missing.append(_torch_name(path, idx))
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(f"{self.where}: not {self.what}: missing tensor "
                                  f"{missing[0]!r}{more}")

    def finish(self) -> dict[str, Any]:
        self.check_complete()
        return unflatten({p: jax.device_put(v) for p, v in self.out.items()})


def _torch_name(path: tuple[str, ...], idx) -> str:
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(path[-1], path[-1])
    parts = []
    for p in path[:-1]:
        parts.append(re.sub(r"_(\d+)$", r".\1", p))
        if p in STACKED and idx is not None:
            parts.append(str(idx))
    return ".".join(parts + [leaf])


def assemble(files: list[str], expected, where: str, what: str, dtype,
              rename: Callable[[str], str | None] = lambda k: k) -> dict[str, Any]:
    asm = Assembler(expected, where, what, dtype)
    for key, file, get, (path, stack, _) in routed(asm, iter_safetensors(files), rename, what):
        asm.put(path, stack, get(), key, file)
    return asm.finish()


def routed(asm: "Assembler", items, rename: Callable[[str], str | None], what: str):
    """(key, where, payload, target) for each (key, where, payload) whose renamed key the
    expected tree has; keys renamed to None are skipped; any other key raises at the end."""
    unexpected = []
    for key, where, payload in items:
        name = rename(key)
        if name is None:
            continue
        t = asm.target(name)
        if t is None:
            unexpected.append((key, where))
            continue
        yield key, where, payload, t
    if unexpected:
        key, where = unexpected[0]
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{where}: not {what}: unexpected tensor {key!r}{more}")


def check_layout(shapes: Mapping[str, Sequence[int]], expected, where: str, what: str,
                 rename: Callable[[str], str | None] = lambda k: k) -> None:
    """Checks torch names / shapes (e.g. a safetensors header, a meta-device state dict)
    against an expected Flax tree, reading no tensor data: every key used, every leaf filled."""
    asm = Assembler(expected, where, what, np.float32)
    items = ((key, where, shape) for key, shape in shapes.items())
    for key, _, shape, (path, stack, _) in routed(asm, items, rename, what):
        asm.plan(path, stack, shape, key, where)
    asm.check_complete()


def header_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor of safetensors files, from their headers only."""
    from safetensors import safe_open

    out = {}
    for f in files:
        try:
            with safe_open(f, framework="numpy") as h:
                for k in h.keys():
                    out[k] = tuple(h.get_slice(k).get_shape())
        except Exception as e:
            raise CheckpointError(f"{f}: not a safetensors file, or truncated ({_first_line(e)})"
                                  ) from None
    return out
