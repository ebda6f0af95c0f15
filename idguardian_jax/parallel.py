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


def local_batch_size(mesh: Mesh, per_device: int) -> int:
    """Rows this process contributes to one global batch: per_device x its devices in the mesh."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return per_device * len(local)


def shard_batch(tree, mesh: Mesh):
    """Host arrays whose leading axis is this process's part of the batch -> global arrays split
    along 'data'. With one process that is a device_put; with several, each process passes its own
    rows (jax.make_array_from_process_local_data) and the global batch is their concatenation in
    process order."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


def replicate(tree, mesh: Mesh):
    """The same host values on every device of the mesh (every process passes the same values)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(a):
        if isinstance(a, jax.Array) and a.sharding == sharding:
            return a
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return jax.tree_util.tree_map(one, tree)


def to_local(tree):
    """Global arrays split along 'data' -> this process's rows as numpy (in batch order)."""
    def one(a):
        if jax.process_count() == 1 or a.is_fully_addressable:
            return np.asarray(a)
        shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
        seen, rows = set(), []
        for sh in shards:
            start = sh.index[0].start or 0
            if start not in seen:
                seen.add(start)
                rows.append(np.asarray(sh.data))
        return np.concatenate(rows, axis=0)

    return jax.tree_util.tree_map(one, tree)
