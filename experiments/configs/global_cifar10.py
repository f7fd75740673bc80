"""Baseline: naive global search (`full`, one Ψ [L, 14, Op], softmax over ops) on
CIFAR-10, under the same conditions as the DNAS search (cifar10.py); the paper's
"PC-DARTS global" row.

Command:
  python -m experiments.search --config=experiments/configs/global_cifar10.py \
      --workdir=workdirs/cifar10_global

Produces a global genotype like cifar10.py, from L·C·Op = 1,960 architecture numbers
instead of DNAS's 518.
"""

from experiments.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.arch.kind = "full"
  config.optim.zero_one_weight = 0.0
  return config
