"""A streaming input pipeline (grain) for datasets that do not fit in memory: images are
read, decoded and augmented per batch, in `workers` processes, from a random-access
source (`stream_sources`).

Order. Epoch e of the training set is one permutation of its N records, fixed by
(seed, epoch) (the same as `input_pipeline.epoch_batches`); global batch b holds the
records at positions [b·B, (b+1)·B) of it (an incomplete last batch is dropped), and
process p of P reads only the rows [p·B/P, (p+1)·B/P) of each global batch: its rows
of the global array (`jax.make_array_from_process_local_data`). Each image's random
augmentation is drawn from a generator seeded by (seed, epoch, position), so a batch is
the same whatever the number of processes or worker processes: the rows of P processes
put together are the one-process batch, bit for bit.

Resume. `train_epoch(..., start_step=s)` yields the batches s, s+1, ... of the epoch,
the same as an uninterrupted iteration; the iterator's `get_state()` (JSON) restores
one exactly with `train_epoch(..., state=...)`, so it can be saved beside the model.

Batches. Training: `{'image': uint8 NHWC, 'label': int32, 'jitter': float32 [B, 7]}`,
each image decoded, cropped, resized and flipped (`image_transforms`), 'jitter' its
ColorJitter parameters; evaluation: `{'image': uint8 NHWC, 'label': int32, 'mask':
bool}`, the last batch padded with zero images. The step turns either into normalised
float32 images on the accelerator with `device_augment.prepare(batch, mean, std)`
(`IMAGENET_MEAN`, `IMAGENET_STD`): the colour jitter is the dearest part of the
augmentation on a CPU and the cheapest on an accelerator, and uint8 crosses from the
worker processes and to the device 4× smaller than float32.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any, Iterator

from absl import flags
import grain
import numpy as np

from dnas_jax.data import device_augment
from dnas_jax.data import image_transforms
from dnas_jax.data import input_pipeline

# The per-channel statistics of the ImageNet training set (0..1 scale), as torchvision's
# models and the DARTS ImageNet scripts use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  return process_index, process_count


def _local_batch(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(
      f"config.batch_size={batch_size} must be a multiple of the number of processes "
      f"({process_count}): each process reads batch_size / processes rows"
    )
  return batch_size // process_count


def steps_per_epoch(source, batch_size: int) -> int:
  """Global batches in an epoch of `source` (the incomplete last one dropped)."""
  return input_pipeline.steps_per_epoch(len(source), batch_size)


class _TrainBatch:
  """Step s → this process's rows of global batch s (a training batch: module
  docstring), by index arithmetic alone. The images are decoded, cropped, resized and
  flipped straight into the batch's one array (`_batch_array`), not stacked from
  per-image arrays."""

  def __init__(self, source, batch_size, seed, epoch, image_size, process_index, process_count):
    self.source, self.batch_size, self.seed, self.epoch = source, batch_size, seed, epoch
    self.image_size = image_size
    self.local = batch_size // process_count
    self.offset = process_index * self.local
    self._order = None  # computed in each process, not pickled

  def __getstate__(self):
    return {**self.__dict__, "_order": None}

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    if self._order is None:
      self._order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.source))
    size = self.image_size
    images = _batch_array((self.local, size, size, 3))
    labels = np.empty(self.local, np.int32)
    jitter = np.empty((self.local, device_augment.JITTER_COLUMNS), np.float32)
    try:
      for row in range(self.local):
        position = int(step) * self.batch_size + self.offset + row
        data, labels[row], where = self.source.read(int(self._order[position]))
        rng = np.random.default_rng([self.seed, self.epoch, position])
        _, jitter[row] = image_transforms.train_transform(data, rng, size, where, images[row])
    except BaseException:
      if isinstance(images, grain.multiprocessing.SharedMemoryArray):
        images.unlink_on_del()  # it never reaches the main process, which unlinks the others
      raise
    return {"image": images, "label": labels, "jitter": jitter}


_IN_WORKER = False


def _batch_array(shape) -> np.ndarray:
  """An uninitialised uint8 array: in shared memory in grain's worker processes (grain
  passes it to the main process by name, which unlinks it when the batch is freed;
  otherwise grain copies every batch into new shared memory), in this process's heap
  otherwise."""
  if _IN_WORKER:
    return grain.multiprocessing.SharedMemoryArray(shape, np.uint8)
  return np.empty(shape, np.uint8)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def _worker_init(worker_index: int, worker_count: int):
  """Run by grain in each worker process before its first batch (docs/imagenet.md,
  Throughput, has the measurements):

  * batches are made in shared memory (`_batch_array`);
  * glibc's malloc keeps freed memory for reuse instead of giving it back to the system
    after each image: with its default thresholds the decoded images (a few hundred kB)
    were mapped anew each time, and every new page cost a page fault;
  * the objects of the imports (about 130,000, JAX's among them) are frozen out of the
    garbage collector's passes, which took about 8 % of the workers' CPU samples."""
  del worker_index, worker_count
  global _IN_WORKER
  _IN_WORKER = True
  gc.freeze()
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):  # not glibc: keep its allocator as it is
    return
  mallopt(_M_MMAP_THRESHOLD, 32 << 20)
  mallopt(_M_TRIM_THRESHOLD, 256 << 20)
  mallopt(_M_TOP_PAD, 64 << 20)


class _EvalImage:
  """Local element k of the evaluation pass → (uint8 image, label, real): positions past
  the end of the set are zero images, label 0, real False (the padding)."""

  def __init__(self, source, batch_size, image_size, process_index, process_count):
    self.source, self.batch_size, self.image_size = source, batch_size, image_size
    self.local = batch_size // process_count
    self.offset = process_index * self.local

  def __call__(self, k: int) -> tuple[np.ndarray, int, bool]:
    step, row = divmod(int(k), self.local)
    position = step * self.batch_size + self.offset + row
    if position >= len(self.source):
      return np.zeros((self.image_size, self.image_size, 3), np.uint8), 0, False
    data, label, where = self.source.read(position)
    return image_transforms.eval_transform(data, self.image_size, where), label, True


def _stack_eval(elements) -> dict[str, np.ndarray]:
  """An evaluation batch: uint8 images, int32 labels, bool mask (False: padding)."""
  return {
    "image": np.stack([e[0] for e in elements]),
    "label": np.asarray([e[1] for e in elements], np.int32),
    "mask": np.asarray([e[2] for e in elements], bool),
  }


def train_dataset(
  source,
  batch_size: int,
  seed: int,
  epoch: int,
  image_size: int = 224,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.MapDataset:
  """The epoch's local batches (this process's rows) as a grain `MapDataset`: item s is
  step s's batch."""
  process_index, process_count = _processes(process_index, process_count)
  _local_batch(batch_size, process_count)  # checks that the processes share it evenly
  steps = steps_per_epoch(source, batch_size)
  batch = _TrainBatch(source, batch_size, seed, epoch, image_size, process_index, process_count)
  return grain.MapDataset.range(steps).map(batch)


