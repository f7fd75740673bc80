"""A dataset in memory (`Dataset`, uint8 NHWC arrays), the consistency check every
loader applies to its splits, the per-channel statistics of the training set, and the
resizing of images to one square size."""

from __future__ import annotations

import dataclasses

import numpy as np

from dnas_jax.data import errors


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


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std on the 0..1 scale, exact, in bounded memory.

  Sums of values and squares are accumulated as int64 over chunks, so a
  100,000×64×64×3 set never becomes a float64 copy.
  """
  c = images.shape[-1]
  s1 = np.zeros(c, np.int64)
  s2 = np.zeros(c, np.int64)
  per_image = int(np.prod(images.shape[1:])) or 1
  chunk = max(1, (1 << 22) // per_image)
  for start in range(0, len(images), chunk):
    x = images[start : start + chunk].reshape(-1, c).astype(np.int64)
    s1 += x.sum(axis=0)
    s2 += (x * x).sum(axis=0)
  count = images.size // c
  mean = s1 / (255.0 * count)
  var = np.maximum(s2 / (255.0**2 * count) - mean**2, 0.0)
  return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(var))


def check_split(
  images: np.ndarray, labels: np.ndarray, num_classes: int, shape: tuple[int, ...], where: str
) -> None:
  """Raises DatasetFormatError unless images/labels are consistent."""
  if images.dtype != np.uint8 or images.shape[1:] != shape:
    raise errors.DatasetFormatError(
      f"{where}: expected uint8 images of shape {shape}, got {images.dtype} {images.shape[1:]}"
    )
  if len(labels) != len(images):
    raise errors.DatasetFormatError(
      f"{where}: {len(labels)} labels for {len(images)} images; the file is "
      "corrupt or not the published one"
    )
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise errors.DatasetFormatError(
      f"{where}: labels must lie in [0, {num_classes}), found [{labels.min()}, {labels.max()}]"
    )


def make_dataset(name, source, train, test, num_classes) -> Dataset:
  """A `Dataset` of (images, labels) pairs, with the training set's statistics."""
  mean, std = channel_stats(train[0])
  return Dataset(name, source, train[0], train[1], test[0], test[1], num_classes, mean, std)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """One uint8 [H, W, C] image resized to [size, size, C] with PIL's bilinear filter
  (antialiased when it shrinks); channels other than 1 and 3 are resized one by one."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if image.shape[:2] == (size, size):
    return image
  resample = Image.Resampling.BILINEAR
  if image.shape[-1] == 3:
    return np.asarray(Image.fromarray(image, "RGB").resize((size, size), resample))
  return np.stack(
    [
      np.asarray(
        Image.fromarray(np.ascontiguousarray(image[..., k]), "L").resize((size, size), resample)
      )
      for k in range(image.shape[-1])
    ],
    axis=-1,
  )


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 [N, H, W, C] → [N, size, size, C] (`resize_image` on each); the same array
  when it already has that size."""
  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
  for i, image in enumerate(images):
    out[i] = resize_image(image, size)
  return out
