"""dnas_jax.tools.benchmarking and experiments/benchmark.py: the lowered search step does
not grow with depth (its convolutions counted), a batch the devices do not divide is a
clear error, and the benchmark command prints its JSON records and the step profile
(the same steps sharded over 8 devices: test_sharding.py)."""

import json
import os
import subprocess
import sys

import pytest

from dnas_jax.configs import test as test_config
from dnas_jax.tools import benchmarking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _convolution_program(config):
  # The GPU's and TPU's formulation: every operation a convolution (the CPU's compiled
  # kernels are custom calls, which this count does not see).
  config.program.depthwise = "conv"
  config.program.pointwise = "conv"
  config.program.edges = "vmap"


def _conv_count(num_layers):
  config = test_config.get_config()
  config.model.num_layers = num_layers
  # One operation is enough to see whether depth grows the program (and traces fast).
  config.model.primitives = "sep_conv_3x3"
  config.program.scan = "stages"
  _convolution_program(config)
  return benchmarking.count_convolutions(config)


def test_lowered_search_step_has_the_same_convolutions_at_every_depth():
  # Every stage's normal cells run under one scan, their preprocessing included (the
  # stem's and the factorized reduce's as padded and block-diagonal kernels): 3 scan
  # bodies and 2 reduction cells, the same program at any depth.
  counts = {L: _conv_count(L) for L in (9, 20)}
  assert counts[9] == counts[20], counts
  config = test_config.get_config()
  config.model.primitives = "sep_conv_3x3"
  config.program.scan = "none"  # cell by cell: the program grows with depth
  config.model.num_layers = 9
  _convolution_program(config)
  assert benchmarking.count_convolutions(config) > counts[9]


def test_batch_not_divisible_by_devices_is_a_clear_error():
  import jax  # pylint: disable=g-import-not-at-top
  from dnas_jax.training import sharding  # pylint: disable=g-import-not-at-top

  mesh = sharding.create_mesh(jax.devices()[:1])
  sharding.check_batch_size(7, mesh)  # one device divides everything

  class FakeMesh:  # the check reads only the device count
    devices = __import__("numpy").zeros(8)

  with pytest.raises(ValueError, match=r"config.batch_size=12 is not divisible by the 8"):
    sharding.check_batch_size(12, FakeMesh())


def test_benchmark_command_prints_json_lines():
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.benchmark",
      "--config=experiments/configs/test.py",
      "--config.model.num_layers=3",
      "--retrain_config=experiments/configs/test_retrain.py",
      "--image_size=8",
      "--steps=2",
      "--warmup=1",
      "--what=search,train,input",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  kinds = [r["what"] for r in records]
  assert kinds == ["search_step", "train_step", "input_pipeline"], out.stdout
  for r in records:
    assert r["images_per_s"] > 0
  for r in records[:2]:
    assert r["compile_s"] > 0 and r["achieved_tflops"] > 0
    assert 0 < r["conv_flops_per_step"] <= r["flops_per_step"]
    assert r["xla_flops_per_step"] > 0
  assert records[0]["device_count"] >= 1


def test_profile_command_splits_the_step_by_kind_and_half():
  """`--what=profile` on a 3-layer test network: every half of the step appears,
  forward and backward, and the counted instructions cover the step's time."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.benchmark",
      "--config=experiments/configs/test.py",
      "--config.model.num_layers=3",
      "--config.model.primitives=max_pool_3x3,sep_conv_3x3",
      "--image_size=8",
      "--steps=2",
      "--warmup=1",
      "--what=profile",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  (profile,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert profile["what"] == "search_step_profile"
  assert {
    "architecture half, forward",
    "architecture half, backward",
    "weight half, forward",
    "weight half, backward",
  } <= set(profile["by_half_ms"])
  assert 0.3 < profile["covered"] < 2.5, profile
  from dnas_jax.kernels import cpu  # pylint: disable=g-import-not-at-top

  if cpu.available():  # the CPU program's kernels are custom calls in the profile
    assert any(k.startswith("compiled kernel dnas_jax_") for k in profile["by_kind_ms"])
  assert "| operation kind | ms/step |" in out.stderr
