"""The sources that need no files: scikit-learn's bundled digits and synthetic data."""

from __future__ import annotations

import numpy as np

from dnas_jax.data import arrays


def load_digits() -> arrays.Dataset:
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top

  d = sk_datasets.load_digits()
  images = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  images, labels = images[order], labels[order]
  tr, te = slice(0, 1500), slice(1500, None)
  mean, std = arrays.channel_stats(images[tr])
  return arrays.Dataset(
    "digits", "digits", images[tr], labels[tr], images[te], labels[te], 10, mean, std
  )


def load_synthetic(
  num_train: int = 256,
  num_test: int = 64,
  image_size: int = 8,
  channels: int = 3,
  num_classes: int = 10,
  seed: int = 0,
) -> arrays.Dataset:
  """Learnable random data: class c has a mean intensity that grows with c."""
  rng = np.random.default_rng(seed)

  def make(n):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    base = (labels[:, None, None, None] + 0.5) * (200.0 / num_classes)
    noise = rng.normal(0, 20.0, (n, image_size, image_size, channels))
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels

  xtr, ytr = make(num_train)
  xte, yte = make(num_test)
  mean, std = arrays.channel_stats(xtr)
  return arrays.Dataset("synthetic", "synthetic", xtr, ytr, xte, yte, num_classes, mean, std)
