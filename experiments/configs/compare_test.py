"""The tiny comparison of the tests: naive global search against DNAS, one seed.

Command:
  python -m experiments.compare --config=experiments/configs/compare_test.py \
      --workdir=/tmp/dnas_compare_test

The search is configs/test.py (synthetic 8×8 data, 5 layers, C = 8, three operations,
2 epochs of 4 steps) and the retraining configs/test_retrain.py (2 epochs) with each
run's genotype. Produces comparison.md with two rows and comparison.png in minutes,
nearly all of it compiling; the numbers mean nothing at this size.
"""

import ml_collections

from experiments.configs import test
from experiments.configs import test_retrain


def get_config():
  config = ml_collections.ConfigDict()
  config.title = "tiny comparison (synthetic data; tests only)"
  config.rows = "global,dnas"
  config.seeds = "0"
  config.darts_primitives = "none,max_pool_3x3,skip_connect,sep_conv_3x3"
  config.search = test.get_config()
  config.search.checkpoint_every_steps = 100  # per epoch only (fewer Orbax saves)
  config.retrain = test_retrain.get_config()
  config.retrain.num_epochs = 1
  config.retrain.checkpoint_every_steps = 100
  return config
