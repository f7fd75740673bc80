"""Datasets held in memory as uint8 NHWC arrays, from the sources listed below (and in
the README's Data section).

`load_dataset(name, source, data_dir)` returns a `Dataset`.

Names and the sources each accepts (`source='auto'` picks the first available):

| name            | sources                      | classes      | image    |
|-----------------|------------------------------|--------------|----------|
| `cifar10`       | `tfds`, `archive`            | 10           | 32×32×3  |
| `cifar100`      | `tfds`, `archive`            | 100 (20)     | 32×32×3  |
| `tiny_imagenet` | `archive`                    | 200          | 64×64×3  |
| `digits`        | `digits`                     | 10           | 8×8×1    |
| `synthetic`     | `synthetic`                  | `num_classes`| any      |

Sources:

* `tfds`: a dataset prepared by TensorFlow Datasets in array_record format, read with
  `tfds.data_source` (random access, no TensorFlow needed) from
  `data_dir/<cifar10|cifar100>/<version>/`. `data_dir=None` means TFDS's own default
  (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`). Preparing one needs TensorFlow:
  `tfds build cifar10 --data_dir=DIR --file_format=array_record`.
* `archive`: the published archives, read with the standard library only:
  `cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`
  (https://www.cs.toronto.edu/~kriz/cifar.html), and the `tiny-imagenet-200` folder or
  `tiny-imagenet-200.zip` (http://cs231n.stanford.edu/tiny-imagenet-200.zip), all in
  `data_dir`. `data_dir=None` means `$DNAS_DATA_DIR` or `~/dnas_data`.
* `digits`: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes),
  the offline default. Kept at its own shape, 8×8×1 (the networks take the input
  shape they are given): pixel values 0..16 are scaled to 0..255, and a fixed
  permutation (seed 0) gives 1,500 training and 297 test images.
* `synthetic`: random images whose class is readable from the mean colour, for tests.

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
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import pickle
import re
import tarfile
import threading
import zipfile
import zlib
from typing import Callable, Sequence

from absl import logging
import numpy as np


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not where it was looked for; the message says where to put it."""


class DatasetFormatError(ValueError):
  """A dataset file exists but is not in the expected format."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  source: str
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: tuple[float, ...]  # per channel, on the 0..1 scale
  std: tuple[float, ...]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


# Valid sources per dataset name, in the order `auto` tries them.
SOURCES = {
    "cifar10": ("tfds", "archive"),
    "cifar100": ("tfds", "archive"),
    "tiny_imagenet": ("archive",),
    "digits": ("digits",),
    "synthetic": ("synthetic",),
}
ALL_SOURCES = ("auto", "tfds", "archive", "digits", "synthetic")

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_DIR = "tiny-imagenet-200"
TINY_IMAGENET_ZIP = "tiny-imagenet-200.zip"
_TINY_SHAPE = (64, 64, 3)
_CIFAR_SHAPE = (32, 32, 3)
_DATA_FIELD = "--config.data.data_dir=DIR"


@dataclasses.dataclass(frozen=True)
class _CifarSpec:
  title: str
  archive: str
  train_members: tuple[str, ...]
  test_members: tuple[str, ...]


_CIFAR = {
    "cifar10": _CifarSpec(
        "CIFAR-10", "cifar-10-python.tar.gz",
        tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
        ("cifar-10-batches-py/test_batch",)),
    "cifar100": _CifarSpec(
        "CIFAR-100", "cifar-100-python.tar.gz",
        ("cifar-100-python/train",), ("cifar-100-python/test",)),
}


# ---------------------------------------------------------------------------
# Shared helpers.


def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std on the 0..1 scale, exact, in bounded memory.

  Sums of values and squares are accumulated as int64 over chunks, so a
  100,000×64×64×3 set never becomes a float64 copy.
  """
  c = images.shape[-1]
  s1 = np.zeros(c, np.int64)
  s2 = np.zeros(c, np.int64)
  per_image = int(np.prod(images.shape[1:])) or 1
  chunk = max(1, (1 << 22) // per_image)
  for start in range(0, len(images), chunk):
    x = images[start:start + chunk].reshape(-1, c).astype(np.int64)
    s1 += x.sum(axis=0)
    s2 += (x * x).sum(axis=0)
  count = images.size // c
  mean = s1 / (255.0 * count)
  var = np.maximum(s2 / (255.0**2 * count) - mean**2, 0.0)
  return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(var))


