"""Candidate operations of the DARTS search space, as Flax modules (NHWC).

Each op mirrors DARTS's `operations.py` (quark0/darts) with PyTorch's padding, so that
shapes and parameter counts agree with the published code: separable convolutions are
two stacked ReLU–depthwise–pointwise–BN blocks, dilated convolutions one such block with
dilation 2, skip-connect is the identity (a factorized reduce when the stride is 2), and
`none` returns zeros. Batch norms follow PyTorch's defaults (momentum 0.1, eps 1e-5);
`affine=False` drops their scale and bias, as in the search network.

`OPS[name](channels, stride, affine, train, dtype, formulation)` builds an op; unknown
names raise with the list of valid ones.

*Formulations* (`Formulation`): the depthwise and pointwise convolutions inside the
separable and dilated convolutions (and the factorized reduce) can be written in two
ways that compute the same numbers with the same parameters (kernels [k, k, 1, C] and
[1, 1, Cin, Cout], the layout of `nn.Conv`):

* depthwise ``conv``: a grouped convolution (`feature_group_count = C`);
  ``shifted``: k² shifted, strided slices of the padded input, each multiplied by one
  kernel tap and summed (element-wise work, no convolution); ``kernel``: one call of
  the compiled CPU kernel `dnas_jax.kernels.cpu.depthwise` (and one for each gradient),
  CPU only;
* pointwise ``conv``: a 1×1 convolution; ``einsum``: a contraction over channels
  (`dot_general`), strided by slicing; ``broadcast``: the same contraction as an
  element-wise product and a sum over the input channels (no convolution, no dot).

They differ only in how long XLA takes to compile them and how fast the result runs on
each backend (measured: README, *Performance*).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import ad_checkpoint

from dnas_jax.kernels import cpu as cpu_kernels

Dtype = Any

DEPTHWISE = ("conv", "shifted", "kernel")
POINTWISE = ("conv", "einsum", "broadcast")


@dataclasses.dataclass(frozen=True)
class Formulation:
  """How depthwise and pointwise convolutions are written (see the module docstring)."""
  depthwise: str = "conv"
  pointwise: str = "conv"

  def __post_init__(self):
    if self.depthwise not in DEPTHWISE:
      raise ValueError(f"depthwise formulation {self.depthwise!r}; valid: {list(DEPTHWISE)}")
    if self.pointwise not in POINTWISE:
      raise ValueError(f"pointwise formulation {self.pointwise!r}; valid: {list(POINTWISE)}")


CONV = Formulation()


class BatchNorm(nn.Module):
  """PyTorch-default batch norm (momentum 0.1, eps 1e-5), optionally without affine;
  `axis`: the feature axis or axes (statistics per feature, over all others)."""
  affine: bool = True
  train: bool = True
  dtype: Dtype = jnp.float32
  axis: int | tuple[int, ...] = -1

  @nn.compact
  def __call__(self, x):
    return nn.BatchNorm(use_running_average=not self.train, axis=self.axis, momentum=0.9,
                        epsilon=1e-5, use_scale=self.affine, use_bias=self.affine,
                        dtype=self.dtype)(x)


def _pad(p: int):
  return ((p, p), (p, p))


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0,
         dilation: int = 1, groups: int = 1, dtype: Dtype = jnp.float32,
         name: str | None = None) -> nn.Conv:
  """A bias-free convolution with PyTorch's explicit symmetric padding."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=_pad(padding), kernel_dilation=(dilation, dilation),
                 feature_group_count=groups, use_bias=False, dtype=dtype, name=name)


SAVED = "conv_output"


def saved(x: jax.Array) -> jax.Array:
  """Marks a convolution's output as the one thing a rematerialised cell keeps for its
  backward pass (`REMAT_POLICY`); everything element-wise after it is recomputed."""
  return ad_checkpoint.checkpoint_name(x, SAVED)


REMAT_POLICY = jax.checkpoint_policies.save_only_these_names(SAVED)


