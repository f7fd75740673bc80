"""Entry-point errors a user sees: one clear line and a non-zero status, no traceback."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _search(tmp_path, *args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run(
      [sys.executable, "-m", "experiments.search", "--config=experiments/configs/cifar10.py",
       f"--workdir={tmp_path / 'run'}", *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--config.arch.nofield=1"],
     "--config.arch.nofield: config.arch has no field 'nofield'; valid fields: "
     "['alpha_activation'"),
    (["--config.arch.kind=bogus"],
     "config.arch.kind='bogus' is not valid; valid values: ['decoupled', 'iam', 'full']"),
    (["--config.model.partial_k=3"], "config.model.channels=16 must be divisible by"),
])
def test_bad_config_is_one_clear_error(tmp_path, args, message):
  out = _search(tmp_path, *args)
  assert out.returncode != 0
  assert message in out.stderr
  assert "Traceback" not in out.stderr


def test_missing_cifar_says_where_to_put_it(tmp_path):
  out = _search(tmp_path, f"--config.data.data_dir={tmp_path}")
  assert out.returncode == 1
  assert f"{tmp_path}/cifar-10-python.tar.gz" in out.stderr
  assert "Traceback" not in out.stderr


def test_default_search_workdirs_are_where_the_retraining_configs_look():
  from dnas_jax import compare as search_main  # pylint: disable=g-import-not-at-top
  from experiments.configs import cifar10, cifar10_retrain, cifar100, cifar100_retrain
  from experiments.configs import darts_cifar10, global_cifar10, pc_darts_cifar10
  from experiments.configs import tiny_imagenet_retrain
  expected = os.path.join("workdirs", "cifar10_dnas")
  assert search_main.default_workdir(cifar10.get_config()) == expected
  assert os.path.dirname(cifar10_retrain.get_config().genotype) == expected
  # The paper's transfer experiment retrains the CIFAR-10 genotype on Tiny-ImageNet.
  assert os.path.dirname(tiny_imagenet_retrain.get_config().genotype) == expected
  assert os.path.dirname(cifar100_retrain.get_config().genotype) == (
      search_main.default_workdir(cifar100.get_config()))
  # The compared methods do not overwrite each other's runs.
  assert search_main.default_workdir(darts_cifar10.get_config()).endswith("cifar10_darts")
  assert search_main.default_workdir(pc_darts_cifar10.get_config()).endswith(
      "cifar10_pc_darts")
  assert search_main.default_workdir(global_cifar10.get_config()).endswith(
      "cifar10_pc_darts_global")
