"""The streaming pipeline (`dnas_jax/data/streaming.py`): a tiny ImageNet-like set of
JPEGs of several sizes, as a folder tree and as a real TFDS array_record dataset."""

from __future__ import annotations

import gc
import io
import json
import os
import shutil
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import jpeg_data  # tests/jpeg_data.py

from dnas_jax.data import device_augment
from dnas_jax.data import errors
from dnas_jax.data import image_transforms
from dnas_jax.data import imagenet
from dnas_jax.data import stream_sources
from dnas_jax.data import streaming
from dnas_jax.tools import stream_benchmark

CLASSES = ("ant", "bee", "cat")
NUM_TRAIN, NUM_VAL = 150, 30
SIZE, BATCH = 32, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """{'root': folder tree, 'tfds_dir': TFDS data dir, 'folder' and 'tfds': (train,
  test) sources}. The TFDS records are the folder's files in sorted order."""
  tmp = tmp_path_factory.mktemp("stream")
  root, tfds_dir = jpeg_data.write_tiny_imagenet(tmp, CLASSES, NUM_TRAIN, NUM_VAL)
  return {
    "root": root,
    "tfds_dir": tfds_dir,
    "folder": stream_sources.folder_sources(str(root)),
    "tfds": stream_sources.tfds_sources(jpeg_data.TFDS_NAME, tfds_dir, "train", "test"),
  }


def _epoch(source, seed=0, epoch=0, **kw):
  kw = {"process_index": 0, "process_count": 1, "image_size": SIZE, **kw}
  return list(streaming.train_epoch(source, BATCH, seed, epoch, **kw))


def _equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def _one_line(excinfo, *parts):
  msg = str(excinfo.value)
  assert "\n" not in msg, msg
  for part in parts:
    assert str(part) in msg, (part, msg)


def test_sources_agree_and_batches_have_the_pipeline_format(data):
  folder, tfds = data["folder"], data["tfds"]
  assert [len(s) for s in folder] == [len(s) for s in tfds] == [NUM_TRAIN, NUM_VAL]
  assert folder[0].num_classes == tfds[0].num_classes == len(CLASSES)
  batches = _epoch(folder[0])
  assert len(batches) == NUM_TRAIN // BATCH == streaming.steps_per_epoch(folder[0], BATCH)
  b = batches[0]
  assert b["image"].shape == (BATCH, SIZE, SIZE, 3) and b["image"].dtype == np.uint8
  assert b["jitter"].shape == (BATCH, device_augment.JITTER_COLUMNS)
  assert b["jitter"].dtype == np.float32
  assert b["label"].dtype == np.int32 and set(b) == {"image", "label", "jitter"}
  _equal(batches, _epoch(tfds[0]))
  evals = [
    list(streaming.eval_batches(s[1], BATCH, 0, 1, image_size=SIZE))
    for s in data.values()
    if isinstance(s, tuple)
  ]
  _equal(*evals)


def test_order_is_fixed_by_seed_and_epoch(data):
  src = data["folder"][0]
  a = _epoch(src, seed=1, epoch=3)
  _equal(a, _epoch(src, seed=1, epoch=3))
  for other in (_epoch(src, seed=2, epoch=3), _epoch(src, seed=1, epoch=4)):
    assert not np.array_equal(a[0]["image"], other[0]["image"])
  order = np.random.default_rng([1, 3]).permutation(NUM_TRAIN)[: len(a) * BATCH]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in a]), src.labels[order])
  # Each row is its record's transform with the generator of (seed, epoch, position).
  for position in (0, 7, BATCH + 3, len(a) * BATCH - 1):
    step, row = divmod(position, BATCH)
    data_p, _, where = src.read(int(order[position]))
    image, jitter = image_transforms.train_transform(
      data_p, np.random.default_rng([1, 3, position]), SIZE, where
    )
    np.testing.assert_array_equal(a[step]["image"][row], image)
    np.testing.assert_array_equal(a[step]["jitter"][row], jitter)


