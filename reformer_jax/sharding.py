"""Data parallelism: one `data` mesh axis over every device of every process.

    make_mesh() -> Mesh
    shard_batch(batch, mesh) -> global arrays sharded over "data"

Parameters are replicated; each process hands over only the rows of a global
batch its own devices hold, so on a multi-host run every host trains on its
own shard.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from reformer_jax.data import host_shard


def make_mesh() -> Mesh:
    """All devices of all processes on one `data` axis (data parallel; parameters replicated)."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def _host_rows(sharding: NamedSharding, n: int) -> slice:
    """The rows of an [n, ...] batch this process's devices hold (contiguous in the mesh)."""
    slices = [idx[0] for idx in sharding.addressable_devices_indices_map((n,)).values()]
    start = min(s.start or 0 for s in slices)
    stop = max(n if s.stop is None else s.stop for s in slices)
    return slice(start, stop)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """A global numpy batch (the same on every host) -> arrays sharded over `data`.

    Each process hands over only the rows its own devices hold, so on a
    multi-host run every host trains on its own shard of the batch.
    """
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    n = len(next(iter(batch.values())))
    local = host_shard(batch, _host_rows(sharding, n))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (n, *v.shape[1:]))
        for k, v in local.items()
    }
