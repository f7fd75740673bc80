"""The search's state and its pure steps: the bi-level `search_step` (and the
evaluation step it shares with the retraining, `training.evaluation.eval_step`).

One `search_step` does, as DARTS / PC-DARTS:

1. the architecture update on a validation batch (after `arch_warmup_steps`): Adam
   (lr 6e-4, betas 0.5/0.999) with L2 added to the gradient as PyTorch's Adam does, on
   the cross-entropy plus `zero_one_weight` × the zero-one loss of FairDARTS. Only the
   architecture parameters are differentiated, so XLA drops the weight-gradient
   convolutions. `second_order` differentiates exactly through the virtual weight step
   w' = w − ξ(μ·buf + ∇_w L_train(w, α) + wd·w), ξ the current weight learning rate and
   buf the weight optimiser's momentum buffer (DARTS's `architect.py`, unrolled step);
2. the weight update on a training batch with the new ψ: SGD momentum 0.9, coupled L2,
   global-norm clipping, cosine learning rate.

During the architecture update the batch-norm running statistics are not updated (they
belong to the weights); an architecture update leaves the weight pytrees bit-identical,
and a weight update leaves the architecture parameters bit-identical.
"""

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from clu import metrics

from dnas_jax.models import arch as arch_lib
from dnas_jax.training import evaluation
from dnas_jax.training import losses
from dnas_jax.training import optimizers


@flax.struct.dataclass
class SearchState:
  step: jax.Array
  params: Any
  batch_stats: Any
  arch_params: Any
  weight_opt_state: Any
  arch_opt_state: Any


@flax.struct.dataclass
class SearchMetrics(metrics.Collection):
  train_loss: evaluation.output_metric(metrics.Average, "train_loss")
  train_accuracy: evaluation.output_metric(metrics.Average, "train_accuracy")
  arch_loss: evaluation.output_metric(metrics.Average, "arch_loss")
  arch_accuracy: evaluation.output_metric(metrics.Average, "arch_accuracy")
  zero_one_loss: evaluation.output_metric(metrics.Average, "zero_one_loss")
  arch_updates: evaluation.output_metric(metrics.Average, "arch_updated")
  weight_lr: evaluation.output_metric(metrics.LastValue, "weight_lr")


def _forward(net: nn.Module, params, batch_stats, images, arch_weights: arch_lib.ArchWeights, rng):
  """Training-mode forward: logits and the updated batch statistics."""
  logits, updates = net.apply(
    {"params": params, "batch_stats": batch_stats},
    images,
    *arch_weights,
    mutable=["batch_stats"],
    rngs={"dropout": rng},
  )
  return logits, updates["batch_stats"]


def weight_loss_fn(net, params, batch_stats, arch_weights, batch, rng):
  """The training loss in the network weights `params` at fixed ψ (`arch_weights`)."""
  logits, new_stats = _forward(net, params, batch_stats, batch["image"], arch_weights, rng)
  return losses.cross_entropy(logits, batch["label"]), (logits, new_stats)


def arch_objective(
  arch_params,
  params,
  batch_stats,
  val_batch,
  rng,
  *,
  net,
  spec: arch_lib.ArchSpec,
  zero_one_weight: float,
):
  """The architecture loss on a validation batch: CE + w · zero-one loss."""
  logits, _ = _forward(
    net, params, batch_stats, val_batch["image"], spec.arch_weights(arch_params), rng
  )
  ce = losses.cross_entropy(logits, val_batch["label"])
  z = spec.zero_one_loss(arch_params)
  return ce + zero_one_weight * z, (ce, losses.accuracy(logits, val_batch["label"]), z)


def momentum_buffer(weight_opt_state):
  """The SGD momentum buffer (optax's `trace`, PyTorch's `momentum_buffer`) of the
  weight optimiser's state: a pytree like the weights."""
  return optax.tree_utils.tree_get(weight_opt_state, "trace")


