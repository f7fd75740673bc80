"""Where the retraining's batches come from, behind one interface (`Feed`):

* `InMemoryFeed`: a dataset held in host memory as uint8 arrays (`data.datasets`),
  batched and augmented by `data.input_pipeline` (CIFAR, Tiny-ImageNet, your own
  files);
* `StreamingFeed` (`config.data.streaming=True`): a dataset read from disk as it
  trains (`data.streaming`: ImageNet, or any folder tree or TFDS dataset too large for
  memory), decoded and augmented in `config.data.workers` worker processes.

Both give this process's rows of each global batch (`sharding.host_rows`), in an
order fixed by (seed, epoch, step), so a resumed run sees the batches an uninterrupted
one would. The streaming feed also reports its iterator's state after each batch
(`state_after`), which the loop saves in every checkpoint (`training.loop.Phase`), and
continues from that state when the run resumes at that step.
"""

from __future__ import annotations

from typing import Any, Iterator

import ml_collections
import numpy as np

from dnas_jax.data import input_pipeline
from dnas_jax.retrain import setup as setup_lib


class InMemoryFeed:
  """The in-memory dataset of `config.data` (`setup.load_data`): float32 batches,
  normalised on the host."""

  streamed = False
  normalization = None  # the host normalises

  def __init__(self, config: ml_collections.ConfigDict):
    ds = setup_lib.load_data(config)
    self.name, self.source = ds.name, ds.source
    self.image_shape, self.num_classes = tuple(ds.image_shape), ds.num_classes
    self.mean, self.std = tuple(ds.mean), tuple(ds.std)
    self.train = input_pipeline.Split(ds.train_images, ds.train_labels)
    self.test = input_pipeline.Split(ds.test_images, ds.test_labels)
    self.num_train = len(self.train)
    d = config.data
    self.augment = input_pipeline.AugmentConfig(
      crop_padding=d.crop_padding, flip=d.flip, cutout=d.cutout, rotate_degrees=d.rotate_degrees
    )

  def train_batches(
    self, batch_size: int, seed: int, epoch: int, offset: int, rows: slice | None, state=None
  ) -> Iterator[tuple[dict[str, np.ndarray], dict | None]]:
    """(batch, None) for the steps of `epoch` from `offset` on."""
    del state  # the order follows from (seed, epoch, step) alone
    batches = input_pipeline.epoch_batches(
      self.train, batch_size, seed, epoch, self.augment, self.mean, self.std, offset, rows
    )
    return ((b, None) for b in batches)

  def eval_batches(self, batch_size: int, rows: slice | None, split: str = "test"):
    data = self.test if split == "test" else self.train
    return input_pipeline.eval_batches(data, batch_size, self.mean, self.std, rows)

  def close(self) -> None:
    pass


def _process_of(rows: slice | None, batch_size: int) -> tuple[int, int]:
  """(process index, process count) whose share of a global batch is `rows`."""
  if rows is None:
    return 0, 1
  size = rows.stop - rows.start
  if size <= 0 or batch_size % size or rows.start % size:
    raise ValueError(f"rows {rows.start}:{rows.stop} are not an equal share of {batch_size}")
  return rows.start // size, batch_size // size


class StreamingFeed:
  """The streamed dataset of `config.data` (`data.imagenet.open_streaming`): uint8
  images of `config.data.image_size`² cropped, resized and flipped on the host as
  DARTS's ImageNet recipe does, with their colour jitter's parameters; the steps jitter
  and normalise them (`normalization`, `data.device_augment`)."""

  streamed = True

  def __init__(self, config: ml_collections.ConfigDict):
    # grain (about a second to import) only when a run streams.
    from dnas_jax.data import imagenet  # pylint: disable=g-import-not-at-top

    d = config.data
    self.data = imagenet.open_streaming(d)
    self.name = self.data.name
    self.source = d.source
    self.image_size = int(d.image_size)
    self.image_shape = (self.image_size, self.image_size, 3)
    self.num_classes = self.data.num_classes
    self.mean, self.std = tuple(self.data.mean), tuple(self.data.std)
    self.normalization = (
      tuple(float(m) for m in self.mean),
      tuple(float(s) for s in self.std),
    )
    self.num_train = len(self.data.train)
    self.workers = int(d.get("workers", 0))
    self._open: list[Any] = []

  def train_batches(
    self, batch_size: int, seed: int, epoch: int, offset: int, rows: slice | None, state=None
  ) -> Iterator[tuple[dict[str, np.ndarray], dict]]:
    """(batch, the iterator's state after it) for the steps of `epoch` from `offset` on;
    `state`, an earlier iterator's state at that step, is continued from."""
    from dnas_jax.data import streaming  # pylint: disable=g-import-not-at-top

    index, count = _process_of(rows, batch_size)
    if state is not None and (state.get("epoch") != epoch or state.get("step") != offset):
      state = None  # saved at another step: the step's offset says where to start
    it = streaming.train_epoch(
      self.data.train,
      batch_size,
      seed,
      epoch,
      start_step=offset,
      process_index=index,
      process_count=count,
      workers=self.workers,
      image_size=self.image_size,
      state=state,
    )
    self._open.append(it)
    try:
      for batch in it:
        yield batch, it.get_state()
    finally:
      it.close()
      if it in self._open:
        self._open.remove(it)

  def eval_batches(self, batch_size: int, rows: slice | None, split: str = "test"):
    from dnas_jax.data import streaming  # pylint: disable=g-import-not-at-top

    index, count = _process_of(rows, batch_size)
    return streaming.eval_batches(
      self.data.test if split == "test" else self.data.train,
      batch_size,
      process_index=index,
      process_count=count,
      workers=self.workers,
      image_size=self.image_size,
    )

  def close(self) -> None:
    """Stops the worker processes of iterators still open (an interrupted epoch)."""
    for it in list(self._open):
      it.close()
    self._open.clear()


def create_feed(config: ml_collections.ConfigDict) -> InMemoryFeed | StreamingFeed:
  """The feed `config.data.streaming` chooses."""
  if config.data.get("streaming", False):
    return StreamingFeed(config)
  return InMemoryFeed(config)
