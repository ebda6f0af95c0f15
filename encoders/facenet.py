"""FaceNet: facenet-pytorch's InceptionResnetV1 (VGGFace2 / CASIA-WebFace weights) in Flax.

The network (facenet-pytorch 2.6.0, models/inception_resnet_v1.py), input 160x160 RGB, NCHW there
and NHWC here. "BasicConv" = convolution without bias -> batch norm (eps 1e-3) -> ReLU:

  BasicConv 3x3/2 (32) -> 3x3 (32) -> 3x3 pad 1 (64) -> max-pool 3x3/2
  BasicConv 1x1 (80) -> 3x3 (192) -> 3x3/2 (256)
  5 x Block35 (scale 0.17), Mixed_6a, 10 x Block17 (scale 0.10), Mixed_7a,
  5 x Block8 (scale 0.20), Block8 (scale 1, no ReLU)
  global average pool -> Linear 1792 -> 512 (no bias) -> BatchNorm1d (eps 1e-3) -> L2 normalize

BlockN: relu(x + scale * conv1x1_with_bias(concat(branches))); the Mixed blocks concatenate
strided branches and a 3x3/2 max pool (no padding). Convolutions pad as PyTorch does (explicit
symmetric padding). Batch norms run in inference mode on the file's running statistics; they are
kept as Flax BatchNorm layers (params scale/bias, batch_stats mean/var), so the parameter tree
matches the upstream state dict one to one.

Weights: facenet-pytorch downloads `20180402-114759-vggface2.pt` (VGGFace2) or
`20180408-102900-casia-webface.pt` (CASIA-WebFace) at run time: state dicts of the same network
with a classifier head `logits` (512 -> 8631 / 10575) that embeddings do not use. `load` reads
such a file with torch (`torch.load(weights_only=True)`; torch is imported only there), or the
same state dict stored as .safetensors / .npz (no torch needed; `convert` writes one).

Preprocessing: the IDGuardian reference resizes the face crop bilinearly to 160x160 and maps
[0, 1] to [-1, 1] (x * 2 - 1); facenet-pytorch's own `fixed_image_standardization` is
(255 x - 127.5) / 128 (standardization='facenet_pytorch').

Distance: cosine (1 - cos) on the L2-normalized embeddings. THRESHOLD = 0.30 is DeepFace's
cosine-distance threshold for "Facenet512" (its table of verification thresholds), its port of
Sandberg's 512-d Inception-ResNet-v1 facenet model, the network and training these weights come
from; the IDGuardian paper evaluates identity with the DeepFace protocol. facenet-pytorch itself
documents no threshold.

This module also holds the checkpoint-file helpers shared with encoders.arcface and
encoders.clip_vit (safetensors / npz / torch state dicts, and state dict -> Flax variables).
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import zipfile
from typing import Any, Callable, Iterable, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.checkpoints import cache

NAME = "facenet"
CHIP_SIZE = 160
EMBED_DIM = 512
THRESHOLD = 0.30  # DeepFace's cosine-distance threshold for Facenet512 (module docstring)
PARAM_COUNT = 23_482_624  # parameters() of InceptionResnetV1(pretrained=None, classify=False)
BN_EPS = 1e-3
STANDARDIZATIONS = ("idguardian", "facenet_pytorch")
# classifier-head sizes of the two released state dicts
VARIANTS = {8631: "vggface2", 10575: "casia-webface"}


# ==========================================================================================
# Checkpoint files (shared helpers)
# ==========================================================================================
class CheckpointError(ValueError):
    """A checkpoint file that is damaged, of another network, or unreadable here. The message is
    one line: the file, then what is wrong."""


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0] if s else ''}".rstrip(": ")


_ST_DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _st_dtype(name: str):
    if name == "BF16":
        import ml_dtypes  # a dependency of jax

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_ST_DTYPES[name]) if name in _ST_DTYPES else None


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as (memory-mapped, read-only) numpy arrays, without the
    safetensors package. Raises CheckpointError for a truncated or malformed file."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file: only {size} bytes")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise CheckpointError(f"{path}: not a safetensors file, or truncated: its header "
                                  f"claims {n} bytes but the file has {size}")
        try:
            header = json.loads(fh.read(n))
            if not isinstance(header, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise CheckpointError(f"{path}: not a safetensors file: bad header "
                                  f"({_first_line(e)})") from None
    header.pop("__metadata__", None)
    start = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = _st_dtype(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            b, e = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed safetensors entry for {name!r}") from None
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        if start + e > size:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {start + e} but the file has "
                f"{size} bytes")
        if e - b != int(np.prod(shape)) * dtype.itemsize or b < 0:
            raise CheckpointError(f"{path}: tensor {name!r}: byte range {b}..{e} does not fit "
                                  f"shape {shape} of {info['dtype']}")
        out[name] = mm[start + b:start + e].view(dtype).reshape(shape)
    return out


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write numpy arrays as a .safetensors file (atomically), without the safetensors package."""
    names = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays, offset = [], 0
    for name, value in tensors.items():
        a = np.ascontiguousarray(value)
        if a.dtype not in names:
            raise ValueError(f"{name}: dtype {a.dtype} cannot be written")
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    _atomic_write(path, lambda fh: [fh.write(len(blob).to_bytes(8, "little")), fh.write(blob)]
                  + [fh.write(a.tobytes()) for a in arrays])


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


