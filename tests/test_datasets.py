"""Dataset loaders read tiny files written here in the exact published formats."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import sys
import tarfile
import zipfile

import numpy as np
from PIL import Image
import pytest

from dnas_jax.data import arrays
from dnas_jax.data.datasets import DatasetFormatError, DatasetNotFoundError, load_dataset

# ---------------------------------------------------------------------------
# Writers of the published formats.


def _pickle_py2_style(obj) -> bytes:
  """Protocol 2, NumPy globals under `numpy.core` as in the published batches."""
  return pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core.")


def _cifar_batch(rng, n, num_classes, label_keys=(b"labels",)):
  data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
  batch = {
    b"batch_label": b"training batch",
    b"data": data,
    b"filenames": [f"img_{i}.png".encode() for i in range(n)],
  }
  for key in label_keys:
    batch[key] = [int(v) for v in rng.integers(0, num_classes, n)]
  return batch


def _write_tar(path, members: dict[str, bytes]):
  with tarfile.open(path, "w:gz") as tar:
    for name, blob in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))


def write_cifar10(data_dir, n=10, seed=0, edit=None):
  """cifar-10-python.tar.gz with `n` images per batch; returns {member: batch}.

  Members are written out of order (test batch and batch 3 first) to check that the
  loader orders by name, not by position in the tar.
  """
  rng = np.random.default_rng(seed)
  batches = {f"cifar-10-batches-py/data_batch_{i}": _cifar_batch(rng, n, 10) for i in range(1, 6)}
  batches["cifar-10-batches-py/test_batch"] = _cifar_batch(rng, n, 10)
  if edit:
    edit(batches)
  order = ["cifar-10-batches-py/test_batch", "cifar-10-batches-py/data_batch_3"]
  order += [m for m in batches if m not in order]
  members = {
    "cifar-10-batches-py/batches.meta": _pickle_py2_style({b"label_names": [b"airplane"] * 10}),
    "cifar-10-batches-py/readme.html": b"<html></html>",
  }
  members.update({m: _pickle_py2_style(batches[m]) for m in order if m in batches})
  _write_tar(os.path.join(data_dir, "cifar-10-python.tar.gz"), members)
  return batches


def write_cifar100(data_dir, n_train=20, n_test=10, seed=1):
  rng = np.random.default_rng(seed)
  keys = (b"fine_labels", b"coarse_labels")
  train = _cifar_batch(rng, n_train, 100, keys)
  train[b"coarse_labels"] = [v % 20 for v in train[b"coarse_labels"]]
  test = _cifar_batch(rng, n_test, 100, keys)
  test[b"coarse_labels"] = [v % 20 for v in test[b"coarse_labels"]]
  _write_tar(
    os.path.join(data_dir, "cifar-100-python.tar.gz"),
    {
      "cifar-100-python/meta": _pickle_py2_style({b"fine_label_names": []}),
      "cifar-100-python/test": _pickle_py2_style(test),
      "cifar-100-python/train": _pickle_py2_style(train),
    },
  )
  return train, test


def _hwc(batch):
  return batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


WNIDS = ["n03000000", "n01000000", "n02000000"]  # deliberately not sorted


def _jpeg(rng, mode="RGB") -> bytes:
  shape = (64, 64, 3) if mode == "RGB" else (64, 64)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def write_tiny_imagenet(data_dir, per_class=3, seed=0):
  """A tiny-imagenet-200 tree (3 wnids) in the published layout; returns its root."""
  rng = np.random.default_rng(seed)
  root = os.path.join(data_dir, "tiny-imagenet-200")

  def put(rel, blob):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(blob if isinstance(blob, bytes) else blob.encode())

  put("wnids.txt", "\n".join(WNIDS) + "\n")
  put("words.txt", "".join(f"{w}\tthing {w}\n" for w in WNIDS))
  for w in WNIDS:
    # Indices 0, 1, 10: sorted names put _10 before _2 would; here 0 < 1 < 10.
    for i in [0, 10, 1][:per_class]:
      mode = "L" if (w == WNIDS[0] and i == 1) else "RGB"  # a grayscale JPEG too
      put(f"train/{w}/images/{w}_{i}.JPEG", _jpeg(rng, mode))
    put(f"train/{w}/{w}_boxes.txt", "")
  val = [
    ("val_3.JPEG", WNIDS[1]),
    ("val_0.JPEG", WNIDS[0]),
    ("val_2.JPEG", WNIDS[2]),
    ("val_1.JPEG", WNIDS[1]),
  ]
  for name, _ in val:
    put(f"val/images/{name}", _jpeg(rng))
  put("val/val_annotations.txt", "".join(f"{name}\t{w}\t0\t0\t63\t63\n" for name, w in val))
  put("test/images/test_0.JPEG", _jpeg(rng))  # unlabelled: ignored
  return root


def _decoded(path):
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def zip_tree(root, zip_path):
  with zipfile.ZipFile(zip_path, "w") as zf:
    for folder, _, files in sorted(os.walk(root)):
      rel = os.path.relpath(folder, os.path.dirname(root))
      zf.writestr(rel + "/", b"")
      for name in sorted(files):
        zf.write(os.path.join(folder, name), f"{rel}/{name}")


def _assert_stats(ds):
  x = ds.train_images.astype(np.float64) / 255.0
  np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 1, 2)), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(ds.std, x.std(axis=(0, 1, 2)), rtol=1e-9, atol=1e-12)


def _assert_not_chained(excinfo):
  """Errors are raised `from None`: no NumPy/pickle traceback attached."""
  e = excinfo.value
  assert e.__cause__ is None and (e.__suppress_context__ or e.__context__ is None)


# ---------------------------------------------------------------------------
# CIFAR archives.


def test_cifar10_archive_shapes_labels_and_order(tmp_path):
  batches = write_cifar10(tmp_path, n=10)
  ds = load_dataset("cifar10", source="archive", data_dir=str(tmp_path))
  assert (ds.name, ds.source, ds.num_classes) == ("cifar10", "archive", 10)
  assert ds.train_images.shape == (50, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (10, 32, 32, 3) and ds.test_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  train = [batches[f"cifar-10-batches-py/data_batch_{i}"] for i in range(1, 6)]
  test = batches["cifar-10-batches-py/test_batch"]
  np.testing.assert_array_equal(ds.train_images, np.concatenate([_hwc(b) for b in train]))
  np.testing.assert_array_equal(ds.train_labels, sum([b[b"labels"] for b in train], []))
  np.testing.assert_array_equal(ds.test_images, _hwc(test))
  np.testing.assert_array_equal(ds.test_labels, test[b"labels"])
  # CHW → HWC by hand: row 1, column 2, channel c of image 13 (batch 2, image 3).
  for c in range(3):
    assert ds.train_images[13, 1, 2, c] == train[1][b"data"][3, c * 1024 + 1 * 32 + 2]
  assert ds.image_shape == (32, 32, 3)
  _assert_stats(ds)


def test_cifar100_archive_fine_and_coarse_labels_and_own_stats(tmp_path):
  train, test = write_cifar100(tmp_path)
  write_cifar10(tmp_path)
  fine = load_dataset("cifar100", source="archive", data_dir=str(tmp_path))
  assert (fine.source, fine.num_classes) == ("archive", 100)
  assert fine.train_images.shape == (20, 32, 32, 3) and fine.test_images.shape[0] == 10
  np.testing.assert_array_equal(fine.train_images, _hwc(train))
  np.testing.assert_array_equal(fine.test_images, _hwc(test))
  np.testing.assert_array_equal(fine.train_labels, train[b"fine_labels"])
  np.testing.assert_array_equal(fine.test_labels, test[b"fine_labels"])
  coarse = load_dataset("cifar100", source="archive", data_dir=str(tmp_path), coarse_labels=True)
  assert coarse.num_classes == 20
  np.testing.assert_array_equal(coarse.train_labels, train[b"coarse_labels"])
  np.testing.assert_array_equal(coarse.test_labels, test[b"coarse_labels"])
  _assert_stats(fine)
  c10 = load_dataset("cifar10", source="archive", data_dir=str(tmp_path))
  assert fine.mean != c10.mean


def test_auto_uses_archive_when_no_tfds_and_logs_path(tmp_path, caplog):
  write_cifar10(tmp_path)
  with caplog.at_level(logging.INFO):
    ds = load_dataset("cifar10", data_dir=str(tmp_path))
  assert ds.source == "archive"
  assert str(tmp_path / "cifar-10-python.tar.gz") in caplog.text


def test_coarse_labels_only_for_cifar100(tmp_path):
  write_cifar10(tmp_path)
  with pytest.raises(ValueError, match="cifar100"):
    load_dataset("cifar10", "archive", str(tmp_path), coarse_labels=True)


@pytest.mark.parametrize(
  "name,source,archive",
  [
    ("cifar10", "archive", "cifar-10-python.tar.gz"),
    ("cifar10", "auto", "cifar-10-python.tar.gz"),
    ("cifar100", "archive", "cifar-100-python.tar.gz"),
    ("cifar100", "auto", "cifar-100-python.tar.gz"),
  ],
)
def test_missing_cifar_says_where_to_put_it(tmp_path, name, source, archive):
  with pytest.raises(DatasetNotFoundError) as excinfo:
    load_dataset(name, source, str(tmp_path))
  msg = str(excinfo.value)
  assert str(tmp_path / archive) in msg
  assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
  assert "--config.data.data_dir" in msg and f"source={source!r}" in msg
  if source == "auto":
    assert str(tmp_path / name) in msg  # where the TFDS dataset was looked for


def test_missing_cifar_default_dir_from_env(tmp_path, monkeypatch):
  monkeypatch.setenv("DNAS_DATA_DIR", str(tmp_path / "archives"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  with pytest.raises(DatasetNotFoundError, match="archives/cifar-10-python.tar.gz"):
    load_dataset("cifar10")
  os.makedirs(tmp_path / "archives")
  write_cifar10(tmp_path / "archives")
  assert load_dataset("cifar10").source == "archive"


def test_truncated_archive_is_a_format_error(tmp_path):
  write_cifar10(tmp_path)
  path = tmp_path / "cifar-10-python.tar.gz"
  blob = path.read_bytes()
  path.write_bytes(blob[: len(blob) // 2])
  with pytest.raises(DatasetFormatError, match="truncated or corrupt") as excinfo:
    load_dataset("cifar10", "archive", str(tmp_path))
  assert str(path) in str(excinfo.value)
  _assert_not_chained(excinfo)


def test_garbage_archive_is_a_format_error(tmp_path):
  (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"<html>not found</html>")
  with pytest.raises(DatasetFormatError, match="not a readable tar.gz"):
    load_dataset("cifar100", "archive", str(tmp_path))


def test_label_count_mismatch_is_a_format_error(tmp_path):
  def drop_label(batches):
    batches["cifar-10-batches-py/data_batch_2"][b"labels"].pop()

  write_cifar10(tmp_path, edit=drop_label)
  with pytest.raises(DatasetFormatError, match="9 labels for 10 images") as excinfo:
    load_dataset("cifar10", "archive", str(tmp_path))
  assert "data_batch_2" in str(excinfo.value)


def test_label_out_of_range_is_a_format_error(tmp_path):
  def bad_label(batches):
    batches["cifar-10-batches-py/test_batch"][b"labels"][4] = 10

  write_cifar10(tmp_path, edit=bad_label)
  with pytest.raises(DatasetFormatError, match=r"labels must lie in \[0, 10\)"):
    load_dataset("cifar10", "archive", str(tmp_path))


def test_missing_member_is_a_format_error(tmp_path):
  write_cifar10(tmp_path, edit=lambda b: b.pop("cifar-10-batches-py/data_batch_5"))
  with pytest.raises(DatasetFormatError, match="data_batch_5"):
    load_dataset("cifar10", "archive", str(tmp_path))


def test_wrong_data_shape_is_a_format_error(tmp_path):
  def reshape(batches):
    b = batches["cifar-10-batches-py/data_batch_1"]
    b[b"data"] = b[b"data"][:, :1000]

  write_cifar10(tmp_path, edit=reshape)
  with pytest.raises(DatasetFormatError, match=r"uint8 array \[N, 3072\]"):
    load_dataset("cifar10", "archive", str(tmp_path))


def test_member_that_is_not_a_pickle_or_unsafe_is_a_format_error(tmp_path):
  members = {f"cifar-10-batches-py/data_batch_{i}": b"not a pickle" for i in range(1, 6)}
  members["cifar-10-batches-py/test_batch"] = pickle.dumps(os.system, protocol=2)
  _write_tar(tmp_path / "cifar-10-python.tar.gz", members)
  with pytest.raises(DatasetFormatError, match="not a readable pickle") as excinfo:
    load_dataset("cifar10", "archive", str(tmp_path))
  _assert_not_chained(excinfo)
  members["cifar-10-batches-py/data_batch_1"] = pickle.dumps(os.system, protocol=2)
  _write_tar(tmp_path / "cifar-10-python.tar.gz", members)
  with pytest.raises(DatasetFormatError, match="is not allowed"):
    load_dataset("cifar10", "archive", str(tmp_path))


# ---------------------------------------------------------------------------
# Tiny-ImageNet.


def _check_tiny(ds, root):
  assert (ds.name, ds.source, ds.num_classes) == ("tiny_imagenet", "archive", 3)
  assert ds.train_images.shape == (9, 64, 64, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (4, 64, 64, 3) and ds.test_labels.dtype == np.int32
  classes = sorted(WNIDS)
  expect_train = [f"train/{w}/images/{w}_{i}.JPEG" for w in classes for i in (0, 1, 10)]
  np.testing.assert_array_equal(ds.train_labels, np.repeat([0, 1, 2], 3))
  np.testing.assert_array_equal(
    ds.train_images, np.stack([_decoded(os.path.join(root, p)) for p in expect_train])
  )
  # val sorted by file name; labels = index of the wnid in sorted(wnids.txt).
  np.testing.assert_array_equal(
    ds.test_labels, [classes.index(w) for w in (WNIDS[0], WNIDS[1], WNIDS[2], WNIDS[1])]
  )
  np.testing.assert_array_equal(
    ds.test_images,
    np.stack([_decoded(os.path.join(root, f"val/images/val_{i}.JPEG")) for i in range(4)]),
  )
  _assert_stats(ds)


def test_tiny_imagenet_folder(tmp_path):
  root = write_tiny_imagenet(tmp_path)
  ds = load_dataset("tiny_imagenet", data_dir=str(tmp_path), num_workers=2)
  _check_tiny(ds, root)
  gray = ds.train_images[2 * 3 + 1]  # class 2 (n03000000), file _1: grayscale JPEG
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


def test_tiny_imagenet_zip_equals_folder(tmp_path):
  root = write_tiny_imagenet(tmp_path / "src")
  os.makedirs(tmp_path / "z")
  zip_tree(root, tmp_path / "z" / "tiny-imagenet-200.zip")
  ds = load_dataset("tiny_imagenet", "archive", str(tmp_path / "z"))
  _check_tiny(ds, root)


def test_tiny_imagenet_missing(tmp_path):
  with pytest.raises(DatasetNotFoundError) as excinfo:
    load_dataset("tiny_imagenet", data_dir=str(tmp_path))
  msg = str(excinfo.value)
  assert str(tmp_path / "tiny-imagenet-200") in msg
  assert str(tmp_path / "tiny-imagenet-200.zip") in msg
  assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in msg


def test_tiny_imagenet_missing_class_folder(tmp_path):
  root = write_tiny_imagenet(tmp_path)
  import shutil  # pylint: disable=g-import-not-at-top

  shutil.rmtree(os.path.join(root, "train", WNIDS[2]))
  with pytest.raises(DatasetFormatError, match=WNIDS[2]) as excinfo:
    load_dataset("tiny_imagenet", data_dir=str(tmp_path))
  assert "train/<wnid>/images" in str(excinfo.value)


def test_tiny_imagenet_corrupt_jpeg_and_bad_annotation(tmp_path):
  root = write_tiny_imagenet(tmp_path)
  bad = os.path.join(root, "train", WNIDS[1], "images", f"{WNIDS[1]}_10.JPEG")
  with open(bad, "wb") as f:
    f.write(b"\xff\xd8 truncated")
  with pytest.raises(DatasetFormatError, match="not a readable image") as excinfo:
    load_dataset("tiny_imagenet", data_dir=str(tmp_path))
  assert bad in str(excinfo.value)
  with open(os.path.join(root, "val", "val_annotations.txt"), "a") as f:
    f.write("val_9.JPEG\tn09999999\t0\t0\t1\t1\n")
  with pytest.raises(DatasetFormatError, match="val_annotations.txt line 5"):
    load_dataset("tiny_imagenet", data_dir=str(tmp_path))


def test_tiny_imagenet_corrupt_zip(tmp_path):
  (tmp_path / "tiny-imagenet-200.zip").write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(DatasetFormatError, match="not a readable zip"):
    load_dataset("tiny_imagenet", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------
# Names, sources, in-memory datasets.


def test_unknown_name_and_source_name_the_config_field():
  with pytest.raises(ValueError, match=r"config\.data\.dataset='imagenet'.*cifar10"):
    load_dataset("imagenet")
  with pytest.raises(ValueError, match=r"config\.data\.source='web'.*archive"):
    load_dataset("cifar10", source="web")
  with pytest.raises(ValueError, match=r"config\.data\.source='tfds'.*tiny_imagenet"):
    load_dataset("tiny_imagenet", source="tfds")
  with pytest.raises(ValueError, match=r"config\.data\.source='archive'"):
    load_dataset("digits", source="archive")


def test_in_memory_sources():
  d = load_dataset("digits")
  assert (d.source, d.image_shape, len(d.train_labels)) == ("digits", (8, 8, 1), 1500)
  _assert_stats(d)
  s = load_dataset("synthetic", "synthetic", num_train=16, num_test=8, image_size=4)
  assert s.train_images.shape == (16, 4, 4, 3) and s.source == "synthetic"


def test_stats_chunked_matches_float64():
  x = np.random.default_rng(0).integers(0, 256, (300, 20, 20, 3), dtype=np.uint8)
  mean, std = arrays.channel_stats(x)
  f = x.astype(np.float64) / 255
  np.testing.assert_allclose(mean, f.mean((0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(std, f.std((0, 1, 2)), rtol=1e-9)


# ---------------------------------------------------------------------------
# TFDS, through tfds.testing.mock_data with a metadata folder written here.


def write_tfds_metadata(data_dir, name, counts=(7, 3)):
  """data_dir/name/3.0.2/{dataset_info,features}.json and label files, as TFDS
  writes them when it prepares CIFAR in array_record format."""
  folder = os.path.join(data_dir, name, "3.0.2")
  os.makedirs(folder)
  splits = [
    {
      "name": s,
      "shardLengths": [str(n)],
      "numBytes": "1000",
      "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
    }
    for s, n in zip(("train", "test"), counts)
  ]
  info = {
    "name": name,
    "version": "3.0.2",
    "fileFormat": "array_record",
    "moduleName": "tensorflow_datasets.image_classification.cifar",
    "splits": splits,
  }

  def label(n):
    return {
      "classLabel": {"numClasses": str(n)},
      "pythonClassName": "tensorflow_datasets.core.features.class_label_feature.ClassLabel",
    }

  features = {
    "id": {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}},
    "image": {
      "image": {"dtype": "uint8", "shape": {"dimensions": ["32", "32", "3"]}},
      "pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
    },
    "label": label(10 if name == "cifar10" else 100),
  }
  if name == "cifar100":
    features["coarse_label"] = label(20)
  with open(os.path.join(folder, "dataset_info.json"), "w") as f:
    json.dump(info, f)
  with open(os.path.join(folder, "features.json"), "w") as f:
    json.dump(
      {
        "featuresDict": {"features": features},
        "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
      },
      f,
    )
  return folder


@pytest.mark.parametrize(
  "name,source,coarse",
  [("cifar10", "tfds", False), ("cifar10", "auto", False), ("cifar100", "tfds", True)],
)
def test_tfds_source_with_mock_data(tmp_path, name, source, coarse):
  tfds = pytest.importorskip("tensorflow_datasets")
  write_tfds_metadata(tmp_path, name)
  write_cifar10(tmp_path)  # auto must still prefer the prepared TFDS dataset
  kwargs = {"coarse_labels": True} if coarse else {}
  with tfds.testing.mock_data(
    num_examples=6, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)
  ):
    ds = load_dataset(name, source, str(tmp_path), **kwargs)
    expect = tfds.data_source(
      name, split="train", data_dir=str(tmp_path), builder_kwargs={"file_format": "array_record"}
    )
    expect = [expect[i] for i in range(len(expect))]
  assert ds.source == "tfds" and ds.num_classes == (
    20 if coarse else (10 if name == "cifar10" else 100)
  )
  assert ds.train_images.shape == (6, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (6, 32, 32, 3) and ds.test_labels.dtype == np.int32
  key = "coarse_label" if coarse else "label"
  np.testing.assert_array_equal(ds.train_images, np.stack([e["image"] for e in expect]))
  np.testing.assert_array_equal(ds.train_labels, [int(e[key]) for e in expect])
  _assert_stats(ds)


def test_tfds_source_missing_dataset_says_where(tmp_path):
  with pytest.raises(DatasetNotFoundError) as excinfo:
    load_dataset("cifar100", "tfds", str(tmp_path))
  msg = str(excinfo.value)
  assert str(tmp_path / "cifar100" / "<version>" / "dataset_info.json") in msg
  assert "tfds build cifar100" in msg and "--config.data.data_dir" in msg


def test_tfds_not_installed_is_a_clear_error(tmp_path, monkeypatch):
  write_tfds_metadata(tmp_path, "cifar10")
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
    load_dataset("cifar10", "tfds", str(tmp_path))
  write_cifar10(tmp_path)  # auto falls back to the archive
  assert load_dataset("cifar10", "auto", str(tmp_path)).source == "archive"
