"""The skip connection's dropout rate during the search, epoch by epoch
(`config.model.skip_dropout_schedule`; docs/design.md §1 tabulates the options).

* ``constant``: `config.model.skip_dropout` in every epoch (DNAS: "set skip connection
  drop rate to 0.2").
* ``decay``: P-DARTS's schedule (chenxin061/pdarts `train_search.py`, the epoch loop of
  `main`). With p₀ = `skip_dropout`, E = `num_epochs` and W = `optim.arch_warmup_epochs`
  (P-DARTS's `epochs` and `eps_no_arch`), epoch e (from 0) uses

      p₀ · (E − e − 1) / E          while e < W (no architecture updates yet),
      p₀ · exp(−0.2 · (e − W))      from e = W on,

  so the rate falls linearly during the warm-up and jumps back to p₀ when the
  architecture starts to learn, then decays by exp(−0.2) per epoch. P-DARTS runs this
  per stage of its progressive search (25 epochs, 10 of warm-up); a search here is one
  stage.

The rate is computed in the jitted step from the step count (one value per epoch), so
changing it does not retrace anything.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

SCHEDULES = ("constant", "decay")
DECAY_PER_EPOCH = 0.2  # P-DARTS's `scale_factor`


def skip_dropout_rate(
  epoch, base_rate: float, num_epochs: int, warmup_epochs: int, schedule: str = "constant"
):
  """The rate of epoch `epoch` (an int or an integer array): `base_rate` itself for
  ``constant``, a float32 array for ``decay`` (module docstring)."""
  if schedule == "constant":
    return base_rate
  if schedule != "decay":
    raise ValueError(
      f"skip dropout schedule {schedule!r} is not valid; valid values: {list(SCHEDULES)}"
    )
  e = jnp.asarray(epoch, jnp.float32)
  during_warmup = base_rate * (num_epochs - e - 1) / num_epochs
  after = base_rate * jnp.exp(-(e - warmup_epochs) * DECAY_PER_EPOCH)
  return jnp.where(e < warmup_epochs, during_warmup, after)


def step_schedule(
  schedule: str, base_rate: float, num_epochs: int, warmup_epochs: int, steps_per_epoch: int
) -> Callable | None:
  """The rate as a function of the step count for `search_step`, or None for
  ``constant`` (the network keeps its Python number: the step is traced as without a
  schedule)."""
  if schedule == "constant" or base_rate == 0:
    return None
  return lambda step: skip_dropout_rate(
    step // steps_per_epoch, base_rate, num_epochs, warmup_epochs, schedule
  )
