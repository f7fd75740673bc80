"""The dataset registry and your own data: npz, folder and tfds:<name> sources, their
one-line errors before anything is compiled, and docs/extending.md's "Your own data"
run as written."""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from dnas_jax.configs import test as test_config
from dnas_jax.configs import test_retrain
from dnas_jax.data import arrays
from dnas_jax.data import registry
from dnas_jax.data.datasets import DatasetFormatError, DatasetNotFoundError, load_dataset
from dnas_jax.retrain import setup as retrain_setup
from dnas_jax.training import validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERMUTATION_SEED = 0  # registry.shuffled_train's


def _stats_ok(ds):
  x = ds.train_images.astype(np.float64) / 255.0
  np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 1, 2)), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(ds.std, x.std(axis=(0, 1, 2)), rtol=1e-9, atol=1e-12)


def _shuffled(images, labels):
  order = np.random.default_rng(PERMUTATION_SEED).permutation(len(labels))
  return images[order], labels[order]


def _one_line(excinfo, *parts):
  msg = str(excinfo.value)
  assert "\n" not in msg, msg
  for part in parts:
    assert str(part) in msg, (part, msg)
  e = excinfo.value
  assert e.__cause__ is None and (e.__suppress_context__ or e.__context__ is None)


@pytest.fixture
def registered():
  """Registers datasets for one test and removes them after it."""
  names = []

  def register(name, *args, **kwargs):
    names.append(name)
    return registry.register_dataset(name, *args, **kwargs)

  yield register
  for name in names:
    registry.unregister_dataset(name)


# ---------------------------------------------------------------------------
# The registry.


def test_builtins_are_registered_entries():
  table = registry.registered_datasets()
  assert list(table)[:5] == ["cifar10", "cifar100", "tiny_imagenet", "digits", "synthetic"]
  facts = {n: (s.num_classes, s.image_shape, s.num_train, s.sources) for n, s in table.items()}
  assert facts["cifar10"] == (10, (32, 32, 3), 50_000, ("tfds", "archive"))
  assert facts["cifar100"] == (100, (32, 32, 3), 50_000, ("tfds", "archive"))
  assert facts["tiny_imagenet"] == (200, (64, 64, 3), 100_000, ("archive",))
  assert facts["digits"] == (10, (8, 8, 1), 1_500, ("digits",))
  assert facts["synthetic"] == (10, (8, 8, 3), 256, ("synthetic",))
  assert registry.source_names() == [
    "auto",
    "tfds",
    "archive",
    "digits",
    "synthetic",
    "npz",
    "folder",
    "tfds:<name>",
  ]
  with pytest.raises(ValueError, match="'cifar10' is a built-in dataset"):
    registry.register_dataset("cifar10", lambda s, d: None, num_classes=10, image_shape=(32, 32, 3))
  with pytest.raises(ValueError, match="built-in"):
    registry.unregister_dataset("digits")


def _arrays(n_train=20, n_test=6, shape=(12, 12, 3), classes=4, seed=0):
  rng = np.random.default_rng(seed)
  return (
    rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
    rng.integers(0, classes, n_train),
    rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8),
    rng.integers(0, classes, n_test),
  )


def test_registered_arrays_load_with_computed_or_given_statistics(registered):
  data = _arrays()
  registered(
    "blobs", lambda source, data_dir: data, num_classes=4, image_shape=(12, 12, 3), num_train=20
  )
  ds = load_dataset("blobs")
  assert (ds.name, ds.source, ds.num_classes, ds.image_shape) == ("blobs", "blobs", 4, (12, 12, 3))
  np.testing.assert_array_equal(ds.train_images, data[0])
  np.testing.assert_array_equal(ds.test_labels, data[3])
  assert ds.train_labels.dtype == np.int32
  _stats_ok(ds)
  registered(
    "blobs",
    lambda source, data_dir: data,
    num_classes=4,
    image_shape=(12, 12, 3),
    mean=(0.5, 0.4, 0.3),
    std=(0.2, 0.2, 0.25),
  )
  ds = load_dataset("blobs")
  assert ds.mean == (0.5, 0.4, 0.3) and ds.std == (0.2, 0.2, 0.25)


