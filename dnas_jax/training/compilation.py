"""Compiling the loops' steps up front, with one console line before and one after.

A search step takes from seconds to minutes to compile. The loops compile their steps
explicitly before the first step (`compile_all`), so that the console says what is
being compiled, for which backend, whether a persistent cache will keep it, and how
long it took; and so that steps/s and time left measure steps, not compilation.

`enable_persistent_cache(folder)` turns on JAX's persistent compilation cache: a second
run of the same command (or a resume) reads the compiled programs from disk instead of
compiling them again. The entry points turn it on by default (`experiments/cli.py`,
`--compile_cache`).

JAX's cache is keyed by the lowered program, so a second run still traces every step
(seconds to tens of seconds for a supernet) before it can look it up. When the caller
of `compile_all` names what its programs depend on (`cache_key`: the loops pass the
run's config, data shapes and steps per epoch), the executables are also kept in
`{cache folder}/executables`, keyed without tracing: by that description, each
program's name and argument shapes, dtypes and shardings, the package's source code,
the versions of jax, jaxlib, flax and optax, the backend and its devices, XLA_FLAGS and
JAX's settings. A second run loads them and starts stepping without tracing. Only
single-process runs use them (each process of a multi-process run compiles its part).
These files are pickles: like JAX's own cache, the folder must be one only you write.
A change to code outside the package (your own, or a patch applied at run time) is not
part of the key: run with `--compile_cache=` after such a change.

Only executables that XLA has just compiled are kept. One that JAX read from its own
cache cannot be serialized again on the CPU (jaxlib 0.10: the copy fails when it runs,
"Function ... not found"), so a program that JAX's cache answered (after an edit of the
package, say, or with another seed) is traced again by the next run.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import os
import pickle
import sys
import threading
import time
import zlib
from typing import Any, Callable, Sequence

import jax
from jax import monitoring as jax_monitoring
import numpy as np
from absl import logging

from dnas_jax.training import files

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


EXECUTABLES = "executables"  # the subfolder of the executables loaded without tracing
_FORMAT = 1  # of an executable file: zlib(pickle((format, serialized, in_tree, out_tree)))


def sources_digest(root: str) -> str:
  """SHA-256 of the sources under `root` (*.py and the kernels' *.cc, with their
  relative paths)."""
  digest = hashlib.sha256()
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(f for f in files if f.endswith((".py", ".cc"))):
      path = os.path.join(folder, name)
      digest.update(os.path.relpath(path, root).encode() + b"\0")
      with open(path, "rb") as f:
        digest.update(f.read() + b"\0")
  return digest.hexdigest()


@functools.cache
def _code_digest() -> str:
  """`sources_digest` of this package (dnas_jax/), once per process."""
  return sources_digest(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _environment() -> dict[str, Any]:
  """What else decides a compiled program: versions, backend, devices, flags."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  client = jax.devices()[0].client
  return {
      "code": _code_digest(), "python": sys.version, "jax": jax.__version__,
      "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
      "platform": client.platform, "platform_version": client.platform_version,
      "devices": [(d.id, d.device_kind, d.process_index) for d in jax.devices()],
      "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "LIBTPU_INIT_ARGS")},
      "jax_config": {k: repr(v) for k, v in sorted(jax.config.values.items())
                     if "cache" not in k and "log" not in k}}


def _signature(args) -> list:
  """The arguments' tree structure and each leaf's shape, dtype and sharding."""
  def leaf(x):
    if not isinstance(x, jax.ShapeDtypeStruct):
      x = jax.ShapeDtypeStruct(np.shape(x), jax.typeof(x).dtype,
                               sharding=getattr(x, "sharding", None),
                               weak_type=jax.typeof(x).weak_type)
    return [list(x.shape), str(x.dtype), bool(x.weak_type), str(x.sharding)]
  leaves, tree = jax.tree.flatten(args)
  return [str(tree), [leaf(x) for x in leaves]]


def executable_path(folder: str, cache_key: Any, name: str, jitted: Callable,
                    args: tuple) -> str:
  """Where the executable of program `name` (`jitted` on `args`) is kept in `folder`."""
  fn = getattr(jitted, "__wrapped__", jitted)
  fn = getattr(fn, "func", fn)  # functools.partial
  description = {"key": cache_key, "name": name,
                 "function": f"{getattr(fn, '__module__', '')}."
                             f"{getattr(fn, '__qualname__', repr(fn))}",
                 "args": _signature(args), "environment": _environment()}
  digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
  return os.path.join(folder, EXECUTABLES, f"{digest.hexdigest()}.jaxexe")


def _load(path: str, args: tuple):
  """The executable in `path`, or None when there is none or it cannot be used (logged)."""
  from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    return None
  try:
    with open(path, "rb") as f:
      fmt, serialized, in_tree, out_tree = pickle.loads(zlib.decompress(f.read()))
    if fmt != _FORMAT or in_tree != jax.tree.structure((tuple(args), {})):
      raise ValueError("it was written for other arguments")
    return serialize_executable.deserialize_and_load(serialized, in_tree, out_tree)
  except Exception as e:  # pylint: disable=broad-except  # a cache: compile instead
    logging.warning("cannot use the cached executable %s (%s: %s); compiling instead",
                    path, type(e).__name__, e)
    return None


