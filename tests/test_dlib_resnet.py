"""The dlib ResNet descriptor against dlib's own outputs on real and synthetic chips."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from idguardian_jax import encoders
from idguardian_jax.encoders import dlib_resnet


@pytest.fixture(scope="module")
def params():
    return dlib_resnet.load()


def test_param_count_matches_upstream(params):
    assert dlib_resnet.param_count(params) == dlib_resnet.PARAM_COUNT


def test_descriptor_of_dlib_chips(params, faces_dir, dlib_reference):
    chips, want = [], []
    for name, im in sorted(dlib_reference["images"].items()):
        for face in im["faces"]:
            chips.append(np.asarray(Image.open(os.path.join(faces_dir, face["chip_file"])).convert("RGB")))
            want.append(face["descriptor_from_chip"])
    for name, item in sorted(dlib_reference["synthetic"]["inputs"].items()):
        path = os.path.join(faces_dir, "synthetic", name)
        chips.append(np.asarray(Image.open(path).convert("RGB")))
        want.append(item["descriptor"])
    got = encoders.embed_uint8("dlib_resnet", params, np.stack(chips))  # what protect uses
    dist = np.linalg.norm(got - np.asarray(want), axis=1)
    assert dist.max() <= 1e-3, dist


@pytest.mark.slow
def test_batch_independence_and_gradient(params):
    rng = np.random.default_rng(0)
    chips = rng.uniform(size=(3, 150, 150, 3)).astype(np.float32)
    apply = jax.jit(dlib_resnet.apply)  # jitted: op by op, the 29 layers took ~2x as long
    both = apply(params, jnp.asarray(chips))
    one = apply(params, jnp.asarray(chips[1:2]))
    np.testing.assert_allclose(both[1], one[0], atol=1e-5)
    g = jax.jit(jax.grad(lambda x: jnp.sum(dlib_resnet.apply(params, x) ** 2)))(
        jnp.asarray(chips[:1]))
    assert g.shape == (1, 150, 150, 3)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0


def test_rejects_wrong_rank(params):
    with pytest.raises(AssertionError):
        dlib_resnet.apply(params, jnp.zeros((150, 150, 3)))


def test_flipped_kernels_give_the_same_descriptor_and_gradient(params):
    """load() adds the kernels' flipped copies (frozen_conv); the network with them computes the
    descriptor and the input gradient of the one without them."""
    assert set(params) == {"net", "mean", "derived"}
    plain = {k: v for k, v in params.items() if k != "derived"}
    chips = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 150, 150, 3)).astype(np.float32))

    def grad(p):
        return jax.jit(jax.value_and_grad(lambda x: jnp.sum(dlib_resnet.apply(p, x) ** 3)))(chips)

    (v1, g1), (v0, g0) = grad(params), grad(plain)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-5, atol=1e-6 * float(jnp.abs(g0).max()))
