"""The failure paths of search and retraining: nothing lost, nothing mixed, one line.

Most tests reuse the finished tiny search of conftest.py (`tiny_search`: configs/test.py,
checkpoints at steps 12, 14 and 16) on a copy of its workdir, so that they restore and
compare without compiling; the NaN stop and the lock run the real commands.
"""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from dnas_jax import api
from dnas_jax.configs import test as test_config
from dnas_jax.configs import test_retrain
from dnas_jax.retrain import loop as retrain_loop
from dnas_jax.retrain import setup as retrain_setup
from dnas_jax.search import artifacts
from dnas_jax.search import derivation
from dnas_jax.search import loop as search_loop
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.training import checkpoints
from dnas_jax.training import validation
from dnas_jax.training import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEWEST, PREVIOUS = 16, 14  # the tiny search's last two checkpoints


def _config(config=None, **overrides):
  config = config or test_config.get_config()
  config.update_from_flattened_dict(overrides)  # {"optim.arch_lr": 1e-3, ...}
  return config


def _cli(module, *args, timeout=300):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _last_line(proc) -> str:
  return proc.stderr.strip().splitlines()[-1]


@pytest.fixture
def run_copy(tiny_search, tmp_path):
  """A copy of the finished tiny search's workdir, and its final state."""
  src, result = tiny_search
  dst = str(tmp_path / "run")
  shutil.copytree(src, dst)
  return dst, result["state"]


def _restore(workdir, state, **kwargs):
  manager = checkpoints.create_manager(os.path.join(workdir, "checkpoints"))
  return checkpoints.restore_verified(manager, checkpoints.abstract_like(state), **kwargs)


def _step_dir(workdir, step):
  return os.path.join(workdir, "checkpoints", str(step))


# 1. A NaN stop keeps the last finished checkpoint and ends with one line.


def test_nan_stop_keeps_the_last_checkpoint_and_ends_with_one_line(tmp_path):
  run = tmp_path / "run"
  out = _cli("experiments.search", "--config=experiments/configs/test.py",
             f"--workdir={run}", "--config.optim.weight_lr=1e6")
  assert out.returncode == 1, out.stderr[-2000:]
  last = _last_line(out)
  assert last.startswith("error: ") and "at step 4" in last, last
  assert "the last finished checkpoint, step 2, is kept" in last
  assert "Traceback" not in out.stderr
  assert os.listdir(run / "checkpoints") == ["2"]  # finished, no temporary folder
  assert os.path.isfile(run / "checkpoints" / "2" / "_CHECKPOINT_METADATA")


def test_nan_stop_of_retraining_keeps_the_last_checkpoint(tmp_path, nan_images_from):
  # Steps 7.. have a NaN loss; the checkpoint at step 5 (checkpoint_every_steps) is
  # the last finite one.
  nan_images_from(7)
  with pytest.raises((search_loop.NonFiniteLossError, checkpoints.NonFiniteStateError),
                     match="the last finished checkpoint, step 5, is kept"):
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


# A full disk: one line naming the folder and the last finished checkpoint, kept.

# The tiny search, with Orbax's write of a checkpoint's JSON meta failing as a full
# disk fails it, in the background, from the second checkpoint (step 4) on.
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


def test_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_checkpoints(
    tmp_path):
  run = tmp_path / "run"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SEARCH_ON_A_FULL_DISK,
                        "--config=experiments/configs/test.py", f"--workdir={run}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-3000:]
  checkpoint_dir = run / "checkpoints"
  assert _last_line(out) == (
      f"error: cannot write checkpoints in {checkpoint_dir} (No space left on device): "
      "the last finished checkpoint, step 2, is kept there; run the same command again "
      "to resume once the folder can be written")
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
      "again to resume once the folder can be written")
  assert checkpoints.finished_steps(str(tmp_path / "checkpoints")) == [4, 6, 8]
  assert not os.path.exists(tmp_path / workdir_lib.LOCK_NAME)


# 2. A resume compares configs.