def test_registered_loader_receives_source_and_data_dir(registered, tmp_path):
  calls = []

  def loader(source, data_dir, scale=1):
    calls.append((source, data_dir, scale))
    return _arrays(shape=(8, 8))

  registered("gray", loader, num_classes=4, image_shape=(8, 8, 1), sources=("disk", "web"))
  ds = load_dataset("gray", "web", str(tmp_path), scale=2)
  assert ds.image_shape == (8, 8, 1) and ds.source == "web"
  assert load_dataset("gray").source == "disk"
  assert calls == [("web", str(tmp_path), 2), ("auto", None, 1)]
  with pytest.raises(
    ValueError,
    match=r"config\.data\.source='archive' is not valid "
    r"for config\.data\.dataset='gray'; valid values: \['auto', "
    r"'disk', 'web'\]",
  ):
    load_dataset("gray", "archive")


@pytest.mark.parametrize(
  "edit, match",
  [
    (lambda d: (d[0][:, :6], *d[1:]), r"expected uint8 images of shape \(12, 12, 3\)"),
    (lambda d: (d[0], d[1][:-1], *d[2:]), "19 labels for 20 images"),
    (lambda d: (*d[:3], d[3] + 4), r"labels must lie in \[0, 4\)"),
    (lambda d: (d[0].astype(np.float32), *d[1:]), "expected uint8 images"),
    (lambda d: (*d[:3], d[3].astype(np.float32)), "labels must be integers"),
  ],
)
def test_registered_arrays_must_match_the_registration(registered, edit, match):
  registered(
    "bad", lambda source, data_dir: edit(_arrays()), num_classes=4, image_shape=(12, 12, 3)
  )
  with pytest.raises(DatasetFormatError, match=match) as excinfo:
    load_dataset("bad")
  _one_line(excinfo, "the loader of dataset 'bad'")


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"image_shape": (12, 12)}, "image_shape must be three positive integers"),
    ({"num_classes": 0}, "num_classes must be a positive integer"),
    ({"num_train": 0}, "num_train must be a positive integer or None"),
    ({"sources": ("npz",)}, "must be names other than 'auto'"),
    ({"mean": (0.5,)}, "mean must be 3 finite numbers"),
    ({"mean": (0.5,) * 3, "std": (0.2, 0.0, 0.2)}, "std must be 3 finite positive"),
  ],
)
def test_register_dataset_checks_its_facts(kwargs, match):
  facts = {"num_classes": 4, "image_shape": (12, 12, 3), **kwargs}
  with pytest.raises(ValueError, match=match):
    registry.register_dataset("checked", lambda s, d: None, **facts)
  assert "checked" not in registry.registered_datasets()


def test_image_size_resizes_a_registered_dataset():
  ds = load_dataset("digits", image_size=16)
  digits = load_dataset("digits")
  assert ds.image_shape == (16, 16, 1) and ds.num_classes == 10
  np.testing.assert_array_equal(ds.train_images[3], arrays.resize_image(digits.train_images[3], 16))
  _stats_ok(ds)
  spec = registry.resolve({"dataset": "digits", "source": "auto", "image_size": 16})
  assert spec.image_shape == (16, 16, 1) and spec.num_train == 1_500


def test_validation_and_dry_run_read_the_registry(registered):
  def never(source, data_dir):
    raise AssertionError("the dry run must not load data")

  registered("scans", never, num_classes=7, image_shape=(96, 96, 1), num_train=40)
  config = test_retrain.get_config()
  config.data.dataset, config.data.source = "scans", "auto"
  config.batch_size = 48
  with pytest.raises(
    validation.ConfigError,
    match="config.batch_size=48 is larger than the 40 training images of scans",
  ):
    validation.validate_train_config(config)
  config.batch_size = 16
  config.model.auxiliary = True
  lines = retrain_setup.parameter_count_lines(config)
  excluding, total = (int(line.split()[1]) for line in lines[:2])
  config.model.auxiliary = False
  without = int(retrain_setup.parameter_count_lines(config)[0].split()[1])
  assert excluding == without and total > excluding
  search = test_config.get_config()
  search.data.dataset, search.data.source = "scans", "auto"
  search.batch_size = 24  # the smaller search half has 20 images
  with pytest.raises(
    validation.ConfigError, match="larger than the 20 images of the smaller search split"
  ):
    validation.validate_search_config(search)


