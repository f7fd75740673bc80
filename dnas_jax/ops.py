"""Candidate operations of the DARTS search space, as Flax modules (NHWC).

Each op mirrors DARTS's `operations.py` (quark0/darts) with PyTorch's padding, so that
shapes and parameter counts agree with the published code: separable convolutions are
two stacked ReLU–depthwise–pointwise–BN blocks, dilated convolutions one such block with
dilation 2, skip-connect is the identity (a factorized reduce when the stride is 2), and
`none` returns zeros. Batch norms follow PyTorch's defaults (momentum 0.1, eps 1e-5);
`affine=False` drops their scale and bias, as in the search network.

`OPS[name](channels, stride, affine, train, dtype)` builds an op; unknown names raise
with the list of valid ones.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class BatchNorm(nn.Module):
  """PyTorch-default batch norm (momentum 0.1, eps 1e-5), optionally without affine."""
  affine: bool = True
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.BatchNorm(use_running_average=not self.train, momentum=0.9, epsilon=1e-5,
                        use_scale=self.affine, use_bias=self.affine, dtype=self.dtype)(x)


def _pad(p: int):
  return ((p, p), (p, p))


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0,
         dilation: int = 1, groups: int = 1, dtype: Dtype = jnp.float32,
         name: str | None = None) -> nn.Conv:
  """A bias-free convolution with PyTorch's explicit symmetric padding."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=_pad(padding), kernel_dilation=(dilation, dilation),
                 feature_group_count=groups, use_bias=False, dtype=dtype, name=name)


class ReLUConvBN(nn.Module):
  features: int
  kernel: int = 1
  stride: int = 1
  padding: int = 0
  affine: bool = True
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(x)
    x = conv(self.features, self.kernel, self.stride, self.padding, dtype=self.dtype)(x)
    return BatchNorm(self.affine, self.train, self.dtype)(x)


class DilConv(nn.Module):
  """ReLU, depthwise k×k (dilated), pointwise 1×1, BN."""
  features: int
  kernel: int
  stride: int
  padding: int
  dilation: int
  affine: bool = True
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[-1]
    x = nn.relu(x)
    x = conv(c_in, self.kernel, self.stride, self.padding, self.dilation, groups=c_in,
             dtype=self.dtype)(x)
    x = conv(self.features, 1, dtype=self.dtype)(x)
    return BatchNorm(self.affine, self.train, self.dtype)(x)


class SepConv(nn.Module):
  """Two DilConv blocks with dilation 1; only the first has the stride."""
  features: int
  kernel: int
  stride: int
  padding: int
  affine: bool = True
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[-1]
    x = DilConv(c_in, self.kernel, self.stride, self.padding, 1, self.affine, self.train,
                self.dtype)(x)
    return DilConv(self.features, self.kernel, 1, self.padding, 1, self.affine,
                   self.train, self.dtype)(x)


class FactorizedReduce(nn.Module):
  """Halves the resolution: two 1×1 stride-2 convs on offset grids, concatenated, BN."""
  features: int
  affine: bool = True
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.features % 2:
      raise ValueError(f"FactorizedReduce needs an even channel count, got {self.features}")
    x = nn.relu(x)
    a = conv(self.features // 2, 1, 2, dtype=self.dtype)(x)
    b = conv(self.features // 2, 1, 2, dtype=self.dtype)(x[:, 1:, 1:, :])
    return BatchNorm(self.affine, self.train, self.dtype)(jnp.concatenate([a, b], -1))


class Pool(nn.Module):
  """3×3 max or average pool (average excludes padding, as DARTS), optional BN after."""
  kind: str
  stride: int
  bn: bool = False
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    window, strides = (3, 3), (self.stride, self.stride)
    if self.kind == "max":
      x = nn.max_pool(x, window, strides, padding=_pad(1))
    else:
      x = nn.avg_pool(x, window, strides, padding=_pad(1), count_include_pad=False)
    if self.bn:  # the search network follows pooling with a BN without affine
      x = BatchNorm(False, self.train, self.dtype)(x)
    return x


class Identity(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x


class Zero(nn.Module):
  """DARTS's `none`: zeros of the output shape."""
  stride: int

  @nn.compact
  def __call__(self, x):
    return jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])


OpFactory = Callable[..., nn.Module]


def _skip(c, stride, affine, train, dtype):
  return Identity() if stride == 1 else FactorizedReduce(c, affine, train, dtype)


OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine, train, dtype: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine, train, dtype: Pool(
        "max", stride, not affine, train, dtype),
    "avg_pool_3x3": lambda c, stride, affine, train, dtype: Pool(
        "avg", stride, not affine, train, dtype),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, stride, affine, train, dtype: SepConv(
        c, 3, stride, 1, affine, train, dtype),
    "sep_conv_5x5": lambda c, stride, affine, train, dtype: SepConv(
        c, 5, stride, 2, affine, train, dtype),
    "sep_conv_7x7": lambda c, stride, affine, train, dtype: SepConv(
        c, 7, stride, 3, affine, train, dtype),
    "dil_conv_3x3": lambda c, stride, affine, train, dtype: DilConv(
        c, 3, stride, 2, 2, affine, train, dtype),
    "dil_conv_5x5": lambda c, stride, affine, train, dtype: DilConv(
        c, 5, stride, 4, 2, affine, train, dtype),
}


def create_op(name: str, channels: int, stride: int, *, affine: bool, train: bool,
              dtype: Dtype = jnp.float32) -> nn.Module:
  """Builds the named operation. In the search network (affine=False) pooling is
  followed by a BN without affine parameters, as in DARTS's MixedOp."""
  try:
    factory = OPS[name]
  except KeyError:
    raise ValueError(f"Unknown operation {name!r}; valid names: {sorted(OPS)}") from None
  return factory(channels, stride, affine, train, dtype)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """PC-DARTS's channel shuffle on NHWC: channel g·(C/groups)+c goes to c·groups+g."""
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape(*lead, c)
