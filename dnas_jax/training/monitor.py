"""What the search and retraining loops share around their step: metrics accumulated
between log lines, progress (steps/s, time left), hooks, and the non-finite loss check.

Losses stay on the device until a log line or a checkpoint needs them, so the check
costs no synchronisation per step, yet names the first step whose loss was not finite.
"""

import time
from typing import Callable, Sequence

from absl import logging
import jax
import numpy as np

from dnas_jax.training import metric_writers


def merge_on_host(collected: Sequence):
  """The merge of clu metric collections (the steps' outputs, on the devices) computed
  in NumPy after one `jax.device_get` of them all. Merging the device arrays instead
  runs a small program per merge, and under several processes each is a multi-process
  program that every process must reach in the same order."""
  host = jax.device_get(list(collected))
  merged = host[0]
  for m in host[1:]:
    merged = merged.merge(m)
  return merged


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the message names the step."""


def format_seconds(s: float) -> str:
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LoopMonitor:
  """Call `record` after every step; it logs every `log_every` steps and at epoch ends."""

  def __init__(
    self,
    writer: metric_writers.MetricWriter,
    *,
    total_steps: int,
    steps_per_epoch: int,
    num_epochs: int,
    log_every: int,
    hooks: Sequence[Callable[[int], None]] = (),
  ):
    self._writer, self._hooks = writer, tuple(hooks)
    self._total, self._per_epoch, self._epochs = total_steps, steps_per_epoch, num_epochs
    self._log_every = log_every
    self._pending: list = []
    self._metrics: list = []  # the steps' metrics since the last log, on the devices
    self._window_start, self._window_steps = time.time(), 0

  def record(self, step: int, step_metrics, loss) -> None:
    """After step `step` (1-based count of steps done) with its clu metrics and loss."""
    self._window_steps += 1
    self._pending.append((step, loss))
    self._metrics.append(step_metrics)
    for hook in self._hooks:
      hook(step)
    if step % self._log_every == 0 or step % self._per_epoch == 0:
      self._log(step)

  def check_finite(self) -> None:
    """Raises NonFiniteLossError naming the first step with a NaN/inf loss."""
    for step, loss in self._pending:
      if not np.isfinite(float(loss)):
        raise NonFiniteLossError(
          f"the training loss is not finite ({float(loss)}) at step {step}: lower "
          "the learning rates in config.optim or check the data"
        )
    self._pending = []

  def _log(self, step: int) -> None:
    self.check_finite()
    rate = self._window_steps / max(time.time() - self._window_start, 1e-9)
    scalars = {k: float(v) for k, v in merge_on_host(self._metrics).compute().items()}
    scalars.update(steps_per_sec=rate, epoch=step / self._per_epoch)
    self._writer.write_scalars(step, scalars)
    logging.info(
      "step %d/%d (epoch %d/%d): %.2f steps/s, %s left",
      step,
      self._total,
      step // self._per_epoch,
      self._epochs,
      rate,
      format_seconds((self._total - step) / max(rate, 1e-9)),
    )
    self._metrics, self._window_start, self._window_steps = [], time.time(), 0


class StepProfiler:
  """A `jax.profiler` trace of the steps [first_step, first_step + num_steps) into
  `logdir` (`plugins/profile/<run>/`: TensorBoard's profile tab reads the .xplane.pb,
  Perfetto the .trace.json.gz); num_steps 0: none. Call `before_step(i)` with the
  number of steps done before a step, `after_step(i, outputs)` after it."""

  def __init__(self, logdir: str, first_step: int, num_steps: int):
    self._logdir, self._first, self._last = logdir, first_step, first_step + num_steps
    self._enabled, self._active = num_steps > 0, False

  def before_step(self, done: int) -> None:
    if self._enabled and done == self._first and not self._active:
      jax.profiler.start_trace(self._logdir, create_perfetto_trace=True)
      self._active = True

  def after_step(self, done: int, outputs) -> None:
    if self._active and done >= self._last:
      jax.block_until_ready(outputs)
      self.close()
      logging.info(
        "profile of steps %d-%d written to %s/plugins/profile", self._first + 1, done, self._logdir
      )

  def close(self) -> None:
    if self._active:
      jax.profiler.stop_trace()
      self._active = False
