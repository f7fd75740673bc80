"""Per-image decoding and geometric augmentation of encoded images (JPEG, PNG) with PIL,
on the host (grain's worker processes), as the DARTS and PC-DARTS ImageNet scripts do
it with torchvision on PIL images:

* training (`train_transform`): RandomResizedCrop(size) (area scale (0.08, 1), aspect
  ratio (3/4, 4/3), 10 attempts, then the centre-crop fallback; bilinear), a horizontal
  flip with probability 1/2, and the parameters of ColorJitter(brightness=0.4,
  contrast=0.4, saturation=0.4, hue=0.2) with the four adjustments in a random order
  (`jitter_params`);
* evaluation (`eval_transform`): the shorter side resized to size·256/224 (256 for
  224), then the centre size×size crop.

Each returns a uint8 [size, size, 3] array; the random draws come from the NumPy
generator passed in, in the order torchvision makes them. The colour jitter itself and
the normalisation run on the accelerator (`device_augment.prepare`): with PIL they cost
about 3× the JPEG decoding (the hue's RGB→HSV→RGB round trip most of it). What is left
here is decoding and one bilinear resize, which costs about as much as the decoding
(docs/imagenet.md, Throughput). No whole image is converted to float here.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from dnas_jax.data import errors

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue


def decode(data: bytes, where: str) -> Image.Image:
  """The RGB image of encoded `data`; a one-line `DatasetFormatError` naming `where`
  (the file, or the record and its dataset) when it is not a readable image."""
  try:
    image = Image.open(io.BytesIO(data))
    image = image.convert("RGB") if image.mode != "RGB" else image
    image.load()
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types
    raise errors.DatasetFormatError(
      f"{where} is not a readable image ({type(e).__name__}: {e})".replace("\n", " ")
    ) from None
  return image


def crop_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
  """RandomResizedCrop's (top, left, height, width) for a width × height image
  (torchvision's `get_params`: up to 10 draws of area and log aspect ratio, then the
  whole image clipped to the ratio range, centred)."""
  area = height * width
  log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*SCALE)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < RATIO[0]:
    w, h = width, int(round(width / RATIO[0]))
  elif in_ratio > RATIO[1]:
    w, h = int(round(height * RATIO[1])), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def jitter_params(rng: np.random.Generator) -> np.ndarray:
  """ColorJitter(0.4, 0.4, 0.4, 0.2)'s parameters as torchvision draws them: a random
  order of the four adjustments, then the brightness, contrast and saturation factors
  in [0.6, 1.4] and the hue shift in [-0.2, 0.2]. float32 [7]: the four, then the
  first three of the order (`device_augment`'s 'jitter' columns; the adjustments are
  applied there)."""
  order = rng.permutation(4)
  factors = [rng.uniform(max(0.0, 1 - j), 1 + j) for j in JITTER[:3]]
  factors.append(rng.uniform(-JITTER[3], JITTER[3]))
  return np.asarray([*factors, *order[:3]], np.float32)


def train_transform(
  data: bytes, rng: np.random.Generator, size: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
  """Decode, RandomResizedCrop(size), flip: uint8 [size, size, 3], and the image's
  ColorJitter parameters (`jitter_params`), applied later by `device_augment`.

  The crop and the resize are one PIL call (`resize` with `box`), so no cropped copy is
  made; its bilinear filter reads the source pixels just outside the box at the edges
  where torchvision's crop-then-resize repeats the box's own (only the border pixels
  of the output differ). The flip is a NumPy view, copied once into the batch."""
  image = decode(data, where)
  top, left, h, w = crop_box(rng, *image.size)
  image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
  pixels = np.asarray(image)
  if rng.random() < 0.5:
    pixels = pixels[:, ::-1]
  return pixels, jitter_params(rng)


def resize_size(size: int) -> int:
  """The shorter side before the evaluation crop: 256 for 224, scaled as 256/224."""
  return int(round(size * 256 / 224))


def eval_transform(data: bytes, size: int, where: str) -> np.ndarray:
  """Decode, shorter side to `resize_size(size)` (bilinear), centre crop: uint8
  [size, size, 3] (torchvision's Resize then CenterCrop), the crop a NumPy view copied
  once into the batch. Kept as two steps: one `resize` with the crop's box in source
  coordinates is the same filter, but its rounding differs by 1 in about half the
  images (measured), and evaluation is not the throughput-bound pass."""
  image = decode(data, where)
  width, height = image.size
  short = resize_size(size)
  if width <= height:
    new = (short, int(short * height / width))
  else:
    new = (int(short * width / height), short)
  image = image.resize(new, Image.BILINEAR)
  top = int(round((new[1] - size) / 2.0))
  left = int(round((new[0] - size) / 2.0))
  return np.asarray(image)[top : top + size, left : left + size]