def unrolled_arch_objective(
  arch_params,
  params,
  batch_stats,
  train_batch,
  val_batch,
  rng,
  *,
  net,
  spec,
  zero_one_weight,
  xi,
  weight_decay,
  momentum=0.0,
  buffer=None,
):
  """The second-order objective: the architecture loss at the virtual weights
  w' = w − ξ(μ·buf + ∇_w L_train(w, α) + wd·w), differentiable in α through w'
  (DARTS's `_compute_unrolled_model`; buf is the weight optimiser's momentum buffer,
  constant in α; None: zeros, as DARTS before the first weight step)."""
  rng_train, rng_val = jax.random.split(rng)
  arch_weights = spec.arch_weights(arch_params)
  grads = jax.grad(
    lambda p: weight_loss_fn(net, p, batch_stats, arch_weights, train_batch, rng_train)[0]
  )(params)
  if buffer is None:
    buffer = jax.tree.map(jnp.zeros_like, params)
  virtual = jax.tree.map(
    lambda w, g, m: w - xi * (momentum * m + g + weight_decay * w), params, grads, buffer
  )
  return arch_objective(
    arch_params,
    virtual,
    batch_stats,
    val_batch,
    rng_val,
    net=net,
    spec=spec,
    zero_one_weight=zero_one_weight,
  )


def arch_gradient(
  state: SearchState,
  train_batch,
  val_batch,
  rng,
  *,
  net,
  spec,
  zero_one_weight: float,
  second_order: bool,
  xi,
  weight_decay: float,
  momentum: float = 0.0,
):
  """∇_α of the architecture objective, and (ce, accuracy, zero-one)."""
  if second_order:
    fn = functools.partial(
      unrolled_arch_objective,
      params=state.params,
      batch_stats=state.batch_stats,
      train_batch=train_batch,
      val_batch=val_batch,
      rng=rng,
      net=net,
      spec=spec,
      zero_one_weight=zero_one_weight,
      xi=xi,
      weight_decay=weight_decay,
      momentum=momentum,
      buffer=momentum_buffer(state.weight_opt_state) if momentum else None,
    )
  else:
    fn = functools.partial(
      arch_objective,
      params=state.params,
      batch_stats=state.batch_stats,
      val_batch=val_batch,
      rng=rng,
      net=net,
      spec=spec,
      zero_one_weight=zero_one_weight,
    )
  return jax.grad(fn, has_aux=True)(state.arch_params)


def arch_update(
  state: SearchState,
  train_batch,
  val_batch,
  rng,
  *,
  net,
  spec,
  arch_tx,
  lr,
  zero_one_weight: float,
  second_order: bool,
  weight_decay: float,
  momentum: float = 0.0,
):
  """The architecture half of a step; returns (state, [ce, accuracy, zero-one]).

  Only `arch_params` and `arch_opt_state` change."""
  grads, (ce, acc, z) = arch_gradient(
    state,
    train_batch,
    val_batch,
    rng,
    net=net,
    spec=spec,
    zero_one_weight=zero_one_weight,
    second_order=second_order,
    xi=lr,
    weight_decay=weight_decay,
    momentum=momentum,
  )
  updates, opt_state = arch_tx.update(grads, state.arch_opt_state, state.arch_params)
  return (
    state.replace(
      arch_params=optax.apply_updates(state.arch_params, updates), arch_opt_state=opt_state
    ),
    jnp.stack([ce, acc, z]),
  )


def weight_update(state: SearchState, train_batch, rng, *, net, spec, weight_tx):
  """The weight half of a step at the current ψ; returns (state, (loss, logits)).

  Only `params`, `batch_stats` and `weight_opt_state` change."""
  arch_weights = jax.lax.stop_gradient(spec.arch_weights(state.arch_params))
  (loss, (logits, new_stats)), grads = jax.value_and_grad(weight_loss_fn, argnums=1, has_aux=True)(
    net, state.params, state.batch_stats, arch_weights, train_batch, rng
  )
  params, opt_state = optimizers.apply_weight_tx(
    weight_tx, grads, state.weight_opt_state, state.params
  )
  return state.replace(
    params=params,
    batch_stats=new_stats,
    weight_opt_state=opt_state,
  ), (loss, logits)


