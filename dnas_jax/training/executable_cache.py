"""Executables kept without tracing, beside JAX's persistent compilation cache.

JAX's cache is keyed by the lowered program, so a second run still traces every step
(seconds to tens of seconds for a supernet) before it can look it up. When the caller
of `compilation.compile_all` names what its programs depend on (`cache_key`: the loops
pass the run's config, data shapes and steps per epoch), the executables are also kept
in `{cache folder}/executables` (`executable_path`), keyed without tracing: by that
description, each program's name and argument shapes, dtypes and shardings, and the
process's environment (`runtime.environment`: the package's source code, the versions
of jax, jaxlib, flax and optax, the backend and its devices, XLA_FLAGS and JAX's
settings, and which process of how many: each process of a multi-process run keeps
its own). A second run loads them (`load`) and starts stepping without tracing. These
files are pickles: like JAX's own cache, the folder must be one only you write. A
change to code outside the package (your own, or a patch applied at run time) is not
part of the key: run with `--compile_cache=` after such a change.

Only executables that XLA has just compiled are kept (`save`). One that JAX read from
its own cache cannot be serialized again on the CPU (jaxlib 0.10: the copy fails when
it runs, "Function ... not found"), so a program that JAX's cache answered (after an
edit of the package, say, or with another seed) is traced again by the next run. JAX's
monitoring events tell which (`recording_events`, `freshly_compiled`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import pickle
import threading
import zlib
from typing import Any, Callable, Iterator

import jax
from jax import monitoring as jax_monitoring
import numpy as np
from absl import logging

from dnas_jax import files
from dnas_jax.space import ops
from dnas_jax.training import runtime

EXECUTABLES = "executables"  # the subfolder of the executables loaded without tracing
_FORMAT = 1  # of an executable file: zlib(pickle((format, serialized, in_tree, out_tree)))


def executables_folder(cache_key: Any) -> str | None:
  """The persistent cache folder when `compile_all` keeps executables keyed without
  tracing: a `cache_key` and JAX's persistent cache on."""
  folder = jax.config.jax_compilation_cache_dir
  if cache_key is None or not folder:
    return None
  return folder


def _signature(args) -> list:
  """The arguments' tree structure and each leaf's shape, dtype and sharding."""

  def leaf(x):
    if not isinstance(x, jax.ShapeDtypeStruct):
      x = jax.ShapeDtypeStruct(
        np.shape(x),
        jax.typeof(x).dtype,
        sharding=getattr(x, "sharding", None),
        weak_type=jax.typeof(x).weak_type,
      )
    return [list(x.shape), str(x.dtype), bool(x.weak_type), str(x.sharding)]

  leaves, tree = jax.tree.flatten(args)
  return [str(tree), [leaf(x) for x in leaves]]


# Config fields that never enter a compiled step (logging, checkpoint and evaluation
# cadence, where the data lies, input worker processes, prefetching, profiling, the
# derivation's options): a run's executables are found again when only these change.
PROGRAM_NEUTRAL = (
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval_every_epochs",
  "prefetch",
  "profile",
  "derive",
  "data.data_dir",
  "data.workers",
)


def _program_key(cache_key: Any) -> Any:
  """`cache_key` without the PROGRAM_NEUTRAL fields of its 'config' (a run's meta)."""
  if not isinstance(cache_key, dict) or not isinstance(cache_key.get("config"), dict):
    return cache_key
  config = copy.deepcopy(cache_key["config"])
  for field in PROGRAM_NEUTRAL:
    *parents, last = field.split(".")
    node = config
    for p in parents:
      node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.pop(last, None)
  return {**cache_key, "config": config}


def executable_path(folder: str, cache_key: Any, name: str, jitted: Callable, args: tuple) -> str:
  """Where the executable of program `name` (`jitted` on `args`) is kept in `folder`;
  the PROGRAM_NEUTRAL fields of a run's config do not change it."""
  fn = getattr(jitted, "__wrapped__", jitted)
  fn = getattr(fn, "func", fn)  # functools.partial
  description = {
    "key": _program_key(cache_key),
    "name": name,
    "function": f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}",
    "args": _signature(args),
    "environment": runtime.environment(),
    # A user's operations (config.model.ops_modules) are code outside the
    # package: their files' bytes are part of the program.
    "user_operations": ops.imported_user_sources(),
  }
  digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode())
  return os.path.join(folder, EXECUTABLES, f"{digest.hexdigest()}.jaxexe")


def load(path: str, args: tuple):
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
    logging.warning(
      "cannot use the cached executable %s (%s: %s); compiling instead", path, type(e).__name__, e
    )
    return None


def save(path: str, compiled) -> bool:
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


@contextlib.contextmanager
def listening() -> Iterator[None]:
  """JAX's monitoring events are recorded (`recording_events`) while this is open."""
  jax_monitoring.register_event_listener(_on_event)
  jax_monitoring.register_event_duration_secs_listener(_on_event)
  try:
    yield
  finally:
    jax_monitoring.unregister_event_listener(_on_event)
    jax_monitoring.unregister_event_duration_listener(_on_event)


@contextlib.contextmanager
def recording_events(events: set[str]) -> Iterator[set[str]]:
  """Collects into `events` the monitoring events of this thread (within `listening`),
  e.g. around one program's `compile()`."""
  _compiling.events = events
  try:
    yield events
  finally:
    _compiling.events = None


def freshly_compiled(events: set[str]) -> bool:
  """Whether XLA compiled the program (and JAX did not read it from its cache, nor
  reuse one from this process's memory: no event at all)."""
  return _XLA_COMPILED in events and _JAX_CACHE_HIT not in events
