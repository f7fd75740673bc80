"""Entry-point errors a user sees: one clear line and a non-zero status, no traceback."""

import logging
import os
import subprocess
import sys

import pytest

import run_helpers as rh  # tests/run_helpers.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _search(tmp_path, *args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.search",
      "--config=experiments/configs/cifar10.py",
      f"--workdir={tmp_path / 'run'}",
      *args,
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (
      ["--config.arch.nofield=1"],
      "--config.arch.nofield: config.arch has no field 'nofield'; valid fields: "
      "['alpha_activation'",
    ),
    (
      ["--config.arch.kind=bogus"],
      "config.arch.kind='bogus' is not valid; valid values: ['decoupled', 'iam', 'full']",
    ),
    (["--config.model.partial_k=3"], "config.model.channels=16 must be divisible by"),
  ],
)
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
    "def get_config():\n  return test.get_config()\n"
  )
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.search",
      f"--config={config}",
      f"--workdir={tmp_path / 'run'}",
      "--config.model.nope=3",
    ],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 2
  assert (
    "error: --config.model.nope: config.model has no field 'nope'; valid fields: "
    "['channels', 'dtype', 'num_layers'"
  ) in out.stderr
  assert "Traceback" not in out.stderr
  assert runs.read_text() == "ran\n"  # the error was built from the loaded config


def _list_genotype(tmp_path):
  path = tmp_path / "list.json"
  path.write_text("[1, 2]")
  return str(path)


TEST_SEARCH = "--config=experiments/configs/test.py"
TEST_RETRAIN = "--config=experiments/configs/test_retrain.py"


@pytest.mark.parametrize(
  "module, args, message",
  [
    (
      "experiments.search",
      [TEST_SEARCH, "--config.model.primitives=max_pool_3x3,foo"],
      "error: config.model.primitives='max_pool_3x3,foo': Unknown operations ['foo']",
    ),
    (
      "experiments.search",
      [TEST_SEARCH, "--config.batch_size=200"],
      "error: config.batch_size=200 is larger than the 128 images of the smaller search split",
    ),
    (
      "experiments.search",
      [TEST_SEARCH, "--config.batch_size=2.5"],
      "error: flag --config.batch_size=2.5: invalid literal for int()",
    ),
    (
      "experiments.search",
      ["--config=experiments/configs/nope.py"],
      "error: --config: cannot load the config file ([Errno 2] No such file",
    ),
    ("experiments.search", [], "error: flag --config=None: Flag --config must have a value"),
    ("experiments.derive", [], "error: flag --workdir=None: Flag --workdir must have a value"),
    (
      "experiments.train",
      [TEST_RETRAIN, "--config.genotype={list_genotype}"],
      "is not a valid genotype.json: the top level is a list",
    ),
    (
      "experiments.search",
      [TEST_SEARCH, "--config.optim.arch_lr=nan"],
      "error: config.optim.arch_lr=nan must be a finite positive number",
    ),
  ],
)
def test_user_errors_are_one_line_before_any_work(tmp_path, module, args, message):
  """Each refused before data, compile or workdir: the last line says why."""
  workdir = tmp_path / "run"
  args = [a.replace("{list_genotype}", _list_genotype(tmp_path)) for a in args]
  if module != "experiments.derive":  # its case is the missing --workdir
    args.append(f"--workdir={workdir}")
  out = rh.cli(module, *args)
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
  from dnas_jax.search import methods  # pylint: disable=g-import-not-at-top

  expected = os.path.join("workdirs", "cifar10_dnas")
  assert methods.default_workdir(cifar10.get_config()) == expected
  assert os.path.dirname(cifar10_retrain.get_config().genotype) == expected
  # The paper's transfer experiment retrains the CIFAR-10 genotype on Tiny-ImageNet.
  assert os.path.dirname(tiny_imagenet_retrain.get_config().genotype) == expected
  assert os.path.dirname(cifar100_retrain.get_config().genotype) == (
    methods.default_workdir(cifar100.get_config())
  )
  # The compared methods do not overwrite each other's runs.
  assert methods.default_workdir(darts_cifar10.get_config()).endswith("cifar10_darts")
  assert methods.default_workdir(pc_darts_cifar10.get_config()).endswith("cifar10_pc_darts")
  assert methods.default_workdir(global_cifar10.get_config()).endswith("cifar10_pc_darts_global")


