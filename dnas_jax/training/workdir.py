"""A run's workdir while a run holds it: one run at a time, resumed only with its own
config, its checkpoints verified, and nothing lost on the way out.

`RunDir` is what the search and retraining loops open around their work::

    with workdir.RunDir(path, config.keep_checkpoints, allow_changes) as run:
      run.check_config(config.to_dict())  # refuses a resume with another meaning
      restored = run.restore(target)       # newest intact checkpoint, verified
      ... run.save(step, state, meta) ...
    # on every way out (end, exception, Ctrl-C/SIGTERM): pending writes finished,
    # the lock released

* The lock is a file `.lock` in the workdir holding the holder's pid, host and start
  time, created atomically; a second run refuses in one line naming the holder. A lock
  left by a dead process on this host is taken over with a message.
* Resuming compares the stored config (the checkpoint meta's) with the new one:
  fields in `HARMLESS` (logging and checkpoint cadence, evaluation batch, data folder,
  ...) may change and are listed; any other change refuses with one line listing the
  differences, unless the caller allows changes (`--resume_with_changes`).
* A checkpoint that cannot be written, or a full disk under any other file of the run
  (genotype.json, figures, ...), stops the run with one `WriteError` naming the folder
  and the last finished checkpoint, which is kept.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from typing import Any

import jax
from absl import logging

from dnas_jax import files
from dnas_jax.training import checkpoints

CHECKPOINT_DIR = "checkpoints"
LOCK_NAME = ".lock"
# Config fields that do not change what a run computes (derive: how the genotype is
# read off ψ, not ψ): a resume may change them.
HARMLESS = (
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval_every_epochs",
  "eval_batch_size",
  "data.data_dir",
  "data.workers",
  "distributed",
  "prefetch",
  "profile",
  "derive",
)


class WorkdirError(RuntimeError):
  """The workdir cannot be used as asked; the message says why and what to do."""


class WorkdirBusyError(WorkdirError):
  """Another live run holds the workdir's lock."""


class ConfigChangedError(WorkdirError):
  """A resume with a config whose meaning differs from the stored one."""


class WriteError(WorkdirError):
  """The run could not write in its workdir (a full disk, say); the message names the
  folder and the last finished checkpoint, which is kept."""


# What the file system says of a full disk (or a full quota) whichever file is written.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class Preempted(KeyboardInterrupt):
  """Every process reached the preemption sync point at the same step; the loops save a
  checkpoint there (as on Ctrl-C) and stop."""


# ---------------------------------------------------------------------------
# The lock.


def _process_start(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), to tell a live holder
  from a later process that reuses its pid."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(holder: dict) -> bool:
  pid = holder.get("pid")
  if not isinstance(pid, int):
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # another user's live process
  start = holder.get("start")
  return start is None or _process_start(pid) in (None, start)


