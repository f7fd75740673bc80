"""The tiny retraining config of the tests: seconds of running (after compiling).

Command:
  python -m experiments.train --config=experiments/configs/test_retrain.py \
      --workdir=/tmp/dnas_test_retrain

Synthetic 8×8 data (256 training, 64 test images), DARTS_V1's cells over 3 layers
(normal, reduction, reduction) at C = 8 without the auxiliary head, 2 epochs of
16 steps with drop path 0 then 0.2 (0.4 · epoch / 2), a cutout of 4 pixels and a padded
last evaluation batch (64 = 24 + 24 + 16). Produces every artifact of a real retraining.
"""

from dnas_jax.configs import cifar10_retrain


def get_config():
  config = cifar10_retrain.get_config()
  config.genotype = "DARTS_V1"
  config.data.dataset = "synthetic"
  config.data.source = "synthetic"
  config.data.crop_padding = 1
  config.data.cutout = 4
  config.model.num_layers = 3
  config.model.channels = 8
  config.model.auxiliary = False
  config.num_epochs = 2
  config.optim.drop_path_prob = 0.4
  config.batch_size = 16
  config.eval_batch_size = 24
  config.eval_every_epochs = 1
  config.log_every_steps = 4
  config.checkpoint_every_steps = 5
  return config
