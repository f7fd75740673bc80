"""Data parallelism, decided in one place: a 1-D mesh over all devices.

The global batch is sharded on the mesh's `data` axis (each process reads and augments
only its devices' rows of it, `host_rows`); parameters, optimizer states and
architecture parameters are replicated. The jitted steps are written for one device;
XLA's SPMD partitioner follows these input shardings, so the same step runs on 1 CPU,
1 GPU, 8 TPU cores or a multi-host pod, and batch-norm statistics are taken over the
global batch (a mean over a sharded axis is a global mean).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(enabled: bool) -> None:
  """Joins the multi-process JAX runtime once (config.distributed), before any JAX
  computation. On a TPU pod slice or a cluster JAX detects (SLURM, Open MPI, ...) it
  finds its peers itself; elsewhere each process is told by the environment:
  JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
  JAX_PROCESS_ID. On CPUs the processes exchange data with gloo."""
  if not enabled or jax.distributed.is_initialized():
    return
  kwargs = {}
  if "JAX_NUM_PROCESSES" in os.environ:
    kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if "JAX_PROCESS_ID" in os.environ:
    kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def is_lead_process() -> bool:
  """Process 0 writes the run's artifacts and metrics; every process checkpoints."""
  return jax.process_index() == 0


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
    raise ValueError(
      f"{field}={batch_size} is not divisible by the {n} devices of the "
      f"mesh; use a multiple of {n}."
    )


def replicate(tree: Any, mesh: Mesh) -> Any:
  """`tree` (host values or single-device arrays, the same on every process) as arrays
  replicated over the mesh, which may span several processes."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> slice:
  """The rows of a global batch that this process's devices hold (contiguous: the
  mesh lists each process's devices together)."""
  spans = {
    (i[0].start or 0, global_shape[0] if i[0].stop is None else i[0].stop)
    for i in sharding.addressable_devices_indices_map(global_shape).values()
  }
  start, stop = min(a for a, _ in spans), max(b for _, b in spans)
  if sum(b - a for a, b in spans) != stop - start:
    raise ValueError(f"this process's rows of the batch are not contiguous: {sorted(spans)}")
  return slice(start, stop)


def host_rows(mesh: Mesh, batch_size: int) -> slice | None:
  """The rows of a global batch of `batch_size` that this process reads, augments and
  feeds (its devices' rows, `local_rows`), for the input pipeline's `rows`; None on one
  process: all of them."""
  if jax.process_count() == 1:
    return None
  return local_rows(batch_sharding(mesh), (batch_size,))


def log_host_rows(rows: slice | None, batch_size: int) -> None:
  """Logs, on several processes, which rows of each global batch this process reads."""
  if rows is not None:
    logging.info(
      "process %d of %d reads and augments rows %d:%d of each global batch of %d",
      jax.process_index(),
      jax.process_count(),
      rows.start,
      rows.stop,
      batch_size,
    )


def shard_batch(
  batch: dict[str, np.ndarray], mesh: Mesh, global_size: int | None = None
) -> dict[str, jax.Array]:
  """Puts a host batch onto the mesh, as the global batch of the step.

  `global_size` None: `batch` is the whole global batch; on several processes each one
  passes only its own rows. Otherwise `batch` holds only this process's rows
  (`host_rows`) of a global batch of `global_size` rows, as the input pipeline makes
  them with `rows`, and the global array is assembled from every process's rows. On one
  process both are the same `device_put`.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  if global_size is None:
    return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
        sharding, x[local_rows(sharding, x.shape)], global_shape=x.shape
      ),
      batch,
    )
  rows = local_rows(sharding, (global_size,))

  def put(x):
    if len(x) != rows.stop - rows.start:
      raise ValueError(
        f"a host batch of {len(x)} rows, but this process feeds rows {rows.start}:"
        f"{rows.stop} of the global batch of {global_size}"
      )
    return jax.make_array_from_process_local_data(
      sharding, x, global_shape=(global_size, *x.shape[1:])
    )

  return jax.tree.map(put, batch)
