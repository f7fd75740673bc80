"""Splits, augmentation and batching on the host, NumPy only (uint8 in memory).

* `search_splits`: the training set split by `train_portion` into the weight half and
  the architecture half (DARTS/PC-DARTS: the first part trains weights, the rest
  architecture); the test set for evaluation.
* `augment`: random crop with zero padding, horizontal flip, rotation on uint8;
  vectorised over the batch (one gather, no per-image Python loop);
  `augment_and_normalize` adds the per-channel normalisation and then cutout, which
  zeroes a square of the *normalised* image (so the square holds the mean, as DARTS's
  `Cutout` after `Normalize`).
* `epoch_batches`: the batches of one epoch in an order fixed by (seed, epoch), so a
  resumed run sees the same batches as an uninterrupted one; incomplete last batches
  are dropped.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterable, Iterator

import numpy as np

from dnas_jax.data.datasets import Dataset


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Host-side augmentation; all off by default.

  crop_padding: random crop of the original size from the image zero-padded by this
    many pixels on each side (CIFAR: 4).
  flip: random horizontal flip with probability 1/2.
  cutout: side of a square set to 0 after normalisation, at a random centre (DARTS:
    16); 0 disables it.
  rotate_degrees: random rotation by an angle uniform in ±rotate_degrees about the
    image centre, nearest neighbour, zeros outside (e.g. 20 for Tiny-ImageNet); 0
    disables it.
  """

  crop_padding: int = 0
  flip: bool = False
  cutout: int = 0
  rotate_degrees: float = 0.0


