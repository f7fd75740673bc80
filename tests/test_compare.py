"""The comparison (dnas_jax/tools/compare.py, dnas_jax/search/methods.py,
experiments/compare.py) and its rows
(dnas_jax/search/methods.py): each row's effective settings, written out here from the
DARTS and PC-DARTS papers' code; the tiny config end to end (PC-DARTS global against
DNAS, one seed each: the table, the plot and the skipping of finished runs); the report
helpers on hand-made results.
"""

import os

import pytest
from absl.testing import flagsaver

from dnas_jax.configs import compare_cifar10
from dnas_jax.configs import compare_digits
from dnas_jax.configs import compare_test
from dnas_jax.search import methods
from dnas_jax.tools import compare
from dnas_jax.training import validation


def _result(row, seed, err, params=1.5e6, hours=0.01):
  return {
    "row": row,
    "label": methods.ROWS[row][0],
    "seed": seed,
    "test_error": err,
    "num_params": params,
    "search_device_hours": hours,
    "device": {"platform": "gpu", "device_kind": "H200", "device_count": 2},
  }


def test_summary_table_and_plot(tmp_path):
  results = [
    _result("pc_darts_global", 0, 0.05),
    _result("pc_darts_global", 1, 0.07),
    _result("dnas", 0, 0.03, hours=0.02),
  ]
  table = compare.write_report(results, str(tmp_path))
  lines = table.splitlines()
  assert lines[0].startswith("| method | test error (%) | params (M) |")
  assert (
    "| PC-DARTS, global (per-layer Ψ, edge norm.) | 6.00 ± 1.00 | 1.500 | 0.0100 | 2 |"
  ) in lines
  assert "| DNAS (decoupled global) | 3.00 | 1.500 | 0.0200 | 1 |" in lines
  assert "2 × H200" in table
  assert (tmp_path / "comparison.png").stat().st_size > 1000
  assert (tmp_path / "results.json").exists()


# Each method's settings as its authors' code has them (DARTS cnn/train_search.py,
# PC-DARTS train_search.py and model_search.py; DNAS: configs/cifar10.py), written out
# independently of methods.ROWS: (kind, edge norm., K, ops, L, batch, lr, min lr,
# arch lr, warm-up epochs of 50, skip dropout, zero-one weight, second order).
EXPECTED = {
  "darts_1st": ("iam", False, 1, "darts", 8, 64, 0.025, 0.001, 3e-4, 0, 0.0, 0.0, False),
  "darts_2nd": ("iam", False, 1, "darts", 8, 64, 0.025, 0.001, 3e-4, 0, 0.0, 0.0, True),
  "pc_darts": ("iam", True, 4, "darts", 8, 256, 0.1, 0.0, 6e-4, 15, 0.0, 0.0, False),
  "pc_darts_global": ("full", True, 4, "darts", 20, 256, 0.1, 0.0, 6e-4, 15, 0.0, 0.0, False),
  "dnas": ("decoupled", False, 4, "dnas", 20, 96, 0.025, 0.001, 6e-4, 15, 0.2, 10.0, False),
  "dnas_node": ("decoupled", False, 4, "dnas", 20, 96, 0.025, 0.001, 6e-4, 15, 0.2, 10.0, False),
}


def _effective(cfg):
  return (
    cfg.arch.kind,
    cfg.arch.edge_normalization,
    cfg.model.partial_k,
    cfg.model.primitives,
    cfg.model.num_layers,
    cfg.batch_size,
    cfg.optim.weight_lr,
    cfg.optim.weight_min_lr,
    cfg.optim.arch_lr,
    cfg.optim.arch_warmup_epochs,
    cfg.model.skip_dropout,
    cfg.optim.zero_one_weight,
    cfg.optim.second_order,
  )