def materialize(x):
  """`x` (a pytree of arrays) computed into memory here, and its gradient too
  (`dnas_jax.kernels.cpu.materialize`, CPU only)."""
  return jax.tree.map(cpu_kernels.materialize, x)


def _kernel_init(key, shape, dtype=jnp.float32):
  # Only for `init`: the networks' variables come from shapes (`dnas_jax.models.init`), filled
  # with PyTorch's initialisation.
  return nn.initializers.lecun_normal()(key, shape, dtype)


class DepthwiseConv(nn.Module):
  """k×k depthwise convolution (PyTorch padding, stride, dilation), kernel [k, k, 1, C]."""
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  formulation: str = "conv"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
    c = x.shape[-1]
    kernel = self.param("kernel", _kernel_init, (k, k, 1, c))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if self.formulation == "conv":
      return saved(jax.lax.conv_general_dilated(
          x, kernel, (s, s), _pad(p), rhs_dilation=(d, d),
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c))
    if self.formulation == "kernel":
      return saved(cpu_kernels.depthwise(x, kernel[:, :, 0, :], s, p, d))
    # out[y, x] = Σ_{i,j} xp[y·s + i·d, x·s + j·d] · kernel[i, j]
    h, w = x.shape[-3], x.shape[-2]
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    xp = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + ((p, p), (p, p), (0, 0)))
    out = None
    for i in range(k):
      for j in range(k):
        tap = xp[..., i * d:i * d + s * (ho - 1) + 1:s, j * d:j * d + s * (wo - 1) + 1:s, :]
        term = tap * kernel[i, j, 0]
        out = term if out is None else out + term
    return out


