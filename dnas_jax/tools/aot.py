"""Ahead-of-time compilation for a TPU that is not attached, from a CPU host.

With `libtpu` installed beside jax (`pip install -e ".[tpu-aot]"`, which pins the libtpu
that matches the pinned jax), a CPU-only machine can compile a jitted step for a TPU
topology: `jax.experimental.topologies.get_topology_desc` gives abstract TPU devices,
the step is traced on `ShapeDtypeStruct`s that carry a `NamedSharding` over a mesh of
those devices, and `lower().compile()` runs the real TPU compiler. The executable's
memory analysis (argument, output and temporary bytes) and its HLO are real; it cannot
run here. This measures what a Colab/Cloud TPU user waits for before the first step,
and whether the step fits in the chip's memory.

`prepare_environment` must run before JAX initialises a backend (before the first
computation): it sets `JAX_PLATFORMS=cpu` and the TPU runtime's variables that make
libtpu skip the metadata server of a real TPU VM.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

GIB = 1024**3
# Topology name -> the accelerator type libtpu expects for it ("v5e:1x1" is refused by
# libtpu; compile for one chip on a mesh of a 2x2 topology's first device).
ACCELERATOR_TYPES = {
  "v5e:2x2": "v5litepod-4",
  "v5e:2x4": "v5litepod-8",
  "v5e:4x4": "v5litepod-16",
  "v4:2x2x1": "v4-8",
  "v6e:2x2": "v6e-4",
}
HBM_PER_CHIP = {"v5e": 16 * GIB, "v4": 32 * GIB, "v6e": 32 * GIB}


class AotUnavailableError(RuntimeError):
  """libtpu is missing or cannot describe the topology."""


def prepare_environment(topology: str) -> None:
  """Environment for deviceless TPU compilation; call before JAX starts a backend."""
  if topology not in ACCELERATOR_TYPES:
    raise AotUnavailableError(
      f"--aot_topology={topology!r} is not known; valid topologies: {sorted(ACCELERATOR_TYPES)}"
    )
  os.environ["JAX_PLATFORMS"] = "cpu"
  jax.config.update("jax_platforms", "cpu")  # jax read the variable at import
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", ACCELERATOR_TYPES[topology])


def topology_devices(topology: str) -> list:
  """The abstract TPU devices of `topology` (needs libtpu)."""
  try:
    import libtpu  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise AotUnavailableError(
      'compiling for a TPU from this machine needs libtpu: pip install -e ".[tpu-aot]"'
    ) from None
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
  except Exception as e:  # pylint: disable=broad-except
    raise AotUnavailableError(
      f"libtpu could not describe topology {topology!r}: "
      f"{str(e).splitlines()[0] if str(e) else e!r}"
    ) from None


def hbm_bytes(topology: str) -> int | None:
  return HBM_PER_CHIP.get(topology.split(":")[0])


def abstract(tree: Any, sharding: NamedSharding) -> Any:
  """ShapeDtypeStructs of `tree`'s arrays, each with `sharding` (PRNG keys kept as keys)."""

  def one(x):
    return jax.ShapeDtypeStruct(jax.numpy.shape(x), x.dtype, sharding=sharding)

  return jax.tree.map(one, tree)


def mesh_of(devices) -> Mesh:
  import numpy as np  # pylint: disable=g-import-not-at-top

  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def count_hlo(text: str) -> dict[str, int]:
  """Convolution and fusion instructions in an HLO module's text."""
  return {
    "convolutions": len(re.findall(r"\bconvolution\(", text)),
    "fusions": len(re.findall(r"\bfusion\(", text)),
  }


def compile_report(fn: Callable, args: tuple, *, hbm: int | None) -> dict[str, Any]:
  """Traces, lowers and compiles the jitted `fn` on abstract `args`; times each phase
  and reads the executable's memory analysis and HLO."""
  t0 = time.perf_counter()
  lowered = fn.trace(*args).lower()
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  out = {"trace_lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2)}
  mem = compiled.memory_analysis()
  if mem is not None:
    sizes = {
      k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0)
      for k in ("argument", "output", "alias", "temp", "generated_code")
    }
    total = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
    out.update({f"{k}_bytes": v for k, v in sizes.items()}, total_bytes=total)
    if hbm:
      out.update(
        hbm_bytes=hbm,
        fits_hbm=total + sizes["generated_code"] <= hbm,
        hbm_fraction=round((total + sizes["generated_code"]) / hbm, 4),
      )
  try:
    out.update(count_hlo(compiled.as_text()))
  except Exception:  # pylint: disable=broad-except
    pass
  return out
