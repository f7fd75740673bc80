"""The candidate operations on several edges at once, edges beside the channels.

`supernet` runs the edges of a node that share a stride together. With
`edge_layout="vmap"` every operation of `ops` is `nn.vmap`-ed over a leading edge axis.
Here (`edge_layout="channels"`) the same operations are written for inputs laid out
[B, H, W, E, c]: E edges, c channels each, the edge axis beside the channel axis. A
depthwise kernel then multiplies E·c contiguous values, a batch norm reduces over
(B, H, W) for E·c features, and no operation needs a grouped convolution: on XLA:CPU
the element-wise work vectorises over E·c instead of c (4 channels through an
operation in the first stage of a K = 4 search) and the batch norms are the
reductions XLA:CPU handles well (docs/performance.md).

Every module here declares the same variables, with the same names and shapes, as
`nn.vmap` of its `ops` counterpart (a leading edge axis: a depthwise kernel is
[E, k, k, 1, c], a pointwise one [E, 1, 1, c, o], batch statistics [E, c]), so the two
layouts are the same network with the same parameter tree and compute the same numbers
(up to float rounding; tests/test_formulations.py). Only the random masks of the
skip-connect dropout differ: here one mask is drawn for the [B, H, W, E, c] tensor.

`BATCHED` names the operations written here; a search whose operations are all in it
can use the layout.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dnas_jax.kernels import cpu as cpu_kernels
from dnas_jax.space import ops

Dtype = Any
_SPATIAL = (1, 2)  # H and W of [B, H, W, E, c]


def _out_size(size: int, k: int, stride: int, padding: int, dilation: int = 1) -> int:
  return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _pad_hw(x: jax.Array, padding: int, value: float = 0.0) -> jax.Array:
  return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0), (0, 0)),
                 constant_values=value)


def _tap(xp: jax.Array, i: int, j: int, ho: int, wo: int, stride: int) -> jax.Array:
  """The window offsets (i, j) of a padded input, strided: [B, ho, wo, E, c]."""
  return xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]


class _Kernel(nn.Module):
  """One parameter, `kernel`, of the given shape (named as the `nn.Conv` it stands for)."""
  shape: tuple[int, ...]

  @nn.compact
  def __call__(self):
    return self.param("kernel", nn.initializers.lecun_normal(), self.shape)


def _correlate(xp: jax.Array, taps, k: int, dilation: int, stride: int, ho: int,
               wo: int) -> jax.Array:
  """Σ_{i,j} xp[:, y·s + i·d, x·s + j·d] · taps[i][j]: the k² shifted multiply-adds."""
  out = None
  for i in range(k):
    for j in range(k):
      term = _tap(xp, i * dilation, j * dilation, ho, wo, stride) * taps[i][j]
      out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def shifted_depthwise(x: jax.Array, kernel: jax.Array, stride: int, padding: int,
                      dilation: int) -> jax.Array:
  """Per-edge depthwise convolution as k² shifted multiply-adds: x [B, H, W, E, c],
  kernel [E, k, k, c]. Its gradient is written out (`_shifted_depthwise_bwd`) in the
  forms XLA:CPU runs fast: the input's as the same multiply-adds over the
  (dilated, padded) output gradient, the kernel's as one contraction per kernel row."""
  return _shifted_fwd(x, kernel, stride, padding, dilation)[0]


def _shifted_fwd(x, kernel, stride, padding, dilation):
  k = kernel.shape[1]
  ho = _out_size(x.shape[1], k, stride, padding, dilation)
  wo = _out_size(x.shape[2], k, stride, padding, dilation)
  taps = [[kernel[:, i, j] for j in range(k)] for i in range(k)]
  return _correlate(_pad_hw(x, padding), taps, k, dilation, stride, ho, wo), (x, kernel)


