"""Datasets held in memory as uint8 NHWC arrays, from the sources DESIGN.md §3 lists.

`load_dataset(name, source, data_dir)` returns a `Dataset`. Sources:

* `digits`: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes),
  the offline default. Kept at its own shape, 8×8×1 (the networks take the input
  shape they are given): pixel values 0..16 are scaled to 0..255, and a fixed
  permutation (seed 0) gives 1,500 training and 297 test images.
* `synthetic`: random images whose class is readable from the mean colour, for tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not where it was looked for; the message says where to put it."""


class DatasetFormatError(ValueError):
  """A dataset file exists but is not in the expected format."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  source: str
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: tuple[float, ...]  # per channel, on the 0..1 scale
  std: tuple[float, ...]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  x = images.astype(np.float64) / 255.0
  return tuple(x.mean(axis=(0, 1, 2))), tuple(x.std(axis=(0, 1, 2)))


def load_digits() -> Dataset:
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  d = sk_datasets.load_digits()
  images = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  images, labels = images[order], labels[order]
  tr, te = slice(0, 1500), slice(1500, None)
  mean, std = _stats(images[tr])
  return Dataset("digits", "digits", images[tr], labels[tr], images[te], labels[te], 10,
                 mean, std)


def load_synthetic(num_train: int = 256, num_test: int = 64, image_size: int = 8,
                   channels: int = 3, num_classes: int = 10, seed: int = 0) -> Dataset:
  """Learnable random data: class c has a mean intensity that grows with c."""
  rng = np.random.default_rng(seed)

  def make(n):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    base = (labels[:, None, None, None] + 0.5) * (200.0 / num_classes)
    noise = rng.normal(0, 20.0, (n, image_size, image_size, channels))
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels

  xtr, ytr = make(num_train)
  xte, yte = make(num_test)
  mean, std = _stats(xtr)
  return Dataset("synthetic", "synthetic", xtr, ytr, xte, yte, num_classes, mean, std)


_LOADERS = {"digits": load_digits, "synthetic": load_synthetic}


def load_dataset(name: str, source: str = "auto", data_dir: str | None = None,
                 **kwargs) -> Dataset:
  """Loads dataset `name` from `source` ('auto' picks the first available)."""
  del source, data_dir  # only in-memory sources so far
  try:
    loader = _LOADERS[name]
  except KeyError:
    raise ValueError(f"config.data.dataset={name!r} is not valid; valid values: "
                     f"{sorted(_LOADERS)}") from None
  return loader(**kwargs)
