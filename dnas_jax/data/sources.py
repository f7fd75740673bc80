"""Where the built-in datasets' files are published and where they are looked for, and
the layout of the CIFAR sets (which sources each name accepts: `registry`)."""

from __future__ import annotations

import dataclasses
import os

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_DIR = "tiny-imagenet-200"
TINY_IMAGENET_ZIP = "tiny-imagenet-200.zip"
CIFAR_SHAPE = (32, 32, 3)
# The flag that names the data folder, for the messages that say where to put data.
DATA_FIELD = "--config.data.data_dir=DIR"


@dataclasses.dataclass(frozen=True)
class CifarSpec:
  title: str
  archive: str
  train_members: tuple[str, ...]
  test_members: tuple[str, ...]


CIFAR = {
  "cifar10": CifarSpec(
    "CIFAR-10",
    "cifar-10-python.tar.gz",
    tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    ("cifar-10-batches-py/test_batch",),
  ),
  "cifar100": CifarSpec(
    "CIFAR-100", "cifar-100-python.tar.gz", ("cifar-100-python/train",), ("cifar-100-python/test",)
  ),
}


def cifar_labels(name: str, coarse_labels: bool) -> tuple[str, int]:
  """(TFDS label key, number of classes)."""
  if name == "cifar10":
    if coarse_labels:
      raise ValueError("coarse_labels=True is only valid for config.data.dataset='cifar100'")
    return "label", 10
  return ("coarse_label", 20) if coarse_labels else ("label", 100)


def default_archive_dir() -> str:
  """Where archives are looked for when no data_dir is given."""
  return os.path.expanduser(os.environ.get("DNAS_DATA_DIR", "~/dnas_data"))


def default_tfds_dir() -> str:
  """TFDS's own default data dir, found without importing tensorflow_datasets."""
  return os.path.expanduser(
    os.environ.get("TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets"))
  )


def archive_not_found(path: str, url: str, what: str) -> str:
  """The end of a not-found message: where to download `what` and where to put it."""
  return (
    f"download {what} from {url} and put it at {path}, or pass {DATA_FIELD} "
    f"(the folder that holds it)"
  )
