"""Baseline: DARTS block search (`iam`, one α per cell type, softmax over 8 ops with
`none`) on CIFAR-10, under the same conditions as the DNAS search (cifar10.py).

Command:
  python -m experiments.search --config=experiments/configs/darts_cifar10.py \
      --workdir=workdirs/cifar10_darts

Produces a global genotype whose normal cells are all identical (and reduction cells
too). DARTS's 8-cell search network is `--config.model.num_layers=8`; second order is
`--config.optim.second_order=True`. The zero-one loss does not apply (no sigmoid).
"""

from experiments.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.arch.kind = "iam"
  config.model.primitives = "darts"
  config.optim.zero_one_weight = 0.0
  return config
