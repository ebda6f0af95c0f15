"""encoders/frozen_conv.py: the convolution whose input gradient uses a kernel flipped once."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from idguardian_jax.encoders import frozen_conv

_DIMS = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("size,k,stride,pad", [
    ((9, 9), 3, 1, 1), ((9, 8), 3, 2, 0), ((10, 11), 3, 2, 0), ((17, 15), 7, 2, 0),
    ((8, 8), 3, 2, 1), ((7, 9), 1, 1, 0), ((12, 12), 5, 3, 2)])
def test_gradients_match_lax(size, k, stride, pad):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2,) + size + (3,)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(k, k, 3, 4)).astype(np.float32))
    strides, pads = (stride, stride), ((pad, pad), (pad, pad))

    def ref(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMS)

    flipped = jnp.asarray(frozen_conv.flip(kernel))

    def ours(x, kernel):
        return frozen_conv.conv2d(x, kernel, flipped, strides, pads)

    np.testing.assert_array_equal(ours(x, kernel), ref(x, kernel))
    ct = jnp.asarray(rng.normal(size=ref(x, kernel).shape).astype(np.float32))
    gx0, gk0 = jax.vjp(ref, x, kernel)[1](ct)
    gx1, gk1 = jax.vjp(ours, x, kernel)[1](ct)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gk1, gk0, rtol=1e-5, atol=1e-5)


def test_flip_reverses_space_and_swaps_channels():
    kernel = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    f = frozen_conv.flip(kernel)
    assert f.shape == (2, 3, 5, 4) and f.flags["C_CONTIGUOUS"]
    assert f[0, 0, 1, 2] == kernel[1, 2, 2, 1]
