"""Throughput of the host input path: `input_pipeline.epoch_batches` (gather, augment,
normalise), in images per second, on whatever CPU runs it.

    python -m dnas_jax.tools.data_benchmark --batch_size=96 --cutout=16
    python -m dnas_jax.tools.data_benchmark --dataset=cifar10 --data_dir=DIR

prints one JSON line, e.g. {"dataset": "random32", "batch_size": 96, ...,
"images_per_s": 123456.7}. The default `--dataset=random32` is 50,000 random
32×32×3 uint8 images (CIFAR-shaped, needs no files); any `datasets.load_dataset`
name works too.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time

import numpy as np

from dnas_jax.data import datasets
from dnas_jax.data import input_pipeline


def random_dataset(
  num_train: int = 50_000,
  image_size: int = 32,
  channels: int = 3,
  num_classes: int = 10,
  seed: int = 0,
) -> datasets.Dataset:
  """CIFAR-shaped random uint8 data (only the shapes matter for throughput)."""
  rng = np.random.default_rng(seed)
  shape = (num_train, image_size, image_size, channels)
  images = rng.integers(0, 256, shape, dtype=np.uint8)
  labels = rng.integers(0, num_classes, num_train).astype(np.int32)
  return datasets.Dataset(
    f"random{image_size}",
    "synthetic",
    images,
    labels,
    images[:0],
    labels[:0],
    num_classes,
    (0.5,) * channels,
    (0.25,) * channels,
  )


def measure_input_throughput(
  dataset: datasets.Dataset,
  batch_size: int,
  augment_cfg: input_pipeline.AugmentConfig | None,
  seconds: float = 3.0,
  seed: int = 0,
) -> float:
  """Images/s that `epoch_batches` yields over the training set for `seconds`.

  Runs whole epochs of the full training set (new order and augmentation each
  epoch) until `seconds` have passed after one warm-up batch, and counts every image
  of every batch produced.
  """
  split = input_pipeline.Split(dataset.train_images, dataset.train_labels)
  input_pipeline.steps_per_epoch(len(split), batch_size)  # validates batch_size
  next(
    input_pipeline.epoch_batches(split, batch_size, seed, 0, augment_cfg, dataset.mean, dataset.std)
  )  # warm-up
  images, epoch = 0, 0
  start = time.perf_counter()
  while True:
    for batch in input_pipeline.epoch_batches(
      split, batch_size, seed, epoch, augment_cfg, dataset.mean, dataset.std
    ):
      images += len(batch["label"])
      elapsed = time.perf_counter() - start
      if elapsed >= seconds:
        return images / elapsed
    epoch += 1


def benchmark_record(
  dataset: datasets.Dataset,
  batch_size: int,
  augment_cfg: input_pipeline.AugmentConfig | None,
  seconds: float = 3.0,
) -> dict:
  """One JSON-able record: what was measured, where, and the images/s."""
  rate = measure_input_throughput(dataset, batch_size, augment_cfg, seconds)
  return {
    "dataset": dataset.name,
    "image_shape": list(dataset.image_shape),
    "batch_size": batch_size,
    "augment": dataclasses.asdict(augment_cfg) if augment_cfg else None,
    "seconds": seconds,
    "images_per_s": round(rate, 1),
    "numpy": np.__version__,
    "machine": platform.machine(),
    "processor": platform.processor() or platform.machine(),
  }


def main(argv=None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--dataset", default="random32", help="random32, or a load_dataset name (cifar10, ...)"
  )
  parser.add_argument("--num_train", type=int, default=50_000, help="training images of random32")
  parser.add_argument("--source", default="auto")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--batch_size", type=int, default=96)
  parser.add_argument("--crop_padding", type=int, default=4)
  parser.add_argument("--flip", type=int, default=1)
  parser.add_argument("--cutout", type=int, default=0)
  parser.add_argument("--rotate_degrees", type=float, default=0.0)
  parser.add_argument("--no_augment", action="store_true")
  parser.add_argument("--seconds", type=float, default=3.0)
  args = parser.parse_args(argv)
  if args.dataset == "random32":
    dataset = random_dataset(args.num_train)
  else:
    dataset = datasets.load_dataset(args.dataset, args.source, args.data_dir)
  cfg = (
    None
    if args.no_augment
    else input_pipeline.AugmentConfig(
      args.crop_padding, bool(args.flip), args.cutout, args.rotate_degrees
    )
  )
  print(json.dumps(benchmark_record(dataset, args.batch_size, cfg, args.seconds)))


if __name__ == "__main__":
  main()
