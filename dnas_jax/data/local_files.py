"""Your own data from local files: an `.npz` file of arrays (`config.data.source=npz`)
or an ImageFolder-style tree of images (`config.data.source=folder`).

npz: the arrays `x_train`, `y_train`, `x_test`, `y_test` (`numpy.savez`): uint8 images
[N, H, W, C] or [N, H, W] (one channel) and integer labels [N]. The classes are
`class_names` when the file holds that array, else 0 .. the largest training label.

folder: `PATH/<train_split>/<class>/*.png|jpg|jpeg|bmp` and the same under
`PATH/<test_split>`. Labels are the class folders' indices in sorted order (a test
class must be a training class); files are read in sorted order and converted to RGB.

All images of a dataset have one size, or `image_size` resizes each to a square of
that side. Every problem is a one-line `DatasetFormatError` naming the file (or
`DatasetNotFoundError` naming what is missing); the `probe_*` functions find them
without decoding the images, so that a config is checked before anything is compiled.
"""

from __future__ import annotations

import concurrent.futures
import os
import zipfile

from absl import logging
import numpy as np

from dnas_jax.data import arrays
from dnas_jax.data import errors

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
_RESIZE_HINT = "set config.data.image_size to resize them to one square size"

# ---------------------------------------------------------------------------
# npz.


def _npz_header(zf: zipfile.ZipFile, path: str, key: str):
  """(shape, dtype) of array `key` in an open npz, read from its header only."""
  if f"{key}.npy" not in zf.namelist():
    raise errors.DatasetFormatError(
      f"{path}: no array {key!r}; an npz dataset holds {', '.join(NPZ_KEYS)} (numpy.savez)"
    )
  try:
    with zf.open(f"{key}.npy") as fp:
      version = np.lib.format.read_magic(fp)
      read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
      )
      shape, _, dtype = read(fp)
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise errors.DatasetFormatError(
      f"{path}: array {key!r} is not readable ({type(e).__name__}: {e})"
    ) from None
  return shape, dtype


def _npz_labels(npz, path: str, key: str, count: int) -> np.ndarray:
  y = _npz_array(npz, path, key)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
    raise errors.DatasetFormatError(
      f"{path}: {key} must be integer class labels [N], got {y.dtype} {y.shape}"
    )
  x_key = "x" + key[1:]
  if len(y) != count:
    raise errors.DatasetFormatError(
      f"{path}: {x_key} has {count} images but {key} has {len(y)} labels"
    )
  if len(y) and y.min() < 0:
    raise errors.DatasetFormatError(
      f"{path}: {key} has a negative label ({y.min()}); labels are class indices 0, 1, ..."
    )
  return y.astype(np.int32)


def _npz_array(npz, path: str, key: str) -> np.ndarray:
  try:
    return npz[key]
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise errors.DatasetFormatError(
      f"{path}: array {key!r} is not readable ({type(e).__name__}: {e}); object "
      "arrays are not allowed"
    ) from None


def _open_npz(path: str):
  if not os.path.isfile(path):
    raise errors.DatasetNotFoundError(
      f"no npz file at {path} (config.data.path): write one with numpy.savez(PATH, "
      f"{'=..., '.join(NPZ_KEYS)}=...)"
    )
  try:
    npz = np.load(path, allow_pickle=False)
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise errors.DatasetFormatError(
      f"{path} is not a readable .npz file ({type(e).__name__}: {e})"
    ) from None
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise errors.DatasetFormatError(
      f"{path} holds one array, not the arrays {', '.join(NPZ_KEYS)} of an .npz file (numpy.savez)"
    )
  return npz


