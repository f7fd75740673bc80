"""derive and train on workdirs and genotypes that are not what they expect: a running
search's workdir left alone, a retraining workdir named as such, nothing created by a
failed command, and a malformed genotype.json named with what is wrong."""

import json
import os

import numpy as np
import pytest

from dnas_jax import api
from dnas_jax.configs import test_retrain
from dnas_jax.retrain import loop as retrain_loop
from dnas_jax.retrain import setup as retrain_setup
from dnas_jax.search import derivation
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.training import checkpoints
from dnas_jax.training import validation

import run_helpers as rh  # tests/run_helpers.py


def test_derive_leaves_a_running_search_alone_and_labels_psi_by_its_own_step(tmp_path):
  search = tmp_path / "search"
  search.mkdir()
  psi = np.random.default_rng(0).random((5, 14, 3)).astype(np.float32)
  np.save(search / "psi.npy", psi)
  prims = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  genotype_lib.derive_genotype(psi, prims).save(
    str(search / "genotype.json"), primitives=prims, meta={"step": 40, "epoch": 5}
  )
  manager = checkpoints.create_manager(str(search / "checkpoints"))
  checkpoints.save(
    manager,
    50,
    {"w": np.ones(2, np.float32)},  # newer than psi.npy
    {"primitives": list(prims), "steps_per_epoch": 8},
  )
  manager.wait_until_finished()
  holder = rh.hold_lock(str(search))
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
  checkpoints.save(
    manager,
    3,
    {"w": np.ones(2, np.float32)},
    {"genotype": {"version": 1, "cells": []}, "config": {}},
  )
  manager.wait_until_finished()
  with pytest.raises(api.WorkdirError, match="is a retraining workdir"):
    api.search_psi(str(tmp_path))


def test_failed_derive_and_train_create_no_workdir(tmp_path):
  out = rh.cli(
    "experiments.derive", f"--workdir={tmp_path / 'absent'}", f"--out={tmp_path / 'out'}"
  )
  assert out.returncode == 1 and rh.last_line(out).startswith("error: no workdir")
  assert not os.path.exists(tmp_path / "out")
  with pytest.raises(validation.ConfigError):
    retrain_loop.train_and_evaluate(
      rh.config(test_retrain.get_config(), genotype="NOPE"), str(tmp_path / "train")
    )
  assert not os.path.exists(tmp_path / "train")


@pytest.mark.parametrize(
  "document, message",
  [
    ([1, 2], "the top level is a list"),
    ({"version": 1}, "it has no 'cells' list"),
    ({"version": 1, "cells": [{"reduction": False}]}, "cells[0]: no 'nodes'"),
    ({"version": 2, "cells": []}, "version 2 is not 1"),
  ],
)
def test_malformed_genotype_json_names_what_is_wrong(tmp_path, document, message):
  path = tmp_path / "genotype.json"
  path.write_text(json.dumps(document))
  with pytest.raises(validation.ConfigError) as e:
    retrain_setup.resolve_genotype(str(path), 5)
  assert message in str(e.value) and str(path) in str(e.value)
