"""Splits, augmentation and batching on the host, NumPy only (uint8 in memory).

* `search_splits`: the training set split by `train_portion` into the weight half and
  the architecture half (DARTS/PC-DARTS: the first part trains weights, the rest
  architecture); the test set for evaluation.
* `augment`: random crop with zero padding, horizontal flip, rotation on uint8;
  vectorised over the batch (one gather, no per-image Python loop);
  `augment_and_normalize` adds the per-channel normalisation and then cutout, which
  zeroes a square of the *normalised* image (so the square holds the mean, as DARTS's
  `Cutout` after `Normalize`).
* `epoch_batches`: the batches of one epoch in an order fixed by (seed, epoch), so a
  resumed run sees the same batches as an uninterrupted one; incomplete last batches
  are dropped.

Every batch maker takes `rows`, a slice of the global batch's rows (None: all): on
several processes each reads, augments and normalises only its own rows
(`sharding.host_rows`). The random draws are made for the whole global batch, so the
rows are bitwise those of the global batch one process makes.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterable, Iterator

import numpy as np

from dnas_jax.data.datasets import Dataset


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Host-side augmentation; all off by default.

  crop_padding: random crop of the original size from the image zero-padded by this
    many pixels on each side (CIFAR: 4).
  flip: random horizontal flip with probability 1/2.
  cutout: side of a square set to 0 after normalisation, at a random centre (DARTS:
    16); 0 disables it.
  rotate_degrees: random rotation by an angle uniform in ±rotate_degrees about the
    image centre, nearest neighbour, zeros outside (e.g. 20 for Tiny-ImageNet); 0
    disables it.
  """

  crop_padding: int = 0
  flip: bool = False
  cutout: int = 0
  rotate_degrees: float = 0.0


