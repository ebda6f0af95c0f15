"""LPIPS (Zhang et al. 2018, v0.1, AlexNet) in JAX, from weights already on disk (never downloaded).

LPIPS(a, b) = sum over AlexNet's 5 ReLU outputs l of mean_{h,w} sum_c w_lc (n_a - n_b)^2, where n is
the feature unit-normalized over channels and w_l the learned linear weights; inputs are scaled
to [-1, 1] and shifted/scaled per channel as the lpips package does. 0 for identical photos.

Weights, either:
  - one .npz (or .safetensors) with torch-named arrays: features.{0,3,6,8,10}.{weight,bias}
    (torchvision AlexNet, OIHW) and lin{0..4}.model.1.weight (1, C, 1, 1) (lpips' alex.pth); or
  - "LIN.pth,BACKBONE.pth": the lpips package's weights/v0.1/alex.pth and torchvision's
    alexnet-owt-7be5be79.pth, read with torch (an optional dependency); `save_npz` converts them.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

_CONVS = (("features.0", 4, 2), ("features.3", 1, 2), ("features.6", 1, 1), ("features.8", 1, 1),
          ("features.10", 1, 1))  # (name, stride, padding); max-pool 3/2 after the first two
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
KEYS = tuple(f"{n}.{k}" for n, _, _ in _CONVS for k in ("weight", "bias")) + tuple(
    f"lin{i}.model.1.weight" for i in range(5))


def _read(path: str) -> dict[str, np.ndarray]:
    if path.endswith(".npz"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading .pth weights needs torch (pip install torch), or "
                         f"convert them once to .npz with idguardian_jax.evaluate.lpips.save_npz"
                         ) from None
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a state dict")
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def read_weights(spec: str) -> dict[str, np.ndarray]:
    """The named arrays of KEYS from 'FILE' or 'LIN,BACKBONE' (see the module docstring)."""
    arrays: dict[str, np.ndarray] = {}
    for path in spec.split(","):
        path = path.strip()
        if not os.path.exists(path):
            raise ValueError(f"{path}: no such LPIPS weights file")
        arrays.update(_read(path))
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{spec}: not LPIPS AlexNet weights (missing {', '.join(missing[:3])}"
                         f"{' ...' if len(missing) > 3 else ''})")
    return {k: np.asarray(arrays[k], np.float32) for k in KEYS}


def save_npz(spec: str, out: str) -> None:
    """Convert 'LIN.pth,BACKBONE.pth' (or any readable spec) to one .npz (no torch needed later)."""
    np.savez(out, **read_weights(spec))


def _conv(x, w, b, stride, pad):
    y = jax.lax.conv_general_dilated(x, jnp.transpose(w, (2, 3, 1, 0)), (stride, stride),
                                     ((pad, pad), (pad, pad)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return y + b


def _maxpool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


def features(params: dict, x: jax.Array) -> list[jax.Array]:
    """AlexNet's 5 ReLU outputs for (N, H, W, 3) float32 images in [0, 1]."""
    x = (x * 2.0 - 1.0 - _SHIFT) / _SCALE
    outs = []
    for i, (name, stride, pad) in enumerate(_CONVS):
        x = jax.nn.relu(_conv(x, params[f"{name}.weight"], params[f"{name}.bias"], stride, pad))
        outs.append(x)
        if i < 2:
            x = _maxpool(x)
    return outs


@jax.jit
def distance(params: dict, a: jax.Array, b: jax.Array) -> jax.Array:
    """LPIPS (N,) between (N, H, W, 3) float32 images in [0, 1] (H, W >= 32)."""
    total = 0.0
    for i, (fa, fb) in enumerate(zip(features(params, a), features(params, b))):
        na = fa / (jnp.sqrt(jnp.sum(fa * fa, axis=-1, keepdims=True)) + 1e-10)
        nb = fb / (jnp.sqrt(jnp.sum(fb * fb, axis=-1, keepdims=True)) + 1e-10)
        w = params[f"lin{i}.model.1.weight"].reshape(-1)
        total = total + jnp.mean(jnp.sum((na - nb) ** 2 * w, axis=-1), axis=(1, 2))
    return total


@dataclasses.dataclass
class LPIPS:
    """A loaded LPIPS metric: lpips(clean, other) for (H, W, 3) uint8 photos -> float."""

    params: dict
    net: str = "alex"

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        if min(a.shape[:2]) < 32:
            raise ValueError(f"LPIPS needs photos of at least 32x32 pixels, "
                             f"got {a.shape[1]}x{a.shape[0]}")
        x = jnp.asarray(a, jnp.float32)[None] / 255.0
        y = jnp.asarray(b, jnp.float32)[None] / 255.0
        return float(distance(self.params, x, y)[0])


def load(spec: str) -> LPIPS:
    """An LPIPS metric from local weights (see the module docstring); ValueError naming the file."""
    return LPIPS({k: jnp.asarray(v) for k, v in read_weights(spec).items()})
