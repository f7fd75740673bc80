"""Baseline: PC-DARTS block search on CIFAR-10, with PC-DARTS's own search settings.

Command:
  python -m experiments.search --config=experiments/configs/pc_darts_cifar10.py \
      --workdir=workdirs/cifar10_pc_darts

PC-DARTS (Xu et al. 2020, yuhuixu1993/PC-DARTS `train_search.py`, `model_search.py`):
one α per cell type over DARTS's 8 operations with `none`, partial channels K = 4, edge
normalisation (β per cell type, a softmax over each node's incoming edges, multiplying
the whole edge, bypassed channels included, and used in the derivation), an 8-cell
search network with C = 16, batch 256, weights by SGD lr 0.1 cosine to 0,
architecture Adam lr 6e-4 after a 15-epoch warm-up, no skip dropout, 50 epochs, first
order. The settings are the `pc_darts` row of dnas_jax/search/methods.py.
"""

from dnas_jax.configs import cifar10
from dnas_jax.search import methods


def get_config():
  return methods.apply_method(cifar10.get_config(), "pc_darts")
