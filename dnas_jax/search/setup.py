"""`create_search_setup`: from a config to the supernet, the ψ parameterisation, the
optimizers, the initial state and the jitted steps of a search; used by the search
loop, by reading a search back (`dnas_jax.api`) and by the benchmarks."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from dnas_jax.models import arch as arch_lib
from dnas_jax.models import init as init_lib
from dnas_jax.models import program as program_lib
from dnas_jax.models import skip_dropout
from dnas_jax.models import supernet
from dnas_jax.search import steps
from dnas_jax.space import ops
from dnas_jax.space import search_space
from dnas_jax.training import optimizers
from dnas_jax.training import sharding
from dnas_jax.training import validation


def create_supernet(
  config: ml_collections.ConfigDict,
  num_classes: int,
  train: bool,
  primitives: Sequence[str],
  backend: str | None = None,
) -> supernet.SearchNetwork:
  m = config.model
  program = program_lib.resolve_program(config, backend)
  return supernet.SearchNetwork(
    num_classes=num_classes,
    num_layers=m.num_layers,
    channels=m.channels,
    primitives=tuple(primitives),
    partial_k=m.partial_k,
    skip_dropout=m.skip_dropout,
    train=train,
    dtype=jnp.dtype(m.dtype),
    formulation=ops.Formulation(program["depthwise"], program["pointwise"]),
    remat=program["remat"] == "convs",
    scan_stages=program["scan"] == "stages",
    edge_layout=program["edges"],
  )


@dataclasses.dataclass
class SearchSetup:
  """What a search needs besides data: the initial (replicated) state and the steps.

  step_fn: jitted `steps.search_step`, (state, train_batch, val_batch, rng).
  eval_fn: jitted `evaluation.eval_step`, (params, batch_stats, batch, ArchWeights).
  """

  state: steps.SearchState
  spec: arch_lib.ArchSpec
  primitives: tuple[str, ...]
  net_train: supernet.SearchNetwork
  net_eval: supernet.SearchNetwork
  step_fn: Callable
  eval_fn: Callable


def create_search_setup(
  config: ml_collections.ConfigDict,
  image_shape,
  num_classes: int,
  steps_per_epoch: int,
  mesh,
  backend: str | None = None,
) -> SearchSetup:
  """Supernet, ψ parameterisation, optimizers, initial state and jitted steps, written
  for `backend` (default: JAX's default backend; see `program.resolve_program`)."""
  primitives = validation.primitives_of(config.model.primitives)
  o = config.optim
  spec = arch_lib.create_arch_spec(
    config.arch, config.model.num_layers, len(primitives), o.zero_one_target
  )
  net_train = create_supernet(config, num_classes, True, primitives, backend)
  net_eval = create_supernet(config, num_classes, False, primitives, backend)
  program = program_lib.resolve_program(config, backend)
  weight_tx, lr_schedule = optimizers.weight_tx_of(
    o, config.num_epochs, steps_per_epoch, program["optimizer"]
  )
  arch_tx = optimizers.create_arch_tx(o.arch_lr, o.arch_b1, o.arch_b2, o.arch_weight_decay)
  example = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  psi0 = jnp.zeros((spec.num_layers, search_space.NUM_CONNECTIONS, spec.num_ops))
  variables = init_lib.init_from_shapes(net_train, config.seed, example, psi0)
  arch_params = spec.init(jax.random.key(config.seed + 1))
  # One small program instead of an eager op (and its compilation) per optimiser leaf.
  state = jax.jit(
    functools.partial(steps.create_search_state, weight_tx=weight_tx, arch_tx=arch_tx)
  )(variables["params"], variables["batch_stats"], arch_params)
  step_fn, eval_fn = steps.make_step_fns(
    net_train=net_train,
    net_eval=net_eval,
    spec=spec,
    weight_tx=weight_tx,
    arch_tx=arch_tx,
    lr_schedule=lr_schedule,
    arch_warmup_steps=o.arch_warmup_epochs * steps_per_epoch,
    zero_one_weight=o.zero_one_weight,
    second_order=o.second_order,
    weight_decay=o.weight_decay,
    momentum=o.momentum,
    halves=program["halves"],
    skip_dropout_schedule=skip_dropout.step_schedule(
      config.model.skip_dropout_schedule,
      config.model.skip_dropout,
      config.num_epochs,
      o.arch_warmup_epochs,
      steps_per_epoch,
    ),
  )
  return SearchSetup(
    sharding.replicate(state, mesh), spec, tuple(primitives), net_train, net_eval, step_fn, eval_fn
  )
