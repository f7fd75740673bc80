"""Tiny-ImageNet (200 classes, 64×64×3) from the `tiny-imagenet-200` folder or
`tiny-imagenet-200.zip`, its JPEGs decoded with PIL on a thread pool."""

from __future__ import annotations

import concurrent.futures
import io
import os
import threading
from typing import Sequence
import zipfile
import zlib

from absl import logging
import numpy as np

from dnas_jax.data import arrays
from dnas_jax.data import errors
from dnas_jax.data import sources

_TINY_SHAPE = (64, 64, 3)


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
      raise errors.DatasetFormatError(
        f"{path} is not a readable zip archive ({type(e).__name__}: {e}); download "
        f"it again from {sources.TINY_IMAGENET_URL}"
      ) from None
    tops = sorted((n for n in names if n.endswith("wnids.txt")), key=len)
    self._prefix = tops[0][: -len("wnids.txt")] if tops else ""
    self._files = {}  # dir → file names
    self._names = set()
    for n in names:
      if n.startswith(self._prefix) and not n.endswith("/"):
        rel = n[len(self._prefix) :]
        self._names.add(rel)
        head, _, tail = rel.rpartition("/")
        self._files.setdefault(head, []).append(tail)
    self._lock = threading.Lock()

  def read(self, rel: str) -> bytes:
    try:
      with self._lock:
        return self._zip.read(self._prefix + rel)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
      raise errors.DatasetFormatError(
        f"{self.where}: cannot read {rel} ({type(e).__name__}: {e}); the zip is corrupt"
      ) from None

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
    raise errors.DatasetFormatError(
      f"{where} is not a readable image ({type(e).__name__}: {e})"
    ) from None
  if array.shape != shape:
    raise errors.DatasetFormatError(
      f"{where} is {array.shape[1]}x{array.shape[0]}, expected {shape[1]}x{shape[0]}"
    )
  return array


def _decode_all(reader, rels: Sequence[str], num_workers: int) -> np.ndarray:
  """Decodes images `rels` in order into one uint8 array, on a thread pool."""
  out = np.empty((len(rels),) + _TINY_SHAPE, np.uint8)

  def work(i):
    out[i] = _decode_rgb(reader.read(rels[i]), f"{reader.where}/{rels[i]}", _TINY_SHAPE)

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
    raise errors.DatasetFormatError(
      f"{where} has no wnids.txt; it is not the published Tiny-ImageNet "
      f"({sources.TINY_IMAGENET_URL})"
    )
  wnids = reader.read("wnids.txt").decode("utf-8", "replace").split()
  if not wnids or len(set(wnids)) != len(wnids):
    raise errors.DatasetFormatError(
      f"{where}/wnids.txt must list distinct class ids, one a line; found "
      f"{len(wnids)} ids, {len(set(wnids))} distinct"
    )
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
    raise errors.DatasetFormatError(
      f"{where} is incomplete: of the {len(classes)} classes in wnids.txt, "
      f"{len(missing)} have no train/<wnid>/images folder (first: {missing[:5]}) and "
      f"{len(empty)} have no JPEG in it (first: {empty[:5]}); extract "
      f"{sources.TINY_IMAGENET_ZIP} again"
    )

  ann = "val/val_annotations.txt"
  if not reader.exists(ann):
    raise errors.DatasetFormatError(f"{where} has no {ann} (the labels of the val set)")
  val = {}
  for n, line in enumerate(reader.read(ann).decode("utf-8", "replace").splitlines()):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) < 2 or fields[1] not in index:
      raise errors.DatasetFormatError(
        f"{where}/{ann} line {n + 1}: expected 'file<TAB>wnid<TAB>bbox...' with a "
        f"wnid from wnids.txt, got {line[:80]!r}"
      )
    val[fields[0]] = index[fields[1]]
  if not val:
    raise errors.DatasetFormatError(f"{where}/{ann} lists no images")
  val_files = sorted(val)
  absent = [f for f in val_files if not reader.exists(f"val/images/{f}")]
  if absent:
    raise errors.DatasetFormatError(
      f"{where}: {len(absent)} images listed in {ann} are missing from val/images "
      f"(first: {absent[:5]})"
    )
  return (
    train,
    np.asarray(train_labels, np.int32),
    [f"val/images/{f}" for f in val_files],
    np.asarray([val[f] for f in val_files], np.int32),
    len(classes),
  )


def load_tiny_imagenet(
  data_dir: str | None = None, num_workers: int | None = None
) -> arrays.Dataset:
  """Tiny-ImageNet (200 classes, 64×64×3): train set, and val set as 'test'.

  Reads `data_dir/tiny-imagenet-200/` if it exists, else
  `data_dir/tiny-imagenet-200.zip`.
  JPEGs are decoded with PIL on `num_workers` threads (default: min(8, CPUs)).
  """
  data_dir = os.path.abspath(data_dir or sources.default_archive_dir())
  folder = os.path.join(data_dir, sources.TINY_IMAGENET_DIR)
  zip_path = os.path.join(data_dir, sources.TINY_IMAGENET_ZIP)
  if os.path.isdir(folder):
    reader = _FolderReader(folder)
  elif os.path.isfile(zip_path):
    reader = _ZipReader(zip_path)
  else:
    raise errors.DatasetNotFoundError(
      f"Tiny-ImageNet not found (source='archive'): no folder {folder} and no file "
      f"{zip_path}; download {sources.TINY_IMAGENET_ZIP} from "
      f"{sources.TINY_IMAGENET_URL} and put it at {zip_path} (or extract it there), "
      f"or pass {sources.DATA_FIELD}"
    )
  logging.info("Loading tiny_imagenet from %s", reader.where)
  workers = num_workers or min(8, os.cpu_count() or 1)
  try:
    train, train_labels, val, val_labels, num_classes = _tiny_imagenet_files(reader)
    train_images = _decode_all(reader, train, workers)
    val_images = _decode_all(reader, val, workers)
  finally:
    reader.close()
  return arrays.make_dataset(
    "tiny_imagenet", "archive", (train_images, train_labels), (val_images, val_labels), num_classes
  )