def _shifted_bwd(stride, padding, dilation, residuals, g):
  x, kernel = residuals
  k, (b, h, w, e, c) = kernel.shape[1], x.shape
  ho, wo = g.shape[1], g.shape[2]
  # dx[u] = Σ_t G[u + p − t·d] · kernel[t], G the output gradient with s − 1 zeros
  # between its rows and columns: the multiply-adds of the forward pass with the
  # kernel flipped, over G padded by (k − 1)·d − p in front.
  front = (k - 1) * dilation - padding
  back_h = h + (k - 1) * dilation - front - ((ho - 1) * stride + 1)
  back_w = w + (k - 1) * dilation - front - ((wo - 1) * stride + 1)
  zero = jnp.zeros((), g.dtype)
  gp = jax.lax.pad(g, zero, ((0, 0, 0), (front, back_h, stride - 1),
                             (front, back_w, stride - 1), (0, 0, 0), (0, 0, 0)))
  flipped = [[kernel[:, k - 1 - i, k - 1 - j] for j in range(k)] for i in range(k)]
  dx = _correlate(gp, flipped, k, dilation, 1, h, w)
  # dkernel[i, j] = Σ_{b, y, x} xp[b, y·s + i·d, x·s + j·d] · g[b, y, x]: per kernel
  # row i, a contraction over (b, y) for every (column of xp, column of g) pair of a
  # channel, then the pairs j apart summed.
  xp = _pad_hw(x, padding)
  n = e * c
  gt = jnp.transpose(g.reshape(b * ho, wo, n), (2, 0, 1))  # [n, b·ho, wo]
  cols = np.arange(wo) * stride
  rows = []
  for i in range(k):
    xi = xp[:, i * dilation:i * dilation + stride * (ho - 1) + 1:stride]
    xi = jnp.transpose(xi.reshape(b * ho, xi.shape[2], n), (2, 0, 1))  # [n, b·ho, Wp]
    pairs = jnp.einsum("nmv,nmw->nvw", xi, gt)  # [n, Wp, wo]
    rows.append(jnp.stack([jnp.sum(pairs[:, cols + j * dilation, np.arange(wo)], -1)
                           for j in range(k)]))  # [k, n]
  dk = jnp.stack(rows).reshape(k, k, e, c).transpose(2, 0, 1, 3)
  return dx, dk.astype(kernel.dtype)


shifted_depthwise.defvjp(_shifted_fwd, _shifted_bwd)


def depthwise(x: jax.Array, kernel: jax.Array, stride: int, padding: int, dilation: int,
              formulation: str, dtype: Dtype) -> jax.Array:
  """Per-edge depthwise k×k convolution: x [B, H, W, E, c], kernel [E, k, k, 1, c]."""
  b, h, w, e, c = x.shape
  k = kernel.shape[1]
  x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=dtype)
  if formulation == "conv":  # one grouped convolution over the E·c channels
    rhs = jnp.transpose(kernel[:, :, :, 0, :], (1, 2, 0, 3)).reshape(k, k, 1, e * c)
    y = jax.lax.conv_general_dilated(
        x.reshape(b, h, w, e * c), rhs, (stride, stride), ((padding, padding),) * 2,
        rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=e * c)
    return ops.saved(y.reshape(y.shape[:3] + (e, c)))
  if formulation == "kernel":  # the compiled CPU kernel over the E·c channels
    taps = jnp.transpose(kernel[:, :, :, 0, :], (1, 2, 0, 3)).reshape(k, k, e * c)
    y = cpu_kernels.depthwise(x.reshape(b, h, w, e * c), taps, stride, padding, dilation)
    return ops.saved(y.reshape(y.shape[:3] + (e, c)))
  return ops.saved(shifted_depthwise(x, kernel[:, :, :, 0, :], stride, padding, dilation))


def _block_diagonal(w: jax.Array) -> jax.Array:
  """[E, c, o] -> the [E·c, E·o] matrix with w[e] as its e-th diagonal block."""
  e, c, o = w.shape
  eye = jnp.eye(e, dtype=w.dtype)
  return (eye[:, None, :, None] * w[:, :, None, :]).reshape(e * c, e * o)


def pointwise(x: jax.Array, kernel: jax.Array, stride: int, formulation: str,
              dtype: Dtype) -> jax.Array:
  """Per-edge 1×1 convolution (strided by slicing): x [B, H, W, E, c], kernel
  [E, 1, 1, c, o]. ``einsum``: one matrix product of the [B·H·W, E·c] input with the
  block-diagonal [E·c, E·o] matrix of the E kernels (E times the multiply-adds, no
  transposes: the contraction is over the minor axis)."""
  if stride > 1:
    x = x[:, ::stride, ::stride]
  x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=dtype)
  w = kernel[:, 0, 0]  # [E, c, o]
  b, h, wd, e, c = x.shape
  if formulation == "broadcast":
    return jnp.sum(x[..., None] * w, axis=-2)
  if formulation == "conv":  # one convolution with E groups
    rhs = jnp.transpose(w, (1, 0, 2)).reshape(1, 1, c, e * w.shape[-1])
    y = jax.lax.conv_general_dilated(x.reshape(b, h, wd, e * c), rhs, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=e)
    return ops.saved(y.reshape(b, h, wd, e, -1))
  y = x.reshape(b * h * wd, e * c) @ _block_diagonal(w)
  return ops.saved(y.reshape(b, h, wd, e, -1))


def _batch_norm(train: bool, dtype: Dtype) -> ops.BatchNorm:
  """The search's batch norm (no affine) with statistics per edge and channel."""
  return ops.BatchNorm(False, train, dtype, axis=(-2, -1))


