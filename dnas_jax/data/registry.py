"""The datasets by name: one table that the loaders, the config checks
(`training/validation.py`) and retraining's `--dry_run` all read.

An entry (`DatasetSpec`) holds what is known of a dataset without reading it: its
loader, number of classes, image shape [H, W, C], training images (when known),
per-channel mean and std (optional: computed from the training images when not given)
and its sources, the values `config.data.source` may take for it ('auto' takes the
loader's own choice). The built-ins, cifar10, cifar100, tiny_imagenet, digits,
synthetic and imagenet2012 (read only by the streaming pipeline: `streaming`,
`imagenet`), are registered below
the same way `register_dataset` registers yours::

    def load(source, data_dir):  # config.data.source and config.data.data_dir
      return x_train, y_train, x_test, y_test  # uint8 [N, H, W, C], int [N]

    registry.register_dataset("my_data", load, num_classes=5, image_shape=(48, 48, 3),
                              num_train=1000)

A loader returns the four arrays or a `Dataset`. Your own files need no registration:
`config.data.source` 'npz', 'folder' or 'tfds:<name>' reads them (`local_files`,
`tfds_source`), `config.data.dataset` then only names them, and their facts come from
the files themselves, read without decoding an image (`resolve`).
`config.data.image_size` (0: as they are) resizes the images of any dataset to a
square of that side. The training images of your own files are kept in a fixed random
order (`shuffled_train`), so that both halves of the search's split hold every class.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping

from absl import logging
import numpy as np

from dnas_jax.data import arrays
from dnas_jax.data import builtin
from dnas_jax.data import cifar
from dnas_jax.data import errors
from dnas_jax.data import local_files
from dnas_jax.data import tfds_source
from dnas_jax.data import tiny_imagenet

# The sources that read your own files; `tfds:<name>` stands for any prepared TFDS
# dataset name.
FILE_SOURCES = ("npz", "folder", "tfds:<name>")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A dataset's entry in the table (module docstring).

  loader: `loader(source, data_dir, **kwargs)` → a `Dataset` or
    (x_train, y_train, x_test, y_test).
  """

  name: str
  loader: Callable[..., Any]
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int | None = None
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  sources: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The fields of `config.data` that choose and shape the data (a stored config
  without the newer ones gets their defaults)."""

  dataset: str
  source: str = "auto"
  data_dir: str = ""
  path: str = ""  # npz file or folder tree (source npz or folder)
  image_size: int = 0  # resize every image to image_size² (0: as they are)
  train_split: str = "train"  # folder and tfds:<name>: the splits' names
  test_split: str = "test"

  @classmethod
  def of(cls, data: DataConfig | Mapping[str, Any]) -> DataConfig:
    if isinstance(data, DataConfig):
      return data
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


_REGISTRY: dict[str, DatasetSpec] = {}
_BUILTINS: set[str] = set()


def _check_stats(name: str, what: str, values, channels: int, positive: bool):
  if values is None:
    return None
  values = tuple(float(v) for v in np.ravel(values))
  if len(values) != channels or not all(np.isfinite(values)) or (positive and min(values) <= 0):
    raise ValueError(
      f"register_dataset({name!r}): {what} must be {channels} finite "
      f"{'positive ' if positive else ''}numbers (one per channel, on "
      f"the 0..1 scale), got {values}"
    )
  return values


def register_dataset(
  name: str,
  loader: Callable[..., Any],
  *,
  num_classes: int,
  image_shape: tuple[int, int, int],
  num_train: int | None = None,
  mean=None,
  std=None,
  sources: tuple[str, ...] | None = None,
) -> DatasetSpec:
  """Adds dataset `name` to the table (`config.data.dataset=name` then loads it).

  Args:
    name: the name; a built-in's cannot be taken, one of yours is replaced.
    loader: `loader(source, data_dir, **kwargs)` (config.data.source, the folder of
      config.data.data_dir or None) → (x_train, y_train, x_test, y_test), uint8
      [N, H, W, C] (or [N, H, W] for one channel) and integer labels [N], or a
      `Dataset`.
    num_classes: the number of classes; labels lie in [0, num_classes).
    image_shape: [H, W, C] of the images the loader returns.
    num_train: training images, if known: the config checks then refuse a batch larger
      than a split before loading anything.
    mean, std: per-channel statistics on the 0..1 scale for the input normalisation;
      computed from the training images when not given.
    sources: the values config.data.source may take besides 'auto' (default: the
      name itself).

  Returns:
    The entry.
  """
  if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
    raise ValueError(
      f"register_dataset: the name {name!r} must be letters, digits, '_', '.' or '-'"
    )
  if name in _BUILTINS:
    raise ValueError(f"register_dataset: {name!r} is a built-in dataset; choose another name")
  if not callable(loader):
    raise ValueError(f"register_dataset({name!r}): the loader must be callable")
  shape = tuple(image_shape)
  if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
    raise ValueError(
      f"register_dataset({name!r}): image_shape must be three positive "
      f"integers [H, W, C], got {image_shape}"
    )
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(
      f"register_dataset({name!r}): num_classes must be a positive integer, got {num_classes!r}"
    )
  if num_train is not None and (
    isinstance(num_train, bool) or not isinstance(num_train, int) or num_train < 1
  ):
    raise ValueError(
      f"register_dataset({name!r}): num_train must be a positive integer or None, got {num_train!r}"
    )
  sources = tuple(sources) if sources is not None else (name,)
  reserved = [s for s in sources if s == "auto" or _file_source(s)[0]]
  if not sources or reserved:
    raise ValueError(
      f"register_dataset({name!r}): sources {sources} must be names "
      f"other than 'auto' and {list(FILE_SOURCES)}"
    )
  spec = DatasetSpec(
    name,
    loader,
    num_classes,
    shape,
    num_train,
    _check_stats(name, "mean", mean, shape[-1], False),
    _check_stats(name, "std", std, shape[-1], True),
    sources,
  )
  if name in _REGISTRY:
    logging.info("register_dataset: %s replaces the earlier registration", name)
  _REGISTRY[name] = spec
  return spec


def unregister_dataset(name: str) -> None:
  """Removes a dataset you registered (a built-in stays)."""
  if name in _BUILTINS:
    raise ValueError(f"unregister_dataset: {name!r} is a built-in dataset")
  _REGISTRY.pop(name, None)


def registered_datasets() -> dict[str, DatasetSpec]:
  """The table: name → entry, built-ins first, then yours in registration order."""
  return dict(_REGISTRY)


def source_names() -> list[str]:
  """The valid values of config.data.source."""
  names = ["auto"]
  for spec in _REGISTRY.values():
    names += [s for s in spec.sources if s not in names]
  return names + list(FILE_SOURCES)


def _file_source(source: str) -> tuple[str | None, str]:
  """('npz' | 'folder' | 'tfds' | None, the TFDS name)."""
  if source in ("npz", "folder"):
    return source, ""
  if isinstance(source, str) and source.startswith("tfds:"):
    return "tfds", source[len("tfds:") :]
  return None, ""


def resolve(data: DataConfig | Mapping[str, Any]) -> DatasetSpec:
  """The entry of `config.data`: a registered dataset's (its image shape resized by
  `image_size`), or, for your own files, one made from what their headers say.

  Raises:
    DataConfigError: an unknown name or source, or a combination that does not exist.
    DatasetNotFoundError, DatasetFormatError: your files are missing or malformed.
  """
  d = DataConfig.of(data)
  kind, tfds_name = _file_source(d.source)
  if kind is None:
    if d.source not in source_names():
      raise errors.DataConfigError(
        f"config.data.source={d.source!r} is not valid; valid values: {source_names()}"
      )
    if d.dataset not in _REGISTRY:
      raise errors.DataConfigError(
        f"config.data.dataset={d.dataset!r} is not valid; valid values: "
        f"{list(_REGISTRY)}; or, for your own files, any name with "
        f"config.data.source one of {list(FILE_SOURCES)}"
      )
    spec = _REGISTRY[d.dataset]
    if d.source != "auto" and d.source not in spec.sources:
      raise errors.DataConfigError(
        f"config.data.source={d.source!r} is not valid for config.data.dataset="
        f"{d.dataset!r}; valid values: {['auto', *spec.sources]}"
      )
    if d.image_size:
      spec = dataclasses.replace(
        spec, image_shape=(d.image_size, d.image_size, spec.image_shape[-1])
      )
    return spec
  if d.dataset in _REGISTRY:
    raise errors.DataConfigError(
      f"config.data.dataset={d.dataset!r} is a registered dataset; the data of "
      f"config.data.source={d.source!r} needs a name of its own: "
      "--config.data.dataset=NAME"
    )
  if not isinstance(d.dataset, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", d.dataset):
    raise errors.DataConfigError(
      f"config.data.dataset={d.dataset!r} must be a name of letters, digits, '_', "
      "'.' or '-' (it names your data in logs and checkpoints)"
    )
  if kind == "tfds":
    if not re.fullmatch(r"[a-z0-9_]+(/[\w.-]+)?", tfds_name):
      raise errors.DataConfigError(
        f"config.data.source={d.source!r} names no TFDS dataset: use tfds:<name>, "
        "e.g. tfds:oxford_flowers102 (a builder config: tfds:<name>/<config>)"
      )
    shape, num_classes, num_train = tfds_source.probe_tfds(
      tfds_name, d.data_dir or None, d.train_split, d.test_split, d.image_size
    )
    loader = functools.partial(_load_tfds, tfds_name, d)
  else:
    if not d.path:
      raise errors.DataConfigError(
        f"config.data.source={d.source!r} reads config.data.path, which is empty: "
        f"pass --config.data.path={'FILE.npz' if kind == 'npz' else 'FOLDER'}"
      )
    if kind == "npz":
      shape, num_classes, num_train, _ = local_files.probe_npz(d.path, d.image_size)
      loader = functools.partial(_load_npz, d)
    else:
      shape, num_classes, num_train = local_files.probe_folder(
        d.path, d.train_split, d.test_split, d.image_size
      )
      loader = functools.partial(_load_folder, d)
  return DatasetSpec(d.dataset, loader, num_classes, shape, num_train, sources=(d.source,))


def _load_npz(d: DataConfig, source, data_dir):
  del source, data_dir
  return local_files.load_npz(d.path, d.image_size, d.dataset)


def _load_folder(d: DataConfig, source, data_dir):
  del source, data_dir
  return local_files.load_folder(d.path, d.train_split, d.test_split, d.image_size, d.dataset)


def _load_tfds(tfds_name: str, d: DataConfig, source, data_dir):
  del source
  return tfds_source.load_tfds(
    tfds_name, data_dir, d.train_split, d.test_split, d.image_size, d.dataset
  )


def _as_dataset(spec: DatasetSpec, source: str, out) -> arrays.Dataset:
  """A loader's result as a `Dataset`: arrays are checked against the registration; a
  `Dataset` that differs from it (cifar100's coarse labels, a smaller test copy of a
  dataset) is logged."""
  if isinstance(out, arrays.Dataset):
    if (out.image_shape, out.num_classes) != (spec.image_shape, spec.num_classes):
      logging.warning(
        "the loader of dataset %s returned images %s and %d classes, not the registered %s and %d",
        spec.name,
        out.image_shape,
        out.num_classes,
        spec.image_shape,
        spec.num_classes,
      )
    return out
  try:
    x_train, y_train, x_test, y_test = out
  except (TypeError, ValueError):
    raise errors.DatasetFormatError(
      f"the loader of dataset {spec.name!r} must return a Dataset or (x_train, "
      f"y_train, x_test, y_test), got {type(out).__name__}"
    ) from None
  splits = []
  for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 3 and spec.image_shape[-1] == 1:
      x = x[..., None]
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
      raise errors.DatasetFormatError(
        f"the loader of dataset {spec.name!r}: {split} labels must be integers [N], "
        f"got {y.dtype} {y.shape}"
      )
    y = y.astype(np.int32)
    arrays.check_split(
      x,
      y,
      spec.num_classes,
      spec.image_shape,
      f"the loader of dataset {spec.name!r} ({split} split)",
    )
    splits.append((x, y))
  source = spec.sources[0] if source == "auto" else source
  if spec.mean is None or spec.std is None:
    return arrays.make_dataset(spec.name, source, splits[0], splits[1], spec.num_classes)
  return arrays.Dataset(
    spec.name, source, *splits[0], *splits[1], spec.num_classes, spec.mean, spec.std
  )


def shuffled_train(ds: arrays.Dataset) -> arrays.Dataset:
  """`ds` with its training images in a fixed random order (a permutation seeded 0).

  The search trains the weights on the first part of the training split and the
  architecture on the rest (`input_pipeline.search_splits`); files sorted by class
  (a folder tree always is) would give the two parts different classes.
  """
  order = np.random.default_rng(0).permutation(len(ds.train_labels))
  return dataclasses.replace(
    ds, train_images=ds.train_images[order], train_labels=ds.train_labels[order]
  )


def load(data: DataConfig | Mapping[str, Any], **kwargs) -> arrays.Dataset:
  """The dataset `config.data` names, loaded, checked and resized (`image_size`).

  Args:
    data: config.data (or a `DataConfig`).
    **kwargs: passed to the loader: `coarse_labels` (cifar100), `num_workers`
      (tiny_imagenet), the `builtin.load_synthetic` arguments (synthetic).
  """
  d = DataConfig.of(data)
  spec = resolve(d)
  own_files = _file_source(d.source)[0] is not None
  registered = spec if own_files else _REGISTRY[d.dataset]
  out = spec.loader(d.source, d.data_dir or None, **kwargs)
  ds = _as_dataset(registered, d.source, out)
  if own_files:
    ds = shuffled_train(ds)
  if d.image_size and ds.image_shape[:2] != (d.image_size, d.image_size):
    train = arrays.resize_images(ds.train_images, d.image_size)
    test = arrays.resize_images(ds.test_images, d.image_size)
    mean, std = (ds.mean, ds.std) if registered.mean is not None else arrays.channel_stats(train)
    ds = dataclasses.replace(ds, train_images=train, test_images=test, mean=mean, std=std)
  logging.info(
    "Dataset %s (source=%s): %d train, %d test images of shape %s, %d classes",
    ds.name,
    ds.source,
    len(ds.train_labels),
    len(ds.test_labels),
    ds.image_shape,
    ds.num_classes,
  )
  return ds


# ---------------------------------------------------------------------------
# The built-ins (sources, files and orders: README, Data, and `datasets`).


def _cifar_loader(name: str):
  def load_cifar(source, data_dir, coarse_labels=False):
    return cifar.load_cifar(name, source, data_dir, coarse_labels)

  return load_cifar


def _load_tiny_imagenet(source, data_dir, num_workers=None):
  del source
  return tiny_imagenet.load_tiny_imagenet(data_dir, num_workers)


def _load_imagenet2012(source, data_dir, **kwargs):
  """ImageNet is never loaded into memory: the streaming pipeline reads it."""
  del source, data_dir, kwargs
  raise errors.DataConfigError(
    "config.data.dataset='imagenet2012' does not fit in memory: set "
    "config.data.streaming=True (dnas_jax/data/streaming.py reads it as it trains)"
  )


# ILSVRC-2012: the normalisation of DARTS's and PC-DARTS's train_imagenet.py.
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _load_digits(source, data_dir):
  del source, data_dir
  return builtin.load_digits()


def _load_synthetic(source, data_dir, **kwargs):
  del source, data_dir
  return builtin.load_synthetic(**kwargs)


for _name, _loader, _classes, _shape, _num_train, _sources in (
  ("cifar10", _cifar_loader("cifar10"), 10, (32, 32, 3), 50_000, ("tfds", "archive")),
  ("cifar100", _cifar_loader("cifar100"), 100, (32, 32, 3), 50_000, ("tfds", "archive")),
  ("tiny_imagenet", _load_tiny_imagenet, 200, (64, 64, 3), 100_000, ("archive",)),
  ("digits", _load_digits, 10, (8, 8, 1), 1_500, ("digits",)),
  ("synthetic", _load_synthetic, 10, (8, 8, 3), 256, ("synthetic",)),
):
  register_dataset(
    _name, _loader, num_classes=_classes, image_shape=_shape, num_train=_num_train, sources=_sources
  )
  _BUILTINS.add(_name)
# ImageNet (ILSVRC-2012, 1,281,167 training images at 224×224 crops), for --dry_run and
# the config checks; its loader is a placeholder.
register_dataset(
  "imagenet2012",
  _load_imagenet2012,
  num_classes=1000,
  image_shape=(224, 224, 3),
  num_train=1_281_167,
  mean=_IMAGENET_MEAN,
  std=_IMAGENET_STD,
  sources=("tfds",),  # as a folder tree: source 'folder' with a name of its own
)
_BUILTINS.add("imagenet2012")