def _check_split(images: np.ndarray, labels: np.ndarray, num_classes: int,
                 shape: tuple[int, ...], where: str) -> None:
  """Raises DatasetFormatError unless images/labels are consistent."""
  if images.dtype != np.uint8 or images.shape[1:] != shape:
    raise DatasetFormatError(
        f"{where}: expected uint8 images of shape {shape}, got {images.dtype} "
        f"{images.shape[1:]}")
  if len(labels) != len(images):
    raise DatasetFormatError(
        f"{where}: {len(labels)} labels for {len(images)} images; the file is "
        "corrupt or not the published one")
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise DatasetFormatError(
        f"{where}: labels must lie in [0, {num_classes}), found "
        f"[{labels.min()}, {labels.max()}]")


def _make_dataset(name, source, train, test, num_classes) -> Dataset:
  mean, std = _stats(train[0])
  return Dataset(name, source, train[0], train[1], test[0], test[1], num_classes,
                 mean, std)


def default_archive_dir() -> str:
  """Where archives are looked for when no data_dir is given."""
  return os.path.expanduser(os.environ.get("DNAS_DATA_DIR", "~/dnas_data"))


def default_tfds_dir() -> str:
  """TFDS's own default data dir, found without importing tensorflow_datasets."""
  return os.path.expanduser(
      os.environ.get("TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets")))


# ---------------------------------------------------------------------------
# In-memory sources.


def load_digits() -> Dataset:
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  d = sk_datasets.load_digits()
  images = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  images, labels = images[order], labels[order]
  tr, te = slice(0, 1500), slice(1500, None)
  mean, std = _stats(images[tr])
  return Dataset("digits", "digits", images[tr], labels[tr], images[te], labels[te], 10,
                 mean, std)


def load_synthetic(num_train: int = 256, num_test: int = 64, image_size: int = 8,
                   channels: int = 3, num_classes: int = 10, seed: int = 0) -> Dataset:
  """Learnable random data: class c has a mean intensity that grows with c."""
  rng = np.random.default_rng(seed)

  def make(n):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    base = (labels[:, None, None, None] + 0.5) * (200.0 / num_classes)
    noise = rng.normal(0, 20.0, (n, image_size, image_size, channels))
    return np.clip(base + noise, 0, 255).astype(np.uint8), labels

  xtr, ytr = make(num_train)
  xte, yte = make(num_test)
  mean, std = _stats(xtr)
  return Dataset("synthetic", "synthetic", xtr, ytr, xte, yte, num_classes, mean, std)


# ---------------------------------------------------------------------------
# TFDS (prepared array_record datasets, read without TensorFlow).


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "config.data.source='tfds' needs TensorFlow Datasets: pip install "
        "tensorflow-datasets importlib_resources (or pip install 'dnas-jax[tfds]'); "
        f"or use config.data.source='archive' ({e})") from None
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
        os.path.join(root, entry, "dataset_info.json")):
      versions.append(tuple(int(v) for v in entry.split(".")))
  if not versions:
    return None
  return os.path.join(root, ".".join(str(v) for v in max(versions)))


def _tfds_not_found(tfds_name: str, data_dir: str) -> str:
  return (f"no prepared TFDS dataset {tfds_name!r}: looked for "
          f"{os.path.join(data_dir, tfds_name, '<version>', 'dataset_info.json')}. "
          f"Prepare it on a machine with TensorFlow and internet (`tfds build "
          f"{tfds_name} --data_dir={data_dir} --file_format=array_record`) and copy "
          f"that folder here, or pass {_DATA_FIELD}")


