"""Datasets prepared by TensorFlow Datasets in array_record format, read with
`tfds.data_source` (random access, no TensorFlow needed): CIFAR-10/100 (`source=tfds`)
and any image-classification dataset with `image` and `label` features
(`source=tfds:<name>`)."""

from __future__ import annotations

import json
import os
import re

from absl import logging
import numpy as np

from dnas_jax.data import arrays
from dnas_jax.data import errors
from dnas_jax.data import sources


def import_tfds(alternative: str = "or use config.data.source='archive'"):
  """tensorflow_datasets, or an ImportError that says how to install it."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      "config.data.source='tfds' needs TensorFlow Datasets: pip install "
      "tensorflow-datasets importlib_resources (or pip install 'dnas-jax[tfds]'); "
      f"{alternative} ({e})"
    ) from None
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
      os.path.join(root, entry, "dataset_info.json")
    ):
      versions.append(tuple(int(v) for v in entry.split(".")))
  if not versions:
    return None
  return os.path.join(root, ".".join(str(v) for v in max(versions)))


def _tfds_not_found(tfds_name: str, data_dir: str) -> str:
  return (
    f"no prepared TFDS dataset {tfds_name!r}: looked for "
    f"{os.path.join(data_dir, tfds_name, '<version>', 'dataset_info.json')}. "
    f"Prepare it on a machine with TensorFlow and internet (`tfds build "
    f"{tfds_name} --data_dir={data_dir} --file_format=array_record`) and copy "
    f"that folder here, or pass {sources.DATA_FIELD}"
  )


def _read_splits(
  tfds,
  tfds_name: str,
  data_dir: str,
  version_dir: str,
  splits: tuple[str, str],
  label_key: str,
  shape,
  image_size: int,
  alternative: str,
) -> list[tuple[np.ndarray, np.ndarray]]:
  """The (images, labels) of `splits`, read through `tfds.data_source`."""
  try:
    data_sources = tfds.data_source(
      tfds_name,
      split=list(splits),
      data_dir=data_dir,
      download=False,
      builder_kwargs={"file_format": "array_record"},
    )
    return [
      _read_tfds_split(
        src, label_key, shape, image_size, f"TFDS {tfds_name} {split} split at {version_dir}"
      )
      for src, split in zip(data_sources, splits)
    ]
  except errors.DatasetFormatError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise errors.DatasetFormatError(
      f"reading the TFDS dataset at {version_dir} failed ({type(e).__name__}: {e}); "
      "it must be prepared in array_record format (tfds build ... "
      f"--file_format=array_record), {alternative}"
    ) from None


def load_cifar_tfds(
  name: str, data_dir: str | None = None, coarse_labels: bool = False
) -> arrays.Dataset:
  """CIFAR-10/100 from a prepared TFDS dataset (array_record), without TensorFlow."""
  data_dir = os.path.abspath(data_dir or sources.default_tfds_dir())
  version_dir = find_tfds_dataset(name, data_dir)
  if version_dir is None:
    raise errors.DatasetNotFoundError(
      f"{sources.CIFAR[name].title} not found (source='tfds'): " + _tfds_not_found(name, data_dir)
    )
  tfds = import_tfds()
  label_key, num_classes = sources.cifar_labels(name, coarse_labels)
  logging.info("Loading %s from TFDS at %s", name, version_dir)
  splits = _read_splits(
    tfds,
    name,
    data_dir,
    version_dir,
    ("train", "test"),
    label_key,
    sources.CIFAR_SHAPE,
    0,
    "or use config.data.source='archive'",
  )
  for split, (images, labels) in zip(("train", "test"), splits):
    arrays.check_split(
      images,
      labels,
      num_classes,
      sources.CIFAR_SHAPE,
      f"TFDS {name} {split} split at {version_dir}",
    )
  return arrays.make_dataset(name, "tfds", splits[0], splits[1], num_classes)


def _read_tfds_split(
  src, label_key: str, shape, image_size: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
  """Reads a random-access TFDS split into (uint8 images, int32 labels).

  `shape` is the images' [H, W, C] (None where the dataset's images vary); with
  `image_size` every image is resized to that square size, otherwise each must have
  the shape of the first.
  """
  n = len(src)
  images = labels = None
  for i in range(n):
    example = src[i]
    image = np.asarray(example["image"])
    if image.ndim == 2:
      image = image[..., None]
    if image_size:
      image = arrays.resize_image(image, image_size)
    if images is None:
      expected = (
        tuple(image.shape)
        if image_size
        else tuple(d if d is not None else s for d, s in zip(shape, image.shape))
      )
      images = np.empty((n,) + expected, np.uint8)
      labels = np.empty(n, np.int32)
    if image.shape != images.shape[1:]:
      raise errors.DatasetFormatError(
        f"{where}: example {i} has an image of shape {image.shape}, expected "
        f"{images.shape[1:]}"
        + ("" if image_size else "; set config.data.image_size to resize them")
      )
    images[i] = image
    labels[i] = int(example[label_key])
  if images is None:
    raise errors.DatasetFormatError(f"{where} holds no examples")
  return images, labels


# ---------------------------------------------------------------------------
# Any prepared image-classification dataset: `config.data.source='tfds:<name>'`.


def _json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise errors.DatasetFormatError(
      f"{path} is missing: the folder is not a prepared TFDS dataset"
    ) from None
  except (OSError, ValueError) as e:
    raise errors.DatasetFormatError(
      f"{path} is not readable JSON ({type(e).__name__}: {e})"
    ) from None


def probe_tfds(
  tfds_name: str,
  data_dir: str | None,
  train_split: str = "train",
  test_split: str = "test",
  image_size: int = 0,
) -> tuple[tuple[int, int, int], int, int]:
  """(image shape, number of classes, training examples) of a prepared TFDS dataset,
  from its dataset_info.json and features.json alone (nothing is decoded).

  The image shape is `image_size`² when given; the dataset's own otherwise, which must
  then be fixed (datasets of varying image sizes need `image_size`).
  """
  data_dir = os.path.abspath(data_dir or sources.default_tfds_dir())
  version_dir = find_tfds_dataset(tfds_name, data_dir)
  if version_dir is None:
    raise errors.DatasetNotFoundError(
      f"config.data.source='tfds:{tfds_name}': " + _tfds_not_found(tfds_name, data_dir)
    )
  features_path = os.path.join(version_dir, "features.json")
  features = _json(features_path).get("featuresDict", {}).get("features", {})
  image = features.get("image", {}).get("image")
  num_classes = features.get("label", {}).get("classLabel", {}).get("numClasses")
  if image is None or num_classes is None:
    raise errors.DatasetFormatError(
      f"{features_path}: an image-classification dataset needs an 'image' (Image) and "
      f"a 'label' (ClassLabel) feature; this one has {sorted(features)}"
    )
  dims = [int(d) for d in image.get("shape", {}).get("dimensions", [])]
  if len(dims) != 3 or dims[-1] <= 0:
    raise errors.DatasetFormatError(
      f"{features_path}: the image feature has shape {dims}, expected [H, W, C]"
    )
  if image_size:
    shape = (image_size, image_size, dims[-1])
  elif min(dims) <= 0:
    raise errors.DatasetFormatError(
      f"TFDS {tfds_name} at {version_dir} has images of varying size ({dims}, -1: "
      "varies): set config.data.image_size to resize them to one square size"
    )
  else:
    shape = tuple(dims)
  info_path = os.path.join(version_dir, "dataset_info.json")
  lengths = {
    s.get("name"): sum(int(n) for n in s.get("shardLengths", []))
    for s in _json(info_path).get("splits", [])
  }
  for field, split in (("train_split", train_split), ("test_split", test_split)):
    if split not in lengths:
      raise errors.DatasetFormatError(
        f"{info_path}: no split {split!r} (config.data.{field}); its splits are {sorted(lengths)}"
      )
  return shape, int(num_classes), lengths[train_split]


def load_tfds(
  tfds_name: str,
  data_dir: str | None = None,
  train_split: str = "train",
  test_split: str = "test",
  image_size: int = 0,
  name: str | None = None,
) -> arrays.Dataset:
  """Any prepared TFDS image-classification dataset (array_record; `image` and
  `label` features), its `train_split` and `test_split`, as a `Dataset` called `name`
  with source 'tfds:<tfds_name>'."""
  shape, num_classes, _ = probe_tfds(tfds_name, data_dir, train_split, test_split, image_size)
  data_dir = os.path.abspath(data_dir or sources.default_tfds_dir())
  version_dir = find_tfds_dataset(tfds_name, data_dir)
  alternative = "or use config.data.source='npz' or 'folder'"
  tfds = import_tfds(alternative)
  logging.info("Loading %s from TFDS at %s", tfds_name, version_dir)
  features = _json(os.path.join(version_dir, "features.json"))["featuresDict"]["features"]
  dims = [int(d) for d in features["image"]["image"]["shape"]["dimensions"]]
  own_shape = tuple(d if d > 0 else None for d in dims)
  splits = _read_splits(
    tfds,
    tfds_name,
    data_dir,
    version_dir,
    (train_split, test_split),
    "label",
    own_shape,
    image_size,
    alternative,
  )
  shape = splits[0][0].shape[1:]
  for split, (images, labels) in zip((train_split, test_split), splits):
    arrays.check_split(
      images, labels, num_classes, shape, f"TFDS {tfds_name} {split} split at {version_dir}"
    )
  return arrays.make_dataset(
    name or tfds_name, f"tfds:{tfds_name}", splits[0], splits[1], num_classes
  )
