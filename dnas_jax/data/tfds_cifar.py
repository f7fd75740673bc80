"""CIFAR-10/100 from datasets prepared by TensorFlow Datasets in array_record format,
read with `tfds.data_source` (random access, no TensorFlow needed)."""

from __future__ import annotations

import os
import re

from absl import logging
import numpy as np

from dnas_jax.data import arrays
from dnas_jax.data import errors
from dnas_jax.data import sources


def import_tfds():
  """tensorflow_datasets, or an ImportError that says how to install it."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "config.data.source='tfds' needs TensorFlow Datasets: pip install "
        "tensorflow-datasets importlib_resources (or pip install 'dnas-jax[tfds]'); "
        f"or use config.data.source='archive' ({e})") from None
  return tfds


def find_tfds_dataset(tfds_name: str, data_dir: str) -> str | None:
  """The newest prepared version folder `data_dir/tfds_name/X.Y.Z`, or None."""
  root = os.path.join(data_dir, tfds_name)
  try:
    entries = os.listdir(root)
  except OSError:
    return None
  versions = []
  for entry in entries:
    if re.fullmatch(r"\d+\.\d+\.\d+", entry) and os.path.isfile(
        os.path.join(root, entry, "dataset_info.json")):
      versions.append(tuple(int(v) for v in entry.split(".")))
  if not versions:
    return None
  return os.path.join(root, ".".join(str(v) for v in max(versions)))


def _tfds_not_found(tfds_name: str, data_dir: str) -> str:
  return (f"no prepared TFDS dataset {tfds_name!r}: looked for "
          f"{os.path.join(data_dir, tfds_name, '<version>', 'dataset_info.json')}. "
          f"Prepare it on a machine with TensorFlow and internet (`tfds build "
          f"{tfds_name} --data_dir={data_dir} --file_format=array_record`) and copy "
          f"that folder here, or pass {sources.DATA_FIELD}")


def load_cifar_tfds(name: str, data_dir: str | None = None,
                    coarse_labels: bool = False) -> arrays.Dataset:
  """CIFAR-10/100 from a prepared TFDS dataset (array_record), without TensorFlow."""
  data_dir = os.path.abspath(data_dir or sources.default_tfds_dir())
  version_dir = find_tfds_dataset(name, data_dir)
  if version_dir is None:
    raise errors.DatasetNotFoundError(
        f"{sources.CIFAR[name].title} not found (source='tfds'): "
        + _tfds_not_found(name, data_dir))
  tfds = import_tfds()
  label_key, num_classes = sources.cifar_labels(name, coarse_labels)
  logging.info("Loading %s from TFDS at %s", name, version_dir)
  try:
    data_sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir,
                                    download=False,
                                    builder_kwargs={"file_format": "array_record"})
    splits = [_read_tfds_split(src, label_key) for src in data_sources]
  except errors.DatasetFormatError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise errors.DatasetFormatError(
        f"reading the TFDS dataset at {version_dir} failed ({type(e).__name__}: {e}); "
        "it must be prepared in array_record format (tfds build ... "
        "--file_format=array_record), or use config.data.source='archive'") from None
  for split, (images, labels) in zip(("train", "test"), splits):
    arrays.check_split(images, labels, num_classes, sources.CIFAR_SHAPE,
                       f"TFDS {name} {split} split at {version_dir}")
  return arrays.make_dataset(name, "tfds", splits[0], splits[1], num_classes)


def _read_tfds_split(src, label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a random-access TFDS split into (uint8 images, int32 labels)."""
  n = len(src)
  shape = sources.CIFAR_SHAPE
  images = np.empty((n,) + shape, np.uint8)
  labels = np.empty(n, np.int32)
  for i in range(n):
    example = src[i]
    image = np.asarray(example["image"])
    if image.shape != shape:
      raise errors.DatasetFormatError(
          f"TFDS example {i} has an image of shape {image.shape}, expected {shape}")
    images[i] = image
    labels[i] = int(example[label_key])
  return images, labels
