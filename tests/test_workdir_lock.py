"""One run per workdir: the lock records its holder and is released; a second run
refuses in one line naming the holder, a lock left by a dead process is taken over,
and a workdir that cannot be written is one line."""

import json
import logging
import os

import pytest

from dnas_jax.training import workdir as workdir_lib

import run_helpers as rh  # tests/run_helpers.py


def test_lock_records_holder_and_is_released(tmp_path):
  with workdir_lib.RunDir(str(tmp_path)):
    with open(tmp_path / workdir_lib.LOCK_NAME) as f:
      holder = json.load(f)
    assert holder["pid"] == os.getpid() and holder["host"]
    assert workdir_lib.lock_holder(str(tmp_path))["pid"] == os.getpid()
  assert workdir_lib.lock_holder(str(tmp_path)) is None


def test_second_run_in_a_workdir_refuses_and_a_dead_holder_is_taken_over(run_copy, caplog):
  workdir, _ = run_copy
  holder = rh.hold_lock(workdir)
  try:
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {holder.pid} on "):
      with workdir_lib.RunDir(workdir):
        pass
    out = rh.cli(
      "experiments.search", "--config=experiments/configs/test.py", f"--workdir={workdir}"
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert rh.last_line(out).startswith(
      f"error: workdir {workdir} is in use by another run (pid {holder.pid} "
    )
  finally:
    holder.kill()
    holder.wait(timeout=30)
  caplog.set_level(logging.WARNING)
  with workdir_lib.RunDir(workdir):  # the holder died without releasing its lock
    with open(os.path.join(workdir, workdir_lib.LOCK_NAME)) as f:
      assert json.load(f)["pid"] == os.getpid()
  assert "taking over the lock" in caplog.text
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME))


def test_unwritable_workdir_is_one_line(tmp_path, monkeypatch):
  real_open = os.open

  def read_only(path, flags, *args):
    if str(path).endswith(workdir_lib.LOCK_NAME):
      raise PermissionError(13, "Permission denied")
    return real_open(path, flags, *args)

  monkeypatch.setattr(os, "open", read_only)
  with pytest.raises(
    workdir_lib.WorkdirError, match=f"cannot write in workdir {tmp_path}: Permission denied"
  ):
    with workdir_lib.RunDir(str(tmp_path)):
      pass