def test_resume_with_another_config_refuses_naming_the_fields(run_copy):
  workdir, _ = run_copy
  with pytest.raises(workdir_lib.ConfigChangedError) as e:
    search_loop.train_and_evaluate(_config(**{"optim.arch_lr": 1e-3, "seed": 3}), workdir)
  message = str(e.value)
  assert "optim.arch_lr: 0.0006 → 0.001" in message and "seed: 0 → 3" in message
  assert "--resume_with_changes" in message and "\n" not in message
  with pytest.raises(workdir_lib.ConfigChangedError, match="model.channels: 8 → 16"):
    search_loop.train_and_evaluate(_config(**{"model.channels": 16}), workdir)
  # Allowed, a change of shape still cannot resume: one line, nothing moved.
  with pytest.raises(checkpoints.CheckpointError, match="a change of shape cannot resume"):
    search_loop.train_and_evaluate(_config(**{"model.channels": 16}), workdir,
                                   allow_config_changes=True)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "14", "16"]
  assert not os.path.exists(os.path.join(workdir, checkpoints.DAMAGED_DIR))


def test_config_changes_split_harmless_fields_from_the_others():
  stored = test_config.get_config().to_dict()
  new = _config(**{"log_every_steps": 5, "eval_batch_size": 64, "data.data_dir": "/d",
                   "optim.momentum": 0.8, "num_epochs": 3}).to_dict()
  meaningful, harmless = workdir_lib.config_changes(stored, new)
  assert meaningful == ["num_epochs: 2 → 3", "optim.momentum: 0.9 → 0.8"]
  assert harmless == ["data.data_dir: '' → '/d'", "eval_batch_size: 32 → 64",
                      "log_every_steps: 2 → 5"]


def test_resume_with_harmless_changes_continues(run_copy, caplog):
  workdir, state = run_copy
  caplog.set_level(logging.INFO)
  result = search_loop.train_and_evaluate(
      _config(log_every_steps=4, checkpoint_every_steps=4), workdir)
  assert "log_every_steps: 2 → 4" in caplog.text
  assert int(result["state"].step) == NEWEST
  jax.tree.map(np.testing.assert_array_equal, result["state"].arch_params,
               state.arch_params)


def test_resume_refusal_is_one_line_on_the_command_line(run_copy):
  workdir, _ = run_copy
  out = _cli("experiments.search", "--config=experiments/configs/test.py",
             f"--workdir={workdir}", "--config.seed=5")
  assert out.returncode == 1
  assert _last_line(out).startswith(f"error: workdir {workdir} holds a run with another "
                                    "config (seed: 0 → 5)")
  assert "Traceback" not in out.stderr


# 3. Damaged checkpoints: verified, reported, and the newest intact one restored.


def _data_files(step_dir):
  return sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
                for f in fs if os.sep + "d" + os.sep in os.path.join(r, f))


