"""What the search and retraining loops share around their step: metrics accumulated
between log lines, progress (steps/s, time left), hooks, and the non-finite loss check.

Losses stay on the device until a log line or a checkpoint needs them, so the check
costs no synchronisation per step, yet names the first step whose loss was not finite.
"""

import time
from typing import Callable, Sequence

from absl import logging
import numpy as np

from dnas_jax import metric_writers


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the message names the step."""


def format_seconds(s: float) -> str:
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LoopMonitor:
  """Call `record` after every step; it logs every `log_every` steps and at epoch ends."""

  def __init__(self, writer: metric_writers.MetricWriter, *, total_steps: int,
               steps_per_epoch: int, num_epochs: int, log_every: int,
               hooks: Sequence[Callable[[int], None]] = ()):
    self._writer, self._hooks = writer, tuple(hooks)
    self._total, self._per_epoch, self._epochs = total_steps, steps_per_epoch, num_epochs
    self._log_every = log_every
    self._pending: list = []
    self._metrics = None
    self._window_start, self._window_steps = time.time(), 0

  def record(self, step: int, step_metrics, loss) -> None:
    """After step `step` (1-based count of steps done) with its clu metrics and loss."""
    self._window_steps += 1
    self._pending.append((step, loss))
    self._metrics = step_metrics if self._metrics is None else self._metrics.merge(
        step_metrics)
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
            "the learning rates in config.optim or check the data")
    self._pending = []

  def _log(self, step: int) -> None:
    self.check_finite()
    rate = self._window_steps / max(time.time() - self._window_start, 1e-9)
    scalars = {k: float(v) for k, v in self._metrics.compute().items()}
    scalars.update(steps_per_sec=rate, epoch=step / self._per_epoch)
    self._writer.write_scalars(step, scalars)
    logging.info("step %d/%d (epoch %d/%d): %.2f steps/s, %s left", step, self._total,
                 step // self._per_epoch, self._epochs, rate,
                 format_seconds((self._total - step) / max(rate, 1e-9)))
    self._metrics, self._window_start, self._window_steps = None, time.time(), 0
