"""Per-image decoding and augmentation of encoded images (JPEG, PNG) with PIL, as the
DARTS and PC-DARTS ImageNet scripts do it with torchvision on PIL images:

* training (`train_transform`): RandomResizedCrop(size) (area scale (0.08, 1), aspect
  ratio (3/4, 4/3), 10 attempts, then the centre-crop fallback; bilinear), a horizontal
  flip with probability 1/2, ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4,
  hue=0.2) with the four adjustments in a random order;
* evaluation (`eval_transform`): the shorter side resized to size·256/224 (256 for
  224), then the centre size×size crop.

Each returns a uint8 [size, size, 3] array; the random draws come from the NumPy
generator passed in, in the order torchvision makes them. Normalisation is left to the
batch (`input_pipeline.normalize`), so no whole image is converted to float here.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image
from PIL import ImageStat

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


def _blend_lut(degenerate: float, factor: float) -> list[int]:
  """`Image.blend(constant degenerate, image, factor)` as a lookup table of the 256
  values, for all three bands: PIL's float32 arithmetic, clipped and truncated."""
  v = np.arange(256, dtype=np.float32)
  d = np.float32(degenerate)
  out = np.clip(d + np.float32(factor) * (v - d), 0, 255).astype(np.uint8)
  return np.tile(out, 3).tolist()


def brightness(image: Image.Image, factor: float) -> Image.Image:
  """`ImageEnhance.Brightness(image).enhance(factor)` (torchvision's
  `adjust_brightness`), as one table lookup."""
  return image.point(_blend_lut(0, factor))


def contrast(image: Image.Image, factor: float) -> Image.Image:
  """`ImageEnhance.Contrast(image).enhance(factor)` (torchvision's `adjust_contrast`):
  a blend with the grey of the image's mean luminance, as one table lookup."""
  mean = int(ImageStat.Stat(image.convert("L")).mean[0] + 0.5)
  return image.point(_blend_lut(mean, factor))


def saturation(image: Image.Image, factor: float) -> Image.Image:
  """`ImageEnhance.Color(image).enhance(factor)` (torchvision's
  `adjust_saturation`)."""
  return Image.blend(image.convert("L").convert("RGB"), image, factor)


def hue(image: Image.Image, factor: float) -> Image.Image:
  """torchvision's `adjust_hue` on a PIL image: the H channel of PIL's HSV shifted by
  factor·255 (uint8, wrapping)."""
  hsv = np.array(image.convert("HSV"))  # the round trip even for no shift, as torchvision
  hsv[..., 0] += np.uint8(int(factor * 255) % 256)
  return Image.fromarray(hsv, "HSV").convert("RGB")


_ADJUST = (brightness, contrast, saturation, hue)


def color_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
  """ColorJitter(0.4, 0.4, 0.4, 0.2): a random order of the four, then the factors
  brightness, contrast, saturation in [0.6, 1.4] and hue in [-0.2, 0.2]."""
  order = rng.permutation(4)
  factors = [rng.uniform(max(0.0, 1 - j), 1 + j) for j in JITTER[:3]]
  factors.append(rng.uniform(-JITTER[3], JITTER[3]))
  for k in order:
    image = _ADJUST[k](image, factors[k])
  return image


def train_transform(data: bytes, rng: np.random.Generator, size: int, where: str) -> np.ndarray:
  """Decode, RandomResizedCrop(size), flip, ColorJitter: uint8 [size, size, 3]."""
  image = decode(data, where)
  top, left, h, w = crop_box(rng, *image.size)
  image = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(color_jitter(image, rng))


def resize_size(size: int) -> int:
  """The shorter side before the evaluation crop: 256 for 224, scaled as 256/224."""
  return int(round(size * 256 / 224))


def eval_transform(data: bytes, size: int, where: str) -> np.ndarray:
  """Decode, shorter side to `resize_size(size)` (bilinear), centre crop: uint8
  [size, size, 3] (torchvision's Resize then CenterCrop)."""
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
  return np.asarray(image.crop((left, top, left + size, top + size)))