def _flip_bytes(path, where=0.25):
  """Inverts 4 bytes at the fraction `where` of the file."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(int(size * where))
    chunk = f.read(4)
    f.seek(int(size * where))
    f.write(bytes(b ^ 0xFF for b in chunk))


def _damage(workdir, how):
  step_dir = _step_dir(workdir, NEWEST)
  if how == "bytes_overwritten":  # spread over the file of the values
    for where in np.linspace(0.02, 0.98, 25):
      _flip_bytes(max(_data_files(step_dir), key=os.path.getsize), where)
  elif how == "file_truncated":
    path = max(_data_files(step_dir), key=os.path.getsize)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 10)
  elif how == "file_deleted":
    os.remove(max(_data_files(step_dir), key=os.path.getsize))
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


WHY = {"bytes_overwritten": "its values differ from the digest saved with it",
       "digest_lost": "its meta holds no digest of its values"}


@pytest.mark.parametrize("how", ["bytes_overwritten", "file_truncated", "file_deleted",
                                 "metadata_garbled", "meta_garbled", "folder_emptied",
                                 "digest_lost"])
def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact(run_copy, how, caplog):
  workdir, state = run_copy
  _damage(workdir, how)
  caplog.set_level(logging.WARNING)
  restored, meta, step = _restore(workdir, state)
  assert step == PREVIOUS and int(restored.step) == PREVIOUS
  assert f"checkpoint {NEWEST} is damaged ({WHY.get(how, 'unreadable')}" in caplog.text
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
  # run to run: try the largest files at spread positions until one decodes to
  # changed values.
  trials = [(path, where) for path in sorted(files, key=os.path.getsize)[::-1][:3]
            for where in np.linspace(0.02, 0.98, 12)]
  for i, (path, where) in enumerate(trials):
    if silent:
      break
    trial = str(tmp_path / f"values{i}")
    shutil.copytree(workdir, trial)
    _flip_bytes(path.replace(workdir, trial), where)
    manager = checkpoints.create_manager(os.path.join(trial, "checkpoints"))
    try:
      unverified, _ = checkpoints.restore(manager, target, NEWEST)
    except ValueError:  # compressed bytes: the restore itself fails
      unverified = None
    changed = unverified is not None and not all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(unverified),
                                             jax.tree.leaves(state)))
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
  jax.tree.map(np.testing.assert_array_equal, result["state"].arch_params,
               state.arch_params)
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


def test_leftovers_of_interrupted_writes_and_deletions_are_cleaned_quietly(run_copy,
                                                                          caplog):
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


# 4. One run per workdir.


def _hold_lock(workdir):
  """A process that takes the workdir's lock and waits."""
  proc = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom dnas_jax.training import workdir\n"
       "workdir.acquire_lock(sys.argv[1]); print('locked', flush=True); time.sleep(300)",
       workdir], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
      stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_second_run_in_a_workdir_refuses_and_a_dead_holder_is_taken_over(run_copy,
                                                                         caplog):
  workdir, _ = run_copy
  holder = _hold_lock(workdir)
  try:
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {holder.pid} on "):
      with workdir_lib.RunDir(workdir):
        pass
    out = _cli("experiments.search", "--config=experiments/configs/test.py",
               f"--workdir={workdir}")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert _last_line(out).startswith(f"error: workdir {workdir} is in use by another "
                                      f"run (pid {holder.pid} ")
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
  with pytest.raises(workdir_lib.WorkdirError,
                     match=f"cannot write in workdir {tmp_path}: Permission denied"):
    with workdir_lib.RunDir(str(tmp_path)):
      pass


# 5. Every rate and coefficient finite.