def search_splits(ds: Dataset, train_portion: float = 0.5) -> tuple[Split, Split]:
  """(weight split, architecture split) of the training set."""
  if not 0.0 < train_portion < 1.0:
    raise ValueError(f"config.data.train_portion={train_portion} must be in (0, 1)")
  n = int(len(ds.train_labels) * train_portion)
  return (
    Split(ds.train_images[:n], ds.train_labels[:n]),
    Split(ds.train_images[n:], ds.train_labels[n:]),
  )


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 NHWC to float32, per-channel standardised: (x / 255 - mean) / std.

  The same float32 operations as the textbook broadcast, but on [N·H, W·C] rows with
  the per-channel constants tiled along the row, so NumPy's inner loops run W·C long
  instead of C long (about 12× faster for CIFAR batches), and in place.
  """
  n, h, w, c = images.shape
  mean = np.tile(np.broadcast_to(np.asarray(mean, np.float32), (c,)), w)
  std = np.tile(np.broadcast_to(np.asarray(std, np.float32), (c,)), w)
  x = images.reshape(n * h, w * c).astype(np.float32)
  x *= np.float32(1 / 255.0)
  x -= mean
  x /= std
  return x.reshape(images.shape)


@dataclasses.dataclass(frozen=True)
class AugmentDraws:
  """The random parameters of a batch's augmentation, one entry per image (None where
  the transform is off): crop offsets dy, dx; flips; the rotation's cosine and sine
  (float32); cutout centres cy, cx. `draws[rows]` are those of the rows `rows`."""

  dy: np.ndarray | None = None
  dx: np.ndarray | None = None
  flip: np.ndarray | None = None
  cos: np.ndarray | None = None
  sin: np.ndarray | None = None
  cy: np.ndarray | None = None
  cx: np.ndarray | None = None

  def __getitem__(self, rows: slice | None) -> AugmentDraws:
    if rows is None:
      return self
    return AugmentDraws(
      **{f.name: _rows(getattr(self, f.name), rows) for f in dataclasses.fields(self)}
    )


def _rows(x: np.ndarray | None, rows: slice) -> np.ndarray | None:
  return None if x is None else x[rows]


def draw_augmentation(
  rng: np.random.Generator, cfg: AugmentConfig, n: int, h: int, w: int, cutout: bool = True
) -> AugmentDraws:
  """The random draws of `n` images' augmentation, in this order: crop offsets dy, dx;
  flips; rotation angles; cutout centres (each only when enabled; cutout only when
  `cutout`). Everything per image is computed here, on the whole batch, so that a
  process that applies them to some rows (`apply_augmentation`) gets bitwise the values
  one process gets."""
  p = cfg.crop_padding
  draws = {}
  if p:
    draws["dy"] = rng.integers(0, 2 * p + 1, n)
    draws["dx"] = rng.integers(0, 2 * p + 1, n)
  if cfg.flip:
    draws["flip"] = rng.random(n) < 0.5
  if cfg.rotate_degrees:
    theta = np.deg2rad(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees, n))
    draws["cos"] = np.cos(theta).astype(np.float32)
    draws["sin"] = np.sin(theta).astype(np.float32)
  if cutout and cfg.cutout:
    draws["cy"], draws["cx"] = rng.integers(0, h, n), rng.integers(0, w, n)
  return AugmentDraws(**draws)


def _source_index(draws: AugmentDraws, cfg: AugmentConfig, n: int, h: int, w: int, pad: int):
  """For each output pixel [n, h, w], its flat pixel index in the zero-padded batch.

  The padded batch is [n, h + 2·pad, w + 2·pad] followed by one extra zero pixel;
  pixels that come from outside the image (rotation) point at zero pixels. `draws`
  are the n images' (`draw_augmentation`).
  """
  p = cfg.crop_padding
  hp, wp = h + 2 * pad, w + 2 * pad
  zero = n * hp * wp  # the extra zero pixel
  # Row/column of each output pixel in the padded image, [n, h] and [n, w].
  rows = np.broadcast_to(np.arange(h) + (pad - p), (n, h))
  cols = np.broadcast_to(np.arange(w) + (pad - p), (n, w))
  if p:
    rows = rows + draws.dy[:, None]
    cols = cols + draws.dx[:, None]
  if cfg.flip:
    cols = np.where(draws.flip[:, None], cols[:, ::-1], cols)
  if cfg.rotate_degrees:
    # Rotate about the image centre (nearest neighbour): the crop and flip above are
    # applied to the rotated image, so sample the original at R(θ)·(q - c) + c.
    cos = draws.cos[:, None, None]
    sin = draws.sin[:, None, None]
    cy, cx = pad + (h - 1) / 2, pad + (w - 1) / 2
    ry = (rows - cy).astype(np.float32)[:, :, None]  # [n, h, 1]
    rx = (cols - cx).astype(np.float32)[:, None, :]  # [n, 1, w]
    # Separable terms first, so only the final sums are [n, h, w].
    sy = np.rint((cos * ry + np.float32(cy)) - sin * rx).astype(np.intp)
    sx = np.rint((cos * rx + np.float32(cx)) + sin * ry).astype(np.intp)
    # Inside the image iff 0 <= s - pad < size: one unsigned comparison each.
    inside = ((sy - pad).view(np.uintp) < h) & ((sx - pad).view(np.uintp) < w)
    index = (np.arange(n)[:, None, None] * hp + sy) * wp + sx
    np.putmask(index, ~inside, zero)
  else:
    index = ((np.arange(n)[:, None] * hp + rows) * wp)[:, :, None] + cols[:, None, :]
  return index


def cutout_mask(cy: np.ndarray, cx: np.ndarray, size: int, h: int, w: int) -> np.ndarray:
  """bool [n, h, w], True inside each image's cutout square: side `size` (an odd size
  gives size - 1, as DARTS's `Cutout`), centred at (cy, cx) (drawn uniform over the
  pixels, `draw_augmentation`), clipped at the border."""
  half = size // 2
  ys, xs = np.arange(h)[None, :], np.arange(w)[None, :]
  my = (ys >= (cy - half)[:, None]) & (ys < (cy + half)[:, None])
  mx = (xs >= (cx - half)[:, None]) & (xs < (cx + half)[:, None])
  return my[:, :, None] & mx[:, None, :]


def augment(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
  """Random crop (zero padding), horizontal flip and rotation of a uint8 batch (cutout
  is not applied here: it belongs after normalisation, `augment_and_normalize`):
  `draw_augmentation`, then `apply_augmentation`. The random draws and results are
  those of crop → flip → rotation applied one after the other."""
  if not (cfg.crop_padding or cfg.flip or cfg.rotate_degrees):
    return images
  n, h, w, _ = images.shape
  return apply_augmentation(images, draw_augmentation(rng, cfg, n, h, w, cutout=False), cfg)


def apply_augmentation(images: np.ndarray, draws: AugmentDraws, cfg: AugmentConfig):
  """`augment`'s geometric transforms of `images` with the given draws, one per image.

  Vectorised over the batch: the transforms compose into one source-pixel index per
  output pixel (`_source_index`), and a single `np.take` over the zero-padded batch
  gathers the result (no per-image Python loop).
  """
  if not (cfg.crop_padding or cfg.flip or cfg.rotate_degrees):
    return images
  n, h, w, c = images.shape
  pad = cfg.crop_padding
  hp, wp = h + 2 * pad, w + 2 * pad
  source = np.zeros((n * hp * wp + 1, c), images.dtype)  # padded batch + zero pixel
  source[:-1].reshape(n, hp, wp, c)[:, pad : pad + h, pad : pad + w] = images
  index = _source_index(draws, cfg, n, h, w, pad)
  return np.take(source, index.reshape(-1), axis=0).reshape(n, h, w, c)


def augment_and_normalize(
  images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, mean, std
) -> np.ndarray:
  """uint8 NHWC → float32: `augment`, `normalize`, then cutout (the square set to 0,
  the mean after normalisation; DARTS: `Normalize` then `Cutout`). The cutout centres
  are drawn from `rng` after the geometric transforms' draws."""
  n, h, w, _ = images.shape
  draws = draw_augmentation(rng, cfg, n, h, w)
  return apply_augmentation_and_normalize(images, draws, cfg, mean, std)


