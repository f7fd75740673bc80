"""Throughput of the streaming pipeline (`dnas_jax/data/streaming.py`) against JPEG
decoding alone, on the same files with the same number of worker processes, measured
in one run (`experiments/benchmark.py --what=stream`).

* decoding: each of `workers` processes reads and decodes its share of the files to
  RGB with the pipeline's decoder (`image_transforms.decode_array`, OpenCV) and nothing
  else, after one untimed warm-up pass over a few of them;
* pipeline: `streaming.train_epoch` over the same files, the host's part of the
  augmentation (read, decode, RandomResizedCrop: the crop view resized by
  `image_transforms.resize_crop`, flip, draw the ColorJitter parameters, batch as uint8
  through grain's workers), timed from its first batch (the worker processes' start is
  left out) to the end of the epoch;
* device part: `device_augment.prepare` (ColorJitter and normalisation) of one
  batch, jit-compiled and warmed up, timed on this process's CPU (JAX's CPU backend)
  after the pipeline's workers have stopped. Not measured on a GPU or TPU, where it is
  a few elementwise passes fused into the training step.

Decoding and pipeline are measured `rounds` times, alternately, and reported in
images/s per worker process (per core when each has one), the best of each, and as the
ratio of the two (pipeline / decoding: decoding is the floor of the host's work), with
each round's ratio beside it: on a shared machine other load changes either figure
between runs. Then the host's steps in one process in ms per image (decode, crop and
resize, the rest), with their ratio decode / all (`ratio_one_process`: the same ratio
without worker processes, measured in one process and so less moved by other load),
and the device part in ms per batch.
Without `data_dir` it writes `num_images` JPEGs of ImageNet's typical size (400×350,
quality 90, smooth content with fine detail) into a temporary folder.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time

import numpy as np
from PIL import Image

from dnas_jax.data import image_transforms
from dnas_jax.data import stream_sources
from dnas_jax.data import streaming


def synthesize_jpegs(root: str, num_images: int, size=(400, 350), classes: int = 4, seed=0):
  """`root/train/c<k>/<i>.JPEG` and one image per class under `root/val`: smooth
  random colour fields with fine noise (JPEG sizes close to ImageNet's photographs)."""
  rng = np.random.default_rng(seed)
  width, height = size
  for split, count in (("train", num_images), ("val", classes)):
    for i in range(count):
      folder = os.path.join(root, split, f"c{i % classes}")
      os.makedirs(folder, exist_ok=True)
      coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
      image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
      noise = rng.integers(-12, 13, (height, width, 3))
      pixels = np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(os.path.join(folder, f"{i:06d}.JPEG"), quality=90)


def _decode_files(files: list[str]) -> int:
  for file in files:
    with open(file, "rb") as f:
      data = f.read()
    image_transforms.decode_array(data, file)
  return len(files)


def decode_rate(files: list[str], workers: int) -> float:
  """Images/s of reading and decoding `files` in `workers` processes (at least 1)."""
  workers = max(1, workers)
  chunks = [files[i::workers] for i in range(workers)]
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    pool.map(_decode_files, [c[:4] for c in chunks])  # start and warm up the workers
    start = time.perf_counter()
    count = sum(pool.map(_decode_files, chunks))
    return count / (time.perf_counter() - start)


def pipeline_rate(source, batch_size: int, workers: int, image_size: int) -> float:
  """Images/s of one training epoch of `source`, timed from its first batch to its last:
  the worker processes' start and stop are left out (grain's workers take up to half a
  second each to stop after the epoch's end, which is most of a short epoch)."""
  steps = streaming.steps_per_epoch(source, batch_size)
  it = streaming.train_epoch(
    source, batch_size, 0, 0, 0, 0, 1, workers=workers, image_size=image_size
  )
  next(it)
  start, count = time.perf_counter(), 0
  for _ in range(steps - 1):
    count += len(next(it)["label"])
  elapsed = time.perf_counter() - start
  it.close()
  return count / elapsed


def device_augment_ms(batch_size: int, image_size: int, repeats: int = 5) -> float:
  """Milliseconds of the jit-compiled `device_augment.prepare` of one training batch of
  random uint8 images on JAX's default backend (the best of `repeats`, after a
  compiling warm-up)."""
  import jax  # pylint: disable=g-import-not-at-top  # only here: the workers need no JAX

  from dnas_jax.data import device_augment  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  batch = {
    "image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
    "jitter": np.stack([image_transforms.jitter_params(rng) for _ in range(batch_size)]),
  }
  batch = jax.device_put(batch)
  prepare = jax.jit(device_augment.prepare, static_argnums=(1, 2))
  mean, std = streaming.IMAGENET_MEAN, streaming.IMAGENET_STD
  prepare(batch, mean, std).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    prepare(batch, mean, std).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return best * 1e3


def host_steps_ms(source, image_size: int, count: int = 200, repeats: int = 3) -> dict:
  """Milliseconds per image of the host's steps in this process, each the best of
  `repeats` passes over the first `count` records: decoding, the crop and resize
  (`resize_crop`), the rest of `train_transform` (the draws, the flip)."""
  count = min(count, len(source))
  datas = [source.read(i)[0] for i in range(count)]
  best = {"decode": float("inf"), "crop_resize": float("inf"), "rest": float("inf")}
  for _ in range(repeats):
    spent = dict.fromkeys(best, 0.0)
    for i, data in enumerate(datas):
      t0 = time.perf_counter()
      pixels = image_transforms.decode_array(data, "benchmark")
      t1 = time.perf_counter()
      rng = np.random.default_rng([0, 0, i])
      top, left, h, w = image_transforms.crop_box(rng, pixels.shape[1], pixels.shape[0])
      t2 = time.perf_counter()
      pixels = image_transforms.resize_crop(pixels, top, left, h, w, image_size)
      t3 = time.perf_counter()
      pixels = image_transforms.hflip(pixels) if rng.random() < 0.5 else pixels
      image_transforms.jitter_params(rng)
      t4 = time.perf_counter()
      spent["decode"] += t1 - t0
      spent["crop_resize"] += t3 - t2
      spent["rest"] += (t2 - t1) + (t4 - t3)
    best = {k: min(best[k], spent[k] / count * 1e3) for k in best}
  return {k: round(v, 3) for k, v in best.items()}


def measure(
  data_dir: str | None = None,
  num_images: int = 3000,
  workers: int = 2,
  batch_size: int = 50,
  image_size: int = 224,
  rounds: int = 3,
) -> dict:
  """One record: decoding and pipeline images/s per worker (the best of `rounds`
  alternating measurements of each, as other load on the machine comes and goes), the
  ratio of the two bests and each round's ratio, the host's steps in ms per image in
  one process and their ratio decode / all, and the device part's ms per batch on this
  CPU."""
  with tempfile.TemporaryDirectory() as tmp:
    if not data_dir:
      synthesize_jpegs(tmp, num_images)
    train, _ = stream_sources.folder_sources(data_dir or tmp)
    files = train.files
    decodes, pipelines = [], []
    for _ in range(rounds):
      decodes.append(decode_rate(files[: len(files) // batch_size * batch_size], workers))
      pipelines.append(pipeline_rate(train, batch_size, workers, image_size))
    decode, pipeline = max(decodes), max(pipelines)
    steps = host_steps_ms(train, image_size)
    with Image.open(files[0]) as im:
      first = im.size
  device_ms = device_augment_ms(batch_size, image_size)
  per = max(1, workers)
  return {
    "what": "stream",
    "images": len(files),
    "first_image_wh": list(first),
    "data_dir": data_dir or "synthetic",
    "workers": workers,
    "batch_size": batch_size,
    "image_size": image_size,
    "cpus": os.cpu_count(),
    "decode_images_per_s_per_worker": round(decode / per, 1),
    "pipeline_images_per_s_per_worker": round(pipeline / per, 1),
    "ratio": round(pipeline / decode, 3),
    "ratio_per_round": [round(p / d, 3) for p, d in zip(pipelines, decodes)],
    "host_ms_per_image_one_process": steps,
    "ratio_one_process": round(steps["decode"] / sum(steps.values()), 3),
    "device_augment_ms_per_batch_cpu": round(device_ms, 1),
    "load_average": [round(v, 2) for v in os.getloadavg()],
  }
