"""CIFAR-10/100 from the published python-version archives (tar.gz of pickled dicts),
read with the standard library only."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from typing import Sequence
import zlib

from absl import logging
import numpy as np

from dnas_jax.data import arrays
from dnas_jax.data import errors
from dnas_jax.data import sources


class _CifarUnpickler(pickle.Unpickler):
  """Unpickles the CIFAR batches, refusing any global but NumPy's array builders.

  A pickle can run arbitrary code; the CIFAR batches only hold dicts, lists, bytes
  and NumPy arrays, so nothing else is allowed (`numpy.core` is the module name in
  the published Python 2 pickles, `numpy._core` in ones NumPy 2 writes).
  """

  _ALLOWED = (
    frozenset(
      (module, name)
      for module in ("numpy.core.multiarray", "numpy._core.multiarray")
      for name in ("_reconstruct", "scalar")
    )
    | frozenset(
      (module, name)
      for module in ("numpy.core.numeric", "numpy._core.numeric")
      for name in ("_frombuffer",)
    )
    | {
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
      ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }
  )

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
    raise errors.DatasetFormatError(
      f"{path} is not a readable tar.gz archive ({type(e).__name__}: {e}); it is "
      "probably truncated or corrupt: download it again"
    ) from None
  missing = [m for m in wanted if m not in blobs]
  if missing:
    raise errors.DatasetFormatError(
      f"{path} lacks the member(s) {missing}; it is not the published archive or it is truncated"
    )
  return blobs


def _parse_cifar_batch(
  blob: bytes, label_key: bytes, num_classes: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
  """One pickled batch → (uint8 NHWC images, int32 labels)."""
  try:
    batch = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
  except Exception as e:  # pylint: disable=broad-except  # pickle raises many types
    raise errors.DatasetFormatError(
      f"{where} is not a readable pickle ({type(e).__name__}: {e})"
    ) from None
  if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise errors.DatasetFormatError(
      f"{where} must be a dict with keys b'data' and {label_key!r}; found {keys}"
    )
  data = batch[b"data"]
  if (
    not isinstance(data, np.ndarray)
    or data.dtype != np.uint8
    or data.ndim != 2
    or data.shape[1] != 3 * 32 * 32
  ):
    desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
    raise errors.DatasetFormatError(f"{where}: b'data' must be a uint8 array [N, 3072], got {desc}")
  try:
    labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
  except (TypeError, ValueError) as e:
    raise errors.DatasetFormatError(
      f"{where}: {label_key!r} is not a list of integers ({e})"
    ) from None
  images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  arrays.check_split(images, labels, num_classes, sources.CIFAR_SHAPE, where)
  return images, labels.astype(np.int32)


def load_cifar_archive(
  name: str, data_dir: str | None = None, coarse_labels: bool = False
) -> arrays.Dataset:
  """CIFAR-10/100 from the published python-version tar.gz in `data_dir`."""
  spec = sources.CIFAR[name]
  data_dir = os.path.abspath(data_dir or sources.default_archive_dir())
  path = os.path.join(data_dir, spec.archive)
  if not os.path.isfile(path):
    raise errors.DatasetNotFoundError(
      f"{spec.title} not found (source='archive'): no file {path}; "
      + sources.archive_not_found(path, sources.CIFAR_URL, spec.archive)
    )
  _, num_classes = sources.cifar_labels(name, coarse_labels)
  if name == "cifar10":
    label_key = b"labels"
  else:
    label_key = b"coarse_labels" if coarse_labels else b"fine_labels"
  logging.info("Loading %s from the archive %s", name, path)
  blobs = _read_tar_members(path, spec.train_members + spec.test_members)

  def read(members):
    parts = [_parse_cifar_batch(blobs[m], label_key, num_classes, f"{path}:{m}") for m in members]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

  return arrays.make_dataset(
    name, "archive", read(spec.train_members), read(spec.test_members), num_classes
  )
