"""A run that stops on its own (a NaN loss, an exception, a full disk) waits for its
pending checkpoint writes, keeps the last finished checkpoint, releases its workdir,
and ends with one line naming what is kept."""

import errno
import os
import subprocess
import sys

import pytest

from dnas_jax import api
from dnas_jax.configs import test as test_config
from dnas_jax.configs import test_retrain
from dnas_jax.retrain import loop as retrain_loop
from dnas_jax.search import artifacts
from dnas_jax.search import loop as search_loop
from dnas_jax.training import checkpoints
from dnas_jax.training import workdir as workdir_lib

import run_helpers as rh  # tests/run_helpers.py


def test_nan_stop_keeps_the_last_checkpoint_and_ends_with_one_line(tmp_path):
  run = tmp_path / "run"
  out = rh.cli(
    "experiments.search",
    "--config=experiments/configs/test.py",
    f"--workdir={run}",
    "--config.optim.weight_lr=1e6",
  )
  assert out.returncode == 1, out.stderr[-2000:]
  last = rh.last_line(out)
  assert last.startswith("error: ") and "at step 4" in last, last
  assert "the last finished checkpoint, step 2, is kept" in last
  assert "Traceback" not in out.stderr
  assert os.listdir(run / "checkpoints") == ["2"]  # finished, no temporary folder
  assert os.path.isfile(run / "checkpoints" / "2" / "_CHECKPOINT_METADATA")


def test_nan_stop_of_retraining_keeps_the_last_checkpoint(tmp_path, nan_images_from):
  # Steps 7.. have a NaN loss; the checkpoint at step 5 (checkpoint_every_steps) is
  # the last finite one.
  nan_images_from(7)
  with pytest.raises(
    (search_loop.NonFiniteLossError, checkpoints.NonFiniteStateError),
    match="the last finished checkpoint, step 5, is kept",
  ):
    retrain_loop.train_and_evaluate(test_retrain.get_config(), str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == ["5"]
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)


def test_any_exception_waits_for_pending_writes_and_releases_the_lock(tmp_path):
  def fail(step):
    if step == 3:  # the checkpoint of step 2 may still be being written
      raise RuntimeError("boom")

  with pytest.raises(RuntimeError, match="boom"):
    search_loop.train_and_evaluate(test_config.get_config(), str(tmp_path), hooks=[fail])
  assert os.listdir(tmp_path / "checkpoints") == ["2"]
  assert os.path.isfile(tmp_path / "checkpoints" / "2" / "_CHECKPOINT_METADATA")
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)


_SEARCH_ON_A_FULL_DISK = """
import errno, runpy, sys
import orbax.checkpoint as ocp
real, calls = ocp.JsonCheckpointHandler._save_fn, []
async def full_disk(self, item, directory):
  calls.append(directory)
  if len(calls) >= 2:
    raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))
  return await real(self, item, directory)
ocp.JsonCheckpointHandler._save_fn = full_disk
sys.argv = ["experiments.search"] + sys.argv[1:]
runpy.run_module("experiments.search", run_name="__main__")
"""


def test_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_checkpoints(tmp_path):
  run = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=rh.ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [
      sys.executable,
      "-c",
      _SEARCH_ON_A_FULL_DISK,
      "--config=experiments/configs/test.py",
      f"--workdir={run}",
    ],
    cwd=rh.ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 1, out.stderr[-3000:]
  checkpoint_dir = run / "checkpoints"
  assert rh.last_line(out) == (
    f"error: cannot write checkpoints in {checkpoint_dir} (No space left on device): "
    "the last finished checkpoint, step 2, is kept there; run the same command again "
    "to resume once the folder can be written"
  )
  assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
  assert len([l for l in out.stderr.splitlines() if l.startswith("E")]) == 1  # cli.py's
  assert checkpoints.finished_steps(str(checkpoint_dir)) == [2]
  assert not os.path.exists(run / workdir_lib.LOCK_NAME)
  _, _, step = api.restore_search_run(str(run))  # verified against its digest
  assert step == 2


def test_full_disk_under_another_file_of_the_run_is_one_line(tmp_path, monkeypatch):
  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(artifacts, "write_artifacts", full_disk)  # at the first epoch end
  with pytest.raises(workdir_lib.WriteError) as e:
    search_loop.train_and_evaluate(test_config.get_config(), str(tmp_path))
  assert str(e.value) == (
    f"cannot write in {tmp_path} (No space left on device): the last finished "
    f"checkpoint, step 8, is kept in {tmp_path / 'checkpoints'}; run the same command "
    "again to resume once the folder can be written"
  )
  assert checkpoints.finished_steps(str(tmp_path / "checkpoints")) == [4, 6, 8]
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)


def test_write_failures_are_told_from_other_errors():
  assert checkpoints.write_failure(OSError(errno.ENOSPC, "No space left on device")) == (
    "No space left on device"
  )
  tensorstore = ValueError(  # what a full disk under a checkpoint's values raises
    'RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": Failed to write '
    "139769 bytes to file 7: No space left on device [os_error_code='28']"
  )
  assert checkpoints.write_failure(tensorstore) == os.strerror(errno.ENOSPC)
  wrapped = RuntimeError("Save Finalize thread failed")
  wrapped.__cause__ = tensorstore
  assert checkpoints.write_failure(wrapped) == os.strerror(errno.ENOSPC)
  assert checkpoints.write_failure(ValueError("shapes differ")) is None
