"""DNAS global search on scikit-learn's bundled digits: the offline quick start.

Command:
  python -m experiments.search --config=experiments/configs/digits.py --workdir=workdirs/digits

Runs anywhere, offline, in minutes on a laptop CPU (most of it is XLA compiling the
search step once). Digits are 8×8×1; the network takes that shape (reductions to 4×4 and
2×2), with a 1-pixel crop padding and no flips (digits are not mirror-symmetric).
Ten epochs are a short search, so the architecture learning rate is 5× PC-DARTS's
(3e-3) for ψ to move visibly from its uniform start. Produces a checkpoint, event
files, `genotype.json`, `psi.npy` [8, 14, 7] and figures; the validation accuracy (on
the architecture half) ends well above chance (10 %): see the README for a measured run.
"""

from experiments.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.data.dataset = "digits"
  config.data.source = "digits"
  config.data.crop_padding = 1
  config.data.flip = False
  config.model.num_layers = 8
  config.model.channels = 16
  config.num_epochs = 10
  config.optim.arch_warmup_epochs = 2
  config.optim.arch_lr = 3e-3
  config.batch_size = 64
  config.eval_batch_size = 256
  config.log_every_steps = 10
  config.checkpoint_every_steps = 50
  return config
