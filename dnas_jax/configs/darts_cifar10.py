"""Baseline: DARTS block search on CIFAR-10, with DARTS's own search settings.

Command:
  python -m experiments.search --config=experiments/configs/darts_cifar10.py \
      --workdir=workdirs/cifar10_darts

DARTS (Liu et al. 2019, quark0/darts `cnn/train_search.py`): one α per cell type
(`iam`, softmax over DARTS's 8 operations with `none`), no partial channels (K = 1), no
edge weights, an 8-cell search network with C = 16, batch 64, weights by SGD lr 0.025
cosine to 0.001, architecture Adam lr 3e-4, no warm-up, no skip dropout, no zero-one
loss, 50 epochs, first order (`--config.optim.second_order=True` for DARTS's 2nd
order). The settings are the `darts_1st` row of dnas_jax/search/methods.py. Produces a
global genotype whose normal cells are all identical (and reduction cells too).
"""

from dnas_jax.configs import cifar10
from dnas_jax.search import methods


def get_config():
  return methods.apply_method(cifar10.get_config(), "darts_1st")
