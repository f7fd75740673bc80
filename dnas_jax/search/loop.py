"""`train_and_evaluate` for the search: the loop with all the side effects.

Config → dataset and splits → `setup.create_search_setup` (supernet, ψ
parameterisation, optimizers, state, steps) → state restored from the workdir's newest
intact checkpoint when there is one → compiled steps → `training.loop.run_loop`, which
checkpoints, evaluates and logs; after every epoch this phase writes its artifacts
(`artifacts`: genotype.json, psi.npy, genotype.txt), and figures at the end. The data
order and the step keys depend only on (seed, step), so a resumed run ends exactly
where an uninterrupted one does. Ctrl-C saves a checkpoint before stopping.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from dnas_jax.data import datasets
from dnas_jax.data import input_pipeline
from dnas_jax.models import program as program_lib
from dnas_jax.search import artifacts
from dnas_jax.search import setup as setup_lib
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.training import checkpoints
from dnas_jax.training import compilation
from dnas_jax.training import evaluation
from dnas_jax.training import loop as loop_lib
from dnas_jax.training import metric_writers
from dnas_jax.training import monitor
from dnas_jax.training import sharding
from dnas_jax.training import validation
from dnas_jax.training import workdir as workdir_lib

NonFiniteLossError = monitor.NonFiniteLossError


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  hooks: Sequence[Callable[[int], None]] = (),
  allow_config_changes: bool = False,
) -> dict:
  """Runs (or resumes) the search of `config` in `workdir`; returns the final state,
  genotype, ψ and validation metrics.

  `hooks` are called with the step count after every step. A resume with a config of
  another meaning is refused unless `allow_config_changes` (see
  `dnas_jax.training.workdir`); every way out waits for pending checkpoint writes.
  """
  validation.validate_search_config(config)
  mesh = loop_lib.create_run_mesh(config)

  ds = datasets.load_from_config(config.data)
  validation.check_image_shape(config, ds.image_shape, search=True)
  logging.info(
    "dataset %s from %s: %d training images of shape %s, %d classes",
    ds.name,
    ds.source,
    len(ds.train_labels),
    ds.image_shape,
    ds.num_classes,
  )
  weight_split, arch_split = input_pipeline.search_splits(ds, config.data.train_portion)
  validation.check_batch_fits(
    config.batch_size, min(len(weight_split), len(arch_split)), "images of the smaller search split"
  )
  steps_per_epoch = min(
    input_pipeline.steps_per_epoch(len(weight_split), config.batch_size),
    input_pipeline.steps_per_epoch(len(arch_split), config.batch_size),
  )
  with workdir_lib.RunDir(workdir, config.keep_checkpoints, allow_config_changes) as run:
    # "auto" program fields: as stored with the checkpoints when resuming (another
    # backend's choice may have another parameter tree), else this backend's.
    stored = (run.stored_meta or {}).get("config", {}).get("program")
    config = program_lib.with_resolved_program(config, stored=stored)
    run.check_config(config.to_dict())
    return _search(config, run, ds, weight_split, arch_split, steps_per_epoch, mesh, hooks)


def _search(
  config, run: workdir_lib.RunDir, ds, weight_split, arch_split, steps_per_epoch, mesh, hooks
) -> dict:
  logging.info("program: %s", ", ".join(f"{k}={v}" for k, v in config.program.items()))
  setup = setup_lib.create_search_setup(
    config, ds.image_shape, ds.num_classes, steps_per_epoch, mesh
  )
  state, spec, primitives = setup.state, setup.spec, setup.primitives
  logging.info(
    "supernet: %d weight parameters, %d architecture parameters (%s)",
    sum(x.size for x in jax.tree.leaves(state.params)),
    spec.num_params(),
    spec.kind,
  )
  restored = run.restore(checkpoints.abstract_like(state))
  if restored is not None:
    state = restored[0]
    logging.info("resumed from the checkpoint at step %d", int(state.step))

  meta = {
    "config": config.to_dict(),
    "image_shape": list(ds.image_shape),
    "num_classes": ds.num_classes,
    "primitives": list(primitives),
    "dataset": ds.name,
    "source": ds.source,
    "steps_per_epoch": steps_per_epoch,
  }
  arch_weights_fn = jax.jit(spec.arch_weights)
  rng = sharding.replicate(jax.random.key(config.seed + 2), mesh)
  batch_spec = sharding.batch_sharding(mesh)
  train_batch = compilation.abstract_batch(config.batch_size, ds.image_shape, batch_spec)
  eval_batch = compilation.abstract_batch(
    config.eval_batch_size, ds.image_shape, batch_spec, mask=True
  )
  (step_fn, eval_fn), _ = compilation.compile_all(
    [
      (
        f"search step ({spec.kind}, L={config.model.num_layers}, batch {config.batch_size})",
        setup.step_fn,
        (state, train_batch, train_batch, rng),
      ),
      (
        "evaluation step",
        setup.eval_fn,
        (state.params, state.batch_stats, eval_batch, arch_weights_fn(state.arch_params)),
      ),
    ],
    cache_key=meta,
  )

  aug = input_pipeline.AugmentConfig(crop_padding=config.data.crop_padding, flip=config.data.flip)
  rows = sharding.host_rows(mesh, config.batch_size)  # None on one process: all
  sharding.log_host_rows(rows, config.batch_size)

  def put(batch):
    return sharding.shard_batch(batch, mesh, config.batch_size)

  def epoch_inputs(epoch: int, offset: int):
    batches = input_pipeline.search_batches(
      weight_split,
      arch_split,
      config.batch_size,
      config.seed,
      epoch,
      aug,
      ds.mean,
      ds.std,
      start_step=offset,
      arch_sampling=config.data.arch_sampling,
      rows=rows,
    )
    return ((put(t), put(v), rng) for t, v in batches)

  def evaluate(state) -> dict[str, float]:
    return evaluation.evaluate(
      eval_fn,
      state.params,
      state.batch_stats,
      arch_split,
      config.eval_batch_size,
      ds.mean,
      ds.std,
      mesh,
      net_inputs=arch_weights_fn(state.arch_params),
      prefix="val",
    )

  lead = sharding.is_lead_process()  # writes artifacts and metrics; all checkpoint
  writer = metric_writers.MetricWriter(run.workdir, events=lead)
  found = {}

  derivation = genotype_lib.Derivation.from_config(config.derive)

  def at_epoch_end(state, step: int):
    weights = arch_weights_fn(state.arch_params)  # on every process: SPMD
    psi, edge = np.asarray(weights.psi), np.asarray(weights.edge)
    epoch = step // steps_per_epoch
    meta = {
      "step": step,
      "epoch": epoch,
      "num_epochs": config.num_epochs,
      "dataset": ds.name,
      "arch_kind": spec.kind,
      "derive": dataclasses.asdict(derivation),
    }
    geno = (
      artifacts.write_artifacts(run.workdir, psi, primitives, meta, derivation, edge)
      if lead
      else genotype_lib.derive_genotype(psi, primitives, derivation=derivation, edge_weights=edge)
    )
    writer.write_scalars(step, artifacts.psi_summary(psi, primitives, geno), console=False)
    writer.write_texts(step, {"genotype": geno.describe()})
    logging.info("epoch %d genotype:\n%s", epoch, geno.describe())
    logging.info("epoch %d %s", epoch, artifacts.collapse_line(geno))
    found.update(genotype=geno, psi=psi)

  phase = loop_lib.Phase(
    name="search_step",
    step_fn=step_fn,
    epoch_inputs=epoch_inputs,
    evaluate=evaluate,
    at_epoch_end=at_epoch_end,
    meta=meta,
  )
  with writer:  # closed on every way out
    state, last_eval, step = loop_lib.run_loop(
      phase, state, run, writer, config, steps_per_epoch, hooks
    )
    if lead:
      artifacts.write_figures(
        run.workdir, found["psi"], primitives, found["genotype"], writer, step
      )
    loop_lib.write_final_metrics(run.workdir, last_eval)
  logging.info(
    "search done: %s; genotype in %s", last_eval, os.path.join(run.workdir, "genotype.json")
  )
  return {"state": state, **found, **last_eval}
