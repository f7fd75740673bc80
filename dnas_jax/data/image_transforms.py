"""Per-image decoding and geometric augmentation of encoded images (JPEG, PNG) on the
host (grain's worker processes), as the DARTS and PC-DARTS ImageNet scripts do it with
torchvision:

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
about 3× the JPEG decoding (the hue's RGB→HSV→RGB round trip most of it).

Training decodes with OpenCV (`decode_array`: libjpeg-turbo, as PIL's wheels; the same
pixels as PIL's convert('RGB') on the benchmark's 300 JPEGs and on a greyscale, a CMYK
JPEG and an RGBA PNG, measured) and resizes the crop with OpenCV (`resize_crop`),
because PIL's antialiased bilinear resize cost as much as the decoding (0.6–0.8 ms per
400×350 image in one process, against 0.17–0.3 ms; docs/imagenet.md, Throughput). The
resize is not torchvision's PIL filter, which is antialiased bilinear (a triangle
filter as wide as the scale factor when shrinking). `resize_crop` is plain bilinear
with half-pixel centres (cv2.INTER_LINEAR: what torchvision's tensor path computes with
antialias=False, its default before torchvision 0.17), the same formula as PIL's when
enlarging (±1 from rounding); along an axis the crop shrinks, a Gaussian prefilter
(σ = ½·√(s² − 1) for the scale factor s) antialiases it first. On 300 random crops of
400×350 JPEGs to 224 (tests/test_streaming.py checks the same bounds on small images):
enlarging, at most 1 from torchvision's PIL result (mean 0.22); shrinking, at most 7
(mean 0.53), where plain bilinear is at most 15 (mean 0.93) and cv2.INTER_AREA at most
6 (mean 0.45) at twice the cost. Evaluation keeps PIL (decoding and resize) exactly as
torchvision: it is not the throughput-bound pass. No whole image is converted to float
here.
"""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image

from dnas_jax.data import errors

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
JITTER = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue

# The pipeline is parallel over images (grain's worker processes): OpenCV's own threads
# would only compete with them for the cores.
cv2.setNumThreads(1)

# RGB (not OpenCV's BGR), the stored orientation (as PIL; not the EXIF-rotated one).
_IMREAD = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION


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


def decode_array(data: bytes, where: str) -> np.ndarray:
  """The uint8 [H, W, 3] RGB pixels of encoded `data`, decoded by OpenCV (by PIL, with
  `decode`'s error, when OpenCV cannot read it: an unreadable or truncated file gives the
  same one-line error as `decode`)."""
  pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD)
  if pixels is None:
    return np.asarray(decode(data, where))
  return pixels


def _prefilter(scale: float) -> tuple[int, float]:
  """(kernel size, σ) of the Gaussian that antialiases shrinking by `scale` (> 1) along
  one axis: σ² = (scale² − 1)/4 (of /6, /4 and /3 tried, /4 and /3 came nearly as close
  to PIL's antialiased bilinear, mean differences 0.52 and 0.50 against 0.68, and /4 is
  the cheaper); (1, 1.0), no filtering, when not shrinking."""
  if scale <= 1:
    return 1, 1.0
  sigma = 0.5 * math.sqrt(scale * scale - 1)
  return 2 * math.ceil(3 * sigma) + 1, sigma


def resize_crop(
  pixels: np.ndarray, top: int, left: int, h: int, w: int, size: int, out: np.ndarray | None = None
) -> np.ndarray:
  """The h × w crop of `pixels` at (top, left), resized to size × size (module
  docstring): a Gaussian prefilter along each axis it shrinks, then bilinear with
  half-pixel centres (cv2.INTER_LINEAR), the crop's own edge pixels repeated at its
  border (as torchvision's crop then resize). The crop is a view, not copied; the
  result is written into `out` (a C-contiguous uint8 [size, size, 3]) when given."""
  crop = pixels[top : top + h, left : left + w]
  (kx, sx), (ky, sy) = _prefilter(w / size), _prefilter(h / size)
  if kx > 1 or ky > 1:
    crop = cv2.GaussianBlur(crop, (kx, ky), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REPLICATE)
  return cv2.resize(crop, (size, size), dst=out, interpolation=cv2.INTER_LINEAR)


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


def hflip(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
  """The image mirrored left to right, as a new contiguous array (OpenCV), or written
  into `out` (C-contiguous, of the image's shape) when given. A reversed
  NumPy view costs nothing here but makes the batch's stacking copy it element by
  element: stacking 50 reversed 224×224 views took 0.38 ms per image, flipping with
  this and stacking 0.03 ms (measured, one process)."""
  return cv2.flip(pixels, 1, dst=out)


def train_transform(
  data: bytes, rng: np.random.Generator, size: int, where: str, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Decode, RandomResizedCrop(size), flip: uint8 [size, size, 3] (written into `out`,
  a C-contiguous array of that shape, when given: a row of the batch), and the image's
  ColorJitter parameters (`jitter_params`), applied later by `device_augment`.

  Decoding and resize with OpenCV (`decode_array`, `resize_crop`: module docstring),
  the crop a view of the decoded pixels, the flip `hflip`."""
  pixels = decode_array(data, where)
  top, left, h, w = crop_box(rng, pixels.shape[1], pixels.shape[0])
  if rng.random() < 0.5:  # flipped: resized into a temporary, then mirrored into `out`
    pixels = hflip(resize_crop(pixels, top, left, h, w, size), out)
  else:
    pixels = resize_crop(pixels, top, left, h, w, size, out)
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