@pytest.mark.parametrize(
  "data, match",
  [
    (
      {"dataset": "imagenet"},
      r"config.data.dataset='imagenet' is not valid; valid "
      r"values: \['cifar10'.*or, for your own files, any name with config.data.source "
      r"one of \['npz', 'folder', 'tfds:<name>'\]",
    ),
    (
      {"source": "web"},
      r"config.data.source='web' is not valid; valid values: "
      r"\['auto', 'tfds', 'archive', 'digits', 'synthetic', 'npz', 'folder', "
      r"'tfds:<name>'\]",
    ),
    (
      {"dataset": "synthetic", "source": "folder", "path": "x"},
      r"config.data.dataset='synthetic' is a registered dataset; the data of "
      r"config.data.source='folder' needs a name of its own",
    ),
    (
      {"dataset": "mine", "source": "npz"},
      r"config.data.source='npz' reads "
      r"config.data.path, which is empty",
    ),
    ({"dataset": "my data", "source": "npz", "path": "x.npz"}, "must be a name of"),
    ({"dataset": "mine", "source": "tfds:"}, "names no TFDS dataset"),
    ({"image_size": -1}, r"config.data.image_size=-1 must be a non-negative integer"),
    ({"train_split": ""}, r"config.data.train_split='' must be a non-empty string"),
  ],
)
def test_bad_data_fields_are_config_errors(data, match):
  config = test_config.get_config()
  config.data.update(data)
  with pytest.raises(validation.ConfigError, match=match):
    validation.validate_search_config(config)


# ---------------------------------------------------------------------------
# npz.


def _write_npz(path, drop=(), **arrays_):
  rng = np.random.default_rng(1)
  data = {
    "x_train": rng.integers(0, 256, (30, 10, 10, 3), dtype=np.uint8),
    "y_train": rng.permutation(np.arange(30) % 3),
    "x_test": rng.integers(0, 256, (9, 10, 10, 3), dtype=np.uint8),
    "y_test": np.arange(9) % 3,
  }
  data.update(arrays_)
  np.savez(path, **{k: v for k, v in data.items() if k not in drop})
  return data


def test_npz_source(tmp_path):
  path = tmp_path / "mine.npz"
  data = _write_npz(path)
  ds = load_dataset("mine", "npz", path=str(path))
  assert (ds.name, ds.source, ds.num_classes, ds.image_shape) == ("mine", "npz", 3, (10, 10, 3))
  x, y = _shuffled(data["x_train"], data["y_train"])
  np.testing.assert_array_equal(ds.train_images, x)
  np.testing.assert_array_equal(ds.train_labels, y)
  np.testing.assert_array_equal(ds.test_images, data["x_test"])
  np.testing.assert_array_equal(ds.test_labels, data["y_test"])
  _stats_ok(ds)


def test_npz_one_channel_class_names_and_resize(tmp_path):
  path = tmp_path / "gray.npz"
  data = _write_npz(
    path,
    x_train=np.full((30, 6, 6), 7, np.uint8),
    x_test=np.arange(9 * 36, dtype=np.uint8).reshape(9, 6, 6),
    class_names=np.array(["a", "b", "c", "d", "e"]),
  )
  ds = load_dataset("gray", "npz", path=str(path))
  assert ds.image_shape == (6, 6, 1) and ds.num_classes == 5
  resized = load_dataset("gray", "npz", path=str(path), image_size=12)
  assert resized.image_shape == (12, 12, 1)
  np.testing.assert_array_equal(
    resized.test_images[4], arrays.resize_image(data["x_test"][4][..., None], 12)
  )
  spec = registry.resolve({"dataset": "gray", "source": "npz", "path": str(path), "image_size": 12})
  assert (spec.image_shape, spec.num_classes, spec.num_train) == ((12, 12, 1), 5, 30)


