"""Retraining a global genotype on CIFAR-10 from scratch: DARTS's evaluation recipe.

Command:
  python -m experiments.train --config=experiments/configs/cifar10_retrain.py \
      --workdir=workdirs/cifar10_retrain [--config.genotype=DARTS_V2] \
      [--config.data.data_dir=DIR]
  python -m experiments.train --config=experiments/configs/cifar10_retrain.py --dry_run

Trains the genotype of the DNAS search (`workdirs/cifar10_dnas/genotype.json`, written
by `experiments.search` with configs/cifar10.py, or re-derived by `experiments.derive`)
or a published one (`DARTS_V1`, `DARTS_V2`, `PC_DARTS`); a genotype of another depth is
mapped to L = 20 (reductions to reductions). Writes Orbax checkpoints (resumed
automatically; Ctrl-C saves one), TensorBoard event files and `final_metrics.json` with
the test error. `--dry_run` prints the parameter counts and reads no data: DARTS_V2
gives `params_excluding_auxiliary: 3349342` (DARTS's 3.3M).

Expected: the paper reports 2.68 % test error with 3.35 M parameters after 600 epochs
(about 1.5 GPU-days for DARTS's PyTorch code on one 1080 Ti); DARTS_V2 2.76 ± 0.09 %.

Why these values (quark0/darts `cnn/train.py`, which DNAS follows):
* NetworkCIFAR with C = 36, L = 20 cells, auxiliary head at 2L//3 weighted 0.4.
* 600 epochs, batch 96, SGD lr 0.025 cosine to 0 (stepped per epoch), momentum 0.9,
  weight decay 3e-4, gradient clip 5.
* Drop path 0.2, ramped linearly over training (0.2 · epoch / 600), not on identities.
* Augmentation: random crop with 4-pixel zero padding, horizontal flip, cutout 16.
* Evaluation on the 10,000 test images every 10 epochs (DARTS: every epoch; this
  saves ~6 % of the time) and at the end.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # A published name (DARTS_V1, DARTS_V2, PC_DARTS) or a genotype.json path.
  config.genotype = "workdirs/cifar10_dnas/genotype.json"

  # Data: the whole training set; the test set for evaluation.
  config.data = ml_collections.ConfigDict()
  config.data.dataset = "cifar10"  # a registered name, or your own data's name
  # auto | tfds | archive | digits | synthetic; your own files: npz | folder | tfds:<name>
  config.data.source = "auto"
  config.data.data_dir = ""
  config.data.path = ""  # source npz: the .npz file; folder: the folder tree
  config.data.image_size = 0  # resize every image to this square size (0: keep)
  config.data.train_split = "train"  # folder and tfds:<name>: the splits' names
  config.data.test_split = "test"
  config.data.crop_padding = 4
  config.data.flip = True
  config.data.cutout = 16
  config.data.rotate_degrees = 0.0
  # Read from disk while training (dnas_jax/data/streaming.py) instead of held in memory:
  # ImageNet, or a folder tree / TFDS dataset too large for memory.
  config.data.streaming = False
  config.data.workers = 0  # streaming: decoding/augmenting processes (0: in this one)

  # Network.
  config.model = ml_collections.ConfigDict()
  config.model.network = "cifar"  # cifar | tiny_imagenet | imagenet (models/network.py)
  config.model.num_layers = 20
  config.model.channels = 36
  config.model.auxiliary = True
  config.model.dtype = "float32"  # float32 | bfloat16 (parameters stay float32)
  # A user's operations: .py file paths or module names, comma-separated, imported
  # before the config is checked (docs/extending.md).
  config.model.ops_modules = ""

  # Optimisation.
  config.optim = ml_collections.ConfigDict()
  config.optim.weight_lr = 0.025
  # cosine (to weight_min_lr) | exponential (× lr_decay per epoch) | pc_darts_linear
  # (warmup_epochs, then linear decay): dnas_jax/training/optimizers.py.
  config.optim.schedule = "cosine"
  config.optim.weight_min_lr = 0.0
  config.optim.lr_decay = 0.97
  config.optim.warmup_epochs = 0
  config.optim.momentum = 0.9
  config.optim.weight_decay = 3e-4
  config.optim.grad_clip = 5.0
  config.optim.auxiliary_weight = 0.4
  config.optim.drop_path_prob = 0.2  # the final value of the linear ramp
  config.optim.label_smoothing = 0.0  # ε of DARTS's CrossEntropyLabelSmooth (ImageNet: 0.1)

  # Loop.
  config.num_epochs = 600
  config.batch_size = 96
  config.eval_batch_size = 250
  config.eval_every_epochs = 10
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.distributed = False  # call jax.distributed.initialize() (multi-host)
  # Batches prepared ahead by a host thread while the device runs a step (0: none).
  config.prefetch = 2
  # A jax.profiler trace of `num_steps` steps from `first_step` into WORKDIR/plugins/
  # profile (TensorBoard's profile tab, or the .trace.json.gz in Perfetto); 0: none.
  config.profile = ml_collections.ConfigDict()
  config.profile.first_step = 10
  config.profile.num_steps = 0
  return config