def probe_npz(
  path: str, image_size: int = 0
) -> tuple[tuple[int, int, int], int, int, tuple[np.ndarray, np.ndarray]]:
  """(image shape, number of classes, training images, (y_train, y_test)) of an npz
  dataset, every check made, its images not read."""
  path = os.path.abspath(os.path.expanduser(path))
  shapes = {}
  with _open_npz(path) as npz:
    try:
      zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
      raise errors.DatasetFormatError(
        f"{path} is not a readable .npz file ({type(e).__name__}: {e})"
      ) from None
    with zf:
      for key in NPZ_KEYS:
        shape, dtype = _npz_header(zf, path, key)
        if key.startswith("x") and (dtype != np.uint8 or len(shape) not in (3, 4)):
          raise errors.DatasetFormatError(
            f"{path}: {key} must be uint8 images [N, H, W] or [N, H, W, C], got {dtype} {shape}"
          )
        shapes[key] = shape
    y_train = _npz_labels(npz, path, "y_train", shapes["x_train"][0])
    y_test = _npz_labels(npz, path, "y_test", shapes["x_test"][0])
    if "class_names" in npz.files:
      num_classes, of = len(_npz_array(npz, path, "class_names")), "class_names"
    else:
      num_classes = int(y_train.max()) + 1 if len(y_train) else 0
      of = "y_train (its largest label + 1)"
  if not len(y_train):
    raise errors.DatasetFormatError(f"{path}: x_train holds no images")
  for key, y in (("y_train", y_train), ("y_test", y_test)):
    if len(y) and y.max() >= num_classes:
      raise errors.DatasetFormatError(
        f"{path}: {key} has the label {y.max()}, outside the {num_classes} classes "
        f"[0, {num_classes}) of {of}"
      )
  image = {
    k: tuple(shapes[k][1:]) + ((1,) if len(shapes[k]) == 3 else ()) for k in ("x_train", "x_test")
  }
  if image["x_train"][-1] != image["x_test"][-1]:
    raise errors.DatasetFormatError(
      f"{path}: x_train has {image['x_train'][-1]} channels, x_test {image['x_test'][-1]}"
    )
  if image_size:
    shape = (image_size, image_size, image["x_train"][-1])
  elif image["x_train"] != image["x_test"]:
    raise errors.DatasetFormatError(
      f"{path}: x_train images are {_hwc(image['x_train'])}, x_test images "
      f"{_hwc(image['x_test'])}; {_RESIZE_HINT}"
    )
  else:
    shape = image["x_train"]
  return shape, num_classes, len(y_train), (y_train, y_test)


def _hwc(shape) -> str:
  return "×".join(str(d) for d in shape)


def load_npz(path: str, image_size: int = 0, name: str = "npz") -> arrays.Dataset:
  """The dataset of an npz file (module docstring), called `name`."""
  shape, num_classes, _, (y_train, y_test) = probe_npz(path, image_size)
  path = os.path.abspath(os.path.expanduser(path))
  logging.info("Loading %s from %s", name, path)
  with _open_npz(path) as npz:
    x = []
    for key in ("x_train", "x_test"):
      images = _npz_array(npz, path, key)
      if images.ndim == 3:
        images = images[..., None]
      x.append(arrays.resize_images(images, image_size) if image_size else images)
  for images, labels, key in ((x[0], y_train, "train"), (x[1], y_test, "test")):
    arrays.check_split(images, labels, num_classes, shape, f"{path} ({key})")
  return arrays.make_dataset(name, "npz", (x[0], y_train), (x[1], y_test), num_classes)


# ---------------------------------------------------------------------------
# folder.


def _listdir(folder: str) -> list[os.DirEntry]:
  return sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)


def _class_images(folder: str) -> list[str]:
  files = [
    e.path for e in _listdir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
  ]
  if not files:
    raise errors.DatasetFormatError(
      f"{folder}: a class folder with no images ({', '.join(IMAGE_EXTENSIONS)})"
    )
  return files


