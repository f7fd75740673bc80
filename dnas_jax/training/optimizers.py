"""The optimizers of the search and the retraining, as DARTS and PC-DARTS define them.

* weights: SGD with momentum, L2 coupled to the gradient, global-norm clipping, and a
  learning rate stepped per epoch (`create_weight_tx`): cosine (`weight_lr_schedule`,
  the default), or for ImageNet DARTS's exponential decay (`exponential_lr_schedule`)
  or PC-DARTS's warm-up and linear decay (`pc_darts_linear_schedule`);
* architecture (search only): Adam with L2 added to the gradient (`create_arch_tx`).

`apply_weight_tx` applies either: the optax transformation leaf by leaf, or, for the
CPU's program (`config.program.optimizer="kernel"`, a `KernelSGD`), the weights'
whole step in one compiled CPU kernel call with the same state and numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dnas_jax.kernels import cpu as cpu_kernels


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


@dataclasses.dataclass(frozen=True)
class KernelSGD:
  """`create_weight_tx`'s transformation (`tx`, which `init` and `update` are) with
  the settings it was made from, so that `apply_weight_tx` can run its step as one
  CPU kernel call (`kernels.cpu.sgd_update`) on the state `tx` keeps: XLA:CPU
  compiles optax's step as three kernels per parameter array (about a thousand for a
  search network), a sizeable share of the search step's compile time."""

  tx: optax.GradientTransformation
  schedule: optax.Schedule
  momentum: float
  weight_decay: float
  grad_clip: float

  def init(self, params):
    return self.tx.init(params)

  def update(self, updates, state, params=None):
    return self.tx.update(updates, state, params)

  def apply(self, grads, state, params):
    """(new params, new state): `tx`'s update applied, in one kernel call."""
    trace = optax.tree_utils.tree_get(state, "trace")
    count = optax.tree_utils.tree_get(state, "count")
    leaves, treedef = jax.tree.flatten(params)
    new_leaves, new_trace = cpu_kernels.sgd_update(
      leaves,
      treedef.flatten_up_to(grads),
      treedef.flatten_up_to(trace),
      self.schedule(count),
      self.momentum,
      self.weight_decay,
      max(self.grad_clip, 0.0),
    )
    state = optax.tree_utils.tree_set(
      state,
      trace=jax.tree.unflatten(treedef, new_trace),
      count=optax.safe_int32_increment(count),
    )
    return jax.tree.unflatten(treedef, new_leaves), state


def _float32_tree(tree) -> bool:
  return all(np.dtype(x.dtype) == np.float32 for x in jax.tree.leaves(tree))


def apply_weight_tx(
  tx: optax.GradientTransformation | KernelSGD, grads, state, params
) -> tuple[Any, Any]:
  """(new params, new optimizer state): one step of the weight optimizer `tx`. A
  `KernelSGD` over float32 weights runs as one CPU kernel call; anything else as
  optax's `update` and `apply_updates`."""
  if isinstance(tx, KernelSGD) and _float32_tree((params, grads)):
    return tx.apply(grads, state, params)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def create_arch_tx(
  lr: float, b1: float, b2: float, weight_decay: float
) -> optax.GradientTransformation:
  """Adam with L2 added to the gradient (PyTorch `Adam(weight_decay=...)`)."""
  return optax.chain(
    optax.add_decayed_weights(weight_decay), optax.adam(lr, b1=b1, b2=b2, eps=1e-8)
  )


def weight_tx_of(
  optim, num_epochs: int, steps_per_epoch: int, optimizer: str = "optax"
) -> tuple[optax.GradientTransformation | KernelSGD, optax.Schedule]:
  """The weight optimizer and its schedule from a config's `optim` section:
  `optim.schedule` (absent: "cosine") picks the learning rate's shape (`SCHEDULES`).
  `optimizer` ("optax" or "kernel", `program.OPTIMIZERS`) says how `apply_weight_tx`
  applies it."""
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
  tx = create_weight_tx(schedule, optim.momentum, optim.weight_decay, optim.grad_clip)
  if optimizer == "kernel":
    tx = KernelSGD(tx, schedule, optim.momentum, optim.weight_decay, optim.grad_clip)
  elif optimizer != "optax":
    raise ValueError(f"optimizer {optimizer!r}; valid: ['optax', 'kernel']")
  return tx, schedule
