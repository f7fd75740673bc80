"""Skip-connect collapse visible while it happens: each layer's share of parameter-free
operations in the derived cells (TensorBoard, the console line, the architecture
figure's marks), ψ heatmap labels that tell close values apart, and `train`'s warning
on a genotype from a search that had not finished."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from dnas_jax.configs import test as test_config
from dnas_jax.retrain import setup as retrain_setup
from dnas_jax.search import artifacts
from dnas_jax.search import figures
from dnas_jax.search import psi_stats
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import search_space

NORMAL = genotype_lib.CellGenotype(
  (
    (("skip_connect", 0), ("max_pool_3x3", 1)),
    (("skip_connect", 0), ("sep_conv_3x3", 2)),
    (("avg_pool_3x3", 1), ("skip_connect", 3)),
    (("dil_conv_3x3", 0), ("sep_conv_5x5", 4)),
  )
)  # 5 of 8 parameter-free
CONVS = genotype_lib.CellGenotype(
  tuple((("sep_conv_3x3", 0), ("dil_conv_5x5", 1)) for _ in range(4))
)  # none
# A reduction cell: skip_connect from s0/s1 is a factorized reduce (1×1 convs), from a
# node the identity.
REDUCE = genotype_lib.CellGenotype(
  (
    (("skip_connect", 0), ("skip_connect", 1)),
    (("skip_connect", 2), ("max_pool_3x3", 1)),
    (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),
    (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),
  ),
  reduction=True,
)  # 2 of 8
GENO = genotype_lib.GlobalGenotype((NORMAL, REDUCE, CONVS, REDUCE, NORMAL))


def test_parameter_free_share_counts_pools_and_identity_skips():
  np.testing.assert_allclose(
    psi_stats.parameter_free_share(GENO), [5 / 8, 2 / 8, 0.0, 2 / 8, 5 / 8]
  )
  sparse = genotype_lib.CellGenotype(((("skip_connect", 0),), (), (), ()), False, (2,))
  assert psi_stats.parameter_free_share(genotype_lib.GlobalGenotype((sparse,)))[0] == 1


def test_summary_and_console_line_name_the_collapsed_layers():
  psi = np.random.default_rng(0).random((5, 14, 7))
  summary = artifacts.psi_summary(psi, search_space.PRIMITIVES, GENO)
  assert summary["parameter_free/layer_00"] == 5 / 8
  assert summary["parameter_free/layer_02"] == 0.0
  assert "psi_entropy/layer_04" in summary and "psi_skip/layer_04" in summary
  assert not any(
    k.startswith("parameter_free") for k in artifacts.psi_summary(psi, search_space.PRIMITIVES)
  )
  line = artifacts.collapse_line(GENO)
  assert line == (
    "parameter-free share of the derived cells per layer: "
    "0.62* 0.25 0.00 0.25 0.62* (* above half: layers 0, 4)"
  )
  calm = genotype_lib.GlobalGenotype((CONVS, REDUCE, CONVS))
  assert "above half" not in artifacts.collapse_line(calm)


def test_architecture_figure_marks_the_layers_above_half():
  fig = figures.plot_global_architecture(GENO)
  marks = {
    round(t.get_position()[1]): t.get_text()
    for ax in fig.axes
    for t in ax.texts
    if "no params" in t.get_text()
  }
  assert marks == {0: "▲ 62% no params", 4: "▲ 62% no params"}
  figures.close_figure(fig)


def test_heatmap_labels_tell_close_values_apart():
  rng = np.random.default_rng(0)
  psi = 0.015 + 0.009 * rng.random((5, 14, 7))  # means over connections: a narrow band
  fig = figures.plot_psi_heatmaps(psi, search_space.PRIMITIVES)
  labels = [t.get_text() for t in fig.axes[0].texts]
  by_op = psi.mean(axis=1)
  assert len(labels) == by_op.size
  assert {f"{v:.2f}" for v in by_op.ravel()} <= {"0.02"}  # what the labels were
  # Values a tenth of the map's range apart (or more) have different labels.
  values = by_op.ravel()
  tenth = (values.max() - values.min()) / 10
  for a in range(values.size):
    for b in range(values.size):
      if abs(values[a] - values[b]) >= tenth:
        assert labels[a] != labels[b], (values[a], values[b])
  np.testing.assert_allclose([float(v) for v in labels], values, atol=5e-5)
  figures.close_figure(fig)
  assert figures.label_decimals(np.array([0.015, 0.024])) == 4
  assert figures.label_decimals(np.array([0.1, 0.9])) == 2
  assert figures.label_decimals(np.full(3, 0.5)) == 2
  assert figures.label_decimals(np.array([0.5, 0.5 + 1e-9])) == 6


def test_search_writes_the_share_edge_weights_and_its_epochs(tiny_search):
  workdir, result = tiny_search
  events = [n for n in os.listdir(workdir) if n.startswith("events.out.tfevents")]
  data = b"".join(open(os.path.join(workdir, n), "rb").read() for n in events)
  num_layers = test_config.get_config().model.num_layers
  for k in range(num_layers):
    assert f"parameter_free/layer_{k:02d}".encode() in data
  assert f"parameter_free/layer_{num_layers:02d}".encode() not in data
  edge = np.load(os.path.join(workdir, "edge_weights.npy"))
  assert edge.shape == (num_layers, 14) and edge.dtype == np.float32
  with open(os.path.join(workdir, "genotype.json")) as f:
    meta = json.load(f)["meta"]
  assert (meta["epoch"], meta["num_epochs"]) == (2, 2)
  assert meta["derive"] == {
    "rule": "top_k",
    "edges_per_node": 2,
    "op_threshold": 0.85,
    "max_skip_connects": -1,
  }
  assert result["genotype"] == genotype_lib.GlobalGenotype.load(
    os.path.join(workdir, "genotype.json")
  )


def _genotype_json(path, meta):
  genotype_lib.derive_genotype(
    np.random.default_rng(0).random((5, 14, 7)), search_space.PRIMITIVES
  ).save(str(path), primitives=search_space.PRIMITIVES, meta=meta)
  return str(path)


@pytest.mark.parametrize(
  "meta,warned",
  [
    ({"step": 30, "epoch": 3, "num_epochs": 10}, True),
    ({"step": 100, "epoch": 10, "num_epochs": 10}, False),
    ({"step": 30, "epoch": 3}, False),  # written before the meta had num_epochs
    ({}, False),
  ],
)
def test_train_warns_on_a_genotype_from_an_unfinished_search(tmp_path, caplog, meta, warned):
  path = _genotype_json(tmp_path / "genotype.json", meta)
  caplog.set_level(logging.WARNING)
  retrain_setup.resolve_genotype(path, 5)
  lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  if not warned:
    assert lines == []
    return
  assert lines == [
    f"config.genotype={path} comes from a search that had run 3 of its "
    "10 configured epochs when it was written: the architecture may not "
    "be the final one"
  ]
