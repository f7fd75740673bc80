"""Compiling the loops' steps up front, with one console line before and one after.

A search step takes from seconds to minutes to compile. The loops compile their steps
explicitly before the first step (`compile_all`), so that the console says what is
being compiled, for which backend, whether a persistent cache will keep it, and how
long it took; and so that steps/s and time left measure steps, not compilation.

The process's setup around compiling (XLA flags, JAX's persistent compilation cache,
what decides a compiled program) is `dnas_jax.training.runtime`; the executables kept
without tracing, which a second run loads instead of tracing its steps again, are
`dnas_jax.training.executable_cache`.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging

from dnas_jax.data import device_augment
from dnas_jax.training import executable_cache


def abstract_batch(
  batch_size: int, image_shape, sharding, mask: bool = False, streamed: bool = False
) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes of a (global) batch as the input pipeline yields it: float32 images, or,
  `streamed`, the streaming pipeline's uint8 images with (training) their colour
  jitter's parameters (`data.device_augment`)."""
  image_dtype = np.uint8 if streamed else np.float32
  out = {
    "image": jax.ShapeDtypeStruct(
      (batch_size,) + tuple(image_shape), image_dtype, sharding=sharding
    ),
    "label": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=sharding),
  }
  if mask:
    out["mask"] = jax.ShapeDtypeStruct((batch_size,), np.bool_, sharding=sharding)
  elif streamed:
    out["jitter"] = jax.ShapeDtypeStruct(
      (batch_size, device_augment.JITTER_COLUMNS), np.float32, sharding=sharding
    )
  return out


def compile_all(
  programs: Sequence[tuple[str, Callable, tuple]], log: bool = True, cache_key: Any = None
) -> tuple[list, dict[str, float]]:
  """The compiled (name, jitted, args) programs, in order, and timings.

  With a `cache_key` (JSON-able: what the programs depend on besides the package's
  code, their names and their arguments' shapes) and the persistent cache on, programs
  compiled by an earlier run are loaded without tracing (`executable_cache`), and the
  others are kept for later runs. The rest are lowered one after the other (tracing
  holds the GIL), each compiled in its own thread as soon as it is traced (XLA releases
  the GIL while it compiles), so that the first program compiles while the next is
  traced, and independent programs take the longest one's time on a host with cores to
  spare. Timings: `load_s` (all loads), `trace_lower_s`, `compile_wall_s`, and
  `compile_s/<name>` per compiled program."""
  folder = executable_cache.executables_folder(cache_key)
  paths = [
    executable_cache.executable_path(folder, cache_key, name, jitted, args) if folder else None
    for name, jitted, args in programs
  ]
  start = time.perf_counter()
  results: list = [None] * len(programs)
  for i, ((name, _, args), path) in enumerate(zip(programs, paths)):
    if path:
      results[i] = executable_cache.load(path, args)
  timings = {"load_s": round(time.perf_counter() - start, 2)}
  loaded = [name for (name, _, _), r in zip(programs, results) if r is not None]
  todo = [i for i, r in enumerate(results) if r is None]
  backend = (
    f"{jax.default_backend()} ({jax.device_count()} device{'' if jax.device_count() == 1 else 's'})"
  )
  if log and loaded:
    logging.info(
      "loaded %s for %s from %s in %.1f s, as compiled by an earlier run (no tracing)",
      ", ".join(loaded),
      backend,
      os.path.join(folder, executable_cache.EXECUTABLES),
      timings["load_s"],
    )
  if not todo:
    return results, timings

  names = ", ".join(programs[i][0] for i in todo)
  cache = jax.config.jax_compilation_cache_dir
  if log:
    logging.info(
      "compiling %s for %s%s ...",
      names,
      backend,
      f"; kept in {cache} for later runs" if cache else "; no persistent cache (--compile_cache)",
    )
  events: dict[int, set[str]] = {i: set() for i in todo}

  def compile_one(i, lowered):
    t = time.perf_counter()
    with executable_cache.recording_events(events[i]):
      out = lowered.compile()
    return i, out, time.perf_counter() - t

  traced_start = time.perf_counter()
  with executable_cache.listening():
    with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
      futures = []
      for i in todo:  # each compile starts as soon as its program is traced
        futures.append(pool.submit(compile_one, i, programs[i][1].lower(*programs[i][2])))
      traced = time.perf_counter()
      compiled = [f.result() for f in futures]
  timings["trace_lower_s"] = round(traced - traced_start, 2)
  for i, out, seconds in compiled:
    results[i] = out
    timings[f"compile_s/{programs[i][0]}"] = round(seconds, 2)
  timings["compile_wall_s"] = round(time.perf_counter() - traced, 2)
  if log:
    logging.info(
      "ready in %.1f s (tracing %.1f s, then compiling %.1f s%s)",
      time.perf_counter() - traced_start,
      timings["trace_lower_s"],
      timings["compile_wall_s"],
      ""
      if len(compiled) == 1
      else "; each compile ran from its own trace "
      "on, in parallel: "
      + ", ".join(f"{programs[i][0]} {seconds:.1f} s" for i, _, seconds in compiled),
    )
  for i, out, _ in compiled:
    if not paths[i]:
      continue
    if executable_cache.freshly_compiled(events[i]):
      executable_cache.save(paths[i], out)
    elif log:
      logging.info(
        "%s: not kept for tracing-free loads (it came from JAX's cache, "
        "whose executables cannot be stored again)",
        programs[i][0],
      )
  return results, timings