def search_splits(ds: Dataset, train_portion: float = 0.5) -> tuple[Split, Split]:
  """(weight split, architecture split) of the training set."""
  if not 0.0 < train_portion < 1.0:
    raise ValueError(f"config.data.train_portion={train_portion} must be in (0, 1)")
  n = int(len(ds.train_labels) * train_portion)
  return (
    Split(ds.train_images[:n], ds.train_labels[:n]),
    Split(ds.train_images[n:], ds.train_labels[n:]),
  )


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 NHWC to float32, per-channel standardised: (x / 255 - mean) / std.

  The same float32 operations as the textbook broadcast, but on [N·H, W·C] rows with
  the per-channel constants tiled along the row, so NumPy's inner loops run W·C long
  instead of C long (about 12× faster for CIFAR batches), and in place.
  """
  n, h, w, c = images.shape
  mean = np.tile(np.broadcast_to(np.asarray(mean, np.float32), (c,)), w)
  std = np.tile(np.broadcast_to(np.asarray(std, np.float32), (c,)), w)
  x = images.reshape(n * h, w * c).astype(np.float32)
  x *= np.float32(1 / 255.0)
  x -= mean
  x /= std
  return x.reshape(images.shape)


def _source_index(
  rng: np.random.Generator, cfg: AugmentConfig, n: int, h: int, w: int, pad: int
) -> np.ndarray:
  """For each output pixel [n, h, w], its flat pixel index in the zero-padded batch.

  The padded batch is [n, h + 2·pad, w + 2·pad] followed by one extra zero pixel;
  pixels that come from outside the image (rotation) point at zero pixels. Random
  draws, in this order: crop offsets dy, dx; flips; rotation angles (each only when
  enabled).
  """
  p = cfg.crop_padding
  hp, wp = h + 2 * pad, w + 2 * pad
  zero = n * hp * wp  # the extra zero pixel
  # Row/column of each output pixel in the padded image, [n, h] and [n, w].
  rows = np.broadcast_to(np.arange(h) + (pad - p), (n, h))
  cols = np.broadcast_to(np.arange(w) + (pad - p), (n, w))
  if p:
    rows = rows + rng.integers(0, 2 * p + 1, n)[:, None]
    cols = cols + rng.integers(0, 2 * p + 1, n)[:, None]
  if cfg.flip:
    flip = rng.random(n) < 0.5
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
  if cfg.rotate_degrees:
    # Rotate about the image centre (nearest neighbour): the crop and flip above are
    # applied to the rotated image, so sample the original at R(θ)·(q - c) + c.
    theta = np.deg2rad(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees, n))
    cos = np.cos(theta).astype(np.float32)[:, None, None]
    sin = np.sin(theta).astype(np.float32)[:, None, None]
    cy, cx = pad + (h - 1) / 2, pad + (w - 1) / 2
    ry = (rows - cy).astype(np.float32)[:, :, None]  # [n, h, 1]
    rx = (cols - cx).astype(np.float32)[:, None, :]  # [n, 1, w]
    # Separable terms first, so only the final sums are [n, h, w].
    sy = np.rint((cos * ry + np.float32(cy)) - sin * rx).astype(np.intp)
    sx = np.rint((cos * rx + np.float32(cx)) + sin * ry).astype(np.intp)
    # Inside the image iff 0 <= s - pad < size: one unsigned comparison each.
    inside = ((sy - pad).view(np.uintp) < h) & ((sx - pad).view(np.uintp) < w)
    index = (np.arange(n)[:, None, None] * hp + sy) * wp + sx
    np.putmask(index, ~inside, zero)
  else:
    index = ((np.arange(n)[:, None] * hp + rows) * wp)[:, :, None] + cols[:, None, :]
  return index


def cutout_mask(rng: np.random.Generator, size: int, n: int, h: int, w: int) -> np.ndarray:
  """bool [n, h, w], True inside each image's cutout square: side `size` (an odd size
  gives size - 1, as DARTS's `Cutout`), centre uniform over the pixels, clipped at the
  border."""
  cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
  half = size // 2
  ys, xs = np.arange(h)[None, :], np.arange(w)[None, :]
  my = (ys >= (cy - half)[:, None]) & (ys < (cy + half)[:, None])
  mx = (xs >= (cx - half)[:, None]) & (xs < (cx + half)[:, None])
  return my[:, :, None] & mx[:, None, :]


def augment(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
  """Random crop (zero padding), horizontal flip and rotation of a uint8 batch (cutout
  is not applied here: it belongs after normalisation, `augment_and_normalize`).

  Vectorised over the batch: the transforms compose into one source-pixel index per
  output pixel (`_source_index`), and a single `np.take` over the zero-padded batch
  gathers the result (no per-image Python loop). The random draws and results are
  those of crop → flip → rotation applied one after the other.
  """
  if not (cfg.crop_padding or cfg.flip or cfg.rotate_degrees):
    return images
  n, h, w, c = images.shape
  pad = cfg.crop_padding
  hp, wp = h + 2 * pad, w + 2 * pad
  source = np.zeros((n * hp * wp + 1, c), images.dtype)  # padded batch + zero pixel
  source[:-1].reshape(n, hp, wp, c)[:, pad : pad + h, pad : pad + w] = images
  index = _source_index(rng, cfg, n, h, w, pad)
  return np.take(source, index.reshape(-1), axis=0).reshape(n, h, w, c)


def augment_and_normalize(
  images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, mean, std
) -> np.ndarray:
  """uint8 NHWC → float32: `augment`, `normalize`, then cutout (the square set to 0,
  the mean after normalisation; DARTS: `Normalize` then `Cutout`). The cutout centres
  are drawn from `rng` after the geometric transforms' draws."""
  out = normalize(augment(images, rng, cfg), mean, std)
  if cfg.cutout:
    n, h, w, _ = images.shape
    out[cutout_mask(rng, cfg.cutout, n, h, w)] = 0.0
  return out


def steps_per_epoch(n: int, batch_size: int) -> int:
  steps = n // batch_size
  if steps == 0:
    raise ValueError(f"batch size {batch_size} is larger than the split ({n} examples)")
  return steps