class PointwiseConv(nn.Module):
  """1×1 convolution (optionally strided, no padding), kernel [1, 1, Cin, Cout]."""
  features: int
  stride: int = 1
  formulation: str = "conv"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = self.stride
    kernel = self.param("kernel", _kernel_init, (1, 1, x.shape[-1], self.features))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if self.formulation == "conv":
      return saved(jax.lax.conv_general_dilated(
          x, kernel, (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    if s > 1:
      x = x[..., ::s, ::s, :]
    if self.formulation == "einsum":
      return saved(jnp.einsum("...c,co->...o", x, kernel[0, 0]))
    # broadcast: Σ_c x[..., c, None] · kernel[c, :], element-wise work and a reduction
    return jnp.sum(x[..., :, None] * kernel[0, 0], axis=-2)


class ReLUConvBN(nn.Module):
  """ReLU, k×k convolution, BN; a 1×1 convolution is written as `formulation.pointwise`
  says (`PointwiseConv`, the same parameter)."""
  features: int
  kernel: int = 1
  stride: int = 1
  padding: int = 0
  affine: bool = True
  train: bool = True
  dtype: Dtype = jnp.float32
  formulation: Formulation = CONV

  @nn.compact
  def __call__(self, x):
    x = nn.relu(x)
    if self.kernel == 1 and self.padding == 0 and self.formulation.pointwise != "conv":
      x = PointwiseConv(self.features, self.stride, self.formulation.pointwise, self.dtype,
                        name="Conv_0")(x)
    else:
      x = conv(self.features, self.kernel, self.stride, self.padding, dtype=self.dtype)(x)
    return BatchNorm(self.affine, self.train, self.dtype)(x)


class StemConv(nn.Module):
  """The stem's k×k convolution (padding k // 2, no bias), kernel [k, k, Cin, Cout] as
  `nn.Conv`'s. With ``patches`` it is the image's k×k patches contracted with the
  kernel (`jax.lax.conv_general_dilated_patches`, then a matrix product): the same
  numbers, and a kernel gradient that is one matrix product where XLA:CPU's
  convolution gradient takes ~100 ms at batch 32, 32×32."""
  features: int
  kernel: int = 3
  patches: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, p = self.kernel, self.kernel // 2
    cin = x.shape[-1]
    kernel = self.param("kernel", _kernel_init, (k, k, cin, self.features))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if not self.patches:
      return jax.lax.conv_general_dilated(x, kernel, (1, 1), _pad(p),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # Patch features come out channel-major: feature index c·k² + i·k + j.
    cols = jax.lax.conv_general_dilated_patches(
        x, (k, k), (1, 1), _pad(p), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.einsum("...f,fo->...o", cols,
                      jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin * k * k, -1))


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
  formulation: Formulation = CONV

  @nn.compact
  def __call__(self, x):
    f = self.formulation
    x = nn.relu(x)
    # Named as the nn.Conv modules they replace, so parameter trees are unchanged.
    x = DepthwiseConv(self.kernel, self.stride, self.padding, self.dilation, f.depthwise,
                      self.dtype, name="Conv_0")(x)
    x = PointwiseConv(self.features, 1, f.pointwise, self.dtype, name="Conv_1")(x)
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
  formulation: Formulation = CONV

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[-1]
    x = DilConv(c_in, self.kernel, self.stride, self.padding, 1, self.affine, self.train,
                self.dtype, self.formulation)(x)
    return DilConv(self.features, self.kernel, 1, self.padding, 1, self.affine,
                   self.train, self.dtype, self.formulation)(x)


class FactorizedReduce(nn.Module):
  """Halves the resolution: two 1×1 stride-2 convs on offset grids, concatenated, BN."""
  features: int
  affine: bool = True
  train: bool = True
  dtype: Dtype = jnp.float32
  formulation: Formulation = CONV

  @nn.compact
  def __call__(self, x):
    if self.features % 2:
      raise ValueError(f"FactorizedReduce needs an even channel count, got {self.features}")
    pw = self.formulation.pointwise
    x = nn.relu(x)
    a = PointwiseConv(self.features // 2, 2, pw, self.dtype, name="Conv_0")(x)
    b = PointwiseConv(self.features // 2, 2, pw, self.dtype, name="Conv_1")(
        x[..., 1:, 1:, :])
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


def _skip(c, stride, affine, train, dtype, formulation=CONV):
  return (Identity() if stride == 1
          else FactorizedReduce(c, affine, train, dtype, formulation))


OPS: dict[str, OpFactory] = {
    "none": lambda c, stride, affine, train, dtype, f=CONV: Zero(stride),
    "max_pool_3x3": lambda c, stride, affine, train, dtype, f=CONV: Pool(
        "max", stride, not affine, train, dtype),
    "avg_pool_3x3": lambda c, stride, affine, train, dtype, f=CONV: Pool(
        "avg", stride, not affine, train, dtype),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, stride, affine, train, dtype, f=CONV: SepConv(
        c, 3, stride, 1, affine, train, dtype, f),
    "sep_conv_5x5": lambda c, stride, affine, train, dtype, f=CONV: SepConv(
        c, 5, stride, 2, affine, train, dtype, f),
    "sep_conv_7x7": lambda c, stride, affine, train, dtype, f=CONV: SepConv(
        c, 7, stride, 3, affine, train, dtype, f),
    "dil_conv_3x3": lambda c, stride, affine, train, dtype, f=CONV: DilConv(
        c, 3, stride, 2, 2, affine, train, dtype, f),
    "dil_conv_5x5": lambda c, stride, affine, train, dtype, f=CONV: DilConv(
        c, 5, stride, 4, 2, affine, train, dtype, f),
}


def create_op(name: str, channels: int, stride: int, *, affine: bool, train: bool,
              dtype: Dtype = jnp.float32, formulation: Formulation = CONV) -> nn.Module:
  """Builds the named operation. In the search network (affine=False) pooling is
  followed by a BN without affine parameters, as in DARTS's MixedOp."""
  try:
    factory = OPS[name]
  except KeyError:
    raise ValueError(f"Unknown operation {name!r}; valid names: {sorted(OPS)}") from None
  return factory(channels, stride, affine, train, dtype, formulation)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """PC-DARTS's channel shuffle on NHWC: channel g·(C/groups)+c goes to c·groups+g."""
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape(*lead, c)