def folder_files(
  path: str, train_split: str = "train", test_split: str = "test"
) -> tuple[list[str], tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
  """(sorted class names, (training files, labels), (test files, labels))."""
  root = os.path.abspath(os.path.expanduser(path))
  layout = (
    f"a folder dataset is {root}/{train_split}/<class>/*.png|jpg and "
    f"{root}/{test_split}/<class>/... (config.data.path, "
    "config.data.train_split, config.data.test_split)"
  )
  for split in (train_split, test_split):
    if not os.path.isdir(os.path.join(root, split)):
      raise errors.DatasetNotFoundError(f"no folder {os.path.join(root, split)}: {layout}")
  train_dir = os.path.join(root, train_split)
  classes = [e.name for e in _listdir(train_dir) if e.is_dir()]
  if not classes:
    raise errors.DatasetFormatError(f"{train_dir} has no class folders: {layout}")
  index = {c: i for i, c in enumerate(classes)}
  splits = []
  for split in (train_split, test_split):
    files, labels = [], []
    for entry in _listdir(os.path.join(root, split)):
      if not entry.is_dir():
        continue
      if entry.name not in index:
        raise errors.DatasetFormatError(
          f"{entry.path}: class {entry.name!r} has no folder in {train_dir}; the "
          f"training classes are {classes[:10]}{' ...' if len(classes) > 10 else ''}"
        )
      names = _class_images(entry.path)
      files += names
      labels += [index[entry.name]] * len(names)
    if not files:
      raise errors.DatasetFormatError(f"{os.path.join(root, split)} has no class folders: {layout}")
    splits.append((files, np.asarray(labels, np.int32)))
  return classes, splits[0], splits[1]


def _image_size(path: str) -> tuple[int, int]:
  """(width, height) of an image file, from its header."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as im:
      return im.size
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types
    raise errors.DatasetFormatError(
      f"{path} is not a readable image ({type(e).__name__}: {e})"
    ) from None


def probe_folder(
  path: str, train_split: str = "train", test_split: str = "test", image_size: int = 0
) -> tuple[tuple[int, int, int], int, int]:
  """(image shape, number of classes, training images) of a folder dataset; the shape
  is `image_size`² or the first training image's (every image is checked when it is
  loaded)."""
  classes, (train, _), _ = folder_files(path, train_split, test_split)
  return _folder_shape(train[0], image_size), len(classes), len(train)


def _folder_shape(first: str, image_size: int) -> tuple[int, int, int]:
  if image_size:
    return image_size, image_size, 3
  width, height = _image_size(first)
  return height, width, 3


def _decode(file: str, image_size: int, first: str, shape) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(file) as im:
      image = np.asarray(im.convert("RGB"))
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types
    raise errors.DatasetFormatError(
      f"{file} is not a readable image ({type(e).__name__}: {e})"
    ) from None
  if image_size:
    return arrays.resize_image(image, image_size)
  if image.shape != shape:
    raise errors.DatasetFormatError(
      f"{file} is {image.shape[0]}×{image.shape[1]} (height×width) but {first} is "
      f"{shape[0]}×{shape[1]}: {_RESIZE_HINT}"
    )
  return image


def load_folder(
  path: str,
  train_split: str = "train",
  test_split: str = "test",
  image_size: int = 0,
  name: str = "folder",
  num_workers: int | None = None,
) -> arrays.Dataset:
  """The dataset of an image folder tree (module docstring), called `name`; images
  are decoded with PIL on `num_workers` threads (default: min(8, CPUs))."""
  classes, (train, y_train), (test, y_test) = folder_files(path, train_split, test_split)
  shape = _folder_shape(train[0], image_size)
  logging.info(
    "Loading %s from %s: %d classes, %d + %d images",
    name,
    os.path.abspath(path),
    len(classes),
    len(train),
    len(test),
  )
  workers = num_workers or min(8, os.cpu_count() or 1)
  out = []
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    for files in (train, test):
      images = np.empty((len(files),) + shape, np.uint8)

      def work(i, files=files, images=images):
        images[i] = _decode(files[i], image_size, train[0], shape)

      for _ in pool.map(work, range(len(files))):  # re-raises the first error
        pass
      out.append(images)
  return arrays.make_dataset(name, "folder", (out[0], y_train), (out[1], y_test), len(classes))