class _Tracing:
  """A source that records which records it was asked for (in this process)."""

  def __init__(self, source):
    self.source, self.reads = source, []

  def __len__(self):
    return len(self.source)

  def read(self, i):
    self.reads.append(i)
    return self.source.read(i)


def test_processes_read_disjoint_rows_whose_concatenation_is_the_global_batch(data):
  src = data["folder"][0]
  whole = _epoch(src, seed=5, epoch=1)
  traced = [_Tracing(src) for _ in range(2)]
  parts = [_epoch(traced[p], seed=5, epoch=1, process_index=p, process_count=2) for p in (0, 1)]
  for b, (p0, p1) in zip(whole, zip(*parts)):
    assert p0["image"].shape[0] == p1["image"].shape[0] == BATCH // 2
    _equal([b], [{k: np.concatenate([p0[k], p1[k]]) for k in b}])
  reads = [set(t.reads) for t in traced]
  assert not reads[0] & reads[1]
  order = np.random.default_rng([5, 1]).permutation(NUM_TRAIN)[: len(whole) * BATCH]
  assert reads[0] | reads[1] == set(order.tolist())
  # Evaluation: the rows of both processes are the one-process batches, padding too.
  one = list(streaming.eval_batches(data["folder"][1], BATCH, 0, 1, image_size=SIZE))
  two = [
    list(streaming.eval_batches(data["folder"][1], BATCH, p, 2, image_size=SIZE)) for p in (0, 1)
  ]
  _equal(one, [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*two)])
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    streaming.train_epoch(src, 15, 0, 0, process_index=0, process_count=2)


def test_resume_from_a_step_and_from_a_saved_state(data):
  src = data["folder"][0]
  whole = _epoch(src, seed=2, epoch=0)
  _equal(_epoch(src, seed=2, epoch=0, start_step=6), whole[6:])
  it = streaming.train_epoch(src, BATCH, 2, 0, 0, 0, 1, image_size=SIZE)
  head = [next(it) for _ in range(4)]
  state = json.loads(json.dumps(it.get_state()))  # saved as a JSON item
  assert state["step"] == 4
  rest = list(it)
  _equal(head + rest, whole)
  restored = streaming.train_epoch(src, BATCH, 2, 0, 0, 0, 1, image_size=SIZE, state=state)
  _equal(list(restored), whole[4:])
  with pytest.raises(ValueError, match="of epoch 0, not 1"):
    streaming.train_epoch(src, BATCH, 2, 1, image_size=SIZE, state=state)


def test_worker_processes_give_the_same_batches_and_state(data):
  src = data["tfds"][0]  # the TFDS reader is opened anew in each worker
  whole = _epoch(src, seed=3, epoch=2)
  it = streaming.train_epoch(src, BATCH, 3, 2, 1, 0, 1, workers=2, image_size=SIZE)
  head = [next(it) for _ in range(3)]
  state = json.loads(json.dumps(it.get_state()))
  it.close()
  _equal(head, whole[1:4])
  # The workers made the images in shared memory, which this process maps as it is.
  assert all(isinstance(b["image"], grain.multiprocessing.SharedMemoryArray) for b in head)
  assert not any(isinstance(b["image"], grain.multiprocessing.SharedMemoryArray) for b in whole)
  restored = streaming.train_epoch(
    src, BATCH, 3, 2, 0, 0, 1, workers=2, image_size=SIZE, state=state
  )
  _equal(list(restored), whole[4:])
  restored.close()
  # A state restored with another number of workers continues from its step.
  _equal(
    list(
      streaming.train_epoch(
        src, BATCH, 3, 2, image_size=SIZE, state=state, process_index=0, process_count=1
      )
    ),
    whole[4:],
  )


