"""The paper's comparison on CIFAR-10 with its settings, for GPUs or TPUs.

Command:
  python -m experiments.compare --config=experiments/configs/compare_cifar10.py \
      --workdir=workdirs/compare_cifar10 [--config.search.data.data_dir=DIR] \
      [--config.retrain.data.data_dir=DIR]

Rows (Table 1 of Xu & He 2022): DARTS block search first and second order (`iam`,
DARTS's 8 operations with `none`), naive global search ("PC-DARTS global", `full`
Ψ [20, 14, 7]), DNAS (`decoupled`, formula 4) and DNAS with the β softmax per node
(`node`, PC-DARTS's edge normalisation); seeds 0, 1, 2. One budget for all: the
search is configs/cifar10.py (L = 20, C = 16, K = 4, 50 epochs, batch 96, 15 warm-up
epochs) with only the row's ψ parameterisation changed, and every derived genotype is
retrained with configs/cifar10_retrain.py (L = 20, C = 36, 600 epochs, auxiliary
head, cutout, drop path 0.2).

Cost: 15 searches and 15 retrainings of 600 epochs; each retraining alone takes days
on one GPU, so run it on a pod or shard it by row (`--config.rows=dnas
--config.seeds=0`, the same --workdir: finished runs are skipped). For a quicker,
cheaper look: `--config.retrain.num_epochs=100`.
Expected (the paper): DNAS 2.68 % test error, 3.35 M params, 0.4 GPU-days; it reports
DARTS 1st/2nd order 3.00/2.76 % and the naive global search worse than DNAS.
"""

import ml_collections

from experiments.configs import cifar10
from experiments.configs import cifar10_retrain


def get_config():
  config = ml_collections.ConfigDict()
  config.title = "CIFAR-10, paper settings (search L=20 C=16 50 epochs; retrain 600 epochs)"
  config.rows = "darts_1st,darts_2nd,global,dnas,dnas_node"
  config.seeds = "0,1,2"
  config.darts_primitives = "darts"
  config.search = cifar10.get_config()
  config.retrain = cifar10_retrain.get_config()
  return config
