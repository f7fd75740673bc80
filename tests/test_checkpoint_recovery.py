"""Damaged checkpoints: every one verified against its digest, reported in one line,
and the newest intact one restored (a resuming run moves the damaged ones aside, a
reader skips them); leftovers of interrupted writes cleaned quietly.

The tests damage a copy of the finished tiny search of conftest.py (`run_copy`:
configs/test.py, checkpoints at steps 12, 14 and 16), so that they restore and compare
without compiling.
"""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from dnas_jax import api
from dnas_jax.configs import test as test_config
from dnas_jax.search import loop as search_loop
from dnas_jax.training import checkpoints
from dnas_jax.training import workdir as workdir_lib

import run_helpers as rh  # tests/run_helpers.py

NEWEST, PREVIOUS = rh.NEWEST, rh.PREVIOUS


def _restore(workdir, state, **kwargs):
  manager = checkpoints.create_manager(os.path.join(workdir, "checkpoints"))
  return checkpoints.restore_verified(manager, checkpoints.abstract_like(state), **kwargs)


def _step_dir(workdir, step):
  return os.path.join(workdir, "checkpoints", str(step))


def _data_files(step_dir):
  return sorted(
    os.path.join(r, f)
    for r, _, fs in os.walk(os.path.join(step_dir, "state"))
    for f in fs
    if os.sep + "d" + os.sep in os.path.join(r, f)
  )