def test_entry_points_turn_off_ynn_fusions_only_where_measured(monkeypatch):
  import jaxlib  # pylint: disable=g-import-not-at-top
  from dnas_jax.training import runtime  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(jaxlib, "__version__", "0.10.2")
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  assert runtime.avoid_slow_cache_loads()
  assert os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false " + runtime.NO_YNN_FLAG)
  assert not runtime.avoid_slow_cache_loads()  # already there: not twice
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  assert not runtime.avoid_slow_cache_loads()  # the user's own choice stays
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setattr(jaxlib, "__version__", "0.11.2")  # not measured: unknown flags abort
  assert not runtime.avoid_slow_cache_loads()
  assert "XLA_FLAGS" not in os.environ


def test_the_search_entry_point_runs_with_the_flag():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  code = (
    "import os, sys; sys.argv = ['x']\n"
    "from experiments import cli\n"
    "def main(argv):\n"
    "  import jax, jax.numpy as jnp\n"
    "  x = jnp.ones((1, 8, 8, 4))\n"
    "  k = jnp.ones((3, 3, 4, 4))\n"
    "  y = jax.lax.conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=("
    "'NHWC', 'HWIO', 'NHWC'))\n"
    "  print(os.environ.get('XLA_FLAGS'), float(y.sum()))\n"
    "cli.run(main)\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-2000:]
  import jaxlib  # pylint: disable=g-import-not-at-top
  from dnas_jax.training import runtime  # pylint: disable=g-import-not-at-top

  expected = runtime.NO_YNN_FLAG if jaxlib.__version__.startswith(runtime.NO_YNN_JAXLIB) else "None"
  assert out.stdout.split()[0] == expected
  # All-ones 8×8×4 input and 3×3×4×4 kernel, SAME padding: per axis the windows hold
  # 2 + 3·6 + 2 = 22 valid pixels in total, so the sum is 4 out × 4 in × 22².
  assert float(out.stdout.split()[1]) == 4 * 4 * 22 * 22


def test_only_the_noise_of_a_failed_checkpoint_write_is_quieted(tmp_path):
  """The entry points drop the "Event loop is closed" errors TensorStore reports for
  the other writes of a checkpoint after one failed, and the errors Orbax and asyncio
  log for a write the file system refused; anything else passes."""
  import types  # pylint: disable=g-import-not-at-top
  from experiments import cli  # pylint: disable=g-import-not-at-top

  seen = []
  hook = cli._quiet_closed_loops(seen.append)  # pylint: disable=protected-access
  closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
  other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
  hook(closed)
  hook(other)
  assert seen == [other]

  def record(path, exc, level=40):
    rec = logging.LogRecord(
      "absl", level, path, 1, "failed", None, (type(exc), exc, None) if exc else None
    )
    return cli._QuietLibraries().filter(rec)  # pylint: disable=protected-access

  full = ValueError(
    'RESOURCE_EXHAUSTED: Error writing local file "x": Failed to '
    "write 5040 bytes to file 8: No space left on device "
    "[os_error_code='28']"
  )
  orbax = "/site-packages/orbax/checkpoint/_src/futures/future.py"
  assert not record(orbax, full)
  assert not record("/lib/python3.11/asyncio/base_events.py", OSError(28, "No space"))
  assert record(orbax, ValueError("shapes differ"))  # no write failure: kept
  assert record("/work/dnas_jax/training/loop.py", full)  # not a library's: kept
  assert not record(orbax, None, level=20)  # orbax's INFO records, as before
  assert record(orbax, None, level=30)  # its other warnings: kept

  # The warning Orbax logs when the checkpoints register their array handler: dropped.
  from dnas_jax.training import checkpoints  # pylint: disable=g-import-not-at-top

  caught = []
  handler = logging.Handler()
  handler.emit = caught.append
  logging.getLogger("absl").addHandler(handler)
  checkpoints._save_arrays_from_one_replica.cache_clear()  # pylint: disable=protected-access
  try:
    checkpoints.create_manager(str(tmp_path / "checkpoints")).close()
  finally:
    logging.getLogger("absl").removeHandler(handler)
  overriding = [r for r in caught if "overriding" in r.getMessage()]
  assert overriding, [r.getMessage() for r in caught]
  assert not any(cli._QuietLibraries().filter(r) for r in overriding)  # pylint: disable=protected-access