def test_each_row_runs_its_method_with_its_authors_settings():
  config = compare_cifar10.get_config()
  assert set(compare.parse_rows(config.rows)) == set(EXPECTED)
  for row, expected in EXPECTED.items():
    cfg = compare.search_config(config, row, 3)
    validation.validate_search_config(cfg)
    assert _effective(cfg) == expected, row
    assert cfg.seed == 3 and cfg.num_epochs == 50 and cfg.model.channels == 16
    # Shared by all (DARTS and PC-DARTS alike): SGD momentum 0.9, wd 3e-4, clip 5,
    # Adam (0.5, 0.999) with L2 1e-3 for the architecture.
    o = cfg.optim
    assert (o.momentum, o.weight_decay, o.grad_clip, o.arch_b1, o.arch_b2, o.arch_weight_decay) == (
      0.9,
      3e-4,
      5.0,
      0.5,
      0.999,
      1e-3,
    )
  assert compare.search_config(config, "dnas_node", 0).arch.beta_domain == "node"
  assert compare.search_config(config, "dnas", 0).arch.beta_domain == "layer"
  # The DNAS row is the main config, unchanged.
  from dnas_jax.configs import cifar10  # pylint: disable=g-import-not-at-top

  assert compare.search_config(config, "dnas", 0).to_dict() == {
    **cifar10.get_config().to_dict(),
    "seed": 0,
  }


def test_edge_weights_reach_the_network_only_where_the_method_has_them():
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dnas_jax.models import arch  # pylint: disable=g-import-not-at-top

  config = compare_cifar10.get_config()
  for row in EXPECTED:
    cfg = compare.search_config(config, row, 0)
    prims = validation.primitives_of(cfg.model.primitives)
    spec = arch.create_arch_spec(cfg.arch, cfg.model.num_layers, len(prims))
    params = jax.tree.map(
      lambda a: a + np.random.default_rng(0).normal(size=a.shape), spec.init(jax.random.key(0))
    )
    edge = np.asarray(spec.arch_weights(params).edge)
    weighted = row.startswith(("pc_darts", "dnas"))
    assert (not np.allclose(edge, 1.0)) == weighted, row


def test_budget_shrinks_every_row_alike_and_keeps_the_warmup_fraction():
  config = compare_digits.get_config()
  for row in compare.parse_rows(config.rows):
    cfg = compare.search_config(config, row, 0)
    validation.validate_search_config(cfg)
    assert (cfg.num_epochs, cfg.batch_size, cfg.model.num_layers, cfg.model.channels) == (
      6,
      64,
      5,
      8,
    )
    full = EXPECTED[row]
    assert cfg.optim.arch_warmup_epochs == round(full[9] * 6 / 50)  # 15 of 50 -> 2 of 6
    assert _effective(cfg)[:4] == full[:4] and _effective(cfg)[6:9] == full[6:9]
    assert _effective(cfg)[10:] == full[10:]
  assert config.row_seeds.darts_2nd == "0"
  tiny = compare_test.get_config()
  assert compare.search_config(tiny, "dnas", 0).model.primitives == (
    "max_pool_3x3,skip_connect,sep_conv_3x3"
  )
  assert compare.search_config(tiny, "pc_darts_global", 0).model.primitives.startswith("none,")
  with pytest.raises(validation.ConfigError, match="valid rows"):
    compare.parse_rows("dnas,global")
  with pytest.raises(validation.ConfigError, match="warm-up is the row's"):
    bad = compare_digits.get_config()
    bad.budget.optim = {"arch_warmup_epochs": 1}
    compare.search_config(bad, "dnas", 0)


def test_baseline_configs_are_the_rows():
  from dnas_jax.configs import darts_cifar10, global_cifar10, pc_darts_cifar10  # pylint: disable=g-import-not-at-top

  for module, row in (
    (darts_cifar10, "darts_1st"),
    (pc_darts_cifar10, "pc_darts"),
    (global_cifar10, "pc_darts_global"),
  ):
    assert _effective(module.get_config()) == EXPECTED[row]


def test_compare_tiny_end_to_end(tmp_path, capsys):
  from experiments import compare as compare_main  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / "cmp")
  config = os.path.join(os.path.dirname(compare_test.__file__), "compare_test.py")
  argv = ["compare", f"--config={config}", f"--workdir={workdir}", "--compile_cache="]
  with flagsaver.flagsaver():
    compare_main.flags.FLAGS(argv)
    compare_main.main(["compare"])
  table = open(os.path.join(workdir, "comparison.md")).read()
  assert "| PC-DARTS, global (per-layer Ψ, edge norm.) |" in table
  assert "| DNAS (decoupled global) |" in table
  assert os.path.getsize(os.path.join(workdir, "comparison.png")) > 1000
  for row in ("pc_darts_global", "dnas"):
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