class DilConv(nn.Module):
  """ReLU, depthwise k×k (dilated), pointwise 1×1, BN: `ops.DilConv` on E edges."""
  features: int
  kernel: int
  stride: int
  padding: int
  dilation: int
  train: bool = True
  dtype: Dtype = jnp.float32
  formulation: ops.Formulation = ops.CONV

  @nn.compact
  def __call__(self, x):
    e, c = x.shape[-2:]
    f = self.formulation
    dw = _Kernel((e, self.kernel, self.kernel, 1, c), name="Conv_0")()
    pw = _Kernel((e, 1, 1, c, self.features), name="Conv_1")()
    y = depthwise(nn.relu(x), dw, self.stride, self.padding, self.dilation, f.depthwise,
                  self.dtype)
    y = pointwise(y, pw, 1, f.pointwise, self.dtype)
    return _batch_norm(self.train, self.dtype)(y)


class SepConv(nn.Module):
  """Two DilConv blocks with dilation 1, the first strided: `ops.SepConv` on E edges."""
  features: int
  kernel: int
  stride: int
  padding: int
  train: bool = True
  dtype: Dtype = jnp.float32
  formulation: ops.Formulation = ops.CONV

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = DilConv(c, self.kernel, self.stride, self.padding, 1, self.train, self.dtype,
                self.formulation)(x)
    return DilConv(self.features, self.kernel, 1, self.padding, 1, self.train, self.dtype,
                   self.formulation)(x)


class FactorizedReduce(nn.Module):
  """ReLU, two 1×1 stride-2 convolutions on offset grids, concatenated, BN:
  `ops.FactorizedReduce` on E edges (the stride-2 skip-connect)."""
  features: int
  train: bool = True
  dtype: Dtype = jnp.float32
  formulation: ops.Formulation = ops.CONV

  @nn.compact
  def __call__(self, x):
    if self.features % 2:
      raise ValueError(f"FactorizedReduce needs an even channel count, got {self.features}")
    e, c = x.shape[-2:]
    half = self.features // 2
    pw = self.formulation.pointwise
    x = nn.relu(x)
    a = pointwise(x, _Kernel((e, 1, 1, c, half), name="Conv_0")(), 2, pw, self.dtype)
    b = pointwise(x[:, 1:, 1:], _Kernel((e, 1, 1, c, half), name="Conv_1")(), 2, pw,
                  self.dtype)
    return _batch_norm(self.train, self.dtype)(jnp.concatenate([a, b], -1))


def _window_counts(size: int, stride: int) -> np.ndarray:
  """How many of a 3×3 window's positions (padding 1) fall inside a row of `size`."""
  out = _out_size(size, 3, stride, 1)
  starts = np.arange(out) * stride - 1
  return (np.minimum(starts + 3, size) - np.maximum(starts, 0)).astype(np.float32)


class Pool(nn.Module):
  """3×3 max or average pool (padding 1; the average excludes the padding, as DARTS),
  then a BN without affine: `ops.Pool(bn=True)` on E edges."""
  kind: str
  stride: int
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    window = (1, 3, 3, 1, 1)
    strides = (1, self.stride, self.stride, 1, 1)
    pad = ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0))
    if self.kind == "max":
      y = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pad)
    else:
      y = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
      counts = np.outer(_window_counts(x.shape[1], self.stride),
                        _window_counts(x.shape[2], self.stride))
      y = y / jnp.asarray(counts, y.dtype)[:, :, None, None]
    return _batch_norm(self.train, self.dtype)(y)


class Identity(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x


def _skip(c, stride, train, dtype, formulation):
  return Identity() if stride == 1 else FactorizedReduce(c, train, dtype, formulation)


# name -> factory(channels, stride, train, dtype, formulation), as `ops.OPS` with
# affine=False (the search network); `none` is absent: it adds nothing to a node.
BATCHED = {
    "max_pool_3x3": lambda c, s, t, d, f: Pool("max", s, t, d),
    "avg_pool_3x3": lambda c, s, t, d, f: Pool("avg", s, t, d),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, s, t, d, f: SepConv(c, 3, s, 1, t, d, f),
    "sep_conv_5x5": lambda c, s, t, d, f: SepConv(c, 5, s, 2, t, d, f),
    "sep_conv_7x7": lambda c, s, t, d, f: SepConv(c, 7, s, 3, t, d, f),
    "dil_conv_3x3": lambda c, s, t, d, f: DilConv(c, 3, s, 2, 2, t, d, f),
    "dil_conv_5x5": lambda c, s, t, d, f: DilConv(c, 5, s, 4, 2, t, d, f),
}


def supports(primitives) -> bool:
  """Whether every operation has a batched form here (`none` needs none)."""
  return all(p == "none" or p in BATCHED for p in primitives)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2×2 max pooling, stride 2, of [B, H, W, ...] (H and W even): the reduction edges'
  bypassed channels."""
  b, h, w = x.shape[0], x.shape[1] // 2, x.shape[2] // 2
  x = x[:, :2 * h, :2 * w]  # an odd last row or column is dropped, as nn.max_pool does
  return jnp.max(x.reshape((b, h, 2, w, 2) + x.shape[3:]), axis=(2, 4))
