"""Host input pipeline: augmentation against per-image references, normalisation,
batching order, and the throughput benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dnas_jax.data import datasets
from dnas_jax.data import input_pipeline as ip
from dnas_jax.tools import data_benchmark


def _images(n=16, h=12, w=10, c=3, seed=0):
  return np.random.default_rng(seed).integers(1, 256, (n, h, w, c), dtype=np.uint8)


MEAN, STD = np.array([0.3, 0.5, 0.7]), np.array([0.2, 0.25, 0.3])


def reference_augment(images, rng, cfg, mean=MEAN, std=STD):
  """Per-image loop, float64, written from DARTS's transforms: RandomCrop (zero
  padding), RandomHorizontalFlip, ToTensor, Normalize, then Cutout (the square set to 0
  in the normalised image). The same random draws, in the same order, as the pipeline."""
  n, h, w, _ = images.shape
  p = cfg.crop_padding
  dy = rng.integers(0, 2 * p + 1, n) if p else np.zeros(n, int)
  dx = rng.integers(0, 2 * p + 1, n) if p else np.zeros(n, int)
  flip = rng.random(n) < 0.5 if cfg.flip else np.zeros(n, bool)
  if cfg.cutout:
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
  out = np.empty(images.shape, np.float64)
  for b in range(n):
    padded = np.pad(images[b], ((p, p), (p, p), (0, 0)))
    crop = padded[dy[b] : dy[b] + h, dx[b] : dx[b] + w]
    if flip[b]:
      crop = crop[:, ::-1]
    x = (crop / 255.0 - mean) / std
    if cfg.cutout:
      half = cfg.cutout // 2
      x[
        max(0, cy[b] - half) : max(0, cy[b] + half), max(0, cx[b] - half) : max(0, cx[b] + half)
      ] = 0.0
    out[b] = x
  return out


@pytest.mark.parametrize(
  "cfg",
  [
    ip.AugmentConfig(crop_padding=4),
    ip.AugmentConfig(crop_padding=2, flip=True),
    ip.AugmentConfig(flip=True),
    ip.AugmentConfig(cutout=4),
    ip.AugmentConfig(crop_padding=3, flip=True, cutout=6),
    ip.AugmentConfig(crop_padding=1, cutout=5),  # odd cutout: a 4×4 square (DARTS)
  ],
)
def test_augment_and_normalize_matches_per_image_reference(cfg):
  x = _images()
  out = ip.augment_and_normalize(x, np.random.default_rng(7), cfg, MEAN, STD)
  assert out.shape == x.shape and out.dtype == np.float32
  np.testing.assert_allclose(
    out, reference_augment(x, np.random.default_rng(7), cfg), rtol=1e-5, atol=1e-5
  )
  if not cfg.cutout:  # the uint8 geometric part alone, normalised, is the same
    geo = ip.augment(x, np.random.default_rng(7), cfg)
    assert geo.dtype == np.uint8
    np.testing.assert_array_equal(ip.normalize(geo, MEAN, STD), out)


def test_crop_moves_content_and_pads_with_zeros():
  x = _images(n=64, h=8, w=8, c=1)
  out = ip.augment(x, np.random.default_rng(1), ip.AugmentConfig(crop_padding=2))
  shifts = set()
  for b in range(len(x)):  # find the offset that explains each output
    found = [
      (sy, sx)
      for sy in range(-2, 3)
      for sx in range(-2, 3)
      if np.array_equal(
        out[b], np.roll(np.pad(x[b], ((2, 2), (2, 2), (0, 0))), (-sy, -sx), (0, 1))[2:10, 2:10]
      )
    ]
    assert len(found) == 1
    shifts.add(found[0])
  assert len(shifts) > 10  # offsets vary across the batch
  centred = [b for b in range(64) if np.array_equal(out[b], x[b])]
  assert len(centred) < 10


def test_flip_only_mirrors_some_images():
  x = _images(n=64)
  out = ip.augment(x, np.random.default_rng(2), ip.AugmentConfig(flip=True))
  same = [np.array_equal(o, i) for o, i in zip(out, x)]
  mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)]
  assert all(s != m for s, m in zip(same, mirrored))
  assert 10 < sum(mirrored) < 54


def test_cutout_sets_one_square_to_the_normalised_mean():
  # DARTS normalises first and cuts out after: inside the square the value is 0, the
  # normalised image's mean (not (0 - mean) / std, about -2, as cutting the uint8 image
  # would give); outside it is the normalised pixel.
  x = np.full((200, 20, 20, 3), 255, np.uint8)
  mean, std = np.array([0.49, 0.48, 0.45]), np.array([0.25, 0.24, 0.26])
  out = ip.augment_and_normalize(x, np.random.default_rng(3), ip.AugmentConfig(cutout=8), mean, std)
  white = (1.0 - mean) / std
  for o in out:
    inside = o == 0.0
    assert (inside.all(-1) | ~inside.any(-1)).all()  # all channels or none
    np.testing.assert_allclose(
      o[~inside.any(-1)], np.broadcast_to(white, o[~inside.any(-1)].shape), rtol=1e-6
    )
    ys, xs = np.nonzero(inside[..., 0])
    if len(ys):
      box = inside[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1, 0]
      assert box.all() and box.shape[0] <= 8 and box.shape[1] <= 8
  full = [(o[..., 0] == 0).sum() for o in out]
  assert max(full) == 64  # an interior centre zeroes the whole 8×8 square
  # A black image: cutting out after normalising is 0 in the square, where cutting the
  # uint8 image first would have given -mean/std (about -2).
  black = ip.augment_and_normalize(
    np.zeros((50, 20, 20, 3), np.uint8),
    np.random.default_rng(4),
    ip.AugmentConfig(cutout=8),
    mean,
    std,
  )
  assert (black == 0.0).any() and np.isclose(black.min(), (-mean / std).min())
  np.testing.assert_allclose(np.unique(black[..., 0]), [-mean[0] / std[0], 0.0], rtol=1e-6)


class _FixedAngle:
  """A Generator whose `uniform` returns a fixed angle (everything else delegated)."""

  def __init__(self, seed, degrees):
    self._rng, self._degrees = np.random.default_rng(seed), degrees

  def uniform(self, low, high, size):
    assert -low == high
    return np.full(size, self._degrees)

  def __getattr__(self, name):
    return getattr(self._rng, name)


def test_rotation_shape_dtype_and_geometry():
  x = _images(n=8, h=9, w=9)
  cfg = ip.AugmentConfig(rotate_degrees=30.0)
  out = ip.augment(x, np.random.default_rng(4), cfg)
  assert out.shape == x.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:, 4, 4], x[:, 4, 4])  # the centre is fixed
  assert not np.array_equal(out, x)
  # 90° exactly: a quarter turn of the grid.
  out90 = ip.augment(x, _FixedAngle(0, 90.0), ip.AugmentConfig(rotate_degrees=90.0))
  np.testing.assert_array_equal(out90, np.rot90(x, k=-1, axes=(1, 2)))
  # 0°: rotation composes with crop and flip without changing them.
  crop_flip = ip.AugmentConfig(crop_padding=2, flip=True)
  np.testing.assert_array_equal(
    ip.augment(x, _FixedAngle(5, 0.0), ip.AugmentConfig(2, True, 0, 10.0)),
    ip.augment(x, np.random.default_rng(5), crop_flip),
  )
  # 45° on a square: the corners come from outside the image, so they are zero.
  out45 = ip.augment(x, _FixedAngle(0, 45.0), ip.AugmentConfig(rotate_degrees=45.0))
  assert (out45[:, 0, 0] == 0).all() and (out45[:, -1, -1] == 0).all()


def test_no_augmentation_returns_input():
  x = _images()
  assert ip.augment(x, np.random.default_rng(0), ip.AugmentConfig()) is x


def test_normalize_matches_textbook_formula():
  x = _images(n=5, c=3)
  mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
  expect = (
    x.astype(np.float32) * np.float32(1 / 255.0) - np.asarray(mean, np.float32)
  ) / np.asarray(std, np.float32)
  out = ip.normalize(x, mean, std)
  assert out.dtype == np.float32 and out.shape == x.shape
  np.testing.assert_array_equal(out, expect)
  np.testing.assert_allclose(
    ip.normalize(x, 0.5, 0.25), (x / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5
  )
  x1 = _images(n=3, c=1)
  np.testing.assert_allclose(
    ip.normalize(x1, (0.3,), (0.2,)), (x1 / 255.0 - 0.3) / 0.2, rtol=1e-5, atol=1e-5
  )


def _split(n=40):
  x = _images(n=n, h=8, w=8)
  return ip.Split(x, np.arange(n, dtype=np.int32) % 10)


def test_epoch_batches_deterministic_and_resumable():
  split, cfg = _split(), ip.AugmentConfig(crop_padding=2, flip=True, cutout=4)
  args = (8, 3, 1, cfg, (0.5,) * 3, (0.25,) * 3)
  a = list(ip.epoch_batches(split, *args))
  b = list(ip.epoch_batches(split, *args))
  resumed = list(ip.epoch_batches(split, *args, start_step=2))
  assert len(a) == 5 and len(resumed) == 3
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  for x, y in zip(a[2:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert a[0]["image"].dtype == np.float32 and a[0]["image"].shape == (8, 8, 8, 3)
  labels = np.concatenate([x["label"] for x in a])
  assert sorted(labels.tolist()) == sorted(split.labels.tolist())
  other = list(ip.epoch_batches(split, 8, 3, 2, cfg, (0.5,) * 3, (0.25,) * 3))
  assert not np.array_equal(other[0]["label"], a[0]["label"])


def test_splits_and_eval_batches():
  ds = datasets.load_synthetic(num_train=10, num_test=5, image_size=4)
  w, a = ip.search_splits(ds, 0.6)
  assert (len(w), len(a)) == (6, 4)
  np.testing.assert_array_equal(a.images, ds.train_images[6:])
  with pytest.raises(ValueError, match="train_portion"):
    ip.search_splits(ds, 1.0)
  batches = list(ip.eval_batches(ip.Split(ds.test_images, ds.test_labels), 4, ds.mean, ds.std))
  assert [b["mask"].sum() for b in batches] == [4, 1]


@pytest.mark.parametrize("processes", [2, 4])
def test_each_process_rows_concatenate_to_the_global_batch(processes):
  """On P processes each makes only its rows of every batch (`rows`, as
  `sharding.host_rows` gives them); their concatenation is bitwise the global batch one
  process makes: training batches with every transform, the search's pairs with both
  architecture samplings, and evaluation batches with the padded last one."""
  cfg = ip.AugmentConfig(crop_padding=2, flip=True, cutout=4, rotate_degrees=20.0)
  mean, std, b = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), 8
  parts = [slice(p * b // processes, (p + 1) * b // processes) for p in range(processes)]

  def check(make):
    full = list(make(None))
    pieces = [list(make(rows)) for rows in parts]
    assert full and all(len(piece) == len(full) for piece in pieces)
    for i, batch in enumerate(full):
      for key, value in batch.items():
        got = [piece[i][key] for piece in pieces]
        assert [len(x) for x in got] == [b // processes] * processes
        got = np.concatenate(got)
        assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), (i, key)
    return full

  split = _split(n=40)
  check(lambda rows: ip.epoch_batches(split, b, 3, 1, cfg, mean, std, rows=rows))
  weight_split = ip.Split(split.images[:24], split.labels[:24])
  arch_split = ip.Split(split.images[24:], split.labels[24:])
  for sampling in ip.ARCH_SAMPLINGS:
    check(
      lambda rows, sampling=sampling: (
        batch
        for pair in ip.search_batches(
          weight_split, arch_split, b, 3, 1, cfg, mean, std, 1, sampling, rows=rows
        )
        for batch in pair
      )
    )
  # 19 images: the last batch holds 3 and 5 rows of padding (whole processes' rows of
  # it are padding when P = 4).
  test_split = ip.Split(split.images[:19], split.labels[:19])
  full = check(lambda rows: ip.eval_batches(test_split, b, mean, std, rows))
  assert [int(x["mask"].sum()) for x in full] == [8, 8, 3]


def test_throughput_benchmark_runs_and_prints_json(capsys):
  ds = data_benchmark.random_dataset(num_train=512)
  rate = data_benchmark.measure_input_throughput(
    ds, 96, ip.AugmentConfig(4, True, 16), seconds=0.05
  )
  assert rate > 0
  data_benchmark.main(["--num_train=512", "--batch_size=64", "--seconds=0.05", "--cutout=16"])
  record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert record["batch_size"] == 64 and record["images_per_s"] > 0
  assert record["augment"]["cutout"] == 16 and record["image_shape"] == [32, 32, 3]


def test_search_batches_train_weights_on_the_first_half_and_architecture_on_the_second():
  ds = datasets.load_synthetic(num_train=64, num_test=8, image_size=4)
  weight_split, arch_split = ip.search_splits(ds, 0.5)
  first = {ds.train_images[i].tobytes() for i in range(32)}
  second = {ds.train_images[i].tobytes() for i in range(32, 64)}
  assert not first & second
  seen_train, seen_val = set(), set()
  for epoch in range(2):
    for train, val in ip.search_batches(
      weight_split, arch_split, 8, 0, epoch, None, 0.0, 1 / 255.0
    ):
      # mean 0, std 1/255: normalising gives back the uint8 values as floats.
      seen_train |= {np.rint(im).astype(np.uint8).tobytes() for im in train["image"]}
      seen_val |= {np.rint(im).astype(np.uint8).tobytes() for im in val["image"]}
  assert seen_train == first and seen_val == second


def test_prefetch_yields_the_same_items_and_stops_its_thread():
  import threading  # pylint: disable=g-import-not-at-top

  items = [{"x": np.full(3, i)} for i in range(20)]
  for size in (0, 1, 3):
    out = list(ip.prefetch(iter(items), size))
    assert [int(o["x"][0]) for o in out] == list(range(20))
  before = threading.active_count()
  for i, _ in enumerate(ip.prefetch(iter(items), 2)):
    if i == 4:
      break  # leaving early: the producer thread ends
  assert threading.active_count() == before

  def failing():
    yield 1
    raise OSError("disk gone")

  with pytest.raises(OSError, match="disk gone"):
    list(ip.prefetch(failing(), 2))
