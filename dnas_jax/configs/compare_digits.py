"""The paper's comparison on scikit-learn's digits, on a CPU: offline, under an hour.

Command:
  python -m experiments.compare --config=experiments/configs/compare_digits.py \
      --workdir=workdirs/compare_digits --fast_compile

(`--fast_compile`: XLA's cheap settings; at this size compiling every row's steps
costs more than running them. The command resumes where it stopped.)

Rows: DARTS first and second order, PC-DARTS (block), PC-DARTS global and DNAS, each
with its own settings (operations, partial channels, edge weights, learning rates,
skip dropout, batch size: the rows of docs/comparison.md) and seeds 0 and 1
(second order: seed 0 only, its step is several times slower on this CPU);
`--config.rows=...` adds `dnas_node` (β softmax per node).

One budget for all (`budget`), chosen so that the runs finish in about an hour on a
2-core CPU (about half of it is XLA compiling each row's steps once):
* search: every row at L = 5 cells, C = 8, batch 64 (11 steps an epoch on each half of
  the 1,500 training images), 6 epochs; the warm-up keeps its fraction of the search
  (PC-DARTS's and DNAS's 15 of 50 epochs become 2 of 6; DARTS has none);
* retraining: the derived genotype at L = 5, C = 8, no auxiliary head, 10 epochs of
  23 steps, tested on the 297 test images.
At this size every row lands at 1-3 % test error (297 test images: one image is
0.34 %); with so few architecture steps ψ stays close to its start, so the table
checks the whole pipeline for every method; it does not test the paper's claim.
"""

import ml_collections

from dnas_jax.configs import digits
from dnas_jax.configs import digits_retrain


def get_config():
  config = ml_collections.ConfigDict()
  config.title = "digits (8×8), search L=5 C=8 6 epochs, retrain L=5 C=8 10 epochs"
  config.rows = "darts_1st,darts_2nd,pc_darts,pc_darts_global,dnas"
  config.seeds = "0,1"
  # Second order costs several times the first per step here: seed 0 only.
  config.row_seeds = ml_collections.ConfigDict({"darts_2nd": "0"})

  search = digits.get_config()
  search.eval_batch_size = 250
  search.eval_every_epochs = 100  # evaluate once, at the end
  search.log_every_steps = 11
  search.checkpoint_every_steps = 1000
  config.search = search
  config.budget = ml_collections.ConfigDict()
  config.budget.num_epochs = 6
  config.budget.batch_size = 64
  config.budget.model = ml_collections.ConfigDict({"num_layers": 5, "channels": 8})

  retrain = digits_retrain.get_config()
  retrain.model.num_layers = 5
  retrain.model.channels = 8
  retrain.num_epochs = 10
  retrain.eval_every_epochs = 100  # evaluate once, at the end
  retrain.log_every_steps = 23
  retrain.checkpoint_every_steps = 1000
  config.retrain = retrain
  return config
