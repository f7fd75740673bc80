"""Random-access sources of encoded images for the streaming pipeline (`streaming`):
nothing is decoded when they are opened, and each record is read when it is asked for,
in whichever process asks (they pickle small, to grain's worker processes).

* `FolderSource`: an ImageFolder tree, `ROOT/<split>/<class>/*.JPEG|jpg|png`, classes
  the sorted class folders (the layout and its checks: `local_files.folder_files`).
* `TfdsSource`: a TFDS dataset prepared in array_record format, read through
  `tfds.data_source` with the image left encoded (`tfds.decode.SkipDecoding`), so both
  sources give the same bytes to the same decoder (`image_transforms`); no TensorFlow
  needed.

`read(i)` gives (encoded bytes, label, where): `where` names the file or record for
the error when the bytes are not a readable image.
"""

from __future__ import annotations

import os

import numpy as np

from dnas_jax.data import errors
from dnas_jax.data import local_files
from dnas_jax.data import tfds_source


class FolderSource:
  """The images of one split of a folder tree (files and labels listed once)."""

  def __init__(self, files: list[str], labels: np.ndarray, num_classes: int):
    self.files = list(files)
    self.labels = np.asarray(labels, np.int32)
    self.num_classes = num_classes

  def __len__(self) -> int:
    return len(self.files)

  def read(self, i: int) -> tuple[bytes, int, str]:
    file = self.files[i]
    where = f"{file} (under config.data.path)"
    try:
      with open(file, "rb") as f:
        data = f.read()
    except OSError as e:
      raise errors.DatasetFormatError(
        f"{where} is not readable ({type(e).__name__}: {e})"
      ) from None
    return data, int(self.labels[i]), where


def folder_sources(
  path: str, train_split: str = "train", test_split: str = "val"
) -> tuple[FolderSource, FolderSource]:
  """(training, test) sources of `path/<train_split>/<class>/...` and
  `path/<test_split>/<class>/...`; a missing folder or a class folder without images
  is a one-line error naming it (before anything is decoded)."""
  classes, (train, y_train), (test, y_test) = local_files.folder_files(
    path, train_split, test_split
  )
  return FolderSource(train, y_train, len(classes)), FolderSource(test, y_test, len(classes))


class TfdsSource:
  """One split of a prepared TFDS dataset (array_record), the images left encoded."""

  def __init__(
    self, tfds_name: str, split: str, data_dir: str, num_examples: int, num_classes: int
  ):
    self.tfds_name, self.split, self.data_dir = tfds_name, split, data_dir
    self.num_examples, self.num_classes = num_examples, num_classes
    self._source = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None  # each process opens its own reader
    return state

  def __len__(self) -> int:
    return self.num_examples

  def _open(self):
    if self._source is None:
      tfds = tfds_source.import_tfds("or use config.data.source='folder'")
      self._source = tfds.data_source(
        self.tfds_name,
        split=self.split,
        data_dir=self.data_dir,
        download=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        builder_kwargs={"file_format": "array_record"},
      )
    return self._source

  def read(self, i: int) -> tuple[bytes, int, str]:
    example = self._open()[i]
    where = f"record {i} of TFDS {self.tfds_name} {self.split} split in {self.data_dir}"
    return bytes(example["image"]), int(example["label"]), where


def tfds_sources(
  tfds_name: str,
  data_dir: str | None,
  train_split: str = "train",
  test_split: str = "validation",
  not_found: str | None = None,
) -> tuple[TfdsSource, TfdsSource]:
  """(training, test) sources of a prepared TFDS dataset; its facts come from its
  dataset_info.json and features.json (`tfds_source.probe_tfds`). `not_found`, when
  given, replaces the message of a dataset that is not there."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir or tfds_source.sources.default_tfds_dir()))
  if not_found is not None and tfds_source.find_tfds_dataset(tfds_name, data_dir) is None:
    raise errors.DatasetNotFoundError(not_found)
  # image_size=1: the shape does not matter here (every image is cropped and resized).
  _, num_classes, _ = tfds_source.probe_tfds(tfds_name, data_dir, train_split, test_split, 1)
  version_dir = tfds_source.find_tfds_dataset(tfds_name, data_dir)
  info = tfds_source._json(os.path.join(version_dir, "dataset_info.json"))  # pylint: disable=protected-access
  lengths = {
    s.get("name"): sum(int(n) for n in s.get("shardLengths", [])) for s in info.get("splits", [])
  }
  return tuple(
    TfdsSource(tfds_name, split, data_dir, lengths[split], num_classes)
    for split in (train_split, test_split)
  )
