"""From a retraining config to its network and state: the genotype (a published name
or a `genotype.json`, mapped to the network's depth with `genotype.map_to_depth`), the
discrete network (`network.create_network`), the optimizer, the initial state and the
jitted steps (`create_train_setup`); also the parameter and multiply-add counts of
`--dry_run`, and the restore target of a retraining run (`abstract_state`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from dnas_jax.data import datasets
from dnas_jax.models import init as init_lib
from dnas_jax.models import network
from dnas_jax.retrain import steps
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import known_genotypes
from dnas_jax.training import optimizers
from dnas_jax.training import sharding
from dnas_jax.training import validation


def resolve_genotype(spec: str, num_layers: int) -> genotype_lib.GlobalGenotype:
  """The genotype named by `config.genotype` for a `num_layers`-layer network: a known
  name stacked over the layers, or a genotype.json mapped to that depth."""
  if spec in known_genotypes.KNOWN_GENOTYPES:
    return known_genotypes.get_genotype(spec, num_layers)
  if not os.path.isfile(spec):
    raise validation.ConfigError(
      f"config.genotype={spec!r} is neither a known genotype "
      f"{sorted(known_genotypes.KNOWN_GENOTYPES)} nor an existing genotype.json file "
      "(run the search, or experiments.derive, first)"
    )
  try:
    geno = genotype_lib.GlobalGenotype.load(spec)
  except (ValueError, KeyError, TypeError) as e:
    raise validation.ConfigError(
      f"config.genotype={spec!r} is not a valid genotype.json: {e}"
    ) from None
  unfinished = unfinished_search(spec)
  if unfinished:
    logging.warning("config.genotype=%s %s", spec, unfinished)
  try:
    if geno.num_layers != num_layers:
      logging.info(
        "mapping the %d-layer genotype %s to %d layers", geno.num_layers, spec, num_layers
      )
      geno = genotype_lib.map_to_depth(geno, num_layers)
    network.check_genotype(geno)
  except ValueError as e:
    raise validation.ConfigError(f"config.genotype={spec!r}: {e}") from None
  return geno


def unfinished_search(path: str) -> str:
  """'' unless the genotype.json at `path` records a search epoch below the search's
  configured epochs (a search rewrites it after every epoch); then the line saying so."""
  try:
    meta = genotype_lib.read_meta(path)
  except (OSError, ValueError):
    return ""
  epoch, num_epochs = meta.get("epoch"), meta.get("num_epochs")
  if not (isinstance(epoch, int) and isinstance(num_epochs, int) and epoch < num_epochs):
    return ""
  return (
    f"comes from a search that had run {epoch} of its {num_epochs} configured "
    "epochs when it was written: the architecture may not be the final one"
  )


def genotype_of(config: ml_collections.ConfigDict) -> genotype_lib.GlobalGenotype:
  """`config.genotype` for the config's depth (`resolve_genotype`), its operations
  checked against the contract of `ops.register_op` with the network's channels and
  affine batch norms (from shapes: nothing is compiled)."""
  geno = resolve_genotype(config.genotype, config.model.num_layers)
  used = sorted({op for cell in geno.cells for edges in cell.nodes for op, _ in edges})
  validation.check_operations(
    used,
    config.model.channels,
    affine=True,
    dtype=config.model.dtype,
    field=f"config.genotype={config.genotype!r}",
  )
  return geno


def create_network(
  config: ml_collections.ConfigDict,
  geno: genotype_lib.GlobalGenotype,
  num_classes: int,
  train: bool,
) -> network.NetworkCIFAR:
  m = config.model
  return network.create_network(
    geno, num_classes, m.channels, m.auxiliary, m.network, train=train, dtype=jnp.dtype(m.dtype)
  )


def count_parameters(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(parameters excluding the auxiliary head, all parameters, multiply-adds of one
  image) of the config's network at the dataset's image size, from shapes only: no data
  is read and nothing is compiled. The multiply-adds are those of the evaluation network
  (no auxiliary head), convolutions and linear layers as the DARTS and PC-DARTS papers
  count them (`network.multiply_adds`)."""
  validation.validate_train_config(config)
  spec = validation.dataset_spec(config)  # the registry's image shape and classes
  geno = genotype_of(config)
  net = create_network(config, geno, spec.num_classes, True)
  shapes = network.variable_shapes(net, spec.image_shape)
  macs = network.multiply_adds(net, shapes, spec.image_shape)
  return (
    network.count_params(shapes),
    network.count_params(shapes, exclude_auxiliary=False),
    macs,
  )


def parameter_count_lines(config: ml_collections.ConfigDict) -> list[str]:
  """The three lines `experiments.train --dry_run` prints."""
  excluding, total, macs = count_parameters(config)
  return [
    f"params_excluding_auxiliary: {excluding}",
    f"params_total: {total}",
    f"multiply_adds: {macs}",
  ]


def create_tx(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  return optimizers.weight_tx_of(config.optim, config.num_epochs, steps_per_epoch)


def abstract_state(net: network.NetworkCIFAR, image_shape, tx, mesh) -> steps.TrainState:
  """The state's shapes and (replicated) shardings, a restore target built without
  running or compiling anything."""
  shapes = network.variable_shapes(net, tuple(image_shape))
  state = jax.eval_shape(
    lambda v: steps.create_train_state(v["params"], v["batch_stats"], tx), shapes
  )
  rep = sharding.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), state)


def load_data(config: ml_collections.ConfigDict) -> datasets.Dataset:
  """The dataset of config.data (the registry warns when it differs from its entry),
  its images checked against the network."""
  ds = datasets.load_from_config(config.data)
  validation.check_image_shape(config, ds.image_shape, search=False)
  return ds


@dataclasses.dataclass
class TrainSetup:
  """What a retraining needs besides data: the initial (replicated) state and the steps.

  step_fn: jitted `steps.train_step`, (state, batch, rng, drop_prob).
  eval_fn: jitted `evaluation.eval_step`, (params, batch_stats, batch, ()).
  """

  state: steps.TrainState
  net_train: network.NetworkCIFAR
  net_eval: network.NetworkCIFAR
  step_fn: Callable
  eval_fn: Callable
  num_params: int
  num_params_total: int


def create_train_setup(
  config: ml_collections.ConfigDict,
  geno: genotype_lib.GlobalGenotype,
  image_shape,
  num_classes: int,
  steps_per_epoch: int,
  mesh,
  normalization=None,
) -> TrainSetup:
  """Network, optimizer, initial state and jitted steps of `geno`'s retraining;
  `normalization` (mean, std) when the batches are streamed (normalised in the step)."""
  net_train = create_network(config, geno, num_classes, True)
  net_eval = create_network(config, geno, num_classes, False)
  tx, lr_schedule = create_tx(config, steps_per_epoch)
  example = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = init_lib.init_from_shapes(net_train, config.seed, example)
  state = steps.create_train_state(variables["params"], variables["batch_stats"], tx)
  step_fn, eval_fn = steps.make_step_fns(
    net_train=net_train,
    net_eval=net_eval,
    tx=tx,
    lr_schedule=lr_schedule,
    auxiliary_weight=config.optim.auxiliary_weight,
    label_smoothing=config.optim.get("label_smoothing", 0.0),
    normalization=normalization,
  )
  return TrainSetup(
    sharding.replicate(state, mesh),
    net_train,
    net_eval,
    step_fn,
    eval_fn,
    network.count_params(variables),
    network.count_params(variables, exclude_auxiliary=False),
  )