def _save(path: str, compiled) -> bool:
  """Writes `compiled` to `path` (atomically); False (logged) when it cannot be."""
  from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top
  try:
    serialized, in_tree, out_tree = serialize_executable.serialize(compiled)
    blob = zlib.compress(pickle.dumps((_FORMAT, serialized, in_tree, out_tree)), 1)
    files.atomic_write(path, blob)
    return True
  except Exception as e:  # pylint: disable=broad-except  # a cache: run without it
    logging.warning("cannot keep the executable in %s (%s: %s)", path, type(e).__name__, e)
    return False


# JAX's monitoring events that tell how a program was compiled.
_XLA_COMPILED = "/jax/core/compile/backend_compile_duration"  # XLA compiled, or read
_JAX_CACHE_HIT = "/jax/compilation_cache/cache_hits"  # ... JAX's cache answered
_compiling = threading.local()  # .events: the set the current thread's events go to


def _on_event(event: str, *args, **kwargs) -> None:
  del args, kwargs
  events = getattr(_compiling, "events", None)
  if events is not None:
    events.add(event)


def _freshly_compiled(events: set[str]) -> bool:
  """Whether XLA compiled the program (and JAX did not read it from its cache, nor
  reuse one from this process's memory: no event at all)."""
  return _XLA_COMPILED in events and _JAX_CACHE_HIT not in events


def executables_folder(cache_key: Any) -> str | None:
  """The persistent cache folder when `compile_all` keeps executables keyed without
  tracing: a `cache_key`, JAX's persistent cache on, and a single process."""
  folder = jax.config.jax_compilation_cache_dir
  if cache_key is None or not folder or jax.process_count() != 1:
    return None
  return folder


def compile_all(programs: Sequence[tuple[str, Callable, tuple]], log: bool = True,
                cache_key: Any = None) -> tuple[list, dict[str, float]]:
  """The compiled (name, jitted, args) programs, in order, and timings.

  With a `cache_key` (JSON-able: what the programs depend on besides the package's
  code, their names and their arguments' shapes) and the persistent cache on, programs
  compiled by an earlier run are loaded without tracing (module docstring), and the
  others are kept for later runs. The rest are lowered one after the other (tracing
  holds the GIL), each compiled in its own thread as soon as it is traced (XLA releases
  the GIL while it compiles), so that the first program compiles while the next is
  traced, and independent programs take the longest one's time on a host with cores to
  spare. Timings: `load_s` (all loads), `trace_lower_s`, `compile_wall_s`, and
  `compile_s/<name>` per compiled program."""
  folder = executables_folder(cache_key)
  paths = [executable_path(folder, cache_key, name, jitted, args) if folder else None
           for name, jitted, args in programs]
  start = time.perf_counter()
  results: list = [None] * len(programs)
  for i, ((name, _, args), path) in enumerate(zip(programs, paths)):
    if path:
      results[i] = _load(path, args)
  timings = {"load_s": round(time.perf_counter() - start, 2)}
  loaded = [name for (name, _, _), r in zip(programs, results) if r is not None]
  todo = [i for i, r in enumerate(results) if r is None]
  backend = (f"{jax.default_backend()} ({jax.device_count()} device"
             f"{'' if jax.device_count() == 1 else 's'})")
  if log and loaded:
    logging.info("loaded %s for %s from %s in %.1f s, as compiled by an earlier run "
                 "(no tracing)", ", ".join(loaded), backend,
                 os.path.join(folder, EXECUTABLES), timings["load_s"])
  if not todo:
    return results, timings

  names = ", ".join(programs[i][0] for i in todo)
  cache = jax.config.jax_compilation_cache_dir
  if log:
    logging.info("compiling %s for %s%s ...", names, backend,
                 f"; kept in {cache} for later runs" if cache else
                 "; no persistent cache (--compile_cache)")
  events: dict[int, set[str]] = {i: set() for i in todo}

  def compile_one(i, lowered):
    t = time.perf_counter()
    _compiling.events = events[i]
    try:
      out = lowered.compile()
    finally:
      _compiling.events = None
    return i, out, time.perf_counter() - t

  traced_start = time.perf_counter()
  jax_monitoring.register_event_listener(_on_event)
  jax_monitoring.register_event_duration_secs_listener(_on_event)
  try:
    with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
      futures = []
      for i in todo:  # each compile starts as soon as its program is traced
        futures.append(pool.submit(compile_one, i, programs[i][1].lower(*programs[i][2])))
      traced = time.perf_counter()
      compiled = [f.result() for f in futures]
  finally:
    jax_monitoring.unregister_event_listener(_on_event)
    jax_monitoring.unregister_event_duration_listener(_on_event)
  timings["trace_lower_s"] = round(traced - traced_start, 2)
  for i, out, seconds in compiled:
    results[i] = out
    timings[f"compile_s/{programs[i][0]}"] = round(seconds, 2)
  timings["compile_wall_s"] = round(time.perf_counter() - traced, 2)
  if log:
    logging.info("ready in %.1f s (tracing %.1f s, then compiling %.1f s%s)",
                 time.perf_counter() - traced_start, timings["trace_lower_s"],
                 timings["compile_wall_s"],
                 "" if len(compiled) == 1 else "; each compile ran from its own trace "
                 "on, in parallel: " + ", ".join(
                     f"{programs[i][0]} {seconds:.1f} s" for i, _, seconds in compiled))
  for i, out, _ in compiled:
    if not paths[i]:
      continue
    if _freshly_compiled(events[i]):
      _save(paths[i], out)
    elif log:
      logging.info("%s: not kept for tracing-free loads (it came from JAX's cache, "
                   "whose executables cannot be stored again)", programs[i][0])
  return results, timings
