"""2-D convolution of a frozen kernel whose input gradient uses a kernel flipped once, at load time.

PGD needs every step the gradient of an encoder with respect to its input: for a convolution, a
convolution of the (stride-dilated) cotangent with the kernel flipped in space and with its in/out
channels swapped. JAX's transpose rule derives that kernel from the forward one inside the
program; the surrogates are arguments of the jitted step (not constants), so XLA:CPU flips and
re-lays-out every kernel on every call. For dlib's ResNet (29 convolutions, 5.6 M weights) that is
~22 ms of CPU per step on a 2-core EPYC (jax.profiler: `transpose_copy_fusion`,
`copy_reverse_fusion`), 10 ms of the 42 ms its forward+backward took; A/B of the PGD step:
`benchmarks/bench_protect.py --flipped_kernels=false` (BENCHMARKS.md). `conv2d` takes the flipped
kernel (`flip`, computed once when the weights are loaded) and uses it in its backward pass; the
forward pass and the gradient's values are those of `lax.conv_general_dilated`
(tests/test_frozen_conv.py, tests/test_dlib_resnet.py).

Layouts: x NHWC, kernel HWIO, padding ((top, bottom), (left, right)) static.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_DIMS = ("NHWC", "HWIO", "NHWC")


def flip(kernel) -> np.ndarray:
    """(kh, kw, I, O) kernel -> (kh, kw, O, I): reversed in space, channels swapped (contiguous)."""
    return np.ascontiguousarray(np.asarray(kernel)[::-1, ::-1].transpose(0, 1, 3, 2))


def _forward(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMS)


def convolve(x: jax.Array, kernel: jax.Array, flipped: jax.Array | None,
             strides: tuple[int, int], padding: tuple[tuple[int, int], tuple[int, int]]):
    """The convolution; with `flipped` (flip(kernel)) its input gradient uses it (`conv2d`),
    without, JAX's transpose rule derives it (randomly initialized params, tests)."""
    if flipped is None:
        return _forward(x, kernel, strides, padding)
    return conv2d(x, kernel, flipped, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def conv2d(x: jax.Array, kernel: jax.Array, flipped: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """lax.conv_general_dilated(x, kernel) (NHWC, HWIO), differentiable in x (and in kernel);
    `flipped` must be flip(kernel) and gets no gradient (it is a derived copy)."""
    return _forward(x, kernel, strides, padding)


def _fwd(x, kernel, flipped, strides, padding):
    return _forward(x, kernel, strides, padding), (x, kernel, flipped)


def _bwd(strides, padding, res, g):
    x, kernel, flipped = res
    kh, kw = kernel.shape[:2]
    pads = []
    for n, m, k, s, (lo, _) in zip(x.shape[1:3], g.shape[1:3], (kh, kw), strides, padding):
        # dx[i] = sum_t g_dilated[i + t - (k - 1 - lo)] * kernel[k - 1 - t]: a 'valid' correlation
        # of the dilated cotangent padded to n + k - 1 with the flipped kernel
        pads.append((k - 1 - lo, n - 1 - (m - 1) * s + lo))
    dx = jax.lax.conv_general_dilated(g, flipped, (1, 1), pads, lhs_dilation=strides,
                                      dimension_numbers=_DIMS)
    # the kernel's own gradient (unused, and so removed by XLA, when only the input's is asked)
    _, pull = jax.vjp(lambda k: _forward(x, k, strides, padding), kernel)
    (dk,) = pull(g)
    return dx, dk, jnp.zeros_like(flipped)


conv2d.defvjp(_fwd, _bwd)
