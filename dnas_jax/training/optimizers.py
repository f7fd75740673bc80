"""The optimizers of the search and the retraining, as DARTS and PC-DARTS define them.

* weights: SGD with momentum, L2 coupled to the gradient, global-norm clipping, and a
  cosine learning rate stepped per epoch (`weight_lr_schedule`, `create_weight_tx`);
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
  """The weight optimizer and its schedule from a config's `optim` section."""
  schedule = weight_lr_schedule(optim.weight_lr, optim.weight_min_lr, num_epochs, steps_per_epoch)
  return (create_weight_tx(schedule, optim.momentum, optim.weight_decay, optim.grad_clip), schedule)
