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


def _env_says_distributed() -> bool:
    import os

    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and os.environ.get("SLURM_JOB_ID"):
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def initialize_distributed(mode: str = "auto", coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Start JAX's multi-controller runtime when asked or when the environment says so.

    mode 'off': never; 'on': always (from the explicit arguments, else from the environment:
    SLURM, TPU pods, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID); 'auto':
    when explicit arguments are given or the environment describes several processes.
    Must run before anything touches JAX devices. Returns whether it started.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode must be auto, on or off, got {mode!r}")
    explicit = coordinator_address is not None
    if mode == "off" or (mode == "auto" and not explicit and not _env_says_distributed()):
        return False
    # CPU processes talk through gloo (GPU/TPU use their own collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if explicit:
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes,
                      process_id=process_id)
    jax.distributed.initialize(**kwargs)
    return True