@pytest.mark.parametrize("field", ["optim.weight_lr", "optim.arch_lr",
                                   "optim.weight_min_lr", "optim.weight_decay",
                                   "optim.arch_weight_decay", "optim.zero_one_weight",
                                   "optim.grad_clip", "optim.momentum", "optim.arch_b1",
                                   "optim.arch_b2", "model.skip_dropout",
                                   "data.train_portion", "arch.init_scale"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_search_rates_must_be_finite_and_in_range(field, value):
  with pytest.raises(validation.ConfigError, match=f"config.{field}="):
    validation.validate_search_config(_config(**{field: value}))


@pytest.mark.parametrize("field", ["optim.weight_lr", "optim.weight_min_lr",
                                   "optim.weight_decay", "optim.grad_clip",
                                   "optim.momentum", "optim.auxiliary_weight",
                                   "optim.drop_path_prob"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_retraining_rates_must_be_finite_and_in_range(field, value):
  with pytest.raises(validation.ConfigError, match=f"config.{field}="):
    validation.validate_train_config(_config(test_retrain.get_config(),
                                                    **{field: value}))


# 7. derive and train on workdirs that are not what they expect.


def test_derive_leaves_a_running_search_alone_and_labels_psi_by_its_own_step(tmp_path):
  search = tmp_path / "search"
  search.mkdir()
  psi = np.random.default_rng(0).random((5, 14, 3)).astype(np.float32)
  np.save(search / "psi.npy", psi)
  prims = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  genotype_lib.derive_genotype(psi, prims).save(
      str(search / "genotype.json"), primitives=prims, meta={"step": 40, "epoch": 5})
  manager = checkpoints.create_manager(str(search / "checkpoints"))
  checkpoints.save(manager, 50, {"w": np.ones(2, np.float32)},  # newer than psi.npy
                   {"primitives": list(prims), "steps_per_epoch": 8})
  manager.wait_until_finished()
  holder = _hold_lock(str(search))
  try:
    before = (search / "genotype.json").read_text()
    with pytest.raises(api.WorkdirError, match="is still running"):
      derivation.output_folder(str(search))
    assert (search / "genotype.json").read_text() == before
    out = derivation.output_folder(str(search), str(tmp_path / "out"))
    derivation.write_derivation(out, *api.search_psi(str(search)))
  finally:
    holder.kill()
    holder.wait(timeout=30)
  meta = json.loads((tmp_path / "out" / "genotype.json").read_text())["meta"]
  assert (meta["step"], meta["epoch"]) == (40, 5)


def test_derive_on_a_retraining_workdir_says_what_it_is(tmp_path):
  manager = checkpoints.create_manager(str(tmp_path / "checkpoints"))
  checkpoints.save(manager, 3, {"w": np.ones(2, np.float32)},
                   {"genotype": {"version": 1, "cells": []}, "config": {}})
  manager.wait_until_finished()
  with pytest.raises(api.WorkdirError, match="is a retraining workdir"):
    api.search_psi(str(tmp_path))


def test_failed_derive_and_train_create_no_workdir(tmp_path):
  out = _cli("experiments.derive", f"--workdir={tmp_path / 'absent'}",
             f"--out={tmp_path / 'out'}")
  assert out.returncode == 1 and _last_line(out).startswith("error: no workdir")
  assert not os.path.exists(tmp_path / "out")
  with pytest.raises(validation.ConfigError):
    retrain_loop.train_and_evaluate(_config(test_retrain.get_config(), genotype="NOPE"),
                             str(tmp_path / "train"))
  assert not os.path.exists(tmp_path / "train")


@pytest.mark.parametrize("document, message", [
    ([1, 2], "the top level is a list"),
    ({"version": 1}, "it has no 'cells' list"),
    ({"version": 1, "cells": [{"reduction": False}]}, "cells[0]: no 'nodes'"),
    ({"version": 2, "cells": []}, "version 2 is not 1"),
])
def test_malformed_genotype_json_names_what_is_wrong(tmp_path, document, message):
  path = tmp_path / "genotype.json"
  path.write_text(json.dumps(document))
  with pytest.raises(validation.ConfigError) as e:
    retrain_setup.resolve_genotype(str(path), 5)
  assert message in str(e.value) and str(path) in str(e.value)


def test_lock_records_holder_and_is_released(tmp_path):
  with workdir_lib.RunDir(str(tmp_path)):
    with open(tmp_path / workdir_lib.LOCK_NAME) as f:
      holder = json.load(f)
    assert holder["pid"] == os.getpid() and holder["host"]
    assert workdir_lib.lock_holder(str(tmp_path))["pid"] == os.getpid()
  assert workdir_lib.lock_holder(str(tmp_path)) is None


def test_write_failures_are_told_from_other_errors():
  assert checkpoints.write_failure(OSError(errno.ENOSPC, "No space left on device")) == (
      "No space left on device")
  tensorstore = ValueError(  # what a full disk under a checkpoint's values raises
      "RESOURCE_EXHAUSTED: Error writing local file \"x/_sharding\": Failed to write "
      "139769 bytes to file 7: No space left on device [os_error_code='28']")
  assert checkpoints.write_failure(tensorstore) == os.strerror(errno.ENOSPC)
  wrapped = RuntimeError("Save Finalize thread failed")
  wrapped.__cause__ = tensorstore
  assert checkpoints.write_failure(wrapped) == os.strerror(errno.ENOSPC)
  assert checkpoints.write_failure(ValueError("shapes differ")) is None
