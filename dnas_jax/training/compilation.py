"""Compiling the loops' steps up front, with one console line before and one after.

A search step takes from seconds to minutes to compile. The loops compile their steps
explicitly before the first step (`compile_all`), so that the console says what is
being compiled, for which backend, whether a persistent cache will keep it, and how
long it took; and so that steps/s and time left measure steps, not compilation.

`enable_persistent_cache(folder)` turns on JAX's persistent compilation cache: a second
run of the same command (or a resume) reads the compiled programs from disk instead of
compiling them again. The entry points turn it on by default (`experiments/cli.py`,
`--compile_cache`).
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Callable, Sequence

import jax
import numpy as np
from absl import logging


# XLA:CPU hands convolutions, matrix products and some element-wise work to YNNPACK
# ("YNN fusions"). Reading an executable with many of them back from the persistent
# cache is slow in jaxlib 0.10 (perf: 96 % of the load in YnnFusionThunkFromProto →
# HloInstruction::unique_id). Without them the digits quick start's search step loads
# in 9 s instead of 31 s, and its 110 steps take 88 s instead of 91 s (README, Quick
# start). The entry points set this flag on the jaxlib versions it was measured with;
# passed per program (`compile(compiler_options=...)`) it did not take effect, so it
# goes in XLA_FLAGS.
NO_YNN_FLAG = ("--xla_cpu_experimental_ynn_fusion_type="
               "-dot,-eltwise,-reduce,-individual_dot,-individual_convolution")
NO_YNN_JAXLIB = ("0.10.",)  # the versions whose XLA knows the flag (an unknown flag
                           # in XLA_FLAGS aborts the process)


def avoid_slow_cache_loads() -> bool:
  """Adds `NO_YNN_FLAG` to XLA_FLAGS for this process, before JAX starts its backends,
  unless XLA_FLAGS already sets that flag or the jaxlib is not one it was measured
  with. Returns whether it did."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  current = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in current or not jaxlib.__version__.startswith(
      NO_YNN_JAXLIB):
    return False
  os.environ["XLA_FLAGS"] = f"{current} {NO_YNN_FLAG}".strip()
  return True


def skip_absent_tpu() -> None:
  """With libtpu installed (the `tpu-aot` extra) on a machine without a TPU, JAX tries
  the TPU first and prints warnings about it. When no TPU device file exists, no GPU
  plugin is installed and JAX_PLATFORMS is unset, run on the CPU quietly."""
  import glob  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return
  if glob.glob("/dev/accel*") or os.path.exists("/dev/vfio"):
    return
  if any(importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                "jax_rocm60_plugin", "jax_plugins")):
    return
  jax.config.update("jax_platforms", "cpu")


def default_cache_dir() -> str:
  """$JAX_COMPILATION_CACHE_DIR, else the user's cache folder: ~/.cache/dnas_jax/xla."""
  explicit = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if explicit:
    return explicit
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "dnas_jax", "xla")


def enable_persistent_cache(folder: str | None) -> None:
  """Caches compiled programs that took at least a second to compile in `folder`
  (None or "": no cache)."""
  if not folder:
    return
  folder = os.path.abspath(os.path.expanduser(folder))
  os.makedirs(folder, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def abstract_batch(batch_size: int, image_shape, sharding, mask: bool = False
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes of a (global) batch as the input pipeline yields it."""
  out = {"image": jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), np.float32,
                                       sharding=sharding),
         "label": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=sharding)}
  if mask:
    out["mask"] = jax.ShapeDtypeStruct((batch_size,), np.bool_, sharding=sharding)
  return out


def compile_all(programs: Sequence[tuple[str, Callable, tuple]], log: bool = True
                ) -> tuple[list, dict[str, float]]:
  """Lowers the (name, jitted, args) programs one after the other (tracing holds the
  GIL), then compiles them in parallel threads (XLA releases the GIL while it
  compiles), so that independent programs take the longest one's time on a host with
  cores to spare. Returns the executables in order and timings: `trace_lower_s`,
  `compile_wall_s`, and `compile_s/<name>` per program."""
  names = ", ".join(name for name, _, _ in programs)
  cache = jax.config.jax_compilation_cache_dir
  if log:
    logging.info("compiling %s for %s (%d device%s)%s ...", names, jax.default_backend(),
                 jax.device_count(), "" if jax.device_count() == 1 else "s",
                 f"; kept in {cache} for later runs" if cache else
                 "; no persistent cache (--compile_cache)")
  start = time.perf_counter()
  lowered = [jitted.lower(*args) for _, jitted, args in programs]
  traced = time.perf_counter()
  timings = {"trace_lower_s": round(traced - start, 2)}

  def compile_one(item):
    (name, _, _), low = item
    t = time.perf_counter()
    out = low.compile()
    return out, name, time.perf_counter() - t

  with concurrent.futures.ThreadPoolExecutor(max(1, len(programs))) as pool:
    results = list(pool.map(compile_one, zip(programs, lowered)))
  for _, name, seconds in results:
    timings[f"compile_s/{name}"] = round(seconds, 2)
  timings["compile_wall_s"] = round(time.perf_counter() - traced, 2)
  if log:
    logging.info("ready in %.1f s (tracing %.1f s, compiling %.1f s%s)",
                 time.perf_counter() - start, timings["trace_lower_s"],
                 timings["compile_wall_s"],
                 "" if len(programs) == 1 else " in parallel: " + ", ".join(
                     f"{name} {seconds:.1f} s" for _, name, seconds in results))
  return [c for c, _, _ in results], timings