def test_random_resized_crop_bounds_and_flip():
  rng = np.random.default_rng(0)
  fallbacks = 0
  for width, height in ((90, 60), (33, 80), (224, 224)):
    for _ in range(300):
      top, left, h, w = image_transforms.crop_box(rng, width, height)
      assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
      if (h, w) == (height, width):
        fallbacks += 1
        continue
      # Rounding of w and h: bounds widened by one pixel each way.
      assert 0.08 * width * height <= (w + 1) * (h + 1) and (w - 1) * (h - 1) <= width * height
      assert 3 / 4 <= (w + 1) / max(h - 1, 1) and (w - 1) / (h + 1) <= 4 / 3
  assert fallbacks < 20
  # A strip far outside the ratio range: the fallback, the centre clipped to 4/3.
  assert image_transforms.crop_box(rng, 400, 30) == (0, 180, 30, 40)
  assert image_transforms.crop_box(rng, 30, 400) == (180, 0, 40, 30)
  # Flip: a left-to-right ramp keeps its direction (the crop is monotone on a grey
  # ramp) unless flipped; about half are.
  ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))
  buf = io.BytesIO()
  Image.fromarray(ramp).save(buf, "PNG")
  flips = 0
  for i in range(200):
    out, _ = image_transforms.train_transform(buf.getvalue(), np.random.default_rng(i), 16, "ramp")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    flips += int(out[:, 0].astype(int).sum() > out[:, -1].astype(int).sum())
  assert 70 <= flips <= 130


