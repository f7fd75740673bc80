"""Baseline: PC-DARTS global search on CIFAR-10 (the paper's "PC-DARTS, global" row).

Command:
  python -m experiments.search --config=experiments/configs/global_cifar10.py \
      --workdir=workdirs/cifar10_pc_darts_global

PC-DARTS's search (configs/pc_darts_cifar10.py: K = 4, edge normalisation, 8 operations
with `none`, batch 256, lr 0.1, architecture lr 6e-4 after 15 warm-up epochs) with
per-layer weights over the whole L = 20 network: Ψ [20, 14, 8] (softmax over
operations) and edge weights β [20, 14] (softmax per node): L·C·(Op + 1) = 2,520
architecture numbers, where DNAS has 518. The settings are the `pc_darts_global` row of
dnas_jax/search/methods.py. Produces a global genotype like cifar10.py.
"""

from dnas_jax.configs import cifar10
from dnas_jax.search import methods


def get_config():
  return methods.apply_method(cifar10.get_config(), "pc_darts_global")