def epoch_batches(
  split: Split,
  batch_size: int,
  seed: int,
  epoch: int,
  augment_cfg: AugmentConfig | None,
  mean,
  std,
  start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields {'image': float32 NHWC, 'label': int32} batches of one epoch, from step
  `start_step` on; the order and augmentation depend only on (seed, epoch, step)."""
  order = np.random.default_rng([seed, epoch]).permutation(len(split))
  for step in range(start_step, steps_per_epoch(len(split), batch_size)):
    idx = order[step * batch_size : (step + 1) * batch_size]
    yield _batch(split, idx, (seed, epoch, step), augment_cfg, mean, std)


def _batch(split: Split, idx, key: tuple[int, int, int], augment_cfg, mean, std) -> dict:
  """The batch of `split`'s examples `idx`, augmented with the generator seeded by
  (seed, epoch, step, 1) = `key` + (1,)."""
  images = split.images[idx]
  if augment_cfg is None:
    batch = normalize(images, mean, std)
  else:
    batch = augment_and_normalize(images, np.random.default_rng([*key, 1]), augment_cfg, mean, std)
  return {"image": batch, "label": split.labels[idx]}


# How the architecture half's batches are drawn: each epoch one permutation of the split
# cut into batches, or each step a fresh random batch (DARTS's and PC-DARTS's
# `next(iter(valid_queue))` with a shuffling loader).
ARCH_SAMPLINGS = ("permutation", "independent")


def independent_batches(
  split: Split,
  batch_size: int,
  seed: int,
  epoch: int,
  augment_cfg: AugmentConfig | None,
  mean,
  std,
  start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """As `epoch_batches`, but every step's batch is the first `batch_size` of a fresh
  permutation of the split (seeded with (seed, epoch, step, 0)): distinct examples
  within a batch, drawn independently of the other steps. The augmentation is
  `epoch_batches`'s, seeded with (seed, epoch, step, 1)."""
  for step in range(start_step, steps_per_epoch(len(split), batch_size)):
    idx = np.random.default_rng([seed, epoch, step, 0]).permutation(len(split))[:batch_size]
    yield _batch(split, idx, (seed, epoch, step), augment_cfg, mean, std)


def search_batches(
  weight_split: Split,
  arch_split: Split,
  batch_size: int,
  seed: int,
  epoch: int,
  augment_cfg: AugmentConfig | None,
  mean,
  std,
  start_step: int = 0,
  arch_sampling: str = "permutation",
) -> Iterator[tuple[dict, dict]]:
  """The (training batch, validation batch) pairs of one search epoch: the weights train
  on `weight_split` (the first part of the training set), the architecture on
  `arch_split` (the rest), each in its own order (seeds `seed` and `seed + 1`). The
  architecture's batches are drawn as `arch_sampling` says (`ARCH_SAMPLINGS`:
  `epoch_batches` or `independent_batches`)."""
  if arch_sampling not in ARCH_SAMPLINGS:
    raise ValueError(
      f"arch_sampling={arch_sampling!r} is not valid; valid values: {list(ARCH_SAMPLINGS)}"
    )
  arch_batches = epoch_batches if arch_sampling == "permutation" else independent_batches
  return zip(
    epoch_batches(
      weight_split, batch_size, seed, epoch, augment_cfg, mean, std, start_step=start_step
    ),
    arch_batches(
      arch_split, batch_size, seed + 1, epoch, augment_cfg, mean, std, start_step=start_step
    ),
  )


def eval_batches(split: Split, batch_size: int, mean, std) -> Iterator[dict[str, np.ndarray]]:
  """All examples in order; the last batch is padded and carries a 'mask'."""
  n = len(split)
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    pad = batch_size - len(idx)
    images, labels = split.images[idx], split.labels[idx]
    mask = np.ones(batch_size, bool)
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
      mask[-pad:] = False
    yield {"image": normalize(images, mean, std), "label": labels, "mask": mask}


def prefetch(iterable: Iterable, size: int) -> Iterator:
  """The items of `iterable`, produced up to `size` ahead by a background thread (so
  that the host prepares and places batch n + 1 while the device runs step n); the
  same items in the same order. size 0: the iterable itself. An exception in the
  producer is raised here; leaving the loop early stops the thread."""
  if size <= 0:
    yield from iterable
    return
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(entry) -> bool:
    while not stop.is_set():
      try:
        items.put(entry, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterable:
        if not put((item, None)):
          return
      put((done, None))
    except BaseException as e:  # pylint: disable=broad-except  (re-raised below)
      put((done, e))

  thread = threading.Thread(target=produce, daemon=True, name="prefetch")
  thread.start()
  try:
    while True:
      item, error = items.get()
      if error is not None:
        raise error
      if item is done:
        return
      yield item
  finally:
    stop.set()
    thread.join(timeout=5)
