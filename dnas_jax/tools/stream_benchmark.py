"""Throughput of the streaming pipeline (`dnas_jax/data/streaming.py`) against JPEG
decoding alone, on the same files with the same number of worker processes, measured
in one run (`experiments/benchmark.py --what=stream`).

* decoding: each of `workers` processes reads and PIL-decodes its share of the files
  to RGB (nothing else), after one untimed warm-up pass over a few of them;
* pipeline: `streaming.train_epoch` over the same files (read, decode,
  RandomResizedCrop, flip, ColorJitter, normalise, batch), timed from its first batch
  (the worker processes' start is left out) to the end of the epoch.

Both are reported in images/s per worker process (per core when each has one) and as
their ratio (pipeline / decoding: decoding is the floor of the pipeline's work).
Without `data_dir` it writes `num_images` JPEGs of ImageNet's typical size (400×350,
quality 90, smooth content with fine detail) into a temporary folder.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import tempfile
import time

import numpy as np
from PIL import Image

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
    image = Image.open(io.BytesIO(data))
    image = image.convert("RGB") if image.mode != "RGB" else image
    image.load()
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
  """Images/s of one training epoch of `source`, timed from its first batch on."""
  it = streaming.train_epoch(
    source, batch_size, 0, 0, 0, 0, 1, workers=workers, image_size=image_size
  )
  next(it)
  start, count = time.perf_counter(), 0
  for batch in it:
    count += len(batch["label"])
  elapsed = time.perf_counter() - start
  it.close()
  return count / elapsed


def measure(
  data_dir: str | None = None,
  num_images: int = 1000,
  workers: int = 2,
  batch_size: int = 50,
  image_size: int = 224,
) -> dict:
  """One record: decoding and pipeline images/s per worker, their ratio."""
  with tempfile.TemporaryDirectory() as tmp:
    if not data_dir:
      synthesize_jpegs(tmp, num_images)
    train, _ = stream_sources.folder_sources(data_dir or tmp)
    files = train.files
    pipeline = pipeline_rate(train, batch_size, workers, image_size)
    decode = decode_rate(files[: len(files) // batch_size * batch_size], workers)
    with Image.open(files[0]) as im:
      first = im.size
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
  }