def load_cifar_tfds(name: str, data_dir: str | None = None,
                    coarse_labels: bool = False) -> Dataset:
  """CIFAR-10/100 from a prepared TFDS dataset (array_record), without TensorFlow."""
  data_dir = os.path.abspath(data_dir or default_tfds_dir())
  version_dir = find_tfds_dataset(name, data_dir)
  if version_dir is None:
    raise DatasetNotFoundError(f"{_CIFAR[name].title} not found (source='tfds'): "
                               + _tfds_not_found(name, data_dir))
  tfds = _import_tfds()
  label_key, num_classes = _cifar_labels(name, coarse_labels)
  logging.info("Loading %s from TFDS at %s", name, version_dir)
  try:
    sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir,
                               download=False,
                               builder_kwargs={"file_format": "array_record"})
    splits = [_read_tfds_split(src, label_key) for src in sources]
  except DatasetFormatError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetFormatError(
        f"reading the TFDS dataset at {version_dir} failed ({type(e).__name__}: {e}); "
        "it must be prepared in array_record format (tfds build ... "
        "--file_format=array_record), or use config.data.source='archive'") from None
  for split, (images, labels) in zip(("train", "test"), splits):
    _check_split(images, labels, num_classes, _CIFAR_SHAPE,
                 f"TFDS {name} {split} split at {version_dir}")
  return _make_dataset(name, "tfds", splits[0], splits[1], num_classes)


