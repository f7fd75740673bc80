"""The loop both phases run, as flax's `examples/imagenet/train.py` shapes it: a phase
(`dnas_jax.search.loop`, `dnas_jax.retrain.loop`) builds its state and compiled step,
then hands `run_loop` a `Phase` saying what differs between them; the skeleton does
the rest the same way for both:

    for each step from the restored one to num_epochs × steps_per_epoch:
      state, metrics = step_fn(state, *inputs)     # inputs: the phase's, per step
      progress and metrics (`monitor.LoopMonitor`), hooks, profiling
      at an epoch end, every `eval_every_epochs`: evaluate → scalars
      at an epoch end or every `checkpoint_every_steps`: NaN check, checkpoint
      at an epoch end: the phase's artifacts (`at_epoch_end`), after the checkpoint
      preemption check (several processes)
    Ctrl-C / SIGTERM / preemption: a checkpoint, then the interrupt goes on
    a NaN loss or state: the error names the checkpoint that is kept

Checkpoints hold the state and the phase's meta only; what a phase writes for people
(a genotype, ψ, figures) is its `at_epoch_end`, never part of a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Sequence

import jax
import ml_collections
from absl import logging

from dnas_jax import files
from dnas_jax.data import input_pipeline
from dnas_jax.training import checkpoints
from dnas_jax.training import metric_writers
from dnas_jax.training import monitor as monitor_lib
from dnas_jax.training import sharding
from dnas_jax.training import validation
from dnas_jax.training import workdir as workdir_lib


FINAL_METRICS = "final_metrics.json"
DATA_ITERATOR = "data_iterator"  # the checkpoint meta's key of the input iterator state


def write_final_metrics(workdir: str, metrics: dict) -> None:
  """A finished run's metrics as WORKDIR/final_metrics.json (the lead process only;
  written atomically)."""
  if sharding.is_lead_process():
    files.atomic_write(os.path.join(workdir, FINAL_METRICS), json.dumps(metrics, indent=1))


@dataclasses.dataclass
class Phase:
  """What differs between the search and the retraining loops.

  name: the step's name in profiles ("search_step", "train_step").
  step_fn: the compiled step, (state, *inputs) → (state, clu metrics with `train_loss`).
  epoch_inputs: (epoch, first step within it) → the per-step `inputs` of that epoch,
    already placed on the devices (the data order depends on (seed, epoch) only).
  evaluate: state → scalars (e.g. {"test_accuracy": ...}).
  meta: saved with every checkpoint (what reading the run back needs).
  at_epoch_end: (state, step) → None, after each epoch's checkpoint and once at the
    end: the phase's artifacts.
  data_state: step → the input iterator's state after that step's batch (JSON), saved
    in the checkpoint's meta as `data_iterator` (the streaming pipeline's; None: the
    data order follows from (seed, step) alone).
  """

  name: str
  step_fn: Callable
  epoch_inputs: Callable[[int, int], Iterable[tuple]]
  evaluate: Callable[[Any], dict]
  meta: dict
  at_epoch_end: Callable[[Any, int], None] | None = None
  data_state: Callable[[int], dict | None] | None = None

  def meta_at(self, step: int) -> dict:
    """The meta saved with checkpoint `step`."""
    if self.data_state is None:
      return self.meta
    return {**self.meta, DATA_ITERATOR: self.data_state(step)}


def create_run_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The devices of a run: `jax.distributed` first when `config.distributed`, then
  the 1-D mesh over every device, the batch sizes checked against its size."""
  sharding.maybe_initialize_distributed(config.distributed)
  mesh = sharding.create_mesh()
  validation.check_devices(config, mesh.devices.size)
  return mesh


def run_loop(
  phase: Phase,
  state: Any,
  run: workdir_lib.RunDir,
  writer: metric_writers.MetricWriter,
  config: ml_collections.ConfigDict,
  steps_per_epoch: int,
  hooks: Sequence[Callable[[int], None]] = (),
) -> tuple[Any, dict, int]:
  """Runs `phase` from `state` to `config.num_epochs` epochs; returns (state, the last
  evaluation's scalars, step). Uses the config's num_epochs, eval_every_epochs,
  checkpoint_every_steps, log_every_steps, prefetch and profile."""
  total_steps = steps_per_epoch * config.num_epochs
  monitor = monitor_lib.LoopMonitor(
    writer,
    total_steps=total_steps,
    steps_per_epoch=steps_per_epoch,
    num_epochs=config.num_epochs,
    log_every=config.log_every_steps,
    hooks=hooks,
  )
  profiler = monitor_lib.StepProfiler(
    run.workdir, config.profile.first_step, config.profile.num_steps
  )
  step = int(state.step)
  last_eval: dict = {}
  artifacts_step = None

  def epoch_end(state, step):
    nonlocal artifacts_step
    if phase.at_epoch_end is not None:
      phase.at_epoch_end(state, step)
    artifacts_step = step

  try:
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      inputs = input_pipeline.prefetch(phase.epoch_inputs(epoch, offset), config.prefetch)
      for args in inputs:
        profiler.before_step(step)
        with jax.profiler.StepTraceAnnotation(phase.name, step_num=step):
          state, metrics = phase.step_fn(state, *args)
        step += 1
        profiler.after_step(step, state)
        monitor.record(step, metrics, metrics.train_loss.total)
        epoch_done = step % steps_per_epoch == 0
        if epoch_done and (
          (step // steps_per_epoch) % config.eval_every_epochs == 0 or step == total_steps
        ):
          last_eval = phase.evaluate(state)
          writer.write_scalars(step, last_eval)
        if epoch_done or step % config.checkpoint_every_steps == 0:
          monitor.check_finite()
          run.save(step, state, phase.meta_at(step))
          if epoch_done:
            epoch_end(state, step)
        run.check_preemption(step)
    monitor.check_finite()
    run.save(step, state, phase.meta_at(step))
    if artifacts_step != step:
      epoch_end(state, step)
  except KeyboardInterrupt:
    logging.warning("interrupted at step %d: saving a checkpoint", step)
    run.save(step, state, phase.meta_at(step))
    raise
  except (monitor_lib.NonFiniteLossError, checkpoints.NonFiniteStateError) as e:
    raise type(e)(f"{e}; {run.kept_checkpoint()}") from None
  finally:
    profiler.close()
  run.wait()
  if not last_eval:
    last_eval = phase.evaluate(state)
    writer.write_scalars(step, last_eval)
  return state, last_eval, step
