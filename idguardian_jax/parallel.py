"""One data-parallel mesh for the whole run: photos along the 'data' axis, models replicated."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over the given (default: all) devices, axis 'data'."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(tree, mesh: Mesh):
    """Put host arrays whose leading axis is the batch onto the mesh, split along 'data'."""
    return jax.device_put(tree, batch_sharding(mesh))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))