# ---------------------------------------------------------------------------
# folder.


def _png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def write_folder(root, sizes=None, classes=("dog", "cat", "bird"), per_class=4):
  """root/train/<class>/img_<i>.png (written out of order) and root/test/...; returns
  {path: RGB array}."""
  rng = np.random.default_rng(2)
  written = {}
  for split, count in (("train", per_class), ("test", 2)):
    for c in classes:
      for i in reversed(range(count)):
        h, w = (sizes or {}).get((split, c, i), (8, 12))
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = os.path.join(root, split, c, f"img_{i}.png")
        _png(path, array)
        written[path] = array
  return written


def test_folder_source_sorted_classes_and_files(tmp_path):
  written = write_folder(tmp_path)
  gray = np.arange(96, dtype=np.uint8).reshape(8, 12)
  Image.fromarray(gray, "L").save(tmp_path / "train" / "cat" / "img_1.png")
  written[str(tmp_path / "train" / "cat" / "img_1.png")] = np.stack([gray] * 3, -1)
  (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
  ds = load_dataset("pets", "folder", path=str(tmp_path))
  assert (ds.name, ds.source, ds.num_classes, ds.image_shape) == ("pets", "folder", 3, (8, 12, 3))
  classes = ["bird", "cat", "dog"]
  order = [(c, i) for c in classes for i in range(4)]
  x = np.stack([written[str(tmp_path / "train" / c / f"img_{i}.png")] for c, i in order])
  y = np.asarray([classes.index(c) for c, _ in order])
  x, y = _shuffled(x, y)
  np.testing.assert_array_equal(ds.train_images, x)
  np.testing.assert_array_equal(ds.train_labels, y)
  np.testing.assert_array_equal(ds.test_labels, [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(
    ds.test_images[3], written[str(tmp_path / "test" / "cat" / "img_1.png")]
  )
  _stats_ok(ds)
  # Both halves of the search's split hold every class.
  assert set(ds.train_labels[:6]) == set(ds.train_labels[6:]) == {0, 1, 2}


def test_folder_resize_and_other_split_names(tmp_path):
  sizes = {("train", "dog", 0): (20, 12), ("test", "cat", 1): (5, 7)}
  written = write_folder(tmp_path, sizes)
  os.rename(tmp_path / "test", tmp_path / "val")
  with pytest.raises(DatasetNotFoundError, match="no folder .*test: a folder dataset is"):
    load_dataset("pets", "folder", path=str(tmp_path))
  ds = load_dataset("pets", "folder", path=str(tmp_path), image_size=16, test_split="val")
  assert ds.image_shape == (16, 16, 3) and len(ds.test_labels) == 6
  np.testing.assert_array_equal(
    ds.test_images[3],
    arrays.resize_image(written[str(tmp_path / "test" / "cat" / "img_1.png")], 16),
  )
  spec = registry.resolve(
    {"dataset": "pets", "source": "folder", "path": str(tmp_path), "test_split": "val"}
  )
  assert (spec.image_shape, spec.num_classes, spec.num_train) == ((8, 12, 3), 3, 12)


# ---------------------------------------------------------------------------
# tfds:<name>: a real array_record dataset, written with TFDS's own serializer.


def write_tfds_dataset(data_dir, name, splits, num_classes, shape=(None, None, 3), version="1.0.0"):
  """data_dir/name/version: `splits` {split: (images, labels)} as PNG-encoded examples
  in array_record files, with the dataset_info.json and features.json TFDS reads."""
  tfds = pytest.importorskip(
    "tensorflow_datasets",
    reason="tensorflow_datasets is not importable: no TFDS dataset can be written or read",
  )
  ar = pytest.importorskip(
    "array_record.python.array_record_module", reason="array_record is not importable"
  )
  from tensorflow_datasets.core import dataset_info  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import example_serializer  # pylint: disable=g-import-not-at-top

  folder = os.path.join(data_dir, name, version)
  os.makedirs(folder)
  features = tfds.features.FeaturesDict(
    {
      "image": tfds.features.Image(shape=shape),
      "label": tfds.features.ClassLabel(num_classes=num_classes),
    }
  )
  serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
  infos = []
  for split, (images, labels) in splits.items():
    writer = ar.ArrayRecordWriter(
      os.path.join(folder, f"{name}-{split}.array_record-00000-of-00001"), "group_size:1"
    )
    for image, label in zip(images, labels):
      buf = io.BytesIO()
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, "PNG")
      writer.write(serializer.serialize_example({"image": buf.getvalue(), "label": int(label)}))
    writer.close()
    infos.append(
      tfds.core.SplitInfo(
        name=split,
        shard_lengths=[len(labels)],
        num_bytes=0,
        filename_template=tfds.core.ShardedFileTemplate(
          data_dir=folder,
          template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
          dataset_name=name,
          split=split,
          filetype_suffix="array_record",
        ),
      )
    )
  info = tfds.core.DatasetInfo(
    builder=dataset_info.DatasetIdentity(
      name=name, version=tfds.core.Version(version), data_dir=folder, module_name=""
    ),
    features=features,
  )
  info.set_file_format(tfds.core.file_adapters.FileFormat.ARRAY_RECORD)
  info.set_splits(tfds.core.SplitDict(infos))
  info.write_to_directory(folder)
  return folder


def _varied(rng, n, classes):
  images = [
    rng.integers(0, 256, (int(rng.integers(6, 14)), int(rng.integers(6, 14)), 3), dtype=np.uint8)
    for _ in range(n)
  ]
  return images, rng.integers(0, classes, n)


def test_tfds_source_any_prepared_dataset(tmp_path):
  rng = np.random.default_rng(3)
  train, test, extra = _varied(rng, 10, 4), _varied(rng, 5, 4), _varied(rng, 3, 4)
  write_tfds_dataset(tmp_path, "my_images", {"train": train, "test": test, "extra": extra}, 4)
  source = "tfds:my_images"
  with pytest.raises(DatasetFormatError, match="images of varying size") as excinfo:
    load_dataset("mine", source, str(tmp_path))
  _one_line(excinfo, "config.data.image_size")
  ds = load_dataset("mine", source, str(tmp_path), image_size=8, test_split="extra")
  assert (ds.name, ds.source, ds.num_classes, ds.image_shape) == ("mine", source, 4, (8, 8, 3))
  x = np.stack([arrays.resize_image(im, 8) for im in train[0]])
  x, y = _shuffled(x, np.asarray(train[1]))
  np.testing.assert_array_equal(ds.train_images, x)
  np.testing.assert_array_equal(ds.train_labels, y)
  np.testing.assert_array_equal(ds.test_labels, extra[1])
  np.testing.assert_array_equal(ds.test_images[2], arrays.resize_image(extra[0][2], 8))
  _stats_ok(ds)
  with pytest.raises(
    DatasetFormatError,
    match=r"no split 'validation' "
    r"\(config.data.test_split\); its splits are \['extra', 'test', "
    r"'train'\]",
  ) as excinfo:
    load_dataset("mine", source, str(tmp_path), image_size=8, test_split="validation")
  _one_line(excinfo, os.path.join(str(tmp_path), "my_images", "1.0.0", "dataset_info.json"))
  with pytest.raises(DatasetNotFoundError, match="tfds build other_images"):
    load_dataset("mine", "tfds:other_images", str(tmp_path))


def test_tfds_source_fixed_shape_one_channel(tmp_path):
  rng = np.random.default_rng(4)
  gray = rng.integers(0, 256, (7, 12, 12, 1), dtype=np.uint8)
  labels = np.arange(7) % 2
  write_tfds_dataset(
    tmp_path,
    "grays",
    {"train": (gray[:5], labels[:5]), "test": (gray[5:], labels[5:])},
    2,
    shape=(12, 12, 1),
  )
  spec = registry.resolve({"dataset": "g", "source": "tfds:grays", "data_dir": str(tmp_path)})
  assert (spec.image_shape, spec.num_classes, spec.num_train) == ((12, 12, 1), 2, 5)
  ds = load_dataset("g", "tfds:grays", str(tmp_path))
  np.testing.assert_array_equal(ds.train_images, _shuffled(gray[:5], labels[:5])[0])
  np.testing.assert_array_equal(ds.test_images, gray[5:])


# ---------------------------------------------------------------------------
# Bad files: one line naming the file, found before anything is compiled.


def _bad_npz(tmp_path, **kwargs):
  path = tmp_path / "bad.npz"
  _write_npz(path, **kwargs)
  return {"source": "npz", "path": str(path)}, str(path)


def _not_a_zip(tmp_path):
  path = tmp_path / "bad.npz"
  path.write_bytes(b"<html>not found</html>")
  return {"source": "npz", "path": str(path)}, str(path)


def _bad_folder(tmp_path, edit):
  write_folder(tmp_path / "tree")
  where = edit(tmp_path / "tree")
  return {"source": "folder", "path": str(tmp_path / "tree")}, str(where)


def _mixed_sizes(root):
  _png(str(root / "train" / "cat" / "img_2.png"), np.zeros((9, 12, 3), np.uint8))
  return root / "train" / "cat" / "img_2.png"


def _empty_class(root):
  os.makedirs(root / "train" / "eel")
  return root / "train" / "eel"


def _unknown_test_class(root):
  _png(str(root / "test" / "fox" / "a.png"), np.zeros((8, 12, 3), np.uint8))
  return root / "test" / "fox"


def _not_an_image(root):
  (root / "test" / "dog" / "img_0.png").write_bytes(b"\x89PNG truncated")
  return root / "test" / "dog" / "img_0.png"


BAD_FILES = {
  "npz missing key": (
    lambda p: _bad_npz(p, drop=("y_test",)),
    "no array 'y_test'; an npz dataset holds x_train, y_train",
  ),
  "npz length mismatch": (
    lambda p: _bad_npz(p, y_train=np.zeros(29, int)),
    "x_train has 30 images but y_train has 29 labels",
  ),
  "npz negative label": (
    lambda p: _bad_npz(p, y_test=np.arange(9) - 1),
    "y_test has a negative label (-1)",
  ),
  "npz label out of range": (
    lambda p: _bad_npz(p, y_test=np.arange(9) % 4),
    "y_test has the label 3, outside the 3 classes [0, 3) of y_train",
  ),
  "npz label outside class_names": (
    lambda p: _bad_npz(p, class_names=np.array(["a", "b"])),
    "y_train has the label 2, outside the 2 classes [0, 2) of class_names",
  ),
  "npz float images": (
    lambda p: _bad_npz(p, x_test=np.zeros((9, 10, 10, 3), np.float32)),
    "x_test must be uint8 images [N, H, W] or [N, H, W, C], got float32",
  ),
  "npz sizes differ": (
    lambda p: _bad_npz(p, x_test=np.zeros((9, 12, 12, 3), np.uint8)),
    "x_train images are 10×10×3, x_test images 12×12×3; set config.data.image_size",
  ),
  "npz not a zip": (_not_a_zip, "is not a readable .npz file"),
  "folder mixed sizes": (lambda p: _bad_folder(p, _mixed_sizes), "is 9×12 (height×width) but "),
  "folder class without images": (
    lambda p: _bad_folder(p, _empty_class),
    ": a class folder with no images",
  ),
  "folder unknown test class": (
    lambda p: _bad_folder(p, _unknown_test_class),
    ": class 'fox' has no folder in",
  ),
  "folder unreadable image": (lambda p: _bad_folder(p, _not_an_image), "is not a readable image"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_one_line_naming_the_file(tmp_path, case):
  make, message = BAD_FILES[case]
  data, where = make(tmp_path)
  config = test_config.get_config()
  config.data.update(dataset="mine", **data)
  config.batch_size = 4  # the smaller search half has 6 images
  with pytest.raises(DatasetFormatError) as excinfo:
    validation.validate_search_config(config)  # headers only
    load_dataset("mine", **data)  # every image decoded
  _one_line(excinfo, where, message)
  if case == "folder mixed sizes":
    assert "config.data.image_size" in str(excinfo.value)
    assert load_dataset("mine", image_size=8, **data).image_shape == (8, 8, 3)


def test_missing_files_say_what_to_write(tmp_path):
  with pytest.raises(DatasetNotFoundError, match="no npz file at .*numpy.savez"):
    load_dataset("mine", "npz", path=str(tmp_path / "none.npz"))
  with pytest.raises(
    DatasetNotFoundError,
    match=r"no folder .*/train: a folder "
    r"dataset is .*/train/<class>/\*.png\|jpg",
  ):
    load_dataset("mine", "folder", path=str(tmp_path))


def _cli(module, *args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize("case", ["npz missing key", "folder mixed sizes"])
def test_bad_files_stop_the_entry_points_before_any_work(tmp_path, case):
  """Refused in one line before a workdir is made (and so before compiling)."""
  make, message = BAD_FILES[case]
  data, where = make(tmp_path)
  workdir = tmp_path / "run"
  out = _cli(
    "experiments.search",
    "--config=experiments/configs/test.py",
    f"--workdir={workdir}",
    "--config.data.dataset=mine",
    "--config.batch_size=4",
    *(f"--config.data.{k}={v}" for k, v in data.items()),
  )
  last = out.stderr.strip().splitlines()[-1]
  assert out.returncode == 1 and last.startswith("error: "), out.stderr[-1500:]
  assert where in last and message in last
  assert "Traceback" not in out.stderr and "compil" not in out.stderr
  assert not workdir.exists()


# ---------------------------------------------------------------------------
# docs/extending.md's "Your own data", run as written.


def _own_data_section() -> str:
  with open(os.path.join(REPO, "docs", "extending.md"), encoding="utf-8") as f:
    text = f.read()
  return text[text.index("## Your own data") :].split("\n## ")[0]


def test_extending_doc_your_own_data_runs_as_written(tmp_path):
  """Its python blocks and its commands, as written, except that the /tmp folder they
  use is this test's own (so runs in parallel and earlier runs do not meet)."""
  text = _own_data_section().replace("/tmp/", f"{tmp_path}/")
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  commands = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
  assert len(blocks) == 2 and len(commands) == 1
  try:
    for block in blocks:
      exec(compile(block, "docs/extending.md", "exec"), {})  # pylint: disable=exec-used
  finally:
    registry.unregister_dataset("stripes")
  lines = re.sub(r"\\\n\s*", " ", commands[0]).strip().splitlines()
  assert [shlex.split(c)[:3] for c in lines] == [
    ["python", "-m", "experiments.search"],
    ["python", "-m", "experiments.train"],
  ]
  for line in lines:
    out = _cli(*shlex.split(line)[2:])
    assert out.returncode == 0, out.stderr[-3000:]
  search = tmp_path / "dnas_shapes_search"
  assert (search / "genotype.json").is_file()
  assert (tmp_path / "dnas_shapes_retrain" / "final_metrics.json").is_file()


def test_a_config_file_that_registers_a_dataset_gives_the_dry_run_its_shape(tmp_path):
  config = tmp_path / "scans_config.py"
  config.write_text(
    "from dnas_jax.configs import test_retrain\n"
    "from dnas_jax.data import registry\n"
    "def load(source, data_dir):\n"
    "  raise RuntimeError('the dry run reads no data')\n"
    "registry.register_dataset('scans', load, num_classes=7, "
    "image_shape=(96, 96, 1))\n"
    "def get_config():\n"
    "  config = test_retrain.get_config()\n"
    "  config.data.dataset, config.data.source = 'scans', 'auto'\n"
    "  config.model.auxiliary = True\n"
    "  return config\n"
  )
  out = _cli("experiments.train", f"--config={config}", "--dry_run")
  assert out.returncode == 0, out.stderr[-2000:]
  registry.register_dataset("scans", lambda s, d: None, num_classes=7, image_shape=(96, 96, 1))
  try:
    cfg = test_retrain.get_config()
    cfg.data.dataset, cfg.data.source, cfg.model.auxiliary = "scans", "auto", True
    assert out.stdout.splitlines() == retrain_setup.parameter_count_lines(cfg)
  finally:
    registry.unregister_dataset("scans")
