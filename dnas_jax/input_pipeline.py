"""Splits, augmentation and batching on the host, NumPy only (uint8 in memory).

* `search_splits`: the training set split by `train_portion` into the weight half and
  the architecture half (DARTS/PC-DARTS: the first part trains weights, the rest
  architecture); the test set for evaluation.
* `augment`: random crop with zero padding, horizontal flip, cutout; vectorised over
  the batch (one gather, no per-image Python loop).
* `epoch_batches`: the batches of one epoch in an order fixed by (seed, epoch), so a
  resumed run sees the same batches as an uninterrupted one; incomplete last batches
  are dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from dnas_jax.datasets import Dataset


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  crop_padding: int = 0
  flip: bool = False
  cutout: int = 0


def search_splits(ds: Dataset, train_portion: float = 0.5) -> tuple[Split, Split]:
  """(weight split, architecture split) of the training set."""
  if not 0.0 < train_portion < 1.0:
    raise ValueError(f"config.data.train_portion={train_portion} must be in (0, 1)")
  n = int(len(ds.train_labels) * train_portion)
  return (Split(ds.train_images[:n], ds.train_labels[:n]),
          Split(ds.train_images[n:], ds.train_labels[n:]))


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 NHWC to float32, per-channel standardised."""
  x = images.astype(np.float32) * np.float32(1 / 255.0)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def augment(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
  """Random crop (zero padding), horizontal flip and cutout of a uint8 batch."""
  n, h, w, _ = images.shape
  p = cfg.crop_padding
  if p or cfg.flip:
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0))) if p else images
    dy = rng.integers(0, 2 * p + 1, n) if p else np.zeros(n, np.int64)
    dx = rng.integers(0, 2 * p + 1, n) if p else np.zeros(n, np.int64)
    rows = dy[:, None] + np.arange(h)[None, :]  # [n, h]
    cols = dx[:, None] + np.arange(w)[None, :]  # [n, w]
    if cfg.flip:
      flip = rng.random(n) < 0.5
      cols = np.where(flip[:, None], cols[:, ::-1], cols)
    images = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
  if cfg.cutout:
    images = images.copy()
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
    half = cfg.cutout // 2
    ys, xs = np.arange(h)[None, :], np.arange(w)[None, :]
    my = (ys >= (cy - half)[:, None]) & (ys < (cy + half)[:, None])
    mx = (xs >= (cx - half)[:, None]) & (xs < (cx + half)[:, None])
    images[my[:, :, None] & mx[:, None, :]] = 0
  return images


def steps_per_epoch(n: int, batch_size: int) -> int:
  steps = n // batch_size
  if steps == 0:
    raise ValueError(f"batch size {batch_size} is larger than the split ({n} examples)")
  return steps


def epoch_batches(split: Split, batch_size: int, seed: int, epoch: int,
                  augment_cfg: AugmentConfig | None, mean, std,
                  start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Yields {'image': float32 NHWC, 'label': int32} batches of one epoch, from step
  `start_step` on; the order and augmentation depend only on (seed, epoch, step)."""
  order = np.random.default_rng([seed, epoch]).permutation(len(split))
  for step in range(start_step, steps_per_epoch(len(split), batch_size)):
    idx = order[step * batch_size:(step + 1) * batch_size]
    images = split.images[idx]
    if augment_cfg is not None:
      images = augment(images, np.random.default_rng([seed, epoch, step, 1]), augment_cfg)
    yield {"image": normalize(images, mean, std), "label": split.labels[idx]}


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
