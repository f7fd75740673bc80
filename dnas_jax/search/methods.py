"""The search methods this project runs, as settings of a search config.

`ROWS` names each method (a row of the comparison: docs/comparison.md has them as a table) and holds
every setting that defines it, at its paper's scale, as dotted paths of the search
config. `apply_method` sets a row's settings in a config (the baseline configs are
built this way); `method_name` reads back which method a config runs, and
`default_workdir` is the run folder the entry points and the retraining configs use
for it.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

PAPER_EPOCHS = 50  # every method's search length; warm-ups are given out of it

_DARTS = {
  "arch.kind": "iam",
  "arch.edge_normalization": False,
  "model.partial_k": 1,
  "model.primitives": "darts",
  "model.num_layers": 8,
  "model.channels": 16,
  "model.skip_dropout": 0.0,
  "optim.weight_lr": 0.025,
  "optim.weight_min_lr": 0.001,
  "optim.arch_lr": 3e-4,
  "optim.arch_warmup_epochs": 0,
  "optim.zero_one_weight": 0.0,
  "optim.second_order": False,
  "batch_size": 64,
  "num_epochs": PAPER_EPOCHS,
  # train_search.py draws next(iter(valid_queue)) from a shuffling loader each
  # step: a fresh random architecture batch, not an epoch's permutation.
  "data.arch_sampling": "independent",
}
_PC_DARTS = {
  **_DARTS,
  "arch.edge_normalization": True,
  "model.partial_k": 4,
  "optim.weight_lr": 0.1,
  "optim.weight_min_lr": 0.0,
  "optim.arch_lr": 6e-4,
  "optim.arch_warmup_epochs": 15,
  "batch_size": 256,
}
_DNAS = {
  "arch.kind": "decoupled",
  "arch.edge_normalization": False,
  "arch.beta_domain": "layer",
  "model.partial_k": 4,
  "model.primitives": "dnas",
  "model.num_layers": 20,
  "model.channels": 16,
  "model.skip_dropout": 0.2,
  "optim.weight_lr": 0.025,
  "optim.weight_min_lr": 0.001,
  "optim.arch_lr": 6e-4,
  "optim.arch_warmup_epochs": 15,
  "optim.zero_one_weight": 10.0,
  "optim.second_order": False,
  "batch_size": 96,
  "num_epochs": PAPER_EPOCHS,
  "data.arch_sampling": "permutation",
}

# key: (label, the method's settings as dotted paths of the search config).
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
  "darts_1st": ("DARTS (block, 1st order)", _DARTS),
  "darts_2nd": ("DARTS (block, 2nd order)", {**_DARTS, "optim.second_order": True}),
  "pc_darts": ("PC-DARTS (block)", _PC_DARTS),
  "pc_darts_global": (
    "PC-DARTS, global (per-layer Ψ, edge norm.)",
    {**_PC_DARTS, "arch.kind": "full", "model.num_layers": 20},
  ),
  "dnas": ("DNAS (decoupled global)", _DNAS),
  "dnas_node": ("DNAS, β softmax per node", {**_DNAS, "arch.beta_domain": "node"}),
}


def set_path(config: ml_collections.ConfigDict, path: str, value) -> None:
  """Sets the field at the dotted `path` ('optim.arch_lr') of `config` to `value`."""
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def method_name(config: ml_collections.ConfigDict) -> str:
  """The method a search config runs, as the rows name it: dnas, darts, pc_darts (`iam`
  with edge weights), global or pc_darts_global (`full`, without or with them)."""
  edge = bool(config.arch.get("edge_normalization", False))
  names = {
    "decoupled": "dnas",
    "iam": "pc_darts" if edge else "darts",
    "full": "pc_darts_global" if edge else "global",
  }
  # An unknown kind passes through: the config validation names it and the valid ones.
  return names.get(config.arch.kind, config.arch.kind)


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """workdirs/<dataset>_<method>: where the retraining configs look for the genotype
  (cifar10_retrain.py reads workdirs/cifar10_dnas/genotype.json)."""
  return os.path.join("workdirs", f"{config.data.dataset}_{method_name(config)}")


def apply_method(config: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
  """Sets every setting of the method `row` (a key of `ROWS`) in a search config, in
  place; returns it. The baseline configs (configs/darts_cifar10.py, ...) use this."""
  for path, value in ROWS[row][1].items():
    set_path(config, path, value)
  return config
