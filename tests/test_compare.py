"""The comparison (dnas_jax/compare.py, experiments/compare.py) with its tiny config:
naive global search against DNAS, one seed each, then the table, the plot and the
skipping of finished runs. The report helpers are also checked on hand-made results.
"""

import os

import pytest
from absl.testing import flagsaver

from dnas_jax import compare
from dnas_jax import config_validation
from experiments.configs import compare_cifar10
from experiments.configs import compare_digits
from experiments.configs import compare_test


def _result(row, seed, err, params=1.5e6, hours=0.01):
  return {"row": row, "label": compare.ROWS[row][0], "seed": seed, "test_error": err,
          "num_params": params, "search_device_hours": hours,
          "device": {"platform": "gpu", "device_kind": "H200", "device_count": 2}}


def test_summary_table_and_plot(tmp_path):
  results = [_result("global", 0, 0.05), _result("global", 1, 0.07),
             _result("dnas", 0, 0.03, hours=0.02)]
  table = compare.write_report(results, str(tmp_path))
  lines = table.splitlines()
  assert lines[0].startswith("| method | test error (%) | params (M) |")
  assert "| Naive global search (full Ψ) | 6.00 ± 1.00 | 1.500 | 0.0100 | 2 |" in lines
  assert "| DNAS (decoupled global search) | 3.00 | 1.500 | 0.0200 | 1 |" in lines
  assert "2 × H200" in table
  assert (tmp_path / "comparison.png").stat().st_size > 1000
  assert (tmp_path / "results.json").exists()


def test_configs_and_row_overrides():
  for module in (compare_test, compare_digits, compare_cifar10):
    config = module.get_config()
    for row in compare.parse_rows(config.rows):
      cfg = compare.search_config(config, row, 3)
      config_validation.validate_search_config(cfg)
      assert cfg.seed == 3 and cfg.arch.kind == compare.ROWS[row][1]["arch.kind"]
  config = compare_digits.get_config()
  assert compare.search_config(config, "darts_2nd", 0).optim.second_order
  assert compare.search_config(config, "darts_1st", 0).model.primitives == "darts"
  assert compare.search_config(config, "dnas", 0).model.primitives == "dnas"
  assert config.row_seeds.darts_2nd == "0"
  with pytest.raises(config_validation.ConfigError, match="valid rows"):
    compare.parse_rows("dnas,pc_darts")


def test_compare_tiny_end_to_end(tmp_path, capsys):
  from experiments import compare as compare_main  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "cmp")
  config = os.path.join(os.path.dirname(compare_test.__file__), "compare_test.py")
  argv = ["compare", f"--config={config}", f"--workdir={workdir}", "--compile_cache="]
  with flagsaver.flagsaver():
    compare_main.flags.FLAGS(argv)
    compare_main.main(["compare"])
  table = open(os.path.join(workdir, "comparison.md")).read()
  assert "| Naive global search (full Ψ) |" in table
  assert "| DNAS (decoupled global search) |" in table
  assert os.path.getsize(os.path.join(workdir, "comparison.png")) > 1000
  for row in ("global", "dnas"):
    run = os.path.join(workdir, row, "seed_0")
    assert os.path.exists(os.path.join(run, "search", "genotype.json"))
    assert os.path.exists(os.path.join(run, "retrain", "final_metrics.json"))
  capsys.readouterr()
  # Run again: every run is found finished and skipped; the same table comes out.
  mtime = os.path.getmtime(os.path.join(workdir, "dnas", "seed_0", "result.json"))
  with flagsaver.flagsaver():
    compare_main.flags.FLAGS(argv)
    compare_main.main(["compare"])
  assert os.path.getmtime(os.path.join(workdir, "dnas", "seed_0", "result.json")) == mtime
  assert open(os.path.join(workdir, "comparison.md")).read() == table