# ==========================================================================================
# The network
# ==========================================================================================
class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running stats) -> ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, strides=self.stride,
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _max_pool(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class Block35(nn.Module):
    scale: float = 0.17

    @nn.compact
    def __call__(self, x):
        b0 = BasicConv(32, (1, 1), name="branch0")(x)
        b1 = BasicConv(32, (1, 1), name="branch1_0")(x)
        b1 = BasicConv(32, (3, 3), padding=(1, 1), name="branch1_1")(b1)
        b2 = BasicConv(32, (1, 1), name="branch2_0")(x)
        b2 = BasicConv(32, (3, 3), padding=(1, 1), name="branch2_1")(b2)
        b2 = BasicConv(32, (3, 3), padding=(1, 1), name="branch2_2")(b2)
        y = nn.Conv(256, (1, 1), name="conv2d")(jnp.concatenate([b0, b1, b2], -1))
        return nn.relu(y * self.scale + x)


class Block17(nn.Module):
    scale: float = 0.10

    @nn.compact
    def __call__(self, x):
        b0 = BasicConv(128, (1, 1), name="branch0")(x)
        b1 = BasicConv(128, (1, 1), name="branch1_0")(x)
        b1 = BasicConv(128, (1, 7), padding=(0, 3), name="branch1_1")(b1)
        b1 = BasicConv(128, (7, 1), padding=(3, 0), name="branch1_2")(b1)
        y = nn.Conv(896, (1, 1), name="conv2d")(jnp.concatenate([b0, b1], -1))
        return nn.relu(y * self.scale + x)


class Block8(nn.Module):
    scale: float = 0.20
    relu: bool = True

    @nn.compact
    def __call__(self, x):
        b0 = BasicConv(192, (1, 1), name="branch0")(x)
        b1 = BasicConv(192, (1, 1), name="branch1_0")(x)
        b1 = BasicConv(192, (1, 3), padding=(0, 1), name="branch1_1")(b1)
        b1 = BasicConv(192, (3, 1), padding=(1, 0), name="branch1_2")(b1)
        y = nn.Conv(1792, (1, 1), name="conv2d")(jnp.concatenate([b0, b1], -1))
        y = y * self.scale + x
        return nn.relu(y) if self.relu else y


class Mixed6a(nn.Module):
    @nn.compact
    def __call__(self, x):
        b0 = BasicConv(384, (3, 3), stride=2, name="branch0")(x)
        b1 = BasicConv(192, (1, 1), name="branch1_0")(x)
        b1 = BasicConv(192, (3, 3), padding=(1, 1), name="branch1_1")(b1)
        b1 = BasicConv(256, (3, 3), stride=2, name="branch1_2")(b1)
        return jnp.concatenate([b0, b1, _max_pool(x)], -1)


class Mixed7a(nn.Module):
    @nn.compact
    def __call__(self, x):
        b0 = BasicConv(256, (1, 1), name="branch0_0")(x)
        b0 = BasicConv(384, (3, 3), stride=2, name="branch0_1")(b0)
        b1 = BasicConv(256, (1, 1), name="branch1_0")(x)
        b1 = BasicConv(256, (3, 3), stride=2, name="branch1_1")(b1)
        b2 = BasicConv(256, (1, 1), name="branch2_0")(x)
        b2 = BasicConv(256, (3, 3), padding=(1, 1), name="branch2_1")(b2)
        b2 = BasicConv(256, (3, 3), stride=2, name="branch2_2")(b2)
        return jnp.concatenate([b0, b1, b2, _max_pool(x)], -1)


class InceptionResnetV1(nn.Module):
    """Standardized NHWC chips -> (N, 512) embeddings before L2 normalization (after last_bn).
    Needs inputs of at least 75x75 pixels (the real model reads 160x160)."""

    @nn.compact
    def __call__(self, x):
        x = BasicConv(32, (3, 3), stride=2, name="conv2d_1a")(x)
        x = BasicConv(32, (3, 3), name="conv2d_2a")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="conv2d_2b")(x)
        x = _max_pool(x)
        x = BasicConv(80, (1, 1), name="conv2d_3b")(x)
        x = BasicConv(192, (3, 3), name="conv2d_4a")(x)
        x = BasicConv(256, (3, 3), stride=2, name="conv2d_4b")(x)
        for i in range(5):
            x = Block35(0.17, name=f"repeat_1_{i}")(x)
        x = Mixed6a(name="mixed_6a")(x)
        for i in range(10):
            x = Block17(0.10, name=f"repeat_2_{i}")(x)
        x = Mixed7a(name="mixed_7a")(x)
        for i in range(5):
            x = Block8(0.20, name=f"repeat_3_{i}")(x)
        x = Block8(1.0, relu=False, name="block8")(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(EMBED_DIM, use_bias=False, name="last_linear")(x)
        return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="last_bn")(x)


