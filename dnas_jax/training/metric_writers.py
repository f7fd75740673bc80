"""Metric writing at the edge of the loop: TensorBoard event files and console lines.

clu's `metric_writers` import TensorFlow at package import (clu 0.0.12), which users
without TensorFlow do not have; this writer has the same small interface
(`write_scalars`, `write_images`, `write_texts`, `flush`, `close`) on top of
tensorboardX, whose event files TensorBoard reads. clu's `metrics` are used for the
metric values themselves.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from absl import logging


def _fmt(value: float) -> str:
  return f"{value:.4g}"


class MetricWriter:
  """Writes scalars, images and texts to `logdir` (TensorBoard) and the log. With
  `events=False` (every process but the first of a multi-process run) only the log."""

  def __init__(self, logdir: str, console: bool = True, events: bool = True):
    self._tb = None
    if events:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self._tb = SummaryWriter(logdir=logdir, flush_secs=30)
    self._console = console

  def write_scalars(self, step: int, scalars: Mapping[str, float], console: bool = True) -> None:
    for name, value in scalars.items() if self._tb else ():
      self._tb.add_scalar(name, float(value), global_step=int(step))
    if self._console and console:
      logging.info(
        "[%d] %s", step, ", ".join(f"{k}={_fmt(float(v))}" for k, v in sorted(scalars.items()))
      )

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    for name, image in images.items() if self._tb else ():
      self._tb.add_image(name, np.asarray(image), global_step=int(step), dataformats="HWC")

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    for name, text in texts.items() if self._tb else ():
      self._tb.add_text(name, text, global_step=int(step))

  def flush(self) -> None:
    if self._tb:
      self._tb.flush()

  def close(self) -> None:
    if self._tb:
      self._tb.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, exc_type, *exc) -> None:
    """Closes the writer; on the way out with an error, a failure to flush the event
    files (the same full disk, say) does not replace that error."""
    try:
      self.close()
    except OSError as e:
      if exc_type is None:
        raise
      logging.debug("closing the event files failed too: %s", e)
