"""DNAS global search on scikit-learn's bundled digits: the offline quick start.

Command:
  python -m experiments.search --config=experiments/configs/digits.py --workdir=workdirs/digits

Runs anywhere, offline, in about 3 minutes on a 2-core CPU (measured: README; about
half of it is XLA compiling the search step once; a second run reads the compiled step
from the persistent cache). Digits are 8×8×1; the network takes that shape (reductions
to 4×4 and 2×2), with a 1-pixel crop padding and no flips (digits are not
mirror-symmetric). The search network is L = 5 (reduction cells at layers 1 and 3),
C = 16: on a CPU each traced cell costs compile time, and 5 layers already give every
stage its cells. Ten epochs are a short search, so the architecture learning rate is 5×
PC-DARTS's (3e-3) for ψ to move visibly from its uniform start, and the architecture
half is evaluated once, at the end. Produces a checkpoint, event files,
`genotype.json`, `psi.npy` [5, 14, 7] and figures; the validation accuracy (on the
architecture half) ends well above chance (10 %). Against skip-connect collapse it
keeps cifar10.py's readings (constant skip dropout, zero-one loss on the factors,
top-k derivation, per-epoch permutation); the console and TensorBoard show each
layer's parameter-free share, to compare them with the other options.
"""

from dnas_jax.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.data.dataset = "digits"
  config.data.source = "digits"
  config.data.crop_padding = 1
  config.data.flip = False
  config.model.num_layers = 5
  config.model.channels = 16
  config.num_epochs = 10
  config.optim.arch_warmup_epochs = 2
  config.optim.arch_lr = 3e-3
  config.batch_size = 64
  config.eval_batch_size = 256
  config.eval_every_epochs = 10  # once, at the end
  config.log_every_steps = 10
  config.checkpoint_every_steps = 50
  return config
