"""Retraining the digits search's genotype: the offline quick start, second half.

Commands (from the repository root, after the digits search):
  python -m experiments.search --config=experiments/configs/digits.py \
      --workdir=workdirs/digits
  python -m experiments.derive --workdir=workdirs/digits
  python -m experiments.train --config=experiments/configs/digits_retrain.py \
      --workdir=workdirs/digits_retrain
  python -m experiments.evaluate --workdir=workdirs/digits_retrain

Trains `workdirs/digits/genotype.json` (the global genotype the digits search wrote, one
cell per layer; `--config.genotype=DARTS_V2` trains DARTS's cell instead and needs no
search) from scratch on scikit-learn's bundled 8×8 digits (1,500 training, 297 test
images), in a few minutes on a laptop CPU, about half of it compiling the step.
Writes checkpoints, event files and `final_metrics.json`; the test accuracy ends
far above chance (10 %).

Choices: L = 8 and C = 16 (the 5-layer searched genotype is mapped to 8 layers,
proportionally inside each stage, reduction cells to reduction cells); no auxiliary
head (at layer 2L//3 the feature map is 2×2, too small for DARTS's head, which needs
8×8); 1-pixel crop padding and no flips (digits are not mirror-symmetric), no cutout
(a 8×8 image has little to spare); batch 64 and 20 epochs of 23 steps (30 reach the
same accuracy, a third slower); the rest is DARTS's recipe.
"""

from dnas_jax.configs import cifar10_retrain


def get_config():
  config = cifar10_retrain.get_config()
  config.genotype = "workdirs/digits/genotype.json"
  config.data.dataset = "digits"
  config.data.source = "digits"
  config.data.crop_padding = 1
  config.data.flip = False
  config.data.cutout = 0
  config.model.num_layers = 8
  config.model.channels = 16
  config.model.auxiliary = False
  config.num_epochs = 20
  config.batch_size = 64
  config.eval_batch_size = 99
  config.eval_every_epochs = 5
  config.log_every_steps = 23
  config.checkpoint_every_steps = 230
  return config
