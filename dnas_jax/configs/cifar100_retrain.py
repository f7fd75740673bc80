"""Retraining a global genotype on CIFAR-100: the CIFAR-10 recipe with 100 classes.

Command:
  python -m experiments.train --config=experiments/configs/cifar100_retrain.py \
      --workdir=workdirs/cifar100_retrain [--config.data.data_dir=DIR]

Trains the genotype of the CIFAR-100 search (`workdirs/cifar100_dnas/genotype.json`,
searched at L = 14, configs/cifar100.py), mapped to L = 20 layers (reductions to
reductions, normal cells proportionally within each stage), with everything else as in
cifar10_retrain.py (600 epochs, batch 96, SGD 0.025 cosine, auxiliary 0.4, drop path
0.2, cutout 16). Writes checkpoints, event files and `final_metrics.json`.

Expected: the paper reports 17.47 % test error with 4.60 M parameters. C = 36 (DARTS's
CIFAR-100 width) gives about 3.4 M for DARTS-like cells; the paper does not give its
width, and parameters grow as C², so `--config.model.channels=42` is the setting that
comes near 4.6 M (check with --dry_run), and `--config.model.num_layers=14` retrains at
the searched depth.
"""

from dnas_jax.configs import cifar10_retrain


def get_config():
  config = cifar10_retrain.get_config()
  config.genotype = "workdirs/cifar100_dnas/genotype.json"
  config.data.dataset = "cifar100"
  return config