def shared_halves(
  state: SearchState,
  train_batch,
  val_batch,
  rng_arch,
  rng_weight,
  *,
  net,
  spec,
  weight_tx,
  arch_tx,
  arch_warmup_steps: int,
  zero_one_weight: float,
):
  """Both halves of a first-order step from ONE traced body, run twice by a scan: the
  body differentiates the loss in the weights and the architecture at once, and keeps
  the architecture update in its first pass (validation batch, after the warm-up) and
  the weight update in its second (training batch, with the new ψ). The network is
  traced and compiled once instead of twice, for the price of weight gradients that
  the architecture pass computes and drops. Returns (state, [ce, accuracy, zero-one,
  updated] of the architecture pass, (loss, accuracy) of the weight pass)."""
  batches = jax.tree.map(lambda v, t: jnp.stack([v, t]), val_batch, train_batch)
  keys = jnp.stack([rng_arch, rng_weight])
  is_arch = jnp.array([True, False])

  def body(state, xs):
    batch, key, arch = xs

    def loss_fn(params, arch_params):
      logits, new_stats = _forward(
        net, params, state.batch_stats, batch["image"], spec.arch_weights(arch_params), key
      )
      ce = losses.cross_entropy(logits, batch["label"])
      z = spec.zero_one_loss(arch_params)
      return ce + jnp.where(arch, zero_one_weight, 0.0) * z, (logits, new_stats, ce, z)

    def run(state):
      (_, (logits, new_stats, ce, z)), (g_w, g_a) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True
      )(state.params, state.arch_params)
      params, w_opt = optimizers.apply_weight_tx(
        weight_tx, g_w, state.weight_opt_state, state.params
      )
      a_updates, a_opt = arch_tx.update(g_a, state.arch_opt_state, state.arch_params)
      keep_if_arch = lambda old, new: jax.tree.map(lambda o, n: jnp.where(arch, o, n), old, new)
      new = state.replace(
        params=keep_if_arch(state.params, params),
        batch_stats=keep_if_arch(state.batch_stats, new_stats),
        weight_opt_state=keep_if_arch(state.weight_opt_state, w_opt),
        arch_params=keep_if_arch(
          optax.apply_updates(state.arch_params, a_updates), state.arch_params
        ),
        arch_opt_state=keep_if_arch(a_opt, state.arch_opt_state),
      )
      return new, jnp.stack([ce, losses.accuracy(logits, batch["label"]), z, jnp.float32(1.0)])

    def skip(state):
      return state, jnp.zeros(4, jnp.float32)

    if arch_warmup_steps <= 0:  # every step updates the architecture: no branch
      return run(state)
    active = jnp.logical_or(jnp.logical_not(arch), state.step >= arch_warmup_steps)
    return jax.lax.cond(active, run, skip, state)

  state, outs = jax.lax.scan(body, state, (batches, keys, is_arch))
  return state, outs[0], (outs[1, 0], outs[1, 1])


