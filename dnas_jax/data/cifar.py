"""CIFAR-10/100 from either source: `source='auto'` takes a prepared TFDS dataset when
there is one (and tensorflow-datasets is installed), else the archive, and logs which."""

from __future__ import annotations

import os

from absl import logging

from dnas_jax.data import arrays
from dnas_jax.data import cifar_archive
from dnas_jax.data import errors
from dnas_jax.data import sources
from dnas_jax.data import tfds_source


def load_cifar(
  name: str, source: str = "auto", data_dir: str | None = None, coarse_labels: bool = False
) -> arrays.Dataset:
  """CIFAR-10/100 from `source` ('auto': TFDS when prepared, else the archive)."""
  if source == "tfds":
    return tfds_source.load_cifar_tfds(name, data_dir, coarse_labels)
  if source == "archive":
    return cifar_archive.load_cifar_archive(name, data_dir, coarse_labels)
  tfds_dir = os.path.abspath(data_dir or sources.default_tfds_dir())
  if tfds_source.find_tfds_dataset(name, tfds_dir) is not None:
    try:
      tfds_source.import_tfds()
    except ImportError as e:
      logging.warning(
        "A prepared TFDS %s is in %s but cannot be read: %s; trying the archive", name, tfds_dir, e
      )
    else:
      logging.info("source=auto: found a prepared TFDS %s in %s", name, tfds_dir)
      return tfds_source.load_cifar_tfds(name, tfds_dir, coarse_labels)
  spec = sources.CIFAR[name]
  archive_dir = os.path.abspath(data_dir or sources.default_archive_dir())
  path = os.path.join(archive_dir, spec.archive)
  if not os.path.isfile(path):
    raise errors.DatasetNotFoundError(
      f"{spec.title} not found (source='auto'): looked for a prepared TFDS dataset "
      f"at {os.path.join(tfds_dir, name, '<version>', 'dataset_info.json')} and for "
      f"the archive at {path}; " + sources.archive_not_found(path, sources.CIFAR_URL, spec.archive)
    )
  logging.info("source=auto: no prepared TFDS %s in %s; using the archive", name, tfds_dir)
  return cifar_archive.load_cifar_archive(name, archive_dir, coarse_labels)
