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
