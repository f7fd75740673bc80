"""Orbax checkpoints of a run: the state pytree plus a JSON `meta` item, verified.

`meta` holds what restoring needs without the run's config file at hand (the config as
a dict, image shape, number of classes, ...), so a notebook or another machine can
rebuild the target pytree and restore. It also holds `state_sha256`, a SHA-256 of the
saved state's values (every leaf's path, dtype, shape and bytes, in tree order),
computed from the host copy before the write: `restore_verified` recomputes it from
what it read, so a damaged data file that still decodes (changed bytes) is caught like
one that does not (truncated, deleted, garbled metadata, emptied step folder), and the
run falls back to the newest intact checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

DIGEST_KEY = "state_sha256"
DAMAGED_DIR = "damaged_checkpoints"  # beside the checkpoint folder, in the workdir
_TMP_MARK = ".orbax-checkpoint-tmp"
_STEP_METADATA = "_CHECKPOINT_METADATA"  # written last by Orbax into a finished step


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir can be restored; the message says why for each."""


class NonFiniteStateError(FloatingPointError):
  """The state about to be saved holds NaN or inf; it is not saved."""


@functools.cache
def _save_arrays_from_one_replica() -> None:
  """Registers Orbax's array handler without replica-parallel saving (once per process).

  Orbax's default on the CPU and TPU splits each replicated array across its replicas
  and has every replica write a slice. Each slice is cut by its own small JAX program,
  compiled at a run's first save and dispatched at every save. A search state is a few
  MB, replicated over the data-parallel devices, so there is nothing to gain: measured,
  the first save of the test config's search on 8 CPU devices took about 3.5 s more, and
  each later step about 0.1 s more. The files written are the same; only which
  replica writes them changes. This is Orbax's documented global registry, so it holds
  for every Orbax save in the process."""
  ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True
  )


