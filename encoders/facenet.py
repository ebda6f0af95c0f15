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

Checkpoint files are read by idguardian_jax.checkpoints.tensors (shared with the other encoders).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from idguardian_jax.encoders.base import Encoder
from idguardian_jax.checkpoints import cache
from idguardian_jax.checkpoints.tensors import (CheckpointError, bilinear_resize, count_params,  # noqa: F401
                                                read_tensors, state_dict_to_variables, write_tensors)

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


ENCODER = Encoder(
    name=NAME, chip_size=CHIP_SIZE, view="facenet", padding=0.0, load=load, apply=apply,
    distance="cosine", threshold=THRESHOLD, embed_dim=EMBED_DIM)


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
