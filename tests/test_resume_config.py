"""A resume compares the stored config with the new one: harmless fields (logging,
checkpoint cadence, ...) may change and are listed, any other change refuses in one
line naming the fields, unless allowed (and a change of shape still cannot resume).

The resumes start from a copy of the finished tiny search of conftest.py (`run_copy`).
"""

import logging
import os

import jax
import numpy as np
import pytest

from dnas_jax.configs import test as test_config
from dnas_jax.search import loop as search_loop
from dnas_jax.training import checkpoints
from dnas_jax.training import workdir as workdir_lib

import run_helpers as rh  # tests/run_helpers.py

NEWEST = rh.NEWEST


def test_resume_with_another_config_refuses_naming_the_fields(run_copy):
  workdir, _ = run_copy
  with pytest.raises(workdir_lib.ConfigChangedError) as e:
    search_loop.train_and_evaluate(rh.config(**{"optim.arch_lr": 1e-3, "seed": 3}), workdir)
  message = str(e.value)
  assert "optim.arch_lr: 0.0006 → 0.001" in message and "seed: 0 → 3" in message
  assert "--resume_with_changes" in message and "\n" not in message
  with pytest.raises(workdir_lib.ConfigChangedError, match="model.channels: 8 → 16"):
    search_loop.train_and_evaluate(rh.config(**{"model.channels": 16}), workdir)
  # Allowed, a change of shape still cannot resume: one line, nothing moved.
  with pytest.raises(checkpoints.CheckpointError, match="a change of shape cannot resume"):
    search_loop.train_and_evaluate(
      rh.config(**{"model.channels": 16}), workdir, allow_config_changes=True
    )
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "14", "16"]
  assert not os.path.exists(os.path.join(workdir, checkpoints.DAMAGED_DIR))


def test_config_changes_split_harmless_fields_from_the_others():
  stored = test_config.get_config().to_dict()
  new = rh.config(
    **{
      "log_every_steps": 5,
      "eval_batch_size": 64,
      "data.data_dir": "/d",
      "optim.momentum": 0.8,
      "num_epochs": 3,
    }
  ).to_dict()
  meaningful, harmless = workdir_lib.config_changes(stored, new)
  assert meaningful == ["num_epochs: 2 → 3", "optim.momentum: 0.9 → 0.8"]
  assert harmless == [
    "data.data_dir: '' → '/d'",
    "eval_batch_size: 32 → 64",
    "log_every_steps: 2 → 5",
  ]


def test_resume_with_harmless_changes_continues(run_copy, caplog):
  workdir, state = run_copy
  caplog.set_level(logging.INFO)
  result = search_loop.train_and_evaluate(
    rh.config(log_every_steps=4, checkpoint_every_steps=4), workdir
  )
  assert "log_every_steps: 2 → 4" in caplog.text
  assert int(result["state"].step) == NEWEST
  jax.tree.map(np.testing.assert_array_equal, result["state"].arch_params, state.arch_params)


def test_resume_refusal_is_one_line_on_the_command_line(run_copy):
  workdir, _ = run_copy
  out = rh.cli(
    "experiments.search",
    "--config=experiments/configs/test.py",
    f"--workdir={workdir}",
    "--config.seed=5",
  )
  assert out.returncode == 1
  assert rh.last_line(out).startswith(
    f"error: workdir {workdir} holds a run with another config (seed: 0 → 5)"
  )
  assert "Traceback" not in out.stderr
