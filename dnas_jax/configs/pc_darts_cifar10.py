"""Baseline: PC-DARTS block search on CIFAR-10, with PC-DARTS's own search settings.

Command:
  python -m experiments.search --config=experiments/configs/pc_darts_cifar10.py \
      --workdir=workdirs/cifar10_pc_darts

cifar10.py with the `pc_darts` row applied (Xu et al. 2020; the row's settings:
docs/comparison.md): partial channels with edge normalisation over DARTS's 8
operations, one α and one β per cell type.

Against skip-connect collapse: no skip dropout and no zero-one loss (the row), top-k
derivation (PC-DARTS's parse), and a fresh random architecture batch each step, as
PC-DARTS's code draws `next(iter(valid_queue))` (the row's `data.arch_sampling=independent`;
docs/design.md §1).
"""

from dnas_jax.configs import cifar10
from dnas_jax.search import methods


def get_config():
  return methods.apply_method(cifar10.get_config(), "pc_darts")