MODEL = InceptionResnetV1()


def variable_shapes() -> dict[str, Any]:
    """ShapeDtypeStructs of the Flax variables ({'params', 'batch_stats'})."""
    return jax.eval_shape(MODEL.init, jax.random.PRNGKey(0), jnp.zeros((1, 160, 160, 3)))


def preprocess(chips: jax.Array, standardization: str = "idguardian",
               size: int | None = CHIP_SIZE) -> jax.Array:
    """[0, 1] RGB chips -> network input: bilinear resize to `size` (None: keep), then
    x * 2 - 1 ('idguardian') or (255 x - 127.5) / 128 ('facenet_pytorch')."""
    if standardization not in STANDARDIZATIONS:
        raise ValueError(
            f"standardization must be one of {STANDARDIZATIONS}, got {standardization!r}")
    if size is not None:
        chips = bilinear_resize(chips, size)
    if standardization == "idguardian":
        return chips * 2.0 - 1.0
    return (chips * 255.0 - 127.5) / 128.0


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) per row, as torch.nn.functional.normalize."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def apply(params: dict[str, Any], chips: jax.Array, *, standardization: str = "idguardian",
          size: int | None = CHIP_SIZE, normalize: bool = True) -> jax.Array:
    """Embeddings of float32 RGB chips in [0, 1], (N, H, W, 3) -> (N, 512), L2-normalized.

    Chips of another size are resized bilinearly to 160 (size=None runs the network at the
    chip's own size). `params` is what `load()` returns: {'net': Flax variables}."""
    chex.assert_rank(chips, 4)
    chex.assert_axis_dimension(chips, -1, 3)
    x = MODEL.apply(params["net"], preprocess(chips, standardization, size))
    return l2_normalize(x) if normalize else x


def distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine distance 1 - cos(a, b); same person below THRESHOLD."""
    return 1.0 - jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


# ==========================================================================================
# Loading
# ==========================================================================================
_PARSER_VERSION = 1
_WHAT = "a facenet-pytorch InceptionResnetV1 state dict"


def _parse_state_dict(sd: Mapping[str, np.ndarray], path: str) -> tuple[dict[str, Any], Any]:
    if not sd:
        raise CheckpointError(f"{path}: not {_WHAT}: it holds no tensors")
    head = sd.get("logits.weight")
    variant = "unknown" if head is None else VARIANTS.get(int(np.shape(head)[0]), "unknown")
    variables = state_dict_to_variables(sd, variable_shapes(), path, _WHAT,
                                        ignore=lambda k: k.startswith("logits."))
    return {"net": variables}, {"variant": variant}


def _parse_file(path: str) -> tuple[dict[str, Any], Any]:
    return _parse_state_dict(read_tensors(path), path)


def load(path: str | os.PathLike | None = None, use_cache: bool = True,
         with_info: bool = False):
    """Parameters from a facenet-pytorch state dict: the released `.pt` files (needs torch) or the
    same tensors in `.safetensors` / `.npz`. Returns {'net': Flax variables (jnp)}; with_info=True
    also returns {'variant': 'vggface2' | 'casia-webface' | 'unknown'} (from the classifier head).

    PyTorch files are parsed once and cached as .npz (see idguardian_jax.checkpoints.cache), so
    later loads of the same file need no torch. Raises CheckpointError (one line naming the file)
    for a damaged file or a state dict of another network."""
    if path is None:
        raise FileNotFoundError(
            "FaceNet weights are not bundled: pass the path of facenet-pytorch's "
            "20180402-114759-vggface2.pt (or a .safetensors / .npz converted from it)")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    cacheable = os.path.splitext(path)[1].lower() not in (".safetensors", ".npz")
    tree, info = cache.cached_parse(path, "facenet", _PARSER_VERSION, _parse_file,
                                    use_cache and cacheable)
    params = jax.tree_util.tree_map(jnp.asarray, tree)
    return (params, info) if with_info else params


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Re-save a facenet-pytorch state dict (.pt) as .safetensors / .npz (same keys, float32),
    checking on the way that it is the right network. Needs torch for a .pt source."""
    sd = read_tensors(src)
    _parse_state_dict(sd, os.fspath(src))
    write_tensors(dst, {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")})


def param_count(params: dict[str, Any]) -> int:
    return count_params(params["net"])


def _register():
    import encoders

    return encoders.register(encoders.Encoder(
        name=NAME, chip_size=CHIP_SIZE, view="facenet", padding=0.0, load=load, apply=apply,
        distance="cosine", threshold=THRESHOLD, embed_dim=EMBED_DIM))


ENCODER = _register()


def main(argv: Iterable[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m encoders.facenet",
                                description="Convert a facenet-pytorch .pt state dict to "
                                            ".safetensors or .npz (readable without torch).")
    p.add_argument("command", choices=["convert"])
    p.add_argument("src")
    p.add_argument("dst")
    a = p.parse_args(list(argv) if argv is not None else None)
    try:
        convert(a.src, a.dst)
    except (CheckpointError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(a.dst)


if __name__ == "__main__":
    main()
