"""Data parallelism, decided in one place: a 1-D mesh over all devices.

The global batch is sharded on the mesh's `data` axis; parameters, optimizer states and
architecture parameters are replicated. The jitted steps are written for one device;
XLA's SPMD partitioner follows these input shardings, so the same step runs on 1 CPU,
1 GPU, 8 TPU cores or a multi-host pod, and batch-norm statistics are taken over the
global batch (a mean over a sharded axis is a global mean).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(enabled: bool) -> None:
  """Calls `jax.distributed.initialize()` once, for multi-host runs (config.distributed)."""
  if enabled and jax.process_count() == 1:
    jax.distributed.initialize()


def create_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "config.batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"{field}={batch_size} is not divisible by the {n} devices of the "
                     f"mesh; use a multiple of {n}.")


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Puts a host batch (the global batch, on a single host) onto the mesh.

  On several hosts each host passes its own slice and the global array is assembled.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
