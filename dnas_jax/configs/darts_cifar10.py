"""Baseline: DARTS block search on CIFAR-10, with DARTS's own search settings.

Command:
  python -m experiments.search --config=experiments/configs/darts_cifar10.py \
      --workdir=workdirs/cifar10_darts

cifar10.py with the `darts_1st` row applied (Liu et al. 2019; the row's settings:
docs/comparison.md; `--config.optim.second_order=True` gives `darts_2nd`). One α per
cell type, so the global genotype it produces has identical normal cells (and
identical reduction cells).

Against skip-connect collapse: no skip dropout and no zero-one loss (the row), top-k
derivation (DARTS's parse), and a fresh random architecture batch each step, as
DARTS's code draws `next(iter(valid_queue))` (the row's `data.arch_sampling=independent`;
docs/design.md §1).
"""

from dnas_jax.configs import cifar10
from dnas_jax.search import methods


def get_config():
  return methods.apply_method(cifar10.get_config(), "darts_1st")