def _grain_flags_parsed():
  """grain reads its options from absl flags: outside an absl app (a test, a notebook)
  they are unparsed, so take their defaults."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _iterate(dataset: grain.MapDataset, workers: int, buffer: int) -> grain.DatasetIterator:
  """grain's iterator over `dataset`: in this process (workers 0) or in `workers`
  processes, each making whole batches (worker i the batches i, i + workers, ...), put
  back in order."""
  if workers < 0:
    raise ValueError(f"config.data.workers={workers} must be >= 0 (0: in the main process)")
  _grain_flags_parsed()
  ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if workers:
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer),
      worker_init_fn=_worker_init,
    )
  return iter(ds)


class EpochIterator:
  """The batches of one epoch from step `start_step` on; `get_state()` is a JSON-able
  dict that `train_epoch(..., state=...)` continues from exactly."""

  def __init__(self, dataset, epoch: int, start_step: int, workers: int, buffer: int, state=None):
    self.epoch, self.step, self.workers = epoch, start_step, workers
    self.start_step = start_step
    self._it = _iterate(dataset[start_step:], workers, buffer)
    if state is not None:
      self._it.set_state(state["grain"])
      self.step = state["step"]

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._it)
    self.step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    """{'epoch', 'step' (the next batch's), 'start_step', 'workers', 'grain': grain's
    iterator state}."""
    return {
      "epoch": self.epoch,
      "step": self.step,
      "start_step": self.start_step,
      "workers": self.workers,
      "grain": self._it.get_state(),
    }

  def close(self):
    """Stops the worker processes (also done when the iterator is collected)."""
    close = getattr(self._it, "close", None)
    if close is not None:
      close()


def train_epoch(
  source,
  batch_size: int,
  seed: int,
  epoch: int,
  start_step: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
  workers: int = 0,
  image_size: int = 224,
  state: dict | None = None,
  buffer: int = 2,
) -> EpochIterator:
  """This process's rows of the epoch's batches, from `start_step` on (module
  docstring), decoded and augmented in `workers` processes (0: this one), each holding
  up to `buffer` batches ready. `state` (an `EpochIterator.get_state()`) continues an
  earlier iterator instead of starting at `start_step`; with another number of
  workers its step is used (the same batches either way)."""
  ds = train_dataset(source, batch_size, seed, epoch, image_size, process_index, process_count)
  if state is not None:
    if state["epoch"] != epoch:
      raise ValueError(f"the iterator state is of epoch {state['epoch']}, not {epoch}")
    if state["workers"] != workers:
      return EpochIterator(ds, epoch, state["step"], workers, buffer)
    return EpochIterator(ds, epoch, state["start_step"], workers, buffer, state)
  return EpochIterator(ds, epoch, start_step, workers, buffer)


def eval_batches(
  source,
  batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
  workers: int = 0,
  image_size: int = 224,
  buffer: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
  """Every example in order, in global batches of `batch_size` (this process's rows);
  the last global batch is padded with zero images and carries a 'mask', as
  `input_pipeline.eval_batches`."""
  process_index, process_count = _processes(process_index, process_count)
  local = _local_batch(batch_size, process_count)
  steps = -(-len(source) // batch_size)
  image = _EvalImage(source, batch_size, image_size, process_index, process_count)
  ds = grain.MapDataset.range(steps * local).map(image).batch(local, batch_fn=_stack_eval)
  it = _iterate(ds, workers, buffer)
  try:
    yield from it
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()
