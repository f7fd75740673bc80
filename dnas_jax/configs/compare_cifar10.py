"""The paper's comparison on CIFAR-10 with its settings, for GPUs or TPUs.

Command:
  python -m experiments.compare --config=experiments/configs/compare_cifar10.py \
      --workdir=workdirs/compare_cifar10 [--config.search.data.data_dir=DIR] \
      [--config.retrain.data.data_dir=DIR]

Rows (Table 1 of Xu & He 2022): DARTS first and second order, PC-DARTS, PC-DARTS
global, DNAS and DNAS with the β softmax per node, each as its authors defined it
(docs/comparison.md); seeds 0, 1, 2. Every derived genotype is retrained with
configs/cifar10_retrain.py.

Cost: 18 searches and 18 retrainings of 600 epochs; each retraining alone takes days
on one GPU, so run it on a pod or shard it by row (`--config.rows=dnas
--config.seeds=0`, the same --workdir: finished runs are skipped). For a quicker,
cheaper look: `--config.retrain.num_epochs=100`.
Expected (the paper): DNAS 2.68 % test error, 3.35 M params, 0.4 GPU-days; it reports
DARTS 1st/2nd order 3.00/2.76 % and its "PC-DARTS, global" row worse than DNAS
(PC-DARTS's own paper: 2.57 % for its block search).
"""

import ml_collections

from dnas_jax.configs import cifar10
from dnas_jax.configs import cifar10_retrain


def get_config():
  config = ml_collections.ConfigDict()
  config.title = (
    "CIFAR-10, each method's own search settings (50 epochs); retrain L=20 C=36 600 epochs"
  )
  config.rows = "darts_1st,darts_2nd,pc_darts,pc_darts_global,dnas,dnas_node"
  config.seeds = "0,1,2"
  config.search = cifar10.get_config()
  config.retrain = cifar10_retrain.get_config()
  return config
