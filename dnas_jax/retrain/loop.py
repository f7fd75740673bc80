"""`train_and_evaluate` for the retraining: a global genotype trained from scratch.

Config → genotype and dataset → `setup.create_train_setup` (network, optimizer, state,
steps) → state restored from the workdir's newest intact checkpoint when there is one
→ compiled steps → `training.loop.run_loop`, which checkpoints, evaluates on the test
split and logs → `final_metrics.json`. The data order, augmentation and step keys
depend only on (seed, step), so a resumed run ends with the parameters of an
uninterrupted one. Ctrl-C saves a checkpoint before stopping.

The evaluation is `training.evaluation.evaluate`, the function `experiments/evaluate.py`
(through `dnas_jax.api.evaluate_workdir`) calls too, on the same batches, so a restored
checkpoint reproduces the reported accuracy exactly.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from dnas_jax.data import input_pipeline
from dnas_jax.retrain import feeds
from dnas_jax.retrain import setup as setup_lib
from dnas_jax.retrain import steps
from dnas_jax.training import checkpoints
from dnas_jax.training import compilation
from dnas_jax.training import evaluation
from dnas_jax.training import loop as loop_lib
from dnas_jax.training import metric_writers
from dnas_jax.training import sharding
from dnas_jax.training import validation
from dnas_jax.training import workdir as workdir_lib

FINAL_METRICS = loop_lib.FINAL_METRICS


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  hooks: Sequence[Callable[[int], None]] = (),
  allow_config_changes: bool = False,
) -> dict:
  """Retrains (or resumes) `config.genotype` in `workdir`; returns the final state,
  genotype and metrics.

  `hooks` are called with the step count after every step. A resume with a config of
  another meaning is refused unless `allow_config_changes` (see
  `dnas_jax.training.workdir`); every way out waits for pending checkpoint writes.
  """
  validation.validate_train_config(config)
  mesh = loop_lib.create_run_mesh(config)
  geno = setup_lib.genotype_of(config)
  feed = feeds.create_feed(config)
  try:
    validation.check_batch_fits(config.batch_size, feed.num_train, "training images")
    with workdir_lib.RunDir(workdir, config.keep_checkpoints, allow_config_changes) as run:
      run.check_config(config.to_dict())
      return _retrain(config, run, geno, feed, mesh, hooks)
  finally:
    feed.close()


def _retrain(config, run: workdir_lib.RunDir, geno, feed, mesh, hooks) -> dict:
  steps_per_epoch = input_pipeline.steps_per_epoch(feed.num_train, config.batch_size)
  setup = setup_lib.create_train_setup(
    config, geno, feed.image_shape, feed.num_classes, steps_per_epoch, mesh, feed.normalization
  )
  state = setup.state
  logging.info(
    "network: %d parameters (%d with the auxiliary head), %d layers, C=%d",
    setup.num_params,
    setup.num_params_total,
    geno.num_layers,
    config.model.channels,
  )
  data_states: dict[int, dict | None] = {}  # global step → the input iterator's state
  restored = run.restore(checkpoints.abstract_like(state))
  if restored is not None:
    state = restored[0]
    data_states[int(state.step)] = restored[1].get(loop_lib.DATA_ITERATOR)
    logging.info("resumed from the checkpoint at step %d", int(state.step))

  meta = {
    "config": config.to_dict(),
    "image_shape": list(feed.image_shape),
    "num_classes": feed.num_classes,
    "genotype": json.loads(geno.to_json()),
    "dataset": feed.name,
    "source": feed.source,
    "steps_per_epoch": steps_per_epoch,
    "num_params": setup.num_params,
    "num_params_total": setup.num_params_total,
    "mean": list(feed.mean),
    "std": list(feed.std),
  }  # input normalisation (api)
  rng = sharding.replicate(jax.random.key(config.seed + 2), mesh)
  batch_spec = sharding.batch_sharding(mesh)
  (step_fn, eval_fn), _ = compilation.compile_all(
    [
      (
        f"retraining step (L={geno.num_layers}, C={config.model.channels}, batch "
        f"{config.batch_size})",
        setup.step_fn,
        (
          state,
          compilation.abstract_batch(
            config.batch_size, feed.image_shape, batch_spec, streamed=feed.streamed
          ),
          rng,
          jnp.float32(0.0),
        ),
      ),
      (
        "evaluation step",
        setup.eval_fn,
        (
          state.params,
          state.batch_stats,
          compilation.abstract_batch(
            config.eval_batch_size, feed.image_shape, batch_spec, mask=True, streamed=feed.streamed
          ),
          (),
        ),
      ),
    ],
    cache_key=meta,
  )

  rows = sharding.host_rows(mesh, config.batch_size)  # None on one process: all
  sharding.log_host_rows(rows, config.batch_size)

  def epoch_inputs(epoch: int, offset: int):
    drop_prob = jnp.float32(steps.drop_path_prob(config, epoch * steps_per_epoch, steps_per_epoch))
    first = epoch * steps_per_epoch + offset
    batches = feed.train_batches(
      config.batch_size, config.seed, epoch, offset, rows, data_states.get(first)
    )
    for i, (batch, data_state) in enumerate(batches):
      if data_state is not None:
        data_states[first + i + 1] = data_state
        data_states.pop(first + i - 2 * config.prefetch - 8, None)  # keep the recent ones
      yield sharding.shard_batch(batch, mesh, config.batch_size), rng, drop_prob

  def evaluate(state) -> dict[str, float]:
    eval_rows = sharding.host_rows(mesh, config.eval_batch_size)
    return evaluation.evaluate_batches(
      eval_fn,
      state.params,
      state.batch_stats,
      feed.eval_batches(config.eval_batch_size, eval_rows),
      config.eval_batch_size,
      mesh,
    )

  phase = loop_lib.Phase(
    name="train_step",
    step_fn=step_fn,
    epoch_inputs=epoch_inputs,
    evaluate=evaluate,
    meta=meta,
    data_state=data_states.get if isinstance(feed, feeds.StreamingFeed) else None,
  )
  lead = sharding.is_lead_process()  # writes the event files
  with metric_writers.MetricWriter(run.workdir, events=lead) as writer:
    writer.write_texts(0, {"genotype": geno.describe()})
    state, last_eval, step = loop_lib.run_loop(
      phase, state, run, writer, config, steps_per_epoch, hooks
    )
  final = {
    **last_eval,
    "step": step,
    "epochs": config.num_epochs,
    "num_params": setup.num_params,
    "num_params_total": setup.num_params_total,
  }
  loop_lib.write_final_metrics(run.workdir, final)
  logging.info(
    "retraining done: test accuracy %.4f, test error %.2f %% (%s)",
    final["test_accuracy"],
    100 * final["test_error"],
    os.path.join(run.workdir, FINAL_METRICS),
  )
  return {"state": state, "genotype": geno, **final}
