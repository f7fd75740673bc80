"""The retraining's state and its pure step: DARTS's `train.py` recipe.

SGD momentum 0.9 with coupled L2, learning rate cosine over epochs (stepped per epoch)
to `weight_min_lr` (or another `optim.schedule`), gradient clipping
(`training.optimizers`), the auxiliary head's loss added with weight
`auxiliary_weight`, label smoothing `optim.label_smoothing` on both losses (0: none),
drop path with probability `drop_path_prob · epoch / num_epochs` (`drop_path_prob`; an
input of the step, so the ramp never recompiles). The evaluation step is the one both
phases share, `training.evaluation.eval_step`.
"""

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metrics

from dnas_jax.data import device_augment
from dnas_jax.models import network
from dnas_jax.training import evaluation
from dnas_jax.training import losses


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  train_loss: evaluation.output_metric(metrics.Average, "train_loss")
  train_accuracy: evaluation.output_metric(metrics.Average, "train_accuracy")
  learning_rate: evaluation.output_metric(metrics.LastValue, "learning_rate")
  drop_prob: evaluation.output_metric(metrics.LastValue, "drop_prob")


def create_train_state(params, batch_stats, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(
    step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=tx.init(params)
  )


def drop_path_prob(config: ml_collections.ConfigDict, step: int, steps_per_epoch: int) -> float:
  """DARTS's ramp: drop_path_prob · epoch / num_epochs, for the epoch of `step`."""
  return config.optim.drop_path_prob * (step // steps_per_epoch) / config.num_epochs


def loss_fn(
  params,
  batch_stats,
  batch,
  drop_prob,
  rng,
  *,
  net: network.NetworkCIFAR,
  auxiliary_weight: float,
  label_smoothing: float = 0.0,
  normalization=None,
):
  """Cross-entropy of the logits plus `auxiliary_weight` × that of the auxiliary head,
  both with `label_smoothing` (DARTS's ImageNet recipe smooths both: its training loop
  applies `CrossEntropyLabelSmooth` to the logits and to the auxiliary logits). A
  streamed batch is colour-jittered and normalised first, with `normalization` =
  (mean, std) (`device_augment.model_input`)."""
  (logits, aux_logits), updates = net.apply(
    {"params": params, "batch_stats": batch_stats},
    device_augment.model_input(batch, normalization),
    drop_prob,
    rngs={"dropout": rng},
    mutable=["batch_stats"],
  )
  loss = losses.cross_entropy(logits, batch["label"], label_smoothing)
  if aux_logits is not None:
    aux_loss = losses.cross_entropy(aux_logits, batch["label"], label_smoothing)
    loss = loss + auxiliary_weight * aux_loss
  return loss, (logits, updates["batch_stats"])


def train_step(
  state: TrainState,
  batch,
  rng,
  drop_prob,
  *,
  net: network.NetworkCIFAR,
  tx: optax.GradientTransformation,
  lr_schedule: optax.Schedule,
  auxiliary_weight: float,
  label_smoothing: float = 0.0,
  normalization=None,
) -> tuple[TrainState, TrainMetrics]:
  """One SGD step on a (sharded) training batch; `drop_prob` is a traced scalar."""
  rng = jax.random.fold_in(rng, state.step)
  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params,
    state.batch_stats,
    batch,
    drop_prob,
    rng,
    net=net,
    auxiliary_weight=auxiliary_weight,
    label_smoothing=label_smoothing,
    normalization=normalization,
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    batch_stats=new_stats,
    opt_state=opt_state,
  )
  return new_state, TrainMetrics.single_from_model_output(
    train_loss=loss,
    train_accuracy=losses.accuracy(logits, batch["label"]),
    learning_rate=lr_schedule(state.step),
    drop_prob=drop_prob,
  )


def make_step_fns(
  *,
  net_train,
  net_eval,
  tx,
  lr_schedule,
  auxiliary_weight,
  label_smoothing=0.0,
  normalization=None,
) -> tuple[Callable, Callable]:
  """The jitted training step (state donated) and evaluation step; `normalization`
  (mean, std) for streamed batches, whose images are normalised in the step."""
  step = jax.jit(
    functools.partial(
      train_step,
      net=net_train,
      tx=tx,
      lr_schedule=lr_schedule,
      auxiliary_weight=auxiliary_weight,
      label_smoothing=label_smoothing,
      normalization=normalization,
    ),
    donate_argnums=(0,),
  )
  evaluate = functools.partial(evaluation.eval_step, net=net_eval, normalization=normalization)
  return step, jax.jit(evaluate)