def search_step(
  state: SearchState,
  train_batch,
  val_batch,
  rng,
  *,
  net: nn.Module,
  spec: arch_lib.ArchSpec,
  weight_tx: optax.GradientTransformation | optimizers.KernelSGD,
  arch_tx: optax.GradientTransformation,
  lr_schedule: optax.Schedule,
  arch_warmup_steps: int,
  zero_one_weight: float,
  second_order: bool,
  weight_decay: float,
  momentum: float,
  halves: str = "separate",
  skip_dropout_schedule: Callable | None = None,
) -> tuple[SearchState, SearchMetrics]:
  """One bi-level step: architecture update (val batch), then weight update (train).

  `halves="shared"` (first order only) runs both halves from one traced body
  (`shared_halves`); "separate" traces the architecture half and the weight half one
  after the other. Both give the same updates. `skip_dropout_schedule` (step → rate,
  `models.skip_dropout.step_schedule`) replaces the network's skip dropout rate in
  both halves; None keeps it."""
  if skip_dropout_schedule is not None:
    net = net.clone(skip_dropout=skip_dropout_schedule(state.step))
  rng = jax.random.fold_in(rng, state.step)
  rng_arch, rng_weight = jax.random.split(rng)
  lr = lr_schedule(state.step)
  if halves == "shared":
    if second_order:
      raise ValueError(
        "halves='shared' is first order only; the second-order step needs halves='separate'"
      )
    state, arch_out, (loss, train_acc) = shared_halves(
      state,
      train_batch,
      val_batch,
      rng_arch,
      rng_weight,
      net=net,
      spec=spec,
      weight_tx=weight_tx,
      arch_tx=arch_tx,
      arch_warmup_steps=arch_warmup_steps,
      zero_one_weight=zero_one_weight,
    )
    step_metrics = SearchMetrics.single_from_model_output(
      train_loss=loss,
      train_accuracy=train_acc,
      arch_loss=arch_out[0],
      arch_accuracy=arch_out[1],
      zero_one_loss=arch_out[2],
      arch_updated=arch_out[3],
      weight_lr=lr,
    )
    return state.replace(step=state.step + 1), step_metrics

  def update(state):
    with jax.named_scope("architecture_half"):  # read by tools/step_profile.py
      state, out = arch_update(
        state,
        train_batch,
        val_batch,
        rng_arch,
        net=net,
        spec=spec,
        arch_tx=arch_tx,
        lr=lr,
        zero_one_weight=zero_one_weight,
        second_order=second_order,
        weight_decay=weight_decay,
        momentum=momentum,
      )
    return state, jnp.concatenate([out, jnp.ones(1)])

  def skip(state):
    return state, jnp.zeros(4, jnp.float32)

  if arch_warmup_steps <= 0:  # every step updates the architecture: no branch
    state, arch_out = update(state)
  else:
    state, arch_out = jax.lax.cond(state.step >= arch_warmup_steps, update, skip, state)
  with jax.named_scope("weight_half"):
    state, (loss, logits) = weight_update(
      state, train_batch, rng_weight, net=net, spec=spec, weight_tx=weight_tx
    )
  step_metrics = SearchMetrics.single_from_model_output(
    train_loss=loss,
    train_accuracy=losses.accuracy(logits, train_batch["label"]),
    arch_loss=arch_out[0],
    arch_accuracy=arch_out[1],
    zero_one_loss=arch_out[2],
    arch_updated=arch_out[3],
    weight_lr=lr,
  )
  return state.replace(step=state.step + 1), step_metrics


def create_search_state(params, batch_stats, arch_params, weight_tx, arch_tx) -> SearchState:
  return SearchState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    arch_params=arch_params,
    weight_opt_state=weight_tx.init(params),
    arch_opt_state=arch_tx.init(arch_params),
  )


def make_step_fns(
  *,
  net_train,
  net_eval,
  spec,
  weight_tx,
  arch_tx,
  lr_schedule,
  arch_warmup_steps,
  zero_one_weight,
  second_order,
  weight_decay,
  momentum,
  halves="separate",
  skip_dropout_schedule=None,
) -> tuple[Callable, Callable]:
  """The jitted search step (state donated) and evaluation step (`net_eval` with ψ's
  `ArchWeights` as its `net_inputs`)."""
  step = jax.jit(
    functools.partial(
      search_step,
      net=net_train,
      spec=spec,
      weight_tx=weight_tx,
      arch_tx=arch_tx,
      lr_schedule=lr_schedule,
      arch_warmup_steps=arch_warmup_steps,
      zero_one_weight=zero_one_weight,
      second_order=second_order,
      weight_decay=weight_decay,
      momentum=momentum,
      halves=halves,
      skip_dropout_schedule=skip_dropout_schedule,
    ),
    donate_argnums=(0,),
  )
  evaluate = jax.jit(functools.partial(evaluation.eval_step, net=net_eval))
  return step, evaluate
