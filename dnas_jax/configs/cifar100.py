"""DNAS global search on CIFAR-100 (paper §4.3: L = 14, C = 16, batch 96).

Command:
  python -m experiments.search --config=experiments/configs/cifar100.py \
      --workdir=workdirs/cifar100_dnas [--config.data.data_dir=DIR]

Produces the same artifacts as cifar10.py, with ψ of shape [14, 14, 7]. Everything else
is the CIFAR-10 setting (see its docstring).
"""

from dnas_jax.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.data.dataset = "cifar100"
  config.model.num_layers = 14
  return config