def apply_augmentation_and_normalize(
  images: np.ndarray, draws: AugmentDraws, cfg: AugmentConfig, mean, std
) -> np.ndarray:
  """`augment_and_normalize` with the given draws, one per image."""
  out = normalize(apply_augmentation(images, draws, cfg), mean, std)
  if cfg.cutout:
    _, h, w, _ = images.shape
    out[cutout_mask(draws.cy, draws.cx, cfg.cutout, h, w)] = 0.0
  return out


def steps_per_epoch(n: int, batch_size: int) -> int:
  steps = n // batch_size
  if steps == 0:
    raise ValueError(f"batch size {batch_size} is larger than the split ({n} examples)")
  return steps


def epoch_batches(
  split: Split,
  batch_size: int,
  seed: int,
  epoch: int,
  augment_cfg: AugmentConfig | None,
  mean,
  std,
  start_step: int = 0,
  rows: slice | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields {'image': float32 NHWC, 'label': int32} batches of one epoch, from step
  `start_step` on; the order and augmentation depend only on (seed, epoch, step).
  `rows`: only these rows of each batch (None: all)."""
  order = np.random.default_rng([seed, epoch]).permutation(len(split))
  for step in range(start_step, steps_per_epoch(len(split), batch_size)):
    idx = order[step * batch_size : (step + 1) * batch_size]
    yield _batch(split, idx, (seed, epoch, step), augment_cfg, mean, std, rows)


def _batch(
  split: Split, idx, key: tuple[int, int, int], augment_cfg, mean, std, rows: slice | None
) -> dict:
  """The rows `rows` (None: all) of the batch of `split`'s examples `idx`, augmented
  with the generator seeded by (seed, epoch, step, 1) = `key` + (1,): the draws are
  made for all of `idx`, only the rows' images are read and augmented."""
  local = idx if rows is None else idx[rows]
  images = split.images[local]
  if augment_cfg is None:
    batch = normalize(images, mean, std)
  else:
    _, h, w, _ = images.shape
    draws = draw_augmentation(np.random.default_rng([*key, 1]), augment_cfg, len(idx), h, w)
    batch = apply_augmentation_and_normalize(images, draws[rows], augment_cfg, mean, std)
  return {"image": batch, "label": split.labels[local]}


# How the architecture half's batches are drawn: each epoch one permutation of the split
# cut into batches, or each step a fresh random batch (DARTS's and PC-DARTS's
# `next(iter(valid_queue))` with a shuffling loader).
ARCH_SAMPLINGS = ("permutation", "independent")


def independent_batches(
  split: Split,
  batch_size: int,
  seed: int,
  epoch: int,
  augment_cfg: AugmentConfig | None,
  mean,
  std,
  start_step: int = 0,
  rows: slice | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """As `epoch_batches`, but every step's batch is the first `batch_size` of a fresh
  permutation of the split (seeded with (seed, epoch, step, 0)): distinct examples
  within a batch, drawn independently of the other steps. The augmentation is
  `epoch_batches`'s, seeded with (seed, epoch, step, 1)."""
  for step in range(start_step, steps_per_epoch(len(split), batch_size)):
    idx = np.random.default_rng([seed, epoch, step, 0]).permutation(len(split))[:batch_size]
    yield _batch(split, idx, (seed, epoch, step), augment_cfg, mean, std, rows)


def search_batches(
  weight_split: Split,
  arch_split: Split,
  batch_size: int,
  seed: int,
  epoch: int,
  augment_cfg: AugmentConfig | None,
  mean,
  std,
  start_step: int = 0,
  arch_sampling: str = "permutation",
  rows: slice | None = None,
) -> Iterator[tuple[dict, dict]]:
  """The (training batch, validation batch) pairs of one search epoch: the weights train
  on `weight_split` (the first part of the training set), the architecture on
  `arch_split` (the rest), each in its own order (seeds `seed` and `seed + 1`). The
  architecture's batches are drawn as `arch_sampling` says (`ARCH_SAMPLINGS`:
  `epoch_batches` or `independent_batches`). `rows`: only these rows of each batch."""
  if arch_sampling not in ARCH_SAMPLINGS:
    raise ValueError(
      f"arch_sampling={arch_sampling!r} is not valid; valid values: {list(ARCH_SAMPLINGS)}"
    )
  arch_batches = epoch_batches if arch_sampling == "permutation" else independent_batches
  return zip(
    epoch_batches(weight_split, batch_size, seed, epoch, augment_cfg, mean, std, start_step, rows),
    arch_batches(arch_split, batch_size, seed + 1, epoch, augment_cfg, mean, std, start_step, rows),
  )


def eval_batches(
  split: Split, batch_size: int, mean, std, rows: slice | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """All examples in order, in batches of `batch_size`; the last batch is padded with
  zero images (label 0) and carries a 'mask', False on the padding. `rows`: only these
  rows of each batch (None: all), with their part of the mask."""
  n = len(split)
  for start in range(0, n, batch_size):
    position = np.arange(start, start + batch_size)
    if rows is not None:
      position = position[rows]
    mask = position < n
    idx = position[mask]
    images, labels = split.images[idx], split.labels[idx]
    if len(idx) < len(position):  # the last batch: zeros where the mask is False
      padded = np.zeros((len(position),) + images.shape[1:], images.dtype)
      padded_labels = np.zeros(len(position), labels.dtype)
      padded[mask], padded_labels[mask] = images, labels
      images, labels = padded, padded_labels
    yield {"image": normalize(images, mean, std), "label": labels, "mask": mask}


def prefetch(iterable: Iterable, size: int) -> Iterator:
  """The items of `iterable`, produced up to `size` ahead by a background thread (so
  that the host prepares and places batch n + 1 while the device runs step n); the
  same items in the same order. size 0: the iterable itself. An exception in the
  producer is raised here; leaving the loop early stops the thread."""
  if size <= 0:
    yield from iterable
    return
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(entry) -> bool:
    while not stop.is_set():
      try:
        items.put(entry, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterable:
        if not put((item, None)):
          return
      put((done, None))
    except BaseException as e:  # pylint: disable=broad-except  (re-raised below)
      put((done, e))

  thread = threading.Thread(target=produce, daemon=True, name="prefetch")
  thread.start()
  try:
    while True:
      item, error = items.get()
      if error is not None:
        raise error
      if item is done:
        return
      yield item
  finally:
    stop.set()
    thread.join(timeout=5)
