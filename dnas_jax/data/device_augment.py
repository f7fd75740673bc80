"""The accelerator's part of the streaming pipeline's augmentation: ColorJitter and the
normalisation, as one pure JAX function (`prepare`) meant to be jit-compiled inside the
training and evaluation steps.

The host (`image_transforms`, in grain's worker processes) decodes, crops, resizes and
flips, and draws each image's ColorJitter parameters (`jitter_params`); the per-pixel
colour work is done here, on the whole batch. On the host it was the dearest part of
the pipeline (measured on a 2-core machine: about 6 ms per 224×224 image with PIL, of
which about 4 ms the hue's RGB→HSV→RGB round trip, against about 1.8 ms to decode a
JPEG), while on an accelerator these few elementwise passes are negligible next to the
network. The batch also crosses from the workers to the training process as uint8,
4× smaller than float32.

The adjustments follow torchvision's tensor implementation
(`torchvision/transforms/_functional_tensor.py`) on float images in [0, 1]:

* brightness: blend with zeros, `clip(f·x, 0, 1)`;
* contrast: blend with the image's mean grey level (`rgb_to_grayscale`:
  0.2989 R + 0.587 G + 0.114 B, averaged over the image);
* saturation: blend with each pixel's grey level;
* hue: RGB→HSV, the hue shifted by h modulo 1, HSV→RGB;

a blend being `clip(f·x + (1 − f)·degenerate, 0, 1)`. Each image applies the four in
its own order. Vectorised over the batch without computing the hue more than once: an
order is (blends before the hue, the hue, blends after it), so the batch goes through
three blend slots, the hue, three more blend slots, each image's slot taking the blend
its order puts there or, where it has none, the factor 1 (`1·x + 0·d` is `x` exactly).
"""

from __future__ import annotations

import jax.numpy as jnp

# The columns of a batch's 'jitter' [B, 7]: brightness, contrast and saturation factors,
# the hue shift, then the first three adjustments of the order (0 brightness,
# 1 contrast, 2 saturation, 3 hue; the fourth is the one left).
BRIGHTNESS, CONTRAST, SATURATION, HUE, ORDER = 0, 1, 2, 3, 4
JITTER_COLUMNS = 7

_GREY = (0.2989, 0.587, 0.114)


def _grey(x):
  """torchvision's `rgb_to_grayscale` of [..., 3] images: [..., 1]."""
  return (_GREY[0] * x[..., 0] + _GREY[1] * x[..., 1] + _GREY[2] * x[..., 2])[..., None]


def _blend_slot(x, kind, factor):
  """Each image's blend (kind 0 brightness, 1 contrast, 2 saturation; `factor` 1 for
  none) of x [B, H, W, 3]; kind and factor are [B]."""
  grey = _grey(x)
  mean = jnp.mean(grey, axis=(1, 2, 3), keepdims=True)
  kind = kind[:, None, None, None]
  degenerate = jnp.where(kind == 0, 0.0, jnp.where(kind == 1, mean, grey))
  f = factor[:, None, None, None]
  return jnp.clip(f * x + (1.0 - f) * degenerate, 0.0, 1.0)


def _rgb_to_hsv(x):
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  maxc = jnp.maximum(jnp.maximum(r, g), b)
  minc = jnp.minimum(jnp.minimum(r, g), b)
  eqc = maxc == minc
  cr = maxc - minc
  s = cr / jnp.where(eqc, 1.0, maxc)
  divisor = jnp.where(eqc, 1.0, cr)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  h = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  h = jnp.fmod(h / 6.0 + 1.0, 1.0)
  return h, s, maxc


def _hsv_to_rgb(h, s, v):
  i = jnp.floor(h * 6.0)
  f = h * 6.0 - i
  i = i.astype(jnp.int32) % 6
  p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
  q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
  t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
  sectors = [i == k for k in range(6)]
  r = jnp.select(sectors, [v, q, p, p, t, v])
  g = jnp.select(sectors, [t, v, v, q, p, p])
  b = jnp.select(sectors, [p, p, t, v, v, q])
  return jnp.stack([r, g, b], axis=-1)


def adjust_hue(x, shift):
  """torchvision's `adjust_hue` of x [B, H, W, 3] in [0, 1] by shift [B] (in
  [-0.5, 0.5])."""
  h, s, v = _rgb_to_hsv(x)
  h = jnp.mod(h + shift[:, None, None], 1.0)
  return _hsv_to_rgb(h, s, v)


def color_jitter(x, jitter):
  """ColorJitter of x [B, H, W, 3] float32 in [0, 1] with each image's parameters
  jitter [B, 7] (the `ORDER` columns name its order)."""
  factors = jitter[:, :3]
  first = jitter[:, ORDER : ORDER + 3].astype(jnp.int32)
  order = jnp.concatenate([first, 6 - jnp.sum(first, axis=1, keepdims=True)], axis=1)
  hue_at = jnp.argmax(order == HUE, axis=1)
  b = jnp.arange(x.shape[0])

  def slot(x, position, active):
    kind = order[b, jnp.minimum(position, 3)]
    factor = jnp.where(active, factors[b, jnp.minimum(kind, 2)], 1.0)
    return _blend_slot(x, kind, factor)

  for j in range(3):  # the blends before the hue
    x = slot(x, jnp.full_like(hue_at, j), j < hue_at)
  x = adjust_hue(x, jitter[:, HUE])
  for j in range(3):  # and after it
    position = hue_at + 1 + j
    x = slot(x, position, position < 4)
  return x


def normalize(x, mean, std):
  """(x − mean) / std per channel, mean and std tuples of Python floats."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x - mean) / std


def prepare(batch, mean, std):
  """The float32 images a step feeds the network from a streamed batch: the uint8
  NHWC 'image' as [0, 1] floats (x / 255), colour-jittered when the batch carries
  'jitter' (training; evaluation batches do not), then normalised with `mean` and
  `std` (tuples of Python floats, one per channel). Pure; jit-compile it inside the
  step."""
  x = batch["image"].astype(jnp.float32) / 255.0
  if "jitter" in batch:
    x = color_jitter(x, batch["jitter"].astype(jnp.float32))
  return normalize(x, mean, std)


def model_input(batch, normalization=None):
  """The float32 images a step feeds its network: a streamed batch's uint8 images
  through `prepare` with `normalization` = (mean, std); otherwise 'image' as it is
  (the in-memory pipeline normalises on the host). Decided when the step is traced."""
  if batch["image"].dtype != jnp.uint8:
    return batch["image"]
  if normalization is None:
    raise ValueError("a streamed batch (uint8 images) needs the step's normalization")
  return prepare(batch, *normalization)
