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


def test_bad_override_names_the_field_and_runs_the_config_file_once(tmp_path):
  runs = tmp_path / "runs.txt"
  config = tmp_path / "counting.py"
  config.write_text(
      "from dnas_jax.configs import test\n"
      f"open({str(runs)!r}, 'a').write('ran\\n')\n"
      "def get_config():\n  return test.get_config()\n")
  out = subprocess.run(
      [sys.executable, "-m", "experiments.search", f"--config={config}",
       f"--workdir={tmp_path / 'run'}", "--config.model.nope=3"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 2
  assert ("error: --config.model.nope: config.model has no field 'nope'; valid fields: "
          "['channels', 'dtype', 'num_layers'") in out.stderr
  assert "Traceback" not in out.stderr
  assert runs.read_text() == "ran\n"  # the error was built from the loaded config


def _run(module, *args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _list_genotype(tmp_path):
  path = tmp_path / "list.json"
  path.write_text("[1, 2]")
  return str(path)


TEST_SEARCH = "--config=experiments/configs/test.py"
TEST_RETRAIN = "--config=experiments/configs/test_retrain.py"


@pytest.mark.parametrize("module, args, message", [
    ("experiments.search", [TEST_SEARCH, "--config.model.primitives=max_pool_3x3,foo"],
     "error: config.model.primitives='max_pool_3x3,foo': Unknown operations ['foo']"),
    ("experiments.search", [TEST_SEARCH, "--config.batch_size=200"],
     "error: config.batch_size=200 is larger than the 128 images of the smaller search "
     "split"),
    ("experiments.search", [TEST_SEARCH, "--config.batch_size=2.5"],
     "error: flag --config.batch_size=2.5: invalid literal for int()"),
    ("experiments.search", ["--config=experiments/configs/nope.py"],
     "error: --config: cannot load the config file ([Errno 2] No such file"),
    ("experiments.search", [], "error: flag --config=None: Flag --config must have a "
     "value"),
    ("experiments.derive", [], "error: flag --workdir=None: Flag --workdir must have a "
     "value"),
    ("experiments.train", [TEST_RETRAIN, "--config.genotype={list_genotype}"],
     "is not a valid genotype.json: the top level is a list"),
    ("experiments.search", [TEST_SEARCH, "--config.optim.arch_lr=nan"],
     "error: config.optim.arch_lr=nan must be a finite positive number"),
])
def test_user_errors_are_one_line_before_any_work(tmp_path, module, args, message):
  """Each refused before data, compile or workdir: the last line says why."""
  workdir = tmp_path / "run"
  args = [a.replace("{list_genotype}", _list_genotype(tmp_path)) for a in args]
  if module != "experiments.derive":  # its case is the missing --workdir
    args.append(f"--workdir={workdir}")
  out = _run(module, *args)
  assert out.returncode != 0
  assert message in out.stderr.strip().splitlines()[-1], out.stderr[-1500:]
  assert "Traceback" not in out.stderr
  assert not workdir.exists()


def test_missing_cifar_says_where_to_put_it(tmp_path):
  out = _search(tmp_path, f"--config.data.data_dir={tmp_path}")
  assert out.returncode == 1
  assert f"{tmp_path}/cifar-10-python.tar.gz" in out.stderr
  assert "Traceback" not in out.stderr


def test_default_search_workdirs_are_where_the_retraining_configs_look():
  from dnas_jax.configs import cifar10, cifar10_retrain, cifar100, cifar100_retrain
  from dnas_jax.configs import darts_cifar10, global_cifar10, pc_darts_cifar10
  from dnas_jax.configs import tiny_imagenet_retrain
  from dnas_jax.tools import compare as search_main  # pylint: disable=g-import-not-at-top
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
