"""The search loop end to end on configs/test.py: artifacts, interruption and resume,
every parameterisation by config, a non-finite loss."""

import functools
import gzip
import json
import logging
import os
import pathlib

import jax
import numpy as np
import pytest

from dnas_jax.configs import test as test_config
from dnas_jax.search import loop as search_loop
from dnas_jax.search import setup as search_setup
from dnas_jax.search import steps as search_steps
from dnas_jax.space import search_space


def _run(workdir, hooks=(), **overrides):
  config = test_config.get_config()
  config.update_from_flattened_dict(overrides)  # {"optim.arch_lr": 1e-3, ...}
  return search_loop.train_and_evaluate(config, str(workdir), hooks=hooks)


def test_interrupted_search_resumes_to_the_same_result(tmp_path, tiny_search):
  full_dir, full = tiny_search  # the uninterrupted run: configs/test.py as it is
  full_dir = pathlib.Path(full_dir)
  for name in ("genotype.json", "genotype.txt", "psi.npy", "final_metrics.json"):
    assert os.path.exists(full_dir / name), name
  assert os.listdir(full_dir / "checkpoints")
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(full_dir))
  # Architecture updates start after the warm-up epoch: ψ moved.
  assert full["state"].step == 8 * 2

  def interrupt(step):
    if step == 7:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path / "resumed", hooks=[interrupt])
  saved = sorted(int(s) for s in os.listdir(tmp_path / "resumed" / "checkpoints") if s.isdigit())
  assert saved[-1] == 7
  resumed = _run(tmp_path / "resumed")
  for a, b in zip(
    jax.tree.leaves(full["state"].arch_params), jax.tree.leaves(resumed["state"].arch_params)
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (full_dir / "genotype.json").read_text() == (
    tmp_path / "resumed" / "genotype.json"
  ).read_text()
  np.testing.assert_array_equal(
    np.load(full_dir / "psi.npy"), np.load(tmp_path / "resumed" / "psi.npy")
  )


def test_a_second_run_loads_its_steps_without_tracing(
  tmp_path, fresh_compile_cache, monkeypatch, caplog
):
  """A first run with an empty compilation cache keeps its compiled steps; a second run
  of the same config in another workdir loads them, never traces the search step, and
  ends bitwise in the same state."""
  cheap = {"num_epochs": 1, "model.primitives": "max_pool_3x3,skip_connect"}
  first = _run(tmp_path / "first", **cheap)
  assert os.listdir(fresh_compile_cache / "executables")
  traced = []
  original = search_steps.search_step

  @functools.wraps(original)  # the same name, as the cache key sees it
  def counting(*args, **kwargs):
    traced.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(search_steps, "search_step", counting)
  caplog.clear()
  with caplog.at_level(logging.INFO):
    second = _run(tmp_path / "second", **cheap)
  assert not traced
  assert "loaded search step (decoupled, L=3, batch 16), evaluation step" in caplog.text
  assert "compiling" not in caplog.text
  for a, b in (
    (first["state"].params, second["state"].params),
    (first["state"].arch_params, second["state"].arch_params),
  ):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  assert first["val_accuracy"] == second["val_accuracy"]


@pytest.mark.parametrize("kind,edge_normalization", [("iam", False), ("full", True)])
def test_every_parameterisation_runs_by_config(tmp_path, kind, edge_normalization):
  # Two cheap operations: the parameterisation, not the operations, is under test
  # (each one more is compiled for every edge of the search step). The block search
  # at 5 layers, where three normal cells share one ψ.
  num_layers = 5 if kind == "iam" else 3
  result = _run(
    tmp_path,
    **{
      "arch.kind": kind,
      "optim.zero_one_weight": 0.0,
      "arch.edge_normalization": edge_normalization,
      "model.primitives": "max_pool_3x3,skip_connect",
      "model.num_layers": num_layers,
    },
  )
  meta = json.loads((tmp_path / "genotype.json").read_text())["meta"]
  assert meta["arch_kind"] == kind
  psi = np.load(tmp_path / "psi.npy")
  assert psi.shape == (num_layers, 14, 2)
  if edge_normalization:  # ψ = softmax over ops × edge weight (a softmax per node)
    for edges in map(search_space.node_edges, range(4)):
      np.testing.assert_allclose(psi[:, edges.start : edges.stop].sum((-1, -2)), 1.0, rtol=1e-5)
    assert not np.allclose(psi.sum(-1), 1.0, rtol=1e-3)
    assert set(result["state"].arch_params) == {"psi_logits", "beta"}
  else:
    np.testing.assert_allclose(psi.sum(-1), 1.0, rtol=1e-5)  # softmax over ops
  if kind == "iam":  # block search: every normal cell is the same
    red = search_space.is_reduction(num_layers)
    normals = [psi[k] for k in range(num_layers) if not red[k]]
    assert len(normals) == 3
    for p in normals[1:]:
      np.testing.assert_array_equal(p, normals[0])
  assert np.isfinite(result["val_loss"])


def test_non_finite_loss_stops_with_the_step(tmp_path, nan_images_from):
  nan_images_from(7)  # the 7th host batch is the training batch of step 4
  with pytest.raises(
    search_loop.NonFiniteLossError,
    match=r"at step 4: .*the last finished checkpoint, step 2, is kept",
  ):
    _run(tmp_path)
  assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_no_architecture_update_during_the_warmup_epochs():
  """configs/test.py: 8 steps an epoch, 1 warm-up epoch. The loop's step leaves the
  architecture parameters at their initial values for steps 0-7 and moves them at
  step 8 (epochs are converted to steps where the step is built)."""
  from dnas_jax.training import sharding  # pylint: disable=g-import-not-at-top

  config = test_config.get_config()
  mesh = sharding.create_mesh()
  setup = search_setup.create_search_setup(config, (8, 8, 3), 10, 8, mesh)
  initial = jax.tree.map(np.asarray, setup.state.arch_params)
  state = setup.state
  r = np.random.default_rng(0)
  for step in range(9):
    batches = [
      sharding.shard_batch(
        {
          "image": r.normal(size=(16, 8, 8, 3)).astype(np.float32),
          "label": r.integers(0, 10, 16).astype(np.int32),
        },
        mesh,
      )
      for _ in range(2)
    ]
    state, m = setup.step_fn(state, *batches, jax.random.key(0))
    moved = any(
      not np.array_equal(np.asarray(a), b)
      for a, b in zip(jax.tree.leaves(state.arch_params), jax.tree.leaves(initial))
    )
    assert moved == (step == 8), step
    assert float(m.compute()["arch_updates"]) == float(step == 8)


def test_prefetch_and_profiling_leave_the_result_unchanged(tmp_path, tiny_search):
  """tiny_search ran with configs/test.py's prefetch of 2 and no profile; without
  prefetch and with a profile of steps 4-5 the run ends bitwise in the same state, and
  the trace is in the workdir."""
  _, full = tiny_search
  result = _run(tmp_path, prefetch=0, **{"profile.first_step": 3, "profile.num_steps": 2})
  for a, b in (
    (full["state"].params, result["state"].params),
    (full["state"].arch_params, result["state"].arch_params),
  ):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  runs = list((tmp_path / "plugins" / "profile").iterdir())
  assert len(runs) == 1
  names = os.listdir(runs[0])
  assert any(n.endswith(".xplane.pb") for n in names), names
  assert any(n.endswith(".trace.json.gz") for n in names), names
  trace = next(n for n in names if n.endswith(".trace.json.gz"))
  with gzip.open(runs[0] / trace) as f:
    assert b'"search_step"' in f.read()  # the step annotation
