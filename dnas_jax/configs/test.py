"""The tiny search config of the tests: seconds of running (after compiling).

Command:
  python -m experiments.search --config=experiments/configs/test.py --workdir=/tmp/dnas_test

Synthetic 8×8 data, 3 layers (a normal cell, then two reduction cells: every kind of
cell and of preprocessing), C = 8, three candidate operations, 2 epochs of 8 steps,
architecture updates from the second epoch. Produces every artifact of a real search.
"""

from dnas_jax.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.data.dataset = "synthetic"
  config.data.source = "synthetic"
  config.data.crop_padding = 1
  config.model.num_layers = 3
  config.model.channels = 8
  config.model.primitives = "max_pool_3x3,skip_connect,sep_conv_3x3"
  config.num_epochs = 2
  config.optim.arch_warmup_epochs = 1
  config.batch_size = 16
  config.eval_batch_size = 32
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  return config