def create_manager(directory: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  _save_arrays_from_one_replica()
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(
    os.path.abspath(directory), options=options, item_names=("state", "meta")
  )


def _host_leaves(tree: Any):
  """(path string, host array) per leaf; a replicated array's local copy is read."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)  # replicated over processes: the local copy
    yield jax.tree_util.keystr(path), np.asarray(leaf)


def state_digest(tree: Any) -> str:
  """SHA-256 of the tree's leaves: path, dtype, shape and bytes of each, in order."""
  h = hashlib.sha256()
  for path, a in _host_leaves(tree):
    h.update(f"{path}|{a.dtype}|{a.shape}|".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def _non_finite_leaves(tree: Any) -> list[str]:
  return [
    path
    for path, a in _host_leaves(tree)
    if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all()
  ]


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Saves `state` and `meta` (with the state's digest) as checkpoint `step`, unless
  that step is already saved. A state holding NaN or inf is refused: the last
  checkpoint stays the last finite one."""
  if int(step) in manager.all_steps():
    return
  bad = _non_finite_leaves(state)
  if bad:
    raise NonFiniteStateError(
      f"the state at step {int(step)} holds NaN or inf (in {len(bad)} arrays, first "
      f"{bad[0]}); it was not saved"
    )
  meta = {**meta, DIGEST_KEY: state_digest(state)}
  manager.save(
    int(step),
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
    force=True,
  )


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore(
  manager: ocp.CheckpointManager, target: Any, step: int | None = None
) -> tuple[Any, dict] | None:
  """(state, meta) of `step` (default: the latest), unverified, or None when there is
  none; see `restore_verified`."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  restored = manager.restore(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
  )
  return restored.state, restored.meta


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def restore_meta(directory: str, step: int | None = None) -> dict:
  """Only the JSON meta of a checkpoint directory."""
  manager = create_manager(directory)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  return read_meta(manager, step)


def newest_readable_meta(manager: ocp.CheckpointManager) -> tuple[int, dict] | None:
  """(step, meta) of the newest checkpoint whose meta can be read, or None."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, read_meta(manager, step)
    except Exception:  # pylint: disable=broad-except  (damaged: restore_verified says)
      continue
  return None


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


def _why_damaged(manager, target, step) -> tuple[Any, dict, str | None]:
  try:
    state, meta = restore(manager, target, step)
  except Exception as e:  # pylint: disable=broad-except  (any failure to read it back)
    return None, {}, f"unreadable ({_one_line(e)})"
  expected = meta.get(DIGEST_KEY)
  if expected is None:
    return None, meta, "its meta holds no digest of its values"
  if state_digest(state) != expected:
    return None, meta, "its values differ from the digest saved with it"
  return state, meta, None


def restore_verified(
  manager: ocp.CheckpointManager, target: Any, *, hint: str = "", move_damaged: bool = True
) -> tuple[Any, dict, int] | None:
  """(state, meta, step) of the newest checkpoint that reads back and matches its
  digest, or None when there is no checkpoint. Damaged newer ones are reported in one
  line each and, with `move_damaged` (a run resuming, not a reader), moved to
  `DAMAGED_DIR` beside the checkpoint folder (so that the run can save those steps
  again); with none intact, raises CheckpointError (`hint` is
  appended to its message) and moves nothing."""
  steps = sorted(manager.all_steps(), reverse=True)
  damaged = []
  for step in steps:
    state, meta, why = _why_damaged(manager, target, step)
    if why is None:
      for bad_step, bad_why in damaged:
        where = f"moved to {_move_aside(manager, bad_step)}" if move_damaged else "skipped"
        logging.warning("checkpoint %d is damaged (%s): %s", bad_step, bad_why, where)
      if damaged and move_damaged:
        manager.reload()
        logging.warning("resuming from checkpoint %d, the newest intact one", step)
      return state, meta, step
    damaged.append((step, why))
  if not damaged:
    return None
  directory = str(manager.directory)
  raise CheckpointError(
    f"no intact checkpoint in {directory}: "
    + "; ".join(f"step {s} {w}" for s, w in damaged)
    + (
      f"; {hint}"
      if hint
      else f"; move {os.path.dirname(directory)} away (or pass another --workdir) to start afresh"
    )
  )


def _move_aside(manager, step: int) -> str:
  src = os.path.join(str(manager.directory), str(step))
  dst_dir = os.path.join(os.path.dirname(str(manager.directory)), DAMAGED_DIR)
  os.makedirs(dst_dir, exist_ok=True)
  dst = os.path.join(dst_dir, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
  shutil.move(src, dst)
  return dst


def finished_steps(directory: str) -> list[int]:
  """The steps of `directory` whose folders Orbax finished (its step metadata written
  last), in order; what a run can resume from."""
  if not os.path.isdir(directory):
    return []
  return sorted(
    int(n)
    for n in os.listdir(directory)
    if n.isdigit() and os.path.isfile(os.path.join(directory, n, _STEP_METADATA))
  )


def write_failure(e: BaseException) -> str | None:
  """What the file system said when a checkpoint write failed with `e` ("No space left
  on device", ...), or None when `e` (and what caused it) is no failure to write
  files. Orbax raises the OSError of a write in Python, and TensorStore's errors name
  the OS error code (`[os_error_code='28']`)."""
  while e is not None:
    if isinstance(e, OSError):
      return e.strerror or str(e)
    code = re.search(r"\[os_error_code='(\d+)'\]", str(e))
    if code:
      return os.strerror(int(code.group(1)))
    e = e.__cause__ or e.__context__
  return None


def settle_failed_writes(timeout_s: float = 60.0) -> None:
  """Waits (at most `timeout_s`) for the background threads of Orbax's writes that
  still run after one of them failed: a process that ends under them gets their
  clean-up's tracebacks ("Event loop is closed", ...) after its own message."""
  deadline = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and type(thread).__module__.startswith(
      "orbax.checkpoint._src.futures"
    ):
      thread.join(max(0.0, deadline - time.monotonic()))


def clean_leftovers(directory: str) -> None:
  """Removes what interrupted writes and deletions leave in a checkpoint folder:
  Orbax's temporary step folders, and step folders without Orbax's step metadata (an
  interrupted clean-up of old checkpoints) older than a finished step. A newest
  unfinished step folder is left for `restore_verified` to report."""
  if not os.path.isdir(directory):
    return
  names = os.listdir(directory)
  for name in names:
    if _TMP_MARK in name:
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
      logging.info("removed %s, an unfinished checkpoint write", name)
  steps = sorted(int(n) for n in names if n.isdigit())
  finished = [s for s in steps if os.path.isfile(os.path.join(directory, str(s), _STEP_METADATA))]
  for s in steps:
    if finished and s < finished[-1] and s not in finished:
      shutil.rmtree(os.path.join(directory, str(s)), ignore_errors=True)
      logging.info("removed checkpoint folder %d, left half-deleted by an interrupted clean-up", s)
