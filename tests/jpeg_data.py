"""A tiny ImageNet-like dataset for the streaming tests: JPEGs of several sizes and
aspect ratios in a few classes, written as a folder tree and as a real TFDS
array_record dataset (TFDS's own example serializer, no TensorFlow)."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image
import pytest

TFDS_NAME = "tiny_jpegs"


def _jpeg(rng) -> bytes:
  h, w = (int(v) for v in rng.integers(20, 91, 2))
  # Smooth colour fields (JPEG-like content), with a bright left edge for the flip test.
  y, x = np.mgrid[0:h, 0:w]
  base = rng.integers(0, 256, 3)
  image = (base + 60 * np.sin(x[..., None] / (3 + rng.random() * 9) + y[..., None] / 7)) % 256
  buf = io.BytesIO()
  Image.fromarray(image.astype(np.uint8)).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def _write_tfds(data_dir, name, splits, classes):
  """data_dir/name/1.0.0: `splits` {split: [(jpeg bytes, label)]} written with TFDS's own
  example serializer into array_record files, with its dataset_info.json and
  features.json (as `tfds build --file_format=array_record` writes them)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  ar = pytest.importorskip("array_record.python.array_record_module")
  from tensorflow_datasets.core import dataset_info  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top

  folder = os.path.join(data_dir, name, "1.0.0")
  os.makedirs(folder)
  features = tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "label": tfds.features.ClassLabel(names=list(classes)),
    }
  )
  serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
  infos = []
  for split, records in splits.items():
    path = os.path.join(folder, f"{name}-{split}.array_record-00000-of-00001")
    writer = ar.ArrayRecordWriter(path, "group_size:1")
    for data, label in records:
      writer.write(serializer.serialize_example({"image": data, "label": label}))
    writer.close()
    template = tfds.core.ShardedFileTemplate(
      data_dir=folder,
      template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name=name,
      split=split,
      filetype_suffix="array_record",
    )
    infos.append(
      tfds.core.SplitInfo(
        name=split, shard_lengths=[len(records)], num_bytes=0, filename_template=template
      )
    )
  identity = dataset_info.DatasetIdentity(
    name=name, version=tfds.core.Version("1.0.0"), data_dir=folder, module_name=""
  )
  info = tfds.core.DatasetInfo(builder=identity, features=features)
  info.set_file_format(tfds.core.file_adapters.FileFormat.ARRAY_RECORD)
  info.set_splits(tfds.core.SplitDict(infos))
  info.write_to_directory(folder)


def write_tiny_imagenet(tmp, classes, num_train, num_val, seed=0):
  """(folder root, TFDS data_dir) of the same JPEGs: `tmp/imagenet/{train,val}/<class>/`
  and TFDS's `tiny_jpegs` (splits 'train' and 'test') in `tmp/tfds`; num_train and
  num_val images, split evenly over `classes`."""
  rng = np.random.default_rng(seed)
  root = tmp / "imagenet"
  splits = {}
  for split, count in (("train", num_train), ("val", num_val)):
    records = []
    for c, name in enumerate(classes):
      os.makedirs(root / split / name)
      for i in range(count // len(classes)):
        data = _jpeg(rng)
        (root / split / name / f"n{c:02d}_{i:03d}.JPEG").write_bytes(data)
        records.append((data, c))
    splits[split] = records
  tfds_dir = str(tmp / "tfds")
  _write_tfds(tfds_dir, TFDS_NAME, {"train": splits["train"], "test": splits["val"]}, classes)
  return root, tfds_dir
