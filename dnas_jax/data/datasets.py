"""Datasets held in memory as uint8 NHWC arrays.

`load_dataset(name, source, data_dir)` returns a `Dataset`. The names
(`sources.SOURCES`: cifar10, cifar100, tiny_imagenet, digits, synthetic), the sources
each accepts and how to get the files are in the README's Data section. `synthetic` makes random images whose class is readable from the mean colour, for
tests; `digits` scales scikit-learn's 0..16 pixels to 0..255 and splits its 1,797
images by a fixed permutation (seed 0) into 1,500 training and 297 test images.

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
`tfds_cifar`, `tiny_imagenet` and `builtin` (digits, synthetic); `sources` holds the
table of names and sources and the default folders, `arrays` the `Dataset` and its
statistics, `errors` the errors. Their public names are importable from here.
"""

from __future__ import annotations

import os
from typing import Callable

from absl import logging

from dnas_jax.data import arrays
from dnas_jax.data import builtin
from dnas_jax.data import cifar_archive
from dnas_jax.data import errors
from dnas_jax.data import sources
from dnas_jax.data import tfds_cifar
from dnas_jax.data import tiny_imagenet

Dataset = arrays.Dataset
DatasetNotFoundError = errors.DatasetNotFoundError
DatasetFormatError = errors.DatasetFormatError
SOURCES = sources.SOURCES
ALL_SOURCES = sources.ALL_SOURCES
CIFAR_URL = sources.CIFAR_URL
TINY_IMAGENET_URL = sources.TINY_IMAGENET_URL
TINY_IMAGENET_DIR = sources.TINY_IMAGENET_DIR
TINY_IMAGENET_ZIP = sources.TINY_IMAGENET_ZIP
default_archive_dir = sources.default_archive_dir
default_tfds_dir = sources.default_tfds_dir
find_tfds_dataset = tfds_cifar.find_tfds_dataset
load_cifar_tfds = tfds_cifar.load_cifar_tfds
load_cifar_archive = cifar_archive.load_cifar_archive
load_tiny_imagenet = tiny_imagenet.load_tiny_imagenet
load_digits = builtin.load_digits
load_synthetic = builtin.load_synthetic


def load_cifar(name: str, source: str = "auto", data_dir: str | None = None,
               coarse_labels: bool = False) -> arrays.Dataset:
  """CIFAR-10/100 from `source` ('auto': TFDS when prepared, else the archive)."""
  if source == "tfds":
    return tfds_cifar.load_cifar_tfds(name, data_dir, coarse_labels)
  if source == "archive":
    return cifar_archive.load_cifar_archive(name, data_dir, coarse_labels)
  tfds_dir = os.path.abspath(data_dir or sources.default_tfds_dir())
  if tfds_cifar.find_tfds_dataset(name, tfds_dir) is not None:
    try:
      tfds_cifar.import_tfds()
    except ImportError as e:
      logging.warning("A prepared TFDS %s is in %s but cannot be read: %s; trying "
                      "the archive", name, tfds_dir, e)
    else:
      logging.info("source=auto: found a prepared TFDS %s in %s", name, tfds_dir)
      return tfds_cifar.load_cifar_tfds(name, tfds_dir, coarse_labels)
  spec = sources.CIFAR[name]
  archive_dir = os.path.abspath(data_dir or sources.default_archive_dir())
  path = os.path.join(archive_dir, spec.archive)
  if not os.path.isfile(path):
    raise errors.DatasetNotFoundError(
        f"{spec.title} not found (source='auto'): looked for a prepared TFDS dataset "
        f"at {os.path.join(tfds_dir, name, '<version>', 'dataset_info.json')} and for "
        f"the archive at {path}; "
        + sources.archive_not_found(path, sources.CIFAR_URL, spec.archive))
  logging.info("source=auto: no prepared TFDS %s in %s; using the archive", name,
               tfds_dir)
  return cifar_archive.load_cifar_archive(name, archive_dir, coarse_labels)


def _loader(name: str, source: str,
            data_dir: str | None) -> Callable[..., arrays.Dataset]:
  if name in ("cifar10", "cifar100"):
    return lambda **kw: load_cifar(name, source, data_dir, **kw)
  if name == "tiny_imagenet":
    return lambda **kw: tiny_imagenet.load_tiny_imagenet(data_dir, **kw)
  return {"digits": builtin.load_digits, "synthetic": builtin.load_synthetic}[name]


def load_dataset(name: str, source: str = "auto", data_dir: str | None = None,
                 **kwargs) -> arrays.Dataset:
  """Loads dataset `name` from `source` ('auto' picks the first available).

  Args:
    name: config.data.dataset, one of `SOURCES`' keys.
    source: config.data.source: 'auto' or one of `SOURCES[name]`.
    data_dir: config.data.data_dir: the folder with the archives or the prepared
      TFDS datasets; None means the defaults in the module docstring.
    **kwargs: passed to the loader: `coarse_labels` (cifar100), `num_workers`
      (tiny_imagenet), the `load_synthetic` arguments (synthetic).

  Raises:
    ValueError: unknown name, or a source not valid for it.
    DatasetNotFoundError: the data is not there; the message says where to put it.
    DatasetFormatError: a file is there but not in the published format.
  """
  if name not in SOURCES:
    raise ValueError(f"config.data.dataset={name!r} is not valid; valid values: "
                     f"{sorted(SOURCES)}")
  if source not in ALL_SOURCES:
    raise ValueError(f"config.data.source={source!r} is not valid; valid values: "
                     f"{list(ALL_SOURCES)}")
  if source != "auto" and source not in SOURCES[name]:
    raise ValueError(f"config.data.source={source!r} is not valid for "
                     f"config.data.dataset={name!r}; valid values: "
                     f"{['auto', *SOURCES[name]]}")
  dataset = _loader(name, source, data_dir)(**kwargs)
  logging.info("Dataset %s (source=%s): %d train, %d test images of shape %s, "
               "%d classes", dataset.name, dataset.source, len(dataset.train_labels),
               len(dataset.test_labels), dataset.image_shape, dataset.num_classes)
  return dataset
