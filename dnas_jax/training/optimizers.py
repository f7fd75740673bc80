"""The optimizers of the search and the retraining, as DARTS and PC-DARTS define them.

* weights: SGD with momentum, L2 coupled to the gradient, global-norm clipping, and a
  learning rate stepped per epoch (`create_weight_tx`): cosine (`weight_lr_schedule`,
  the default), or for ImageNet DARTS's exponential decay (`exponential_lr_schedule`)
  or PC-DARTS's warm-up and linear decay (`pc_darts_linear_schedule`);
* architecture (search only): Adam with L2 added to the gradient (`create_arch_tx`).
"""

import jax.numpy as jnp
import optax


def weight_lr_schedule(
  base_lr: float, min_lr: float, num_epochs: int, steps_per_epoch: int
) -> optax.Schedule:
  """Cosine from base_lr to min_lr over epochs, stepped per epoch (CosineAnnealingLR)."""

  def schedule(step):
    epoch = jnp.minimum(step // steps_per_epoch, num_epochs)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + jnp.cos(jnp.pi * epoch / num_epochs))

  return schedule


def exponential_lr_schedule(base_lr: float, decay: float, steps_per_epoch: int) -> optax.Schedule:
  """base_lr · decay^epoch, stepped per epoch: DARTS's ImageNet recipe, PyTorch's
  `StepLR(optimizer, 1, gamma=decay)` (quark0/darts `cnn/train_imagenet.py`: 0.1,
  0.97). Epoch 0 trains at base_lr (that script steps the scheduler at each epoch's
  start, which in the PyTorch it was written for gave base_lr · decay^epoch)."""

  def schedule(step):
    epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
    return base_lr * jnp.power(decay, epoch)

  return schedule


def pc_darts_linear_schedule(
  base_lr: float, num_epochs: int, warmup_epochs: int, steps_per_epoch: int
) -> optax.Schedule:
  """PC-DARTS's ImageNet learning rate (yuhuixu1993/PC-DARTS `train_imagenet.py`,
  `adjust_lr` and the warm-up in `main`), stepped per epoch, for epoch e of E:

  * e < warmup_epochs: base_lr · (e + 1) / warmup_epochs (PC-DARTS: 5 epochs, applied
    only when the batch exceeds 256; `config.optim.warmup_epochs`);
  * E - e > 5: base_lr · (E - 5 - e) / (E - 5), linear decay;
  * the last 5 epochs: base_lr · (E - e) / (5 (E - 5)), a smaller slope ("because
    lr · 1/250 is relatively large"), so the rate never reaches 0.
  """

  def schedule(step):
    e = jnp.minimum(jnp.asarray(step) // steps_per_epoch, num_epochs - 1).astype(jnp.float32)
    decay = jnp.where(
      num_epochs - e > 5,
      base_lr * (num_epochs - 5 - e) / (num_epochs - 5),
      base_lr * (num_epochs - e) / ((num_epochs - 5) * 5),
    )
    if warmup_epochs <= 0:
      return decay
    return jnp.where(e < warmup_epochs, base_lr * (e + 1) / warmup_epochs, decay)

  return schedule


# config.optim.schedule: the weight learning rate's shape over epochs.
SCHEDULES = ("cosine", "exponential", "pc_darts_linear")


def create_weight_tx(
  schedule: optax.Schedule, momentum: float, weight_decay: float, grad_clip: float
) -> optax.GradientTransformation:
  """PyTorch order: clip the raw gradient, add wd·w, then SGD with momentum."""
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  parts += [optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum)]
  return optax.chain(*parts)


def create_arch_tx(
  lr: float, b1: float, b2: float, weight_decay: float
) -> optax.GradientTransformation:
  """Adam with L2 added to the gradient (PyTorch `Adam(weight_decay=...)`)."""
  return optax.chain(
    optax.add_decayed_weights(weight_decay), optax.adam(lr, b1=b1, b2=b2, eps=1e-8)
  )


def weight_tx_of(
  optim, num_epochs: int, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The weight optimizer and its schedule from a config's `optim` section:
  `optim.schedule` (absent: "cosine") picks the learning rate's shape (`SCHEDULES`)."""
  kind = optim.get("schedule", "cosine")
  if kind == "cosine":
    schedule = weight_lr_schedule(optim.weight_lr, optim.weight_min_lr, num_epochs, steps_per_epoch)
  elif kind == "exponential":
    schedule = exponential_lr_schedule(optim.weight_lr, optim.lr_decay, steps_per_epoch)
  elif kind == "pc_darts_linear":
    schedule = pc_darts_linear_schedule(
      optim.weight_lr, num_epochs, optim.get("warmup_epochs", 0), steps_per_epoch
    )
  else:
    raise ValueError(
      f"config.optim.schedule={kind!r} is not valid; valid values: {list(SCHEDULES)}"
    )
  return (create_weight_tx(schedule, optim.momentum, optim.weight_decay, optim.grad_clip), schedule)
