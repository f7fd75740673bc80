"""Datasets held in memory as uint8 NHWC arrays.

`load_dataset(name, source, data_dir)` (or `load_from_config(config.data)`) returns a
`Dataset`. The names are the entries of `registry` (built-in: cifar10, cifar100,
tiny_imagenet, digits, synthetic; `registry.register_dataset` adds yours); the sources
each accepts and how to get the files are in the README's Data section. Your own files
need no entry: source 'npz', 'folder' or 'tfds:<name>' reads them (`local_files`,
`tfds_source`; docs/extending.md). `synthetic` makes random images whose class is
readable from the mean colour, for tests; `digits` scales scikit-learn's 0..16 pixels to
0..255 and splits its 1,797 images by a fixed permutation (seed 0) into 1,500 training
and 297 test images.

`auto` for CIFAR takes TFDS when a prepared dataset is found (and tensorflow-datasets
is installed), else the archive, and logs which it took and from where;
`Dataset.source` records it.

Orders are deterministic: CIFAR archives in the published order (data_batch_1..5, then
test_batch); Tiny-ImageNet classes in sorted wnid order (label = index in
sorted(wnids.txt)), training images by class then sorted file name, and the labelled
`val` set (its 'test' split here; the unlabelled `test` folder is ignored) by sorted
file name. Per-channel mean/std (0..1 scale) are computed from each training set.

Errors: missing data raises `DatasetNotFoundError` naming the exact path looked for and
what to put there; an unreadable or inconsistent file raises `DatasetFormatError`
naming the file; an unknown name or source raises `ValueError` naming the config field.

The loaders live in modules beside this one, one per format: `cifar_archive`,
`tfds_source`, `cifar` (the choice between them), `tiny_imagenet`, `builtin` (digits,
synthetic) and `local_files` (npz, folder); `registry` holds the table of names;
`sources` the CIFAR layout and the default folders, `arrays` the `Dataset` and its
statistics, `errors` the errors. Their public names are importable from here.
"""

from __future__ import annotations

from typing import Any, Mapping

from dnas_jax.data import arrays
from dnas_jax.data import builtin
from dnas_jax.data import cifar
from dnas_jax.data import cifar_archive
from dnas_jax.data import errors
from dnas_jax.data import local_files
from dnas_jax.data import registry
from dnas_jax.data import sources
from dnas_jax.data import tfds_source
from dnas_jax.data import tiny_imagenet

Dataset = arrays.Dataset
DatasetNotFoundError = errors.DatasetNotFoundError
DatasetFormatError = errors.DatasetFormatError
DataConfigError = errors.DataConfigError
DataConfig = registry.DataConfig
register_dataset = registry.register_dataset
CIFAR_URL = sources.CIFAR_URL
TINY_IMAGENET_URL = sources.TINY_IMAGENET_URL
TINY_IMAGENET_DIR = sources.TINY_IMAGENET_DIR
TINY_IMAGENET_ZIP = sources.TINY_IMAGENET_ZIP
default_archive_dir = sources.default_archive_dir
default_tfds_dir = sources.default_tfds_dir
find_tfds_dataset = tfds_source.find_tfds_dataset
load_cifar = cifar.load_cifar
load_cifar_tfds = tfds_source.load_cifar_tfds
load_cifar_archive = cifar_archive.load_cifar_archive
load_tiny_imagenet = tiny_imagenet.load_tiny_imagenet
load_digits = builtin.load_digits
load_synthetic = builtin.load_synthetic
load_npz = local_files.load_npz
load_folder = local_files.load_folder
load_tfds = tfds_source.load_tfds


def load_dataset(
  name: str,
  source: str = "auto",
  data_dir: str | None = None,
  *,
  path: str = "",
  image_size: int = 0,
  train_split: str = "train",
  test_split: str = "test",
  **kwargs,
) -> arrays.Dataset:
  """Loads dataset `name` from `source` ('auto' picks the first available).

  Args:
    name: config.data.dataset: a registered name, or the name of your own files.
    source: config.data.source: 'auto', one of the dataset's sources, or for your own
      files 'npz', 'folder' or 'tfds:<name>'.
    data_dir: config.data.data_dir: the folder with the archives or the prepared
      TFDS datasets; None means the defaults in the module docstring.
    path: config.data.path: the npz file or the folder tree.
    image_size: config.data.image_size: resize every image to this square size (0:
      keep the size).
    train_split, test_split: config.data.train_split, test_split: the splits of a
      folder tree or a TFDS dataset.
    **kwargs: passed to the loader: `coarse_labels` (cifar100), `num_workers`
      (tiny_imagenet), the `load_synthetic` arguments (synthetic).

  Raises:
    ValueError: unknown name, or a source not valid for it (`DataConfigError`).
    DatasetNotFoundError: the data is not there; the message says where to put it.
    DatasetFormatError: a file is there but not in the published format.
  """
  return registry.load(
    registry.DataConfig(name, source, data_dir or "", path, image_size, train_split, test_split),
    **kwargs,
  )


def load_from_config(data: Mapping[str, Any]) -> arrays.Dataset:
  """The dataset of `config.data` (fields a stored config lacks take their defaults)."""
  return registry.load(data)
