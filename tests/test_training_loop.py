"""The loop skeleton both phases run (`dnas_jax.training.loop.run_loop`), on a phase
whose step adds its input to a counter: when it evaluates, checkpoints and writes
artifacts, where a resumed run starts, and how it stops on an interrupt or a NaN."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from clu import metrics

from dnas_jax.training import checkpoints
from dnas_jax.training import loop as loop_lib
from dnas_jax.training import metric_writers
from dnas_jax.training import monitor
from dnas_jax.training import workdir as workdir_lib

STEPS_PER_EPOCH = 3


@flax.struct.dataclass
class CounterState:
  step: jax.Array
  total: Any


@flax.struct.dataclass
class CounterMetrics(metrics.Collection):
  train_loss: metrics.Average.from_output("train_loss")


@jax.jit
def add_step(state, x):
  total = state.total + x
  return (
    state.replace(step=state.step + 1, total=total),
    CounterMetrics.single_from_model_output(train_loss=total),
  )


def _config(num_epochs=2):
  return ml_collections.ConfigDict(
    {
      "num_epochs": num_epochs,
      "eval_every_epochs": 1,
      "checkpoint_every_steps": 100,
      "log_every_steps": 100,
      "prefetch": 0,
      "profile": {"first_step": 0, "num_steps": 0},
    }
  )


class Recorder:
  """A phase of the counter, recording what the skeleton asked of it."""

  def __init__(self, inputs=None):
    self.inputs = inputs or (lambda step: 1.0)
    self.epochs_asked, self.evaluated, self.artifacts = [], [], []

  def epoch_inputs(self, epoch, offset):
    self.epochs_asked.append((epoch, offset))
    first = epoch * STEPS_PER_EPOCH + offset
    return ((jnp.float32(self.inputs(s)),) for s in range(first, (epoch + 1) * STEPS_PER_EPOCH))

  def evaluate(self, state):
    self.evaluated.append(int(state.step))
    return {"test_total": float(state.total)}

  def at_epoch_end(self, state, step):
    self.artifacts.append((step, float(state.total)))

  def phase(self):
    return loop_lib.Phase(
      name="counter_step",
      step_fn=add_step,
      epoch_inputs=self.epoch_inputs,
      evaluate=self.evaluate,
      meta={"what": "counter"},
      at_epoch_end=self.at_epoch_end,
    )


def _run(workdir, recorder, hooks=(), num_epochs=2):
  state = CounterState(step=jnp.zeros((), jnp.int32), total=jnp.zeros((), jnp.float32))
  with workdir_lib.RunDir(str(workdir), 3) as run:
    restored = run.restore(checkpoints.abstract_like(state))
    if restored is not None:
      state = restored[0]
    writer = metric_writers.MetricWriter(str(workdir), events=False)
    try:
      return loop_lib.run_loop(
        recorder.phase(), state, run, writer, _config(num_epochs), STEPS_PER_EPOCH, hooks
      )
    finally:
      writer.close()


def _saved_steps(workdir):
  return sorted(checkpoints.create_manager(str(workdir / "checkpoints")).all_steps())


def test_a_run_evaluates_checkpoints_and_writes_artifacts_at_epoch_ends(tmp_path):
  rec = Recorder()
  state, last_eval, step = _run(tmp_path, rec)
  assert (step, int(state.step), float(state.total)) == (6, 6, 6.0)
  assert last_eval == {"test_total": 6.0}
  assert rec.epochs_asked == [(0, 0), (1, 0)]
  assert rec.evaluated == [3, 6]
  assert rec.artifacts == [(3, 3.0), (6, 6.0)]  # once per epoch, none again at the end
  assert _saved_steps(tmp_path) == [3, 6]


def test_an_interrupted_run_saves_and_resumes_mid_epoch(tmp_path):
  def stop_at_4(step):
    if step == 4:
      raise KeyboardInterrupt

  first = Recorder()
  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path, first, hooks=[stop_at_4])
  assert _saved_steps(tmp_path) == [3, 4]
  assert first.artifacts == [(3, 3.0)]
  second = Recorder()
  state, _, step = _run(tmp_path, second)
  assert second.epochs_asked == [(1, 1)]  # the rest of epoch 1, from its second step
  assert (step, float(state.total)) == (6, 6.0)
  assert second.artifacts == [(6, 6.0)]


def test_a_finished_run_resumed_only_evaluates_and_writes_its_artifacts(tmp_path):
  _run(tmp_path, Recorder())
  again = Recorder()
  _, last_eval, step = _run(tmp_path, again)
  assert (step, again.epochs_asked, again.evaluated) == (6, [], [6])
  assert again.artifacts == [(6, 6.0)] and last_eval == {"test_total": 6.0}


def test_a_nan_loss_names_the_step_and_the_kept_checkpoint(tmp_path):
  rec = Recorder(inputs=lambda s: np.nan if s == 4 else 1.0)  # the 5th step
  with pytest.raises(monitor.NonFiniteLossError) as e:
    _run(tmp_path, rec)
  assert "not finite (nan) at step 5" in str(e.value)
  assert "the last finished checkpoint, step 3, is kept" in str(e.value)
  assert _saved_steps(tmp_path) == [3]


def test_metrics_merged_on_the_host_are_the_masked_means_in_numpy():
  """`monitor.merge_on_host`, used by the monitor and the evaluation: the merge of the
  steps' clu metrics, computed in NumPy from one fetch, gives the masked means over all
  batches (written out here), and leaves nothing on the devices."""
  from dnas_jax.training import evaluation  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  losses = [rng.normal(size=8).astype(np.float32) for _ in range(3)]
  correct = [rng.integers(0, 2, 8).astype(np.float32) for _ in range(3)]
  masks = [np.ones(8, bool), np.ones(8, bool), np.arange(8) < 5]  # a padded last batch
  steps = [
    jax.jit(
      lambda l, c, m: evaluation.EvalMetrics.single_from_model_output(loss=l, accuracy=c, mask=m)
    )(l, c, m)
    for l, c, m in zip(losses, correct, masks)
  ]
  merged = monitor.merge_on_host(steps)
  assert all(isinstance(x, (np.ndarray, np.generic)) for x in jax.tree.leaves(merged))
  out = merged.compute()
  mask = np.concatenate(masks)
  np.testing.assert_allclose(out["loss"], np.concatenate(losses)[mask].mean(), rtol=1e-6)
  np.testing.assert_allclose(out["accuracy"], np.concatenate(correct)[mask].mean(), rtol=1e-6)
