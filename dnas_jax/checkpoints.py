"""Orbax checkpoints of a run: the state pytree plus a JSON `meta` item.

`meta` holds what restoring needs without the run's config file at hand (the config as
a dict, image shape, number of classes, ...), so a notebook or another machine can
rebuild the target pytree and restore.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def create_manager(directory: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Saves `state` and `meta` as checkpoint `step` unless that step is already saved."""
  if int(step) in manager.all_steps():
    return
  manager.save(int(step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore(manager: ocp.CheckpointManager, target: Any, step: int | None = None
            ) -> tuple[Any, dict] | None:
  """(state, meta) of `step` (default: the latest), or None when there is none."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  return restored.state, restored.meta


def restore_meta(directory: str, step: int | None = None) -> dict:
  """Only the JSON meta of a checkpoint directory."""
  manager = create_manager(directory)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  return manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore())).meta
