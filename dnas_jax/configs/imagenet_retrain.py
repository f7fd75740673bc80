"""Transfer to ImageNet: retraining a CIFAR-10 architecture at 224×224, 1000 classes (the
mobile setting of DARTS and PC-DARTS).

Command:
  python -m experiments.train --config=experiments/configs/imagenet_retrain.py \
      --workdir=workdirs/imagenet_retrain [--config.genotype=DARTS_V2]
  python -m experiments.train --config=experiments/configs/imagenet_retrain.py:pc_darts \
      --workdir=workdirs/imagenet_retrain_pc_darts
  python -m experiments.train --config=experiments/configs/imagenet_retrain.py \
      --config.genotype=DARTS_V2 --dry_run

The recipe after the colon picks the learning rate: `darts` (the default: DARTS's
`train_imagenet.py`) or `pc_darts` (PC-DARTS's). Trains the genotype of the DNAS search
on CIFAR-10 (`workdirs/cifar10_dnas/genotype.json`, mapped from its depth to L = 14)
or a published one in `NetworkImageNet` (dnas_jax/models/network.py). `imagenet2012` is
streamed from disk (TFDS array_record under `config.data.data_dir`, or a folder tree:
docs/imagenet.md), decoded and cropped in `config.data.workers` processes with DARTS's
RandomResizedCrop(224) and flip, its colour jitter applied in the step. `--dry_run`
needs no data and prints, for DARTS_V2, `params_excluding_auxiliary: 4718752` (DARTS's 4.7M),
`params_total: 5979528` and `multiply_adds: 529911552`; for PC_DARTS 5270560 (PC-DARTS's
5.3M), 6531336 and 571137408.

Expected: DARTS (second order) reports 26.7 % top-1 / 8.7 % top-5 error with 4.7 M
parameters and 574 M multiply-adds; PC-DARTS (its CIFAR-10 cell) 25.1 % / 7.8 % with
5.3 M and 586 M. Our count of the convolutions' and linear layers' multiply-adds
(padding positions included) is 530 M and 571 M: the papers' figures are not
reproduced by that count (others found 523 M to 545 M for DARTS_V2, quark0/darts #46),
and neither paper says how it counted.

Why these values (quark0/darts `cnn/train_imagenet.py`; yuhuixu1993/PC-DARTS
`train_imagenet.py`, which keeps DARTS's recipe but for the learning rate and batch):
* NetworkImageNet with C = 48, L = 14 (reductions at 4 and 9), the auxiliary head
  weighted 0.4 (both READMEs train with `--auxiliary`).
* 250 epochs, SGD momentum 0.9, weight decay 3e-5, gradient clip 5, label smoothing 0.1
  on the main and the auxiliary loss (`CrossEntropyLabelSmooth`); evaluation uses the
  plain cross-entropy.
* Drop path 0: both scripts' default, and neither README's ImageNet command sets it.
* `darts`: batch 128, lr 0.1 × 0.97 per epoch (StepLR(1, 0.97)).
* `pc_darts`: batch 1024, lr 0.5; 5 warm-up epochs at 0.5 · (e + 1) / 5 (PC-DARTS
  warms up only when the batch exceeds 256: set `--config.optim.warmup_epochs=0` with
  a smaller batch), then linear decay 0.5 · (245 - e) / 245, and a smaller slope over
  the last 5 epochs, 0.5 · (250 - e) / 1225 (`optimizers.pc_darts_linear_schedule`).
* No padded crop, cutout or rotation: ImageNet's augmentation is the input pipeline's.
* The 50,000 validation images are the test set, evaluated every 10 epochs and at the
  end (DARTS: every epoch).
"""

import ml_collections

from dnas_jax.configs import cifar10_retrain

RECIPES = ("darts", "pc_darts")


def get_config(recipe: str = "darts") -> ml_collections.ConfigDict:
  recipe = recipe or "darts"
  if recipe not in RECIPES:
    raise ValueError(f"imagenet_retrain.py:{recipe}: unknown recipe; valid values: {list(RECIPES)}")
  config = cifar10_retrain.get_config()
  config.data.dataset = "imagenet2012"
  config.data.source = "auto"  # tfds (prepared imagenet2012) or folder (config.data.path)
  config.data.image_size = 224
  config.data.test_split = "validation"  # a folder tree's: --config.data.test_split=val
  config.data.streaming = True
  config.data.workers = 8  # processes decoding and augmenting JPEGs (docs/imagenet.md)
  config.data.crop_padding = 0
  config.data.cutout = 0
  config.model.network = "imagenet"
  config.model.num_layers = 14
  config.model.channels = 48
  config.optim.momentum = 0.9
  config.optim.weight_decay = 3e-5
  config.optim.grad_clip = 5.0
  config.optim.auxiliary_weight = 0.4
  config.optim.drop_path_prob = 0.0
  config.optim.label_smoothing = 0.1
  config.num_epochs = 250
  if recipe == "darts":
    config.batch_size = 128
    config.optim.weight_lr = 0.1
    config.optim.schedule = "exponential"
    config.optim.lr_decay = 0.97  # per epoch
  else:
    config.batch_size = 1024
    config.optim.weight_lr = 0.5
    config.optim.schedule = "pc_darts_linear"
    config.optim.warmup_epochs = 5
  return config
