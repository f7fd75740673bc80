"""Compiling for a TPU from this CPU machine (`experiments/benchmark.py --what=aot`), on
the smallest program that exercises the path: one mixed edge of the test config."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark(*args):
  env = {**os.environ, "PYTHONPATH": REPO}
  env.pop("JAX_PLATFORMS", None)  # set by the command itself
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.benchmark",
      "--config=experiments/configs/test.py",
      "--what=aot",
      "--image_size=8",
      *args,
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_aot_compiles_a_mixed_edge_for_a_tpu_v5e_chip():
  from dnas_jax.models import program  # pylint: disable=g-import-not-at-top

  # The test config traces its cells one by one; "auto" here takes the TPU's program.
  proc = _benchmark("--aot_programs=mixed_edge", "--config.program.scan=auto")
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1, proc.stdout
  r = lines[0]
  assert r["what"] == "aot_mixed_edge" and r["device_kind"].startswith("TPU v5")
  assert r["program"] == program.AUTO_PROGRAM["tpu"]  # written for the TPU
  assert r["compile_s"] > 0 and r["trace_lower_s"] > 0
  assert r["hbm_bytes"] == 16 * 1024**3 and r["fits_hbm"] is True
  assert 0 < r["total_bytes"] < r["hbm_bytes"] and r["temp_bytes"] >= 0
  assert r["fusions"] > 0 and r["convolutions"] > 0


def test_unknown_topology_is_one_line():
  proc = _benchmark("--aot_programs=mixed_edge", "--aot_topology=v9:1x1")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --aot_topology='v9:1x1'")
