"""The peer benchmark (`experiments/benchmark.py --what=peer`): our step, then the
official PC-DARTS step in a subprocess on the same setting, then ours again, in one
JSON record. The peer's code is not part of this project: here a stand-in answers for
the subprocess, and the real checkout runs only where one is named
($DNAS_PEER_DIR, with torch installed)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from dnas_jax.configs import test as test_config
from dnas_jax.tools import benchmarking
from dnas_jax.tools import peer_pc_darts
from dnas_jax.training import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkout(path):
  for name in peer_pc_darts.PEER_FILES:
    (path / name).write_text("# stand-in\n")
  return str(path)


def test_harness_refuses_a_folder_that_is_not_a_checkout(tmp_path):
  done = subprocess.run(
    [sys.executable, "-m", "dnas_jax.tools.peer_pc_darts", f"--peer_dir={tmp_path}"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
    check=False,
  )
  assert done.returncode != 0
  assert "is not a PC-DARTS checkout (missing model_search.py, architect.py" in done.stderr
  assert "git clone https://github.com/yuhuixu1993/PC-DARTS" in done.stderr


def test_benchmark_refuses_a_folder_that_is_not_a_checkout(tmp_path):
  with pytest.raises(validation.ConfigError, match="not a PC-DARTS checkout"):
    benchmarking.benchmark_peer(test_config.get_config(), str(tmp_path))


def test_peer_record_holds_both_steps_and_their_ratio(tmp_path, monkeypatch):
  """The subprocess gets the config's setting and our thread count; the record holds
  our step (timed before and after the peer), the peer's, and the ratio of their
  times per step."""
  config = test_config.get_config()
  config.batch_size = 4
  config.model.num_layers = 3  # traces fast
  calls = []

  def fake_run(command, **kwargs):
    calls.append(command)
    record = {
      "what": "peer_search_step",
      "ms_per_step": 1234.5,
      "partial_k": 4,
      "num_ops": 8,
      "batch_size": config.batch_size,
    }
    return subprocess.CompletedProcess(
      command, 0, "torch says hello\n" + json.dumps(record) + "\n", ""
    )

  monkeypatch.setattr(subprocess, "run", fake_run)
  out = benchmarking.benchmark_peer(
    config, _checkout(tmp_path), (8, 8, 3), steps=2, warmup=1, threads=3
  )
  (command,) = calls
  assert command[1:3] == ["-m", "dnas_jax.tools.peer_pc_darts"]
  for flag in (
    f"--peer_dir={tmp_path}",
    f"--layers={config.model.num_layers}",
    f"--channels={config.model.channels}",
    "--batch_size=4",
    "--image_size=8",
    "--num_classes=10",
    "--threads=3",
    "--steps=2",
    "--warmup=1",
    "--device=cpu",
  ):
    assert flag in command
  ours = out["ours"]
  assert out["what"] == "peer" and out["peer"]["ms_per_step"] == 1234.5
  assert len(ours["ms_per_step_before_after"]) == 2
  assert ours["ms_per_step"] == pytest.approx(sum(ours["ms_per_step_before_after"]) / 2, abs=2e-3)
  assert out["speedup"] == pytest.approx(1234.5 / ours["ms_per_step"], rel=1e-3)
  assert ours["trace_lower_s"] > 0 and ours["compile_s"] > 0
  assert out["same_method"] is False  # the test config is no PC-DARTS search


def test_a_failing_peer_is_reported_with_its_error(tmp_path, monkeypatch):
  monkeypatch.setattr(
    subprocess,
    "run",
    lambda command, **kw: subprocess.CompletedProcess(
      command, 1, "", "ModuleNotFoundError: No module named 'torch'"
    ),
  )
  config = test_config.get_config()
  config.batch_size = 4
  config.model.num_layers, config.model.primitives = 3, "skip_connect"  # traces fast
  with pytest.raises(RuntimeError, match="No module named 'torch'"):
    benchmarking.benchmark_peer(config, _checkout(tmp_path), (8, 8, 3), steps=1, warmup=0)


@pytest.mark.skipif(
  not os.environ.get("DNAS_PEER_DIR") or importlib.util.find_spec("torch") is None,
  reason="needs a PC-DARTS checkout in $DNAS_PEER_DIR and torch",
)
def test_the_official_step_runs_from_a_checkout():
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "dnas_jax.tools.peer_pc_darts",
      f"--peer_dir={os.environ['DNAS_PEER_DIR']}",
      "--layers=5",
      "--channels=8",
      "--batch_size=2",
      "--image_size=16",
      "--steps=1",
      "--warmup=1",
      "--device=cpu",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=600,
    check=True,
  )
  record = json.loads(done.stdout.strip().splitlines()[-1])
  assert record["ms_per_step"] > 0 and record["loss_finite"]
  assert record["num_ops"] == 8 and record["partial_k"] == 4
