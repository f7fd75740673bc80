"""Baseline: PC-DARTS global search on CIFAR-10 (the paper's "PC-DARTS, global" row).

Command:
  python -m experiments.search --config=experiments/configs/global_cifar10.py \
      --workdir=workdirs/cifar10_pc_darts_global

cifar10.py with the `pc_darts_global` row applied (the row's settings:
docs/comparison.md): PC-DARTS's search with its own weights for every layer of the
whole L = 20 network, Ψ [20, 14, 8] and edge weights β [20, 14], 2,520 architecture
numbers where DNAS has 518. Produces a global genotype like cifar10.py.

Against skip-connect collapse: no skip dropout and no zero-one loss (the row), top-k
derivation (PC-DARTS's parse), and a fresh random architecture batch each step, as
PC-DARTS's code draws `next(iter(valid_queue))` (the row's `data.arch_sampling=independent`;
docs/design.md §1).
"""

from dnas_jax.configs import cifar10
from dnas_jax.search import methods


def get_config():
  return methods.apply_method(cifar10.get_config(), "pc_darts_global")