def _read_tfds_split(src, label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a random-access TFDS split into (uint8 images, int32 labels)."""
  n = len(src)
  images = np.empty((n,) + _CIFAR_SHAPE, np.uint8)
  labels = np.empty(n, np.int32)
  for i in range(n):
    example = src[i]
    image = np.asarray(example["image"])
    if image.shape != _CIFAR_SHAPE:
      raise DatasetFormatError(
          f"TFDS example {i} has an image of shape {image.shape}, expected "
          f"{_CIFAR_SHAPE}")
    images[i] = image
    labels[i] = int(example[label_key])
  return images, labels


def _cifar_labels(name: str, coarse_labels: bool) -> tuple[str, int]:
  """(TFDS label key, number of classes)."""
  if name == "cifar10":
    if coarse_labels:
      raise ValueError("coarse_labels=True is only valid for config.data.dataset="
                       "'cifar100'")
    return "label", 10
  return ("coarse_label", 20) if coarse_labels else ("label", 100)


# ---------------------------------------------------------------------------
# CIFAR archives (tar.gz of pickled dicts).


class _CifarUnpickler(pickle.Unpickler):
  """Unpickles the CIFAR batches, refusing any global but NumPy's array builders.

  A pickle can run arbitrary code; the CIFAR batches only hold dicts, lists, bytes
  and NumPy arrays, so nothing else is allowed (`numpy.core` is the module name in
  the published Python 2 pickles, `numpy._core` in ones NumPy 2 writes).
  """

  _ALLOWED = frozenset(
      (module, name)
      for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")) | frozenset(
          (module, name)
          for module in ("numpy.core.numeric", "numpy._core.numeric")
          for name in ("_frombuffer",)) | {
              ("numpy", "ndarray"), ("numpy", "dtype"),
              ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
          }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
    return super().find_class(module, name)


def _read_tar_members(path: str, wanted: Sequence[str]) -> dict[str, bytes]:
  """Reads the named members of a tar.gz in one pass over the stream."""
  blobs = {}
  try:
    with tarfile.open(path, "r:gz") as tar:
      for member in tar:
        name = member.name.removeprefix("./")
        if name in wanted and member.isfile():
          blobs[name] = tar.extractfile(member).read()
          if len(blobs) == len(wanted):
            break
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DatasetFormatError(
        f"{path} is not a readable tar.gz archive ({type(e).__name__}: {e}); it is "
        "probably truncated or corrupt: download it again") from None
  missing = [m for m in wanted if m not in blobs]
  if missing:
    raise DatasetFormatError(f"{path} lacks the member(s) {missing}; it is not the "
                             "published archive or it is truncated")
  return blobs


def _parse_cifar_batch(blob: bytes, label_key: bytes, num_classes: int,
                       where: str) -> tuple[np.ndarray, np.ndarray]:
  """One pickled batch → (uint8 NHWC images, int32 labels)."""
  try:
    batch = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
  except Exception as e:  # pylint: disable=broad-except  # pickle raises many types
    raise DatasetFormatError(f"{where} is not a readable pickle ({type(e).__name__}: "
                             f"{e})") from None
  if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise DatasetFormatError(f"{where} must be a dict with keys b'data' and "
                             f"{label_key!r}; found {keys}")
  data = batch[b"data"]
  if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
      or data.shape[1] != 3 * 32 * 32):
    desc = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
            else type(data).__name__)
    raise DatasetFormatError(f"{where}: b'data' must be a uint8 array [N, 3072], got "
                             f"{desc}")
  try:
    labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
  except (TypeError, ValueError) as e:
    raise DatasetFormatError(f"{where}: {label_key!r} is not a list of integers "
                             f"({e})") from None
  images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  _check_split(images, labels, num_classes, _CIFAR_SHAPE, where)
  return images, labels.astype(np.int32)


def _archive_not_found(path: str, url: str, what: str) -> str:
  return (f"download {what} from {url} and put it at {path}, or pass {_DATA_FIELD} "
          f"(the folder that holds it)")


def load_cifar_archive(name: str, data_dir: str | None = None,
                       coarse_labels: bool = False) -> Dataset:
  """CIFAR-10/100 from the published python-version tar.gz in `data_dir`."""
  spec = _CIFAR[name]
  data_dir = os.path.abspath(data_dir or default_archive_dir())
  path = os.path.join(data_dir, spec.archive)
  if not os.path.isfile(path):
    raise DatasetNotFoundError(
        f"{spec.title} not found (source='archive'): no file {path}; "
        + _archive_not_found(path, CIFAR_URL, spec.archive))
  _, num_classes = _cifar_labels(name, coarse_labels)
  if name == "cifar10":
    label_key = b"labels"
  else:
    label_key = b"coarse_labels" if coarse_labels else b"fine_labels"
  logging.info("Loading %s from the archive %s", name, path)
  blobs = _read_tar_members(path, spec.train_members + spec.test_members)

  def read(members):
    parts = [_parse_cifar_batch(blobs[m], label_key, num_classes, f"{path}:{m}")
             for m in members]
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]))

  return _make_dataset(name, "archive", read(spec.train_members),
                       read(spec.test_members), num_classes)


def load_cifar(name: str, source: str = "auto", data_dir: str | None = None,
               coarse_labels: bool = False) -> Dataset:
  """CIFAR-10/100 from `source` ('auto': TFDS when prepared, else the archive)."""
  if source == "tfds":
    return load_cifar_tfds(name, data_dir, coarse_labels)
  if source == "archive":
    return load_cifar_archive(name, data_dir, coarse_labels)
  tfds_dir = os.path.abspath(data_dir or default_tfds_dir())
  if find_tfds_dataset(name, tfds_dir) is not None:
    try:
      _import_tfds()
    except ImportError as e:
      logging.warning("A prepared TFDS %s is in %s but cannot be read: %s; trying "
                      "the archive", name, tfds_dir, e)
    else:
      logging.info("source=auto: found a prepared TFDS %s in %s", name, tfds_dir)
      return load_cifar_tfds(name, tfds_dir, coarse_labels)
  spec = _CIFAR[name]
  archive_dir = os.path.abspath(data_dir or default_archive_dir())
  path = os.path.join(archive_dir, spec.archive)
  if not os.path.isfile(path):
    raise DatasetNotFoundError(
        f"{spec.title} not found (source='auto'): looked for a prepared TFDS dataset "
        f"at {os.path.join(tfds_dir, name, '<version>', 'dataset_info.json')} and for "
        f"the archive at {path}; "
        + _archive_not_found(path, CIFAR_URL, spec.archive))
  logging.info("source=auto: no prepared TFDS %s in %s; using the archive", name,
               tfds_dir)
  return load_cifar_archive(name, archive_dir, coarse_labels)


# ---------------------------------------------------------------------------
# Tiny-ImageNet (folder or zip).


class _FolderReader:
  """Relative-path access to an extracted tiny-imagenet-200 folder."""

  def __init__(self, root: str):
    self.where = root

  def read(self, rel: str) -> bytes:
    with open(os.path.join(self.where, rel), "rb") as f:
      return f.read()

  def exists(self, rel: str) -> bool:
    return os.path.isfile(os.path.join(self.where, rel))

  def listdir(self, rel: str) -> list[str] | None:
    try:
      return [e.name for e in os.scandir(os.path.join(self.where, rel)) if e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
      return None

  def close(self):
    pass


class _ZipReader:
  """The same access to tiny-imagenet-200.zip (with or without its top folder)."""

  def __init__(self, path: str):
    self.where = path
    try:
      self._zip = zipfile.ZipFile(path)
      names = self._zip.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise DatasetFormatError(f"{path} is not a readable zip archive "
                               f"({type(e).__name__}: {e}); download it again from "
                               f"{TINY_IMAGENET_URL}") from None
    tops = sorted((n for n in names if n.endswith("wnids.txt")), key=len)
    self._prefix = tops[0][:-len("wnids.txt")] if tops else ""
    self._files = {}  # dir → file names
    self._names = set()
    for n in names:
      if n.startswith(self._prefix) and not n.endswith("/"):
        rel = n[len(self._prefix):]
        self._names.add(rel)
        head, _, tail = rel.rpartition("/")
        self._files.setdefault(head, []).append(tail)
    self._lock = threading.Lock()

  def read(self, rel: str) -> bytes:
    try:
      with self._lock:
        return self._zip.read(self._prefix + rel)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
      raise DatasetFormatError(f"{self.where}: cannot read {rel} "
                               f"({type(e).__name__}: {e}); the zip is corrupt") from None

  def exists(self, rel: str) -> bool:
    return rel in self._names

  def listdir(self, rel: str) -> list[str] | None:
    return self._files.get(rel)

  def close(self):
    self._zip.close()


def _decode_rgb(blob: bytes, where: str, shape: tuple[int, int, int]) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(blob)) as im:
      array = np.asarray(im.convert("RGB"))
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types
    raise DatasetFormatError(f"{where} is not a readable image ({type(e).__name__}: "
                             f"{e})") from None
  if array.shape != shape:
    raise DatasetFormatError(f"{where} is {array.shape[1]}x{array.shape[0]}, expected "
                             f"{shape[1]}x{shape[0]}")
  return array


def _decode_all(reader, rels: Sequence[str], num_workers: int) -> np.ndarray:
  """Decodes images `rels` in order into one uint8 array, on a thread pool."""
  out = np.empty((len(rels),) + _TINY_SHAPE, np.uint8)

  def work(i):
    out[i] = _decode_rgb(reader.read(rels[i]), f"{reader.where}/{rels[i]}",
                         _TINY_SHAPE)

  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    for _ in pool.map(work, range(len(rels))):  # re-raises the first error
      pass
  return out


def _is_jpeg(name: str) -> bool:
  return name.lower().endswith((".jpeg", ".jpg"))


def _tiny_imagenet_files(reader):
  """(train paths, labels, val paths, labels, number of classes), in order."""
  where = reader.where
  if not reader.exists("wnids.txt"):
    raise DatasetFormatError(f"{where} has no wnids.txt; it is not the published "
                             f"Tiny-ImageNet ({TINY_IMAGENET_URL})")
  wnids = reader.read("wnids.txt").decode("utf-8", "replace").split()
  if not wnids or len(set(wnids)) != len(wnids):
    raise DatasetFormatError(f"{where}/wnids.txt must list distinct class ids, one a "
                             f"line; found {len(wnids)} ids, {len(set(wnids))} distinct")
  classes = sorted(wnids)
  index = {w: i for i, w in enumerate(classes)}

  train, train_labels, missing, empty = [], [], [], []
  for wnid in classes:
    folder = f"train/{wnid}/images"
    names = reader.listdir(folder)
    if names is None:
      missing.append(wnid)
      continue
    names = sorted(n for n in names if _is_jpeg(n))
    if not names:
      empty.append(wnid)
    train += [f"{folder}/{n}" for n in names]
    train_labels += [index[wnid]] * len(names)
  if missing or empty:
    raise DatasetFormatError(
        f"{where} is incomplete: of the {len(classes)} classes in wnids.txt, "
        f"{len(missing)} have no train/<wnid>/images folder (first: {missing[:5]}) and "
        f"{len(empty)} have no JPEG in it (first: {empty[:5]}); extract "
        f"{TINY_IMAGENET_ZIP} again")

  ann = "val/val_annotations.txt"
  if not reader.exists(ann):
    raise DatasetFormatError(f"{where} has no {ann} (the labels of the val set)")
  val = {}
  for n, line in enumerate(reader.read(ann).decode("utf-8", "replace").splitlines()):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) < 2 or fields[1] not in index:
      raise DatasetFormatError(
          f"{where}/{ann} line {n + 1}: expected 'file<TAB>wnid<TAB>bbox...' with a "
          f"wnid from wnids.txt, got {line[:80]!r}")
    val[fields[0]] = index[fields[1]]
  if not val:
    raise DatasetFormatError(f"{where}/{ann} lists no images")
  val_files = sorted(val)
  absent = [f for f in val_files if not reader.exists(f"val/images/{f}")]
  if absent:
    raise DatasetFormatError(f"{where}: {len(absent)} images listed in {ann} are "
                             f"missing from val/images (first: {absent[:5]})")
  return (train, np.asarray(train_labels, np.int32),
          [f"val/images/{f}" for f in val_files],
          np.asarray([val[f] for f in val_files], np.int32), len(classes))


def load_tiny_imagenet(data_dir: str | None = None,
                       num_workers: int | None = None) -> Dataset:
  """Tiny-ImageNet (200 classes, 64×64×3): train set, and val set as 'test'.

  Reads `data_dir/tiny-imagenet-200/` if it exists, else `data_dir/tiny-imagenet-200.zip`.
  JPEGs are decoded with PIL on `num_workers` threads (default: min(8, CPUs)).
  """
  data_dir = os.path.abspath(data_dir or default_archive_dir())
  folder = os.path.join(data_dir, TINY_IMAGENET_DIR)
  zip_path = os.path.join(data_dir, TINY_IMAGENET_ZIP)
  if os.path.isdir(folder):
    reader = _FolderReader(folder)
  elif os.path.isfile(zip_path):
    reader = _ZipReader(zip_path)
  else:
    raise DatasetNotFoundError(
        f"Tiny-ImageNet not found (source='archive'): no folder {folder} and no file "
        f"{zip_path}; download {TINY_IMAGENET_ZIP} from {TINY_IMAGENET_URL} and put it "
        f"at {zip_path} (or extract it there), or pass {_DATA_FIELD}")
  logging.info("Loading tiny_imagenet from %s", reader.where)
  workers = num_workers or min(8, os.cpu_count() or 1)
  try:
    train, train_labels, val, val_labels, num_classes = _tiny_imagenet_files(reader)
    train_images = _decode_all(reader, train, workers)
    val_images = _decode_all(reader, val, workers)
  finally:
    reader.close()
  return _make_dataset("tiny_imagenet", "archive", (train_images, train_labels),
                       (val_images, val_labels), num_classes)


# ---------------------------------------------------------------------------
# Entry point.


def _loader(name: str, source: str, data_dir: str | None) -> Callable[..., Dataset]:
  if name in ("cifar10", "cifar100"):
    return lambda **kw: load_cifar(name, source, data_dir, **kw)
  if name == "tiny_imagenet":
    return lambda **kw: load_tiny_imagenet(data_dir, **kw)
  return {"digits": load_digits, "synthetic": load_synthetic}[name]


def load_dataset(name: str, source: str = "auto", data_dir: str | None = None,
                 **kwargs) -> Dataset:
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