def _flip_bytes(path, where=0.25):
  """Inverts 4 bytes at the fraction `where` of the file."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(int(size * where))
    chunk = f.read(4)
    f.seek(int(size * where))
    f.write(bytes(b ^ 0xFF for b in chunk))


def _damage(workdir, how):
  # The data damages hit every data file: Orbax leaves data files behind that a
  # restore no longer reads (each process writes its own, then they are merged), and
  # which of them is the largest varies from run to run, so damaging one file may
  # damage nothing. test_every_damaged_data_file_is_detected damages one at a time.
  step_dir = _step_dir(workdir, NEWEST)
  if how == "bytes_overwritten":  # spread over the files of the values
    for path in _data_files(step_dir):
      for where in np.linspace(0.02, 0.98, 25):
        _flip_bytes(path, where)
  elif how == "file_truncated":
    for path in _data_files(step_dir):
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 10)
  elif how == "file_deleted":
    for path in _data_files(step_dir):
      os.remove(path)
  elif how == "metadata_garbled":
    with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
      f.write("{not json")
  elif how == "meta_garbled":
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
      f.write("]")
  elif how == "folder_emptied":
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)
  elif how == "digest_lost":  # the meta reads back, without the digest of the values
    path = os.path.join(step_dir, "meta", "metadata")
    with open(path) as f:
      meta = json.load(f)
    del meta[checkpoints.DIGEST_KEY]
    with open(path, "w") as f:
      json.dump(meta, f)


# The reasons a damage may be reported with. Overwritten bytes decode to other values
# (refused by the digest) or, where they fall in a compressed chunk or an index, fail
# to read: which one depends on how this run's values were laid out in the file.
# test_every_damaged_data_file_is_detected covers the digest's case on its own.
WHY = {
  "bytes_overwritten": (
    "its values differ from the digest saved with it",
    "unreadable",
  ),
  "digest_lost": ("its meta holds no digest of its values",),
}


@pytest.mark.parametrize(
  "how",
  [
    "bytes_overwritten",
    "file_truncated",
    "file_deleted",
    "metadata_garbled",
    "meta_garbled",
    "folder_emptied",
    "digest_lost",
  ],
)
def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact(run_copy, how, caplog):
  workdir, state = run_copy
  _damage(workdir, how)
  caplog.set_level(logging.WARNING)
  restored, meta, step = _restore(workdir, state)
  assert step == PREVIOUS and int(restored.step) == PREVIOUS
  assert any(
    f"checkpoint {NEWEST} is damaged ({why}" in caplog.text for why in WHY.get(how, ("unreadable",))
  ), caplog.text
  assert f"resuming from checkpoint {PREVIOUS}" in caplog.text
  moved = os.listdir(os.path.join(workdir, checkpoints.DAMAGED_DIR))
  assert len(moved) == 1 and moved[0].startswith(f"{NEWEST}-")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "14"]


def test_every_damaged_data_file_is_detected(run_copy, tmp_path):
  """Changed bytes in the file of the values still decode, to changed values (as a
  restore without verification shows): the digest refuses them. And whichever data file
  has changed bytes, no changed value is restored: the checkpoint is refused, or the
  bytes were ones the restore does not read and the state is the saved one exactly."""
  workdir, state = run_copy
  target = checkpoints.abstract_like(state)
  files = _data_files(_step_dir(workdir, NEWEST))
  silent = 0  # damages that decode to changed values without an error
  # Which file holds the values where (and which parts are compressed) varies from
  # run to run: try every data file, the largest first, at spread positions until one
  # decodes to changed values (measured on one run: 5 of 12 positions in the largest
  # file did; on another, none of 12 in each of the three largest).
  trials = [
    (path, where)
    for path in sorted(files, key=os.path.getsize)[::-1]
    for where in np.linspace(0.02, 0.98, 24)
  ]
  for i, (path, where) in enumerate(trials):
    if silent:
      break
    trial = str(tmp_path / f"values{i}")
    shutil.copytree(workdir, trial)
    _flip_bytes(path.replace(workdir, trial), where)
    manager = checkpoints.create_manager(os.path.join(trial, "checkpoints"))
    try:
      unverified, _ = checkpoints.restore(manager, target, NEWEST)
    except Exception:  # pylint: disable=broad-except  (compressed bytes: the read fails)
      unverified = None
    changed = unverified is not None and not all(
      np.array_equal(a, b) for a, b in zip(jax.tree.leaves(unverified), jax.tree.leaves(state))
    )
    silent += changed
    restored, _, step = _restore(trial, state, move_damaged=False)
    if changed or unverified is None:
      assert step == PREVIOUS, where
    else:
      jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert silent >= 1
  for i, path in enumerate(files):
    trial = str(tmp_path / f"trial{i}")
    shutil.copytree(workdir, trial)
    _flip_bytes(path.replace(workdir, trial), 0.5)
    restored, _, step = _restore(trial, state, move_damaged=False)
    if step == NEWEST:
      jax.tree.map(np.testing.assert_array_equal, restored, state)
    else:
      assert step == PREVIOUS


def test_no_intact_checkpoint_refuses_and_moves_nothing(run_copy):
  workdir, state = run_copy
  for step in (12, 14, 16):
    shutil.rmtree(os.path.join(_step_dir(workdir, step), "state"))
  with pytest.raises(checkpoints.CheckpointError) as e:
    _restore(workdir, state)
  assert "step 16 unreadable" in str(e.value) and "step 12 unreadable" in str(e.value)
  assert "\n" not in str(e.value)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "14", "16"]


def test_search_resumes_past_a_damaged_checkpoint_to_the_same_result(run_copy):
  workdir, state = run_copy
  _damage(workdir, "bytes_overwritten")
  result = search_loop.train_and_evaluate(test_config.get_config(), workdir)
  assert int(result["state"].step) == NEWEST  # steps 15 and 16 run again
  jax.tree.map(np.testing.assert_array_equal, result["state"].arch_params, state.arch_params)
  jax.tree.map(np.testing.assert_array_equal, result["state"].params, state.params)


@pytest.mark.parametrize("how", ["bytes_overwritten", "digest_lost"])
def test_readers_skip_a_damaged_checkpoint_without_moving_it(run_copy, how):
  workdir, _ = run_copy
  _damage(workdir, how)
  result = api.load_search(workdir)
  assert result.step == PREVIOUS
  restored, _, step = api.restore_search_run(workdir)
  assert step == PREVIOUS and int(restored.step) == PREVIOUS
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "14", "16"]


def test_leftovers_of_interrupted_writes_and_deletions_are_cleaned_quietly(run_copy, caplog):
  workdir, _ = run_copy
  ckpt = os.path.join(workdir, "checkpoints")
  shutil.copytree(os.path.join(ckpt, "16"), os.path.join(ckpt, "18.orbax-checkpoint-tmp-7"))
  shutil.copytree(os.path.join(ckpt, "12"), os.path.join(ckpt, "10"))
  os.remove(os.path.join(ckpt, "10", "_CHECKPOINT_METADATA"))  # a half-deleted folder
  shutil.rmtree(os.path.join(ckpt, "10", "state"))
  caplog.set_level(logging.WARNING)
  with workdir_lib.RunDir(workdir) as run:
    assert run.manager.all_steps() == [12, 14, 16]
  assert sorted(os.listdir(ckpt)) == ["12", "14", "16"]
  assert caplog.text == ""
