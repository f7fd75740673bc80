"""The tiny comparison of the tests: PC-DARTS global against DNAS, one seed.

Command:
  python -m experiments.compare --config=experiments/configs/compare_test.py \
      --workdir=/tmp/dnas_compare_test

The search is configs/test.py's size but 3 layers (synthetic 8×8 data, C = 8, 2 epochs
of 4 steps) with each row's own settings, but short operation lists (three operations,
plus `none` for PC-DARTS), and the retraining configs/test_retrain.py (1 epoch, 3 layers) with
each run's genotype. Produces comparison.md with two rows and comparison.png in minutes,
nearly all of it compiling; the numbers mean nothing at this size.
"""

import ml_collections

from dnas_jax.configs import test
from dnas_jax.configs import test_retrain


def get_config():
  config = ml_collections.ConfigDict()
  config.title = "tiny comparison (synthetic data; tests only)"
  config.rows = "pc_darts_global,dnas"
  config.seeds = "0"
  search = test.get_config()
  search.checkpoint_every_steps = 100  # per epoch only (fewer Orbax saves)
  search.model.num_layers = 3  # a normal cell and the two reduction cells
  config.search = search
  config.budget = ml_collections.ConfigDict()
  config.budget.num_epochs = search.num_epochs
  config.budget.batch_size = search.batch_size
  config.budget.model = ml_collections.ConfigDict(
    {"num_layers": search.model.num_layers, "channels": search.model.channels}
  )
  prims = search.model.primitives
  config.row_overrides = ml_collections.ConfigDict(
    {
      "pc_darts_global": {"model": {"primitives": "none," + prims}},
      "dnas": {"model": {"primitives": prims}},
    }
  )
  config.retrain = test_retrain.get_config()
  config.retrain.num_epochs = 1
  config.retrain.model.num_layers = 3
  config.retrain.checkpoint_every_steps = 100
  return config
