"""Tests of retraining (dnas_jax/retrain/loop.py) and evaluation (experiments/evaluate.py).

The end-to-end tests share one tiny config (configs/test_retrain.py) and three runs
made once per module: an uninterrupted one, and one interrupted by a hook then resumed.
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dnas_jax import api
from dnas_jax.configs import cifar10_retrain
from dnas_jax.configs import test_retrain
from dnas_jax.retrain import loop as retrain_loop
from dnas_jax.retrain import setup as retrain_setup
from dnas_jax.retrain import steps as retrain_steps
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import known_genotypes
from dnas_jax.training import validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# quark0/darts and yuhuixu1993/PC-DARTS NetworkCIFAR(36, 10, 20, auxiliary=True), counted
# without the auxiliary head (tests/test_network.py says how they were obtained).
OFFICIAL_COUNTS = {"DARTS_V1": 3_169_414, "DARTS_V2": 3_349_342, "PC_DARTS": 3_634_678}
INTERRUPT_STEP = 7  # mid-epoch (16 steps per epoch), after the checkpoint at step 5


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_dry_run_parameter_counts_equal_official_code(name):
  config = cifar10_retrain.get_config()
  config.genotype = name
  lines = retrain_setup.parameter_count_lines(config)
  assert lines[0] == f"params_excluding_auxiliary: {OFFICIAL_COUNTS[name]}"
  assert lines[1].startswith("params_total: ")
  assert int(lines[1].split()[1]) > OFFICIAL_COUNTS[name]
  assert lines[2].startswith("multiply_adds: ")


def test_dry_run_command_prints_exactly_three_lines():
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.train",
      "--config=experiments/configs/cifar10_retrain.py",
      "--config.genotype=PC_DARTS",
      "--dry_run",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert out.stdout.splitlines() == [
    "params_excluding_auxiliary: 3634678",
    "params_total: 4111104",
    "multiply_adds: 556670592",
  ]


def test_resolve_genotype_by_name_and_by_file_with_depth_mapping(tmp_path):
  geno = retrain_setup.resolve_genotype("DARTS_V2", 8)
  assert geno == known_genotypes.get_genotype("DARTS_V2", 8)
  path = str(tmp_path / "genotype.json")
  known_genotypes.get_genotype("PC_DARTS", 20).save(path)
  mapped = retrain_setup.resolve_genotype(path, 8)
  assert mapped == genotype_lib.map_to_depth(genotype_lib.GlobalGenotype.load(path), 8)
  assert [c.reduction for c in mapped.cells] == [k in (2, 5) for k in range(8)]
  with pytest.raises(validation.ConfigError, match="config.genotype='NOPE'"):
    retrain_setup.resolve_genotype("NOPE", 8)


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("optim.drop_path_prob", 1.5, "config.optim.drop_path_prob"),
    ("model.network", "resnet", "config.model.network='resnet'.*'tiny_imagenet'"),
    ("data.cutout", -1, "config.data.cutout"),
  ],
)
def test_config_errors_name_the_field(field, value, match):
  config = test_retrain.get_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(validation.ConfigError, match=match):
    validation.validate_train_config(config)


def test_drop_path_ramps_linearly_per_epoch():
  config = cifar10_retrain.get_config()
  probs = [retrain_steps.drop_path_prob(config, step, 10) for step in (0, 9, 10, 3000, 5999)]
  np.testing.assert_allclose(probs, [0.0, 0.0, 0.2 / 600, 0.2 * 300 / 600, 0.2 * 599 / 600])


class _FixedNet(nn.Module):
  """Returns given logits and auxiliary logits; has one batch statistic."""

  logits: tuple
  aux: tuple | None

  @nn.compact
  def __call__(self, images, drop_prob):
    self.variable("batch_stats", "count", lambda: jnp.zeros(()))
    aux = None if self.aux is None else jnp.asarray(self.aux)
    return jnp.asarray(self.logits), aux


def test_loss_adds_weighted_auxiliary_cross_entropy():
  logits, aux = ((2.0, 0.0, -1.0), (0.0, 1.0, 0.0)), ((0.0, 3.0, 0.0), (1.0, 1.0, 1.0))
  labels = jnp.asarray([0, 2])
  batch = {"image": jnp.zeros((2, 1)), "label": labels}
  ce = lambda l: optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(l), labels)
  variables = {"params": {}, "batch_stats": {"count": jnp.zeros(())}}
  for aux_value, expected in (
    (aux, ce(logits).mean() + 0.4 * ce(aux).mean()),
    (None, ce(logits).mean()),
  ):
    loss, _ = retrain_steps.loss_fn(
      variables["params"],
      variables["batch_stats"],
      batch,
      0.0,
      jax.random.key(0),
      net=_FixedNet(logits, aux_value),
      auxiliary_weight=0.4,
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  config = test_retrain.get_config()
  full = str(tmp_path_factory.mktemp("full"))
  result = retrain_loop.train_and_evaluate(config, full)

  def interrupt(step):
    if step == INTERRUPT_STEP:
      raise KeyboardInterrupt

  resumed = str(tmp_path_factory.mktemp("resumed"))
  with pytest.raises(KeyboardInterrupt):
    retrain_loop.train_and_evaluate(config, resumed, hooks=[interrupt])
  steps_saved = api.restore_train_run(resumed).step
  resumed_result = retrain_loop.train_and_evaluate(config, resumed)
  return {
    "config": config,
    "full": full,
    "result": result,
    "resumed": resumed,
    "resumed_result": resumed_result,
    "interrupted_at": steps_saved,
  }


def test_tiny_retraining_writes_final_metrics(runs):
  with open(os.path.join(runs["full"], retrain_loop.FINAL_METRICS)) as f:
    final = json.load(f)
  config = runs["config"]
  assert final["step"] == 16 * config.num_epochs
  assert 0.0 <= final["test_accuracy"] <= 1.0
  assert final["test_error"] == pytest.approx(1.0 - final["test_accuracy"])
  assert np.isfinite(final["test_loss"])
  assert final["num_params"] == final["num_params_total"]  # no auxiliary head
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(runs["full"]))


def test_evaluate_reproduces_the_reported_test_accuracy_exactly(runs):
  with open(os.path.join(runs["full"], retrain_loop.FINAL_METRICS)) as f:
    final = json.load(f)
  out = api.evaluate_workdir(runs["full"])
  assert out["step"] == final["step"]
  assert out["test_accuracy"] == final["test_accuracy"]
  assert out["test_loss"] == final["test_loss"]
  run = api.restore_train_run(runs["full"])
  layers = runs["config"].model.num_layers
  assert run.genotype == known_genotypes.get_genotype("DARTS_V1", layers)
  assert run.config.model.channels == runs["config"].model.channels


def test_data_parallel_commands_on_two_devices_reproduce_accuracy(tmp_path):
  """experiments.train and experiments.evaluate with the batch sharded over 2 fake CPU
  devices: the evaluation reproduces the reported accuracy; a batch the devices do not
  divide is a clear error."""
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
    "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
  }
  base = [
    sys.executable,
    "-m",
    "experiments.train",
    "--config=experiments/configs/test_retrain.py",
    f"--workdir={tmp_path}",
    "--config.num_epochs=1",
  ]
  bad = subprocess.run(
    base + ["--config.batch_size=15"], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert bad.returncode == 1
  assert "config.batch_size=15 is not divisible by the 2 devices" in bad.stderr
  subprocess.run(base, cwd=REPO, env=env, capture_output=True, check=True)
  out = subprocess.run(
    [sys.executable, "-m", "experiments.evaluate", f"--workdir={tmp_path}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  with open(os.path.join(tmp_path, retrain_loop.FINAL_METRICS)) as f:
    final = json.load(f)
  assert final["step"] == 16
  reported = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
  assert reported["test_accuracy"] == final["test_accuracy"]


def test_interrupted_run_resumes_to_the_parameters_of_an_uninterrupted_run(runs):
  assert runs["interrupted_at"] == INTERRUPT_STEP
  full, resumed = runs["result"]["state"], runs["resumed_result"]["state"]
  assert int(resumed.step) == int(full.step)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, full.params)
  jax.tree.map(np.testing.assert_array_equal, resumed.batch_stats, full.batch_stats)
  assert runs["resumed_result"]["test_accuracy"] == runs["result"]["test_accuracy"]
