"""ImageNet (ILSVRC 2012) and other datasets too large for memory, opened for the
streaming pipeline (`streaming`) from `config.data`:

* `dataset='imagenet2012'`, `source='tfds'` (or 'auto'): TFDS's imagenet2012 prepared
  in array_record format under `data_dir` (splits 'train' and 'validation');
* `source='folder'`: the ImageFolder tree at `path`, `path/<train_split>/<class>/*.JPEG`
  and `path/<test_split>/<class>/...` (for ImageNet, the validation images moved into
  class folders);
* `source='tfds:<name>'`: any prepared TFDS image-classification dataset.

Nothing is decoded when the sources are opened (the facts come from the folder
listing or TFDS's JSON files), so a wrong path is reported before anything compiles.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from dnas_jax.data import errors
from dnas_jax.data import sources
from dnas_jax.data import stream_sources
from dnas_jax.data import streaming

IMAGENET = "imagenet2012"
IMAGENET_URL = "https://image-net.org/download-images"
IMAGENET_ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
STREAM_SOURCES = ("auto", "tfds", "folder", "tfds:<name>")


@dataclasses.dataclass(frozen=True)
class StreamingData:
  """The two sources of a streamed dataset and what the model and batches need."""

  name: str
  train: Any  # a stream_sources source: len(), read(i)
  test: Any
  num_classes: int
  mean: tuple[float, ...] = streaming.IMAGENET_MEAN
  std: tuple[float, ...] = streaming.IMAGENET_STD


def imagenet_not_found(data_dir: str) -> str:
  """Where ImageNet was looked for and how to prepare it (one line)."""
  manual = os.path.join(data_dir, "downloads", "manual")
  return (
    f"ImageNet ({IMAGENET}) not found: looked for "
    f"{os.path.join(data_dir, IMAGENET, '<version>', 'dataset_info.json')}. Download "
    f"{' and '.join(IMAGENET_ARCHIVES)} from {IMAGENET_URL} into {manual} and, on a "
    f"machine with TensorFlow, run `tfds build {IMAGENET} --data_dir={data_dir} "
    f"--manual_dir={manual} --file_format=array_record`; or pass {sources.DATA_FIELD}, "
    "or use config.data.source='folder' with config.data.path=ROOT "
    "(ROOT/train/<class>/*.JPEG, ROOT/val/<class>/*.JPEG)"
  )


def _field(data, name: str, default):
  if isinstance(data, Mapping):
    return data.get(name, default)
  return getattr(data, name, default)


def open_streaming(data) -> StreamingData:
  """The training and test sources `config.data` names (module docstring); fields
  read: dataset, source, data_dir, path, train_split, test_split."""
  name = _field(data, "dataset", IMAGENET)
  source = _field(data, "source", "auto")
  data_dir = _field(data, "data_dir", "") or sources.default_tfds_dir()
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  train_split = _field(data, "train_split", "train")
  test_split = _field(data, "test_split", "")
  if source == "folder":
    path = _field(data, "path", "")
    if not path:
      raise errors.DataConfigError(
        "config.data.source='folder' needs config.data.path: the folder that holds "
        f"{train_split}/<class>/ and {test_split or 'val'}/<class>/"
      )
    train, test = stream_sources.folder_sources(path, train_split, test_split or "val")
  elif source in ("auto", "tfds") and name == IMAGENET:
    train, test = stream_sources.tfds_sources(
      IMAGENET, data_dir, train_split, test_split or "validation", imagenet_not_found(data_dir)
    )
  elif source.startswith("tfds:") and len(source) > 5:
    train, test = stream_sources.tfds_sources(
      source[5:], data_dir, train_split, test_split or "test"
    )
  else:
    raise errors.DataConfigError(
      f"config.data.source={source!r} cannot stream config.data.dataset={name!r}; "
      f"valid values: {list(STREAM_SOURCES)} ('auto' and 'tfds' for {IMAGENET} only)"
    )
  return StreamingData(name, train, test, train.num_classes)