def _read_lock(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # unreadable: treated as a stale lock of unknown origin


def lock_holder(workdir: str) -> dict | None:
  """The live holder of the workdir's lock on this host ({pid, host, since, ...}), a
  holder on another host (liveness unknown), or None."""
  holder = _read_lock(os.path.join(workdir, LOCK_NAME))
  if not holder:
    return None
  if holder.get("host") != socket.gethostname():
    return holder
  return holder if _alive(holder) else None


def _describe(holder: dict) -> str:
  return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since', '?')}"


def acquire_lock(workdir: str) -> str:
  """Creates the workdir's lock file for this process and returns its path."""
  path = os.path.join(workdir, LOCK_NAME)
  me = {
    "pid": os.getpid(),
    "host": socket.gethostname(),
    "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "start": _process_start(os.getpid()),
  }
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read_lock(path)
      if holder is None:
        continue  # released meanwhile
      if holder and holder.get("host") != me["host"]:
        raise WorkdirBusyError(
          f"workdir {workdir} is locked by {_describe(holder)}; if that run is over, delete {path}"
        )
      if holder and _alive(holder):
        raise WorkdirBusyError(
          f"workdir {workdir} is in use by another run ({_describe(holder)}); wait for "
          "it to end or pass another --workdir"
        )
      logging.warning(
        "taking over the lock of %s, left by a run that is no longer running (%s)",
        workdir,
        _describe(holder or {}),
      )
      try:
        os.remove(path)
      except FileNotFoundError:
        pass
      continue
    except OSError as e:
      raise WorkdirError(f"cannot write in workdir {workdir}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return path
  raise WorkdirBusyError(f"workdir {workdir}: could not take its lock {path}")


def release_lock(path: str) -> None:
  holder = _read_lock(path)
  if holder and holder.get("pid") == os.getpid():
    os.remove(path)


# ---------------------------------------------------------------------------
# Config comparison.


def config_changes(stored: dict, new: dict) -> tuple[list[str], list[str]]:
  """(meaningful, harmless) differences as 'field: old → new' lines, compared after a
  JSON round trip (the stored config went through one)."""
  old = files.flatten(json.loads(json.dumps(stored)))
  cur = files.flatten(json.loads(json.dumps(new)))
  meaningful, harmless = [], []
  for key in sorted(set(old) | set(cur)):
    a, b = old.get(key, "(absent)"), cur.get(key, "(absent)")
    if a == b:
      continue
    line = f"{key}: {a!r} → {b!r}"
    is_harmless = any(key == h or key.startswith(h + ".") for h in HARMLESS)
    (harmless if is_harmless else meaningful).append(line)
  return meaningful, harmless


# ---------------------------------------------------------------------------
# The workdir of a running run.


class RunDir:
  """The workdir held by this run: see the module docstring."""

  def __init__(self, workdir: str, keep_checkpoints: int = 3, allow_changes: bool = False):
    self.workdir = workdir
    self.checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)
    self._keep, self._allow_changes = keep_checkpoints, allow_changes
    self._lock = None
    self._write_failed = False
    self.manager = None
    self.stored_meta: dict | None = None  # the newest readable checkpoint's meta
    self.changed: list[str] = []  # meaningful changes accepted by allow_changes

  def __enter__(self) -> "RunDir":
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except OSError as e:
      raise WorkdirError(f"cannot create workdir {self.workdir}: {e.strerror}") from None
    lead = jax.process_index() == 0
    if lead:
      self._lock = acquire_lock(self.workdir)
    try:
      if lead:
        checkpoints.clean_leftovers(self.checkpoint_dir)
      self.manager = checkpoints.create_manager(self.checkpoint_dir, self._keep)
      newest = checkpoints.newest_readable_meta(self.manager)
      self.stored_meta = newest[1] if newest else None
    except BaseException:
      self._release()
      raise
    return self

  def check_config(self, config: dict) -> None:
    """Refuses to resume with a config of another meaning (see the module docstring)."""
    if self.stored_meta is None or "config" not in self.stored_meta:
      return
    meaningful, harmless = config_changes(self.stored_meta["config"], config)
    if harmless:
      logging.info(
        "resuming with changed fields that do not change the run: %s", "; ".join(harmless)
      )
    if meaningful and not self._allow_changes:
      raise ConfigChangedError(
        f"workdir {self.workdir} holds a run with another config ("
        + "; ".join(meaningful)
        + "): pass another --workdir for a new run, or "
        "--resume_with_changes to continue this one with the new values"
      )
    if meaningful:
      logging.warning(
        "resuming with a changed config (--resume_with_changes): %s", "; ".join(meaningful)
      )
      self.changed = meaningful

  def restore(self, target: Any) -> tuple[Any, dict, int] | None:
    """(state, meta, step) of the newest intact checkpoint, or None."""
    hint = (
      (
        "the config was changed with --resume_with_changes ("
        + "; ".join(self.changed)
        + "), and a change of shape cannot resume: pass another --workdir"
      )
      if self.changed
      else ""
    )
    return checkpoints.restore_verified(self.manager, target, hint=hint)

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Starts writing checkpoint `step` (after the previous write has finished);
    WriteError when that write or this one cannot be written."""
    with self._writing():
      checkpoints.save(self.manager, step, state, meta)

  def wait(self) -> None:
    """Waits for the pending checkpoint writes; WriteError when one failed."""
    with self._writing():
      self.manager.wait_until_finished()

  @contextlib.contextmanager
  def _writing(self):
    """A failure to write a checkpoint (the file system's, e.g. a full disk) as one
    WriteError naming the folder and what is kept; other errors as they are. Orbax
    writes in the background, so a failed write surfaces in the next save or wait."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless a write failure)
      reason = checkpoints.write_failure(e)
      if reason is None:
        raise
      self._write_failed = True
      checkpoints.settle_failed_writes()
      raise self._write_error(self.checkpoint_dir, reason, "checkpoints") from None

  def _write_error(self, folder: str, reason: str, what: str = "") -> WriteError:
    step = (checkpoints.finished_steps(self.checkpoint_dir) or [None])[-1]
    kept = (
      "no checkpoint was finished"
      if step is None
      else f"the last finished checkpoint, step {step}, is kept "
      + ("there" if folder == self.checkpoint_dir else f"in {self.checkpoint_dir}")
    )
    return WriteError(
      f"cannot write {what + ' ' if what else ''}in {folder} ({reason}): "
      f"{kept}; run the same command again to resume once the folder can "
      "be written"
    )

  def check_preemption(self, step: int) -> None:
    """Raises Preempted on every process at the same step once any of them was told
    to stop (SIGTERM, a TPU maintenance event: JAX's preemption service, several
    processes only; one process handles SIGTERM as Ctrl-C)."""
    if jax.process_count() > 1 and self.manager.reached_preemption(step):
      raise Preempted(
        f"preempted at step {step}: every process saved a checkpoint "
        "there; run the same command again to resume"
      )

  def kept_checkpoint(self) -> str:
    """What a stopped run leaves to resume from (after its pending writes), for its
    error message."""
    self.wait()
    step = (checkpoints.finished_steps(self.checkpoint_dir) or [None])[-1]
    return (
      f"the last finished checkpoint, step {step}, is kept in {self.checkpoint_dir}"
      if step is not None
      else "no checkpoint was finished"
    )

  def _release(self):
    if self._lock is not None:
      release_lock(self._lock)
      self._lock = None

  def _close_manager(self) -> None:
    if not self._write_failed:
      self.manager.close()
      return
    with contextlib.suppress(Exception):  # it raises its failed write again
      self.manager.close()

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      if self.manager is not None:
        try:
          self.wait()
        except WriteError:
          if exc_type is None:
            raise
          # On the way out with an error already (the same full disk, as a rule).
        finally:
          self._close_manager()
    finally:
      self._release()
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
      # Any other file of the run (genotype.json, psi.npy, figures, final metrics).
      raise self._write_error(self.workdir, exc.strerror) from None