def test_eval_transform_against_pil_and_eval_batches(data):
  src = data["folder"][1]
  batches = list(streaming.eval_batches(src, BATCH, 0, 1, image_size=SIZE))
  assert len(batches) == -(-NUM_VAL // BATCH)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == NUM_VAL and not mask[NUM_VAL:].any()
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:NUM_VAL], src.labels)
  for i in (0, 7, NUM_VAL - 1):
    with Image.open(src.files[i]) as im:
      w, h = im.size
      short = round(SIZE * 256 / 224)  # 37
      size = (short, short * h // w) if w <= h else (short * w // h, short)
      im = im.convert("RGB").resize(size, Image.BILINEAR)
      top, left = round((size[1] - SIZE) / 2), round((size[0] - SIZE) / 2)
      expected = np.asarray(im)[top : top + SIZE, left : left + SIZE]
    np.testing.assert_array_equal(batches[i // BATCH]["image"][i % BATCH], expected)
  padding = batches[-1]["image"][NUM_VAL % BATCH :]
  assert batches[-1]["image"].dtype == np.uint8 and not padding.any()
  # On the device: only the normalisation, (x / 255 - mean) / std.
  mean, std = np.float32(streaming.IMAGENET_MEAN), np.float32(streaming.IMAGENET_STD)
  b = batches[0]
  got = device_augment.prepare(
    {k: jnp.asarray(v) for k, v in b.items()}, streaming.IMAGENET_MEAN, streaming.IMAGENET_STD
  )
  np.testing.assert_allclose(got, (b["image"] / np.float32(255) - mean) / std, atol=1e-5)


def test_one_line_errors(data, tmp_path):
  with pytest.raises(errors.DatasetNotFoundError) as excinfo:
    imagenet.open_streaming({"source": "folder", "path": str(tmp_path / "none")})
  _one_line(excinfo, tmp_path / "none" / "train", "config.data.path")
  bad = tmp_path / "bad"
  shutil.copytree(data["root"], bad)
  os.makedirs(bad / "train" / "dog")
  with pytest.raises(errors.DatasetFormatError) as excinfo:
    imagenet.open_streaming({"source": "folder", "path": str(bad)})
  _one_line(excinfo, bad / "train" / "dog", "no images")
  os.rmdir(bad / "train" / "dog")
  broken = bad / "val" / "bee" / "n01_000.JPEG"
  broken.write_bytes(b"not a jpeg")
  opened = imagenet.open_streaming({"source": "folder", "path": str(bad)})
  with pytest.raises(errors.DatasetFormatError) as excinfo:
    list(streaming.eval_batches(opened.test, BATCH, 0, 1, image_size=SIZE))
  _one_line(excinfo, broken, "not a readable image", "config.data.path")
  with pytest.raises(errors.DatasetNotFoundError) as excinfo:
    imagenet.open_streaming({"dataset": "imagenet2012", "data_dir": str(tmp_path)})
  _one_line(
    excinfo,
    tmp_path / "imagenet2012" / "<version>" / "dataset_info.json",
    "tfds build imagenet2012",
    "--file_format=array_record",
    f"--manual_dir={tmp_path / 'downloads' / 'manual'}",
    "config.data.data_dir",
  )
  with pytest.raises(errors.DataConfigError) as excinfo:
    imagenet.open_streaming({"dataset": "cifar10", "source": "npz"})
  _one_line(excinfo, "config.data.source", "'folder'")
  opened = imagenet.open_streaming(
    {"dataset": "tiny", "source": "tfds:tiny_jpegs", "data_dir": data["tfds_dir"]}
  )
  assert (len(opened.train), len(opened.test), opened.num_classes) == (NUM_TRAIN, NUM_VAL, 3)


def test_a_batch_that_fails_in_a_worker_leaves_no_shared_memory(data, tmp_path, monkeypatch):
  bad = tmp_path / "bad"
  shutil.copytree(data["root"], bad)
  train = stream_sources.folder_sources(str(bad))[0]
  order = np.random.default_rng([0, 0]).permutation(len(train))
  broken = train.files[int(order[BATCH + 5])]  # row 5 of step 1
  with open(broken, "wb") as f:
    f.write(b"not a jpeg")
  # As in a worker process: the batch is made in shared memory.
  monkeypatch.setattr(streaming, "_IN_WORKER", True)
  made = []

  def shared(shape):
    array = grain.multiprocessing.SharedMemoryArray(shape, np.uint8)
    made.append(array.shm.name)
    return array

  monkeypatch.setattr(streaming, "_batch_array", shared)
  batches = streaming.train_dataset(train, BATCH, 0, 0, SIZE, 0, 1)
  first = batches[0]
  assert isinstance(first["image"], grain.multiprocessing.SharedMemoryArray)
  first["image"].unlink_on_del()  # what the main process does with a batch it received
  del first
  with pytest.raises(errors.DatasetFormatError) as excinfo:
    batches[1]
  _one_line(excinfo, broken, "not a readable image")
  del excinfo
  gc.collect()
  assert len(made) == 2
  if os.path.isdir("/dev/shm"):  # POSIX shared memory's names, where Linux shows them
    left = lambda: [n for n in made if os.path.exists(os.path.join("/dev/shm", n.lstrip("/")))]
    # Once grain's workers have run in this process, its arrays are unlinked by a
    # background thread: give it a moment.
    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
      time.sleep(0.05)
    assert not left()


def _bilinear(pixels, size):
  """Plain bilinear resize to size × size with half-pixel centres, the edge pixels
  repeated (torchvision's tensor resize without antialias), in float64 NumPy."""
  x = pixels.astype(np.float64)
  for axis in (0, 1):
    n = x.shape[axis]
    src = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    i0 = np.floor(src).astype(int)
    frac = np.expand_dims(src - i0, [1, 2][: 2 - axis] if axis == 0 else 1)
    lo, hi = np.take(x, i0, axis), np.take(x, np.minimum(i0 + 1, n - 1), axis)
    x = lo * (1 - frac) + hi * frac
  return x


def _torchvision_pil(pixels, top, left, h, w, size):
  """torchvision's PIL path: crop, then the antialiased bilinear resize."""
  crop = Image.fromarray(np.ascontiguousarray(pixels[top : top + h, left : left + w]))
  return np.asarray(crop.resize((size, size), Image.BILINEAR)).astype(int)


def test_resize_crop_against_bilinear_and_torchvisions_pil_filter():
  rng = np.random.default_rng(3)
  y, x = np.mgrid[0:120, 0:150]
  # Smooth fields, an edge, and fine noise (photograph-like content).
  pixels = np.stack([(x * 1.7 + 40 * np.sin(y / 5)) % 256, y * 2.1, 128 + 100 * np.sin(x / 7)], -1)
  pixels = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
  cases = {"enlarge": [], "shrink": []}
  for _ in range(60):
    top, left, h, w = image_transforms.crop_box(rng, 150, 120)
    for size in (24, 48, 130):
      out = image_transforms.resize_crop(pixels, top, left, h, w, size)
      crop = pixels[top : top + h, left : left + w]
      # The view is read as the crop alone: the same as a copy of it.
      copy = image_transforms.resize_crop(np.ascontiguousarray(crop), 0, 0, h, w, size)
      np.testing.assert_array_equal(out, copy)
      tv = _torchvision_pil(pixels, top, left, h, w, size)
      if h <= size and w <= size:
        # cv2.INTER_LINEAR is plain bilinear with half-pixel centres (±1 rounding), and
        # enlarging it is PIL's filter too.
        assert np.abs(out - _bilinear(crop, size)).max() < 1
        assert np.abs(out - tv).max() <= 1
        cases["enlarge"].append(np.abs(out - tv).mean())
      elif h > size and w > size:
        plain = np.rint(_bilinear(crop, size))
        cases["shrink"].append((np.abs(out - tv).mean(), np.abs(plain - tv).mean()))
  assert len(cases["enlarge"]) > 20 and len(cases["shrink"]) > 20
  assert np.mean(cases["enlarge"]) < 0.5
  prefiltered, plain = np.mean(cases["shrink"], 0)
  # Antialiased: near torchvision's antialiased filter on average (they differ most at
  # sharp edges), much nearer than plain bilinear is (here 0.64 against 3.4).
  assert prefiltered < 1 and prefiltered < 0.5 * plain, (prefiltered, plain)


def test_train_transform_and_jitter_params_in_their_ranges(data):
  src = data["folder"][0]
  flips = set()
  for i in (0, 11, 42):
    data_i, _, where = src.read(i)
    rng = np.random.default_rng([9, i])
    out, jitter = image_transforms.train_transform(data_i, rng, SIZE, where)
    # The same draws, written out: the box, the flip, the order, then the factors.
    ref = np.random.default_rng([9, i])
    with Image.open(src.files[i]) as im:
      decoded = np.asarray(im.convert("RGB"))
    # OpenCV decodes these JPEGs to PIL's pixels.
    np.testing.assert_array_equal(image_transforms.decode_array(data_i, where), decoded)
    top, left, h, w = image_transforms.crop_box(ref, decoded.shape[1], decoded.shape[0])
    expected = image_transforms.resize_crop(decoded, top, left, h, w, SIZE)
    flipped = ref.random() < 0.5
    flips.add(flipped)
    if flipped:
      expected = expected[:, ::-1]
    np.testing.assert_array_equal(out, expected)
    order = ref.permutation(4)
    np.testing.assert_array_equal(jitter[4:], order[:3])
    # Written into a row of a batch instead: the same pixels and draws, in place.
    rows = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    into, jitter_into = image_transforms.train_transform(
      data_i, np.random.default_rng([9, i]), SIZE, where, rows[1]
    )
    assert np.shares_memory(into, rows[1])
    np.testing.assert_array_equal(rows[1], expected)
    np.testing.assert_array_equal(jitter_into, jitter)
    assert not rows[0].any()
  assert flips == {False, True}  # both of train_transform's ways of writing `out`
  draws = np.stack([image_transforms.jitter_params(np.random.default_rng(i)) for i in range(2000)])
  assert draws.dtype == np.float32 and draws.shape == (2000, device_augment.JITTER_COLUMNS)
  factors, hue, order = draws[:, :3], draws[:, 3], draws[:, 4:].astype(int)
  assert factors.min() >= 0.6 and factors.max() <= 1.4 and np.abs(hue).max() <= 0.2
  assert factors.min() < 0.62 and factors.max() > 1.38 and hue.min() < -0.19 and hue.max() > 0.19
  full = np.concatenate([order, 6 - order.sum(1, keepdims=True)], 1)
  assert (np.sort(full, 1) == np.arange(4)).all()
  assert len({tuple(o) for o in full}) == 24


def _reference_jitter(image, factors, hue, order):
  """ColorJitter of one float64 [H, W, 3] image in [0, 1], written from the formulas of
  torchvision's tensor functions, the hue with `colorsys` per pixel."""
  import colorsys  # pylint: disable=g-import-not-at-top

  x = image.astype(np.float64)
  for k in order:
    grey = (0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]
    if k == 3:
      out = np.empty_like(x)
      for idx in np.ndindex(x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*x[idx])
        out[idx] = colorsys.hsv_to_rgb((h + hue) % 1.0, s, v)
      x = out
    else:
      f = factors[k]
      degenerate = (0.0, grey.mean(), grey)[k]
      x = np.clip(f * x + (1 - f) * degenerate, 0, 1)
  return x


def test_device_color_jitter_and_normalisation_match_a_numpy_reference():
  rng = np.random.default_rng(3)
  n, h, w = 24, 5, 6
  images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
  images[0] = 128  # grey: hue and saturation undefined
  images[1, ..., 0] = images[1, ..., 1] = 255  # ties of the largest channel
  images[2, 0, :3] = [[0, 0, 0], [255, 255, 255], [0, 0, 255]]
  jitter = np.stack([image_transforms.jitter_params(np.random.default_rng(i)) for i in range(n)])
  # Every position of the hue, the extreme factors and a few exact orders.
  jitter[:4, 4:] = [[3, 0, 1], [0, 3, 1], [0, 1, 3], [2, 1, 0]]
  jitter[4, :4] = [0.6, 1.4, 0.6, -0.2]
  jitter[5, :4] = [1.4, 0.6, 1.4, 0.2]
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  prepare = jax.jit(device_augment.prepare, static_argnums=(1, 2))
  got = np.asarray(prepare({"image": images, "jitter": jitter}, mean, std))
  assert got.dtype == np.float32 and got.shape == images.shape
  for i in range(n):
    first = [int(v) for v in jitter[i, 4:]]
    order = [*first, 6 - sum(first)]
    expected = _reference_jitter(images[i] / 255.0, jitter[i, :3], float(jitter[i, 3]), order)
    np.testing.assert_allclose(
      got[i], (expected - np.array(mean)) / np.array(std), atol=2e-5, err_msg=f"image {i}"
    )
  # Without 'jitter' (evaluation): only the normalisation; the label is not read.
  plain = prepare({"image": images, "label": np.zeros(n, np.int32)}, mean, std)
  np.testing.assert_allclose(plain, (images / 255.0 - np.array(mean)) / np.array(std), atol=1e-5)


def test_stream_benchmark_prints_its_record(data):
  """`--what=stream`'s record at a tiny size (the folder of this module's JPEGs, one
  worker, one round): both rates measured, the ratio theirs, the host's steps timed."""
  record = stream_benchmark.measure(
    data_dir=str(data["root"]), workers=1, batch_size=8, image_size=SIZE, rounds=1
  )
  assert record["images"] == NUM_TRAIN and record["workers"] == 1
  decode = record["decode_images_per_s_per_worker"]
  pipeline = record["pipeline_images_per_s_per_worker"]
  assert decode > 0 and pipeline > 0
  assert record["ratio"] == pytest.approx(pipeline / decode, rel=0.01)
  assert record["ratio_per_round"] == [record["ratio"]]
  steps = record["host_ms_per_image_one_process"]
  assert set(steps) == {"decode", "crop_resize", "rest"} and min(steps.values()) > 0
  assert record["device_augment_ms_per_batch_cpu"] > 0
