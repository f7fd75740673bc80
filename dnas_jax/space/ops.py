"""Candidate operations of the DARTS search space, as Flax modules (NHWC).

Each op mirrors DARTS's `operations.py` (quark0/darts) with PyTorch's padding, so that
shapes and parameter counts agree with the published code: separable convolutions are
two stacked ReLU–depthwise–pointwise–BN blocks, dilated convolutions one such block with
dilation 2, skip-connect is the identity (a factorized reduce when the stride is 2), and
`none` returns zeros. Batch norms follow PyTorch's defaults (momentum 0.1, eps 1e-5);
`affine=False` drops their scale and bias, as in the search network.

DARTS's other operations are here too: `sep_conv_7x7` and `conv_7x1_1x7` (ReLU, a 1×7
convolution strided along the width, a 7×1 one strided along the height, BN).

*The registry.* Every operation, built-in or a user's, is a factory registered under a
name with `register_op` (its docstring states the contract an operation keeps); `OPS`
holds them in registration order, `create_op` builds one, and named lists of
operations are registered with `register_primitives` ("dnas": 7 operations, "darts":
8 with `none`). The search space's validation, the supernet, derivation, the genotype
files, the retraining network and the figures all read this one registry. A user's
operations live in Python files or modules imported with `import_ops_modules` (the
config field `model.ops_modules`); `check_operations` refuses an operation that breaks
the contract in one line, from shapes only (docs/extending.md).

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
import hashlib
import importlib
import inspect
import os
import re
import sys
import traceback
import types
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import errors as flax_errors
from flax.core import meta as flax_meta
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


BN_EPS = 1e-5  # the batch norms' ε (PyTorch's default)
BN_MOMENTUM = 0.9  # the running statistics' decay (flax's convention: PyTorch's 0.1)


class BatchNorm(nn.Module):
  """PyTorch-default batch norm (momentum 0.1, eps 1e-5), optionally without affine;
  `axis`: the feature axis or axes (statistics per feature, over all others).
  `kernel`: in training, without affine, with the feature axes trailing, on a float32
  or float64 array outside `vmap`, normalise with the CPU kernels
  (`kernels.cpu.batch_norm`: one call each way instead of XLA's reductions and
  element-wise kernels; the same variables and numbers); otherwise, and in
  evaluation, flax's `nn.BatchNorm`."""

  affine: bool = True
  train: bool = True
  dtype: Dtype = jnp.float32
  axis: int | tuple[int, ...] = -1
  kernel: bool = False

  @nn.compact
  def __call__(self, x):
    axes = sorted(a % x.ndim for a in ((self.axis,) if isinstance(self.axis, int) else self.axis))
    if (
      self.kernel
      and self.train
      and not self.affine
      and axes == list(range(x.ndim - len(axes), x.ndim))
      and x.dtype == self.dtype
      and np.dtype(x.dtype) in (np.float32, np.float64)
    ):
      features = x.shape[x.ndim - len(axes) :]
      y, (mean, var) = cpu_kernels.batch_norm(x.reshape(-1, int(np.prod(features))), BN_EPS)
      BatchNormStats(features, name="BatchNorm_0")(mean, var)  # nn.BatchNorm's scope
      return y.reshape(x.shape)
    return nn.BatchNorm(
      use_running_average=not self.train,
      axis=self.axis,
      momentum=0.9,
      epsilon=1e-5,
      use_scale=self.affine,
      use_bias=self.affine,
      dtype=self.dtype,
    )(x)


class BatchNormStats(nn.Module):
  """The running statistics (of `shape`) of one batch norm, the variables
  `nn.BatchNorm` keeps: given a batch's mean and variance in training, updated as it
  updates them."""

  shape: tuple[int, ...]

  @nn.compact
  def __call__(self, mean=None, var=None):
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), self.shape)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), self.shape)
    if mean is not None and not self.is_initializing():
      ra_mean.value = running_average(ra_mean.value, mean.reshape(self.shape))
      ra_var.value = running_average(ra_var.value, var.reshape(self.shape))
    return ra_mean.value, ra_var.value


def running_average(old: jax.Array, new: jax.Array) -> jax.Array:
  """BN_MOMENTUM · old + (1 − BN_MOMENTUM) · new with the operations and dtypes `jnp` would
  use, written with `lax`: a search step traces thousands of these updates, and each
  `jnp` call costs a nested jit while tracing."""
  a = jax.lax.mul(np.asarray(BN_MOMENTUM, old.dtype), old)
  b = jax.lax.mul(np.asarray(1 - BN_MOMENTUM, new.dtype), new)
  out = jnp.promote_types(old.dtype, new.dtype)
  return jax.lax.add(jax.lax.convert_element_type(a, out), jax.lax.convert_element_type(b, out))


def _pad(p: int):
  return ((p, p), (p, p))


def conv(
  features: int,
  kernel: int,
  stride: int = 1,
  padding: int = 0,
  dilation: int = 1,
  groups: int = 1,
  dtype: Dtype = jnp.float32,
  name: str | None = None,
) -> nn.Conv:
  """A bias-free convolution with PyTorch's explicit symmetric padding."""
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=_pad(padding),
    kernel_dilation=(dilation, dilation),
    feature_group_count=groups,
    use_bias=False,
    dtype=dtype,
    name=name,
  )


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


def kernel_param(module: nn.Module, shape, name: str = "kernel") -> jax.Array:
  """`module.param(name, lecun_normal, shape)` of a convolution's kernel. In `apply`
  the stored value, its shape checked here: flax's `param` checks it by tracing the
  initializer again (`jax.eval_shape`, a truncated normal per call), which was a fifth
  of the tracing of the CPU's search step (docs/performance.md §3)."""
  shape = tuple(shape)
  if module.has_variable("params", name):
    module.scope.reserve(name, "params")  # a second declaration fails, as in flax
    value = flax_meta.unbox(module.get_variable("params", name))
    if tuple(np.shape(value)) != shape:
      raise flax_errors.ScopeParamShapeError(name, module.scope.path_text, np.shape(value), shape)
    return value
  return module.param(name, _kernel_init, shape)


class Kernel(nn.Module):
  """One parameter, `kernel`, of the given shape (`kernel_param`), in a scope of its
  own: named as the `nn.Conv` it stands for, so that `init` reads the fan-in from it."""

  shape: tuple[int, ...]

  @nn.compact
  def __call__(self):
    return kernel_param(self, self.shape)


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
    kernel = kernel_param(self, (k, k, 1, c))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if self.formulation == "conv":
      return saved(
        jax.lax.conv_general_dilated(
          x,
          kernel,
          (s, s),
          _pad(p),
          rhs_dilation=(d, d),
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=c,
        )
      )
    if self.formulation == "kernel":
      return saved(cpu_kernels.depthwise(x, kernel[:, :, 0, :], s, p, d))
    # out[y, x] = Σ_{i,j} xp[y·s + i·d, x·s + j·d] · kernel[i, j]
    h, w = x.shape[-3], x.shape[-2]
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    xp = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + ((p, p), (p, p), (0, 0)))
    out = None
    for i in range(k):
      for j in range(k):
        tap = xp[..., i * d : i * d + s * (ho - 1) + 1 : s, j * d : j * d + s * (wo - 1) + 1 : s, :]
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
    kernel = kernel_param(self, (1, 1, x.shape[-1], self.features))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if self.formulation == "conv":
      return saved(
        jax.lax.conv_general_dilated(
          x, kernel, (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
      )
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
      x = PointwiseConv(
        self.features, self.stride, self.formulation.pointwise, self.dtype, name="Conv_0"
      )(x)
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
    kernel = kernel_param(self, (k, k, cin, self.features))
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    if not self.patches:
      return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), _pad(p), dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
    # Patch features come out channel-major: feature index c·k² + i·k + j.
    cols = jax.lax.conv_general_dilated_patches(
      x, (k, k), (1, 1), _pad(p), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.einsum(
      "...f,fo->...o", cols, jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin * k * k, -1)
    )


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
    x = DepthwiseConv(
      self.kernel, self.stride, self.padding, self.dilation, f.depthwise, self.dtype, name="Conv_0"
    )(x)
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
    x = DilConv(
      c_in,
      self.kernel,
      self.stride,
      self.padding,
      1,
      self.affine,
      self.train,
      self.dtype,
      self.formulation,
    )(x)
    return DilConv(
      self.features,
      self.kernel,
      1,
      self.padding,
      1,
      self.affine,
      self.train,
      self.dtype,
      self.formulation,
    )(x)


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
    b = PointwiseConv(self.features // 2, 2, pw, self.dtype, name="Conv_1")(x[..., 1:, 1:, :])
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
    return jnp.zeros_like(x[:, :: self.stride, :: self.stride, :])


class AsymmetricConv(nn.Module):
  """DARTS's `conv_7x1_1x7` (k = 7): ReLU, a 1×k convolution with stride (1, s), a k×1
  convolution with stride (s, 1), both without bias and padded by k // 2 along their
  long side, then BN."""

  features: int
  kernel: int = 7
  stride: int = 1
  affine: bool = True
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, s, p = self.kernel, self.stride, self.kernel // 2
    x = nn.relu(x)
    x = nn.Conv(
      self.features,
      (1, k),
      strides=(1, s),
      padding=((0, 0), (p, p)),
      use_bias=False,
      dtype=self.dtype,
      name="Conv_0",
    )(x)
    x = nn.Conv(
      self.features,
      (k, 1),
      strides=(s, 1),
      padding=((p, p), (0, 0)),
      use_bias=False,
      dtype=self.dtype,
      name="Conv_1",
    )(x)
    return BatchNorm(self.affine, self.train, self.dtype)(x)


# ---------------------------------------------------------------------------------
# The registry of operations and of named lists of them.

OpFactory = Callable[..., nn.Module]


class OperationError(ValueError):
  """An operation or a list of operations is unknown, breaks the contract of
  `register_op`, or a user's operations module cannot be imported. The message is one
  line."""


# name -> factory, in registration order: the library's operations, then the users'.
OPS: dict[str, OpFactory] = {}
# name -> list of operation names (`register_primitives`).
PRIMITIVE_SETS: dict[str, tuple[str, ...]] = {}
# The factories this module registers: an operation keeps the batched forms of
# `batched_ops` only while its factory is the built-in one.
_BUILTIN: dict[str, OpFactory] = {}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
# What the user file being imported registers (to forget it when the file is imported
# again after a change): [(kind, name)].
_registering: list[tuple[str, str]] | None = None


def _check_name(name: str, what: str) -> None:
  if not isinstance(name, str) or not _NAME.match(name):
    raise OperationError(
      f"{what} name {name!r}: use letters, digits, '_', '.' or '-' "
      "(names go into comma-separated config fields)"
    )


def register_op(name: str, factory: OpFactory, *, replace: bool = False) -> None:
  """Registers a candidate operation under `name`.

  The contract of an operation. `factory(channels, stride, affine, train, dtype,
  formulation)` is called with these six arguments, positionally, and returns a Flax
  module (`nn.Module`) that is then called on one input, `module(x)`:

  * `x` is [B, H, W, channels] (NHWC) of dtype `dtype`; the output is
    [B, ceil(H / stride), ceil(W / stride), channels] of the same dtype: the operation
    keeps the channels, and at `stride` 2 (the edges from a reduction cell's inputs)
    it halves the height and the width. `stride` is 1 or 2.
  * `affine`: False in the search network (its batch norms have no scale or bias, as
    DARTS's), True in the retraining network. `train`: batch statistics (True) or
    running averages (False). `dtype`: the compute dtype (float32, or bfloat16 with
    parameters in float32). `formulation`: a `Formulation`, how the program writes
    depthwise and pointwise convolutions (`DepthwiseConv`, `PointwiseConv` read it);
    an operation may ignore it.
  * Its variables are created through Flax only: parameters named `kernel` (a
    convolution's [kh, kw, cin, cout], or an `nn.Dense`'s [cin, cout] in a scope
    named Dense_*, as Flax names it), `bias`, or a batch norm's `scale` and `bias`,
    and batch norms' statistics in `batch_stats` (`BatchNorm` here); no other
    collection. The supernet creates them from shapes
    (`models.init`: PyTorch's initialisation) and runs the operation under `nn.vmap`
    (over a node's edges) and `nn.scan` (over a stage's cells), so the module has no
    Python side effect and no Python decision that depends on the values of `x` or of
    its variables (shapes and the six arguments may decide anything).

  `check_operations` tests this contract from shapes (at strides 1 and 2, alone and
  vmapped over edges) before anything is compiled. An operation without a batched
  form in `batched_ops` (every one registered here by a user) runs edge by edge
  (vmapped) in the CPU's program (`edges=channels`).

  Args:
    name: the operation's name in `config.model.primitives`, genotypes and figures.
    factory: the callable above; a Flax module class whose fields are these six
      arguments in this order is one.
    replace: whether an operation already registered under `name` is replaced
      (otherwise registering it again is an error).
  """
  _check_name(name, "operation")
  if not callable(factory):
    raise OperationError(f"operation {name!r}: the factory {factory!r} is not callable")
  if name in OPS and not replace:
    raise OperationError(
      f"operation {name!r} is already registered; pass replace=True to replace it"
    )
  if name in PRIMITIVE_SETS:
    raise OperationError(f"operation {name!r}: a list of operations has that name")
  OPS[name] = factory
  if _registering is not None:
    _registering.append(("op", name))


def register_primitives(
  name: str, primitives: Sequence[str], *, replace: bool = False
) -> tuple[str, ...]:
  """Registers a named list of candidate operations (usable as
  `config.model.primitives=NAME`); its operations must be registered already and
  appear once each. Registering a name again is an error unless `replace`. Returns
  the list as a tuple."""
  _check_name(name, "list of operations")
  if isinstance(primitives, str):
    primitives = [p.strip() for p in primitives.split(",") if p.strip()]
  primitives = tuple(primitives)
  if not primitives:
    raise OperationError(f"list of operations {name!r} names no operation")
  check_candidates(primitives)
  if name in PRIMITIVE_SETS and not replace:
    raise OperationError(
      f"list of operations {name!r} is already registered; pass replace=True to replace it"
    )
  if name in OPS:
    raise OperationError(f"list of operations {name!r}: an operation has that name")
  PRIMITIVE_SETS[name] = primitives
  if _registering is not None:
    _registering.append(("set", name))
  return primitives


def registered_ops() -> tuple[str, ...]:
  """The names of every registered operation, in registration order."""
  return tuple(OPS)


def is_builtin(name: str) -> bool:
  """Whether `name` is one of this module's operations, not replaced by a user's."""
  return name in _BUILTIN and OPS.get(name) is _BUILTIN[name]


def check_known(primitives: Sequence[str]) -> None:
  """Raises OperationError naming the unregistered operations and the registered
  ones."""
  bad = [p for p in primitives if p not in OPS]
  if bad:
    raise OperationError(
      f"Unknown operations {bad}; valid names: {list(OPS)} (a new "
      "operation: ops.register_op, config.model.ops_modules)"
    )


def check_candidates(primitives: Sequence[str]) -> None:
  """A list of candidate operations: registered, each once (ψ has one weight per
  operation)."""
  check_known(primitives)
  twice = sorted({p for p in primitives if list(primitives).count(p) > 1})
  if twice:
    raise OperationError(f"operations {twice} are listed more than once")


def get_primitives(name: str) -> tuple[str, ...]:
  """The registered list of operations `name` ('dnas': 7 operations, 'darts': 8)."""
  try:
    return PRIMITIVE_SETS[name]
  except KeyError:
    raise OperationError(
      f"Unknown primitive set {name!r}; valid names: {sorted(PRIMITIVE_SETS)}"
    ) from None


def _register_builtin(name: str, factory: OpFactory) -> None:
  register_op(name, factory)
  _BUILTIN[name] = factory


def _skip(c, stride, affine, train, dtype, formulation=CONV):
  return Identity() if stride == 1 else FactorizedReduce(c, affine, train, dtype, formulation)


# DARTS's operations (quark0/darts `operations.py`), in the order of its list.
_register_builtin("none", lambda c, stride, affine, train, dtype, f=CONV: Zero(stride))
_register_builtin(
  "max_pool_3x3",
  lambda c, stride, affine, train, dtype, f=CONV: Pool("max", stride, not affine, train, dtype),
)
_register_builtin(
  "avg_pool_3x3",
  lambda c, stride, affine, train, dtype, f=CONV: Pool("avg", stride, not affine, train, dtype),
)
_register_builtin("skip_connect", _skip)
_register_builtin(
  "sep_conv_3x3",
  lambda c, stride, affine, train, dtype, f=CONV: SepConv(c, 3, stride, 1, affine, train, dtype, f),
)
_register_builtin(
  "sep_conv_5x5",
  lambda c, stride, affine, train, dtype, f=CONV: SepConv(c, 5, stride, 2, affine, train, dtype, f),
)
_register_builtin(
  "dil_conv_3x3",
  lambda c, stride, affine, train, dtype, f=CONV: DilConv(
    c, 3, stride, 2, 2, affine, train, dtype, f
  ),
)
_register_builtin(
  "dil_conv_5x5",
  lambda c, stride, affine, train, dtype, f=CONV: DilConv(
    c, 5, stride, 4, 2, affine, train, dtype, f
  ),
)
_register_builtin(
  "sep_conv_7x7",
  lambda c, stride, affine, train, dtype, f=CONV: SepConv(c, 7, stride, 3, affine, train, dtype, f),
)
_register_builtin(
  "conv_7x1_1x7",
  lambda c, stride, affine, train, dtype, f=CONV: AsymmetricConv(
    c, 7, stride, affine, train, dtype
  ),
)

# DNAS drops `none`: its weights are sigmoids (FairDARTS), so an operation can be
# switched off by its own weight. DARTS's list (its baselines) has it first.
register_primitives(
  "dnas",
  (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
  ),
)
register_primitives("darts", ("none",) + get_primitives("dnas"))


def create_op(
  name: str,
  channels: int,
  stride: int,
  *,
  affine: bool,
  train: bool,
  dtype: Dtype = jnp.float32,
  formulation: Formulation = CONV,
) -> nn.Module:
  """Builds the named operation. In the search network (affine=False) pooling is
  followed by a BN without affine parameters, as in DARTS's MixedOp."""
  if name not in OPS:
    raise OperationError(f"Unknown operation {name!r}; valid names: {list(OPS)}")
  return OPS[name](channels, stride, affine, train, dtype, formulation)


def unattached(build: Callable[[], Any]) -> Any:
  """`build()` run outside any module's scope: a module it makes has no parent and
  takes no name; `module.clone(parent=..., name=...)` attaches it where it is used."""
  # Flax gives a module made inside a compact method that module as its parent (and
  # an automatic name) from its module stack; None on top means "no parent".
  stack = nn.module._context.module_stack  # pylint: disable=protected-access
  stack.append(None)
  try:
    return build()
  finally:
    stack.pop()


def unattached_ops(
  primitives: Sequence[str],
  channels: int,
  stride: int,
  *,
  affine: bool,
  train: bool,
  dtype: Dtype = jnp.float32,
  formulation: Formulation = CONV,
) -> dict[str, tuple[str, nn.Module]]:
  """{operation: (its scope, its module, unattached)}: the scope is the name Flax gives
  the module when a module builds the operations in this order (`supernet.MixedOp`:
  its class name and a count per class, e.g. SepConv_0, Pool_1), so that another
  layout of the same operations (`supernet.BatchedMixedOps`) declares the same
  variables."""
  counts: dict[str, int] = {}
  out = {}
  for name in primitives:
    module = unattached(
      lambda name=name: create_op(
        name, channels, stride, affine=affine, train=train, dtype=dtype, formulation=formulation
      )
    )
    kind = type(module).__name__
    out[name] = (f"{kind}_{counts.get(kind, 0)}", module)
    counts[kind] = counts.get(kind, 0) + 1
  return out


# ---------------------------------------------------------------------------------
# The contract, checked from shapes.

_PARAM_NAMES = ("kernel", "bias", "scale")


class _Apply(nn.Module):
  """Builds one operation and applies it (what `MixedOp` does for each of its own)."""

  name_: str
  channels: int
  stride: int
  affine: bool
  dtype: Dtype

  @nn.compact
  def __call__(self, x):
    return create_op(
      self.name_, self.channels, self.stride, affine=self.affine, train=True, dtype=self.dtype
    )(x)


def _shape_text(shape, dtype) -> str:
  return f"[{', '.join(map(str, shape))}] {jnp.dtype(dtype).name}"


def check_operation(
  name: str,
  channels: int,
  *,
  affine: bool,
  dtype: Dtype = jnp.float32,
  size: int = 8,
  batch: int = 2,
  edges: int = 2,
) -> None:
  """Traces operation `name` (shapes only: `jax.eval_shape`, nothing is compiled) on a
  [batch, size, size, channels] input at strides 1 and 2, alone and `nn.vmap`-ed over
  `edges` edges as the supernet runs it, and raises OperationError, one line, where
  it breaks the contract of `register_op`: it fails to trace (the exception's first
  line), gives another shape or dtype, or creates variables `models.init` cannot
  fill."""
  if name not in OPS:
    check_known([name])
  dtype = jnp.dtype(dtype)
  for stride in (1, 2):
    for vmapped in (False, True):
      shape = (batch, size, size, channels)
      want = (batch, -(-size // stride), -(-size // stride), channels)
      module = _Apply(name, channels, stride, affine, dtype)
      where = f"stride {stride}" + (f", vmapped over {edges} edges" if vmapped else "")
      if vmapped:
        module = nn.vmap(
          _Apply,
          in_axes=0,
          out_axes=0,
          variable_axes={"params": 0, "batch_stats": 0},
          split_rngs={"params": True, "dropout": True},
        )(name, channels, stride, affine, dtype)
        shape, want = (edges,) + shape, (edges,) + want
      x = jax.ShapeDtypeStruct(shape, dtype)
      head = f"operation {name!r} ({where}) on input {_shape_text(shape, dtype)}"
      try:
        out, variables = jax.eval_shape(
          lambda x: module.init_with_output(
            {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x
          ),
          x,
        )
      except Exception as e:  # pylint: disable=broad-except  (a user's code: any error)
        lines = str(e).strip().splitlines()
        raise OperationError(
          f"{head} fails to trace: {type(e).__name__}" + (f": {lines[0].strip()}" if lines else "")
        ) from None
      if not hasattr(out, "shape"):
        raise OperationError(
          f"{head} gave a {type(out).__name__}, expected one array {_shape_text(want, dtype)}"
        )
      if tuple(out.shape) != want or out.dtype != dtype:
        raise OperationError(
          f"{head} gave {_shape_text(out.shape, out.dtype)}, expected "
          f"{_shape_text(want, dtype)} (an operation keeps the channels and dtype, "
          "and halves the height and width at stride 2)"
        )
      collections = sorted(set(variables) - {"params", "batch_stats"})
      if collections:
        raise OperationError(
          f"{head} creates variables in {collections}; an operation "
          "has only 'params' and 'batch_stats'"
        )
      for path, _ in jax.tree_util.tree_flatten_with_path(dict(variables.get("params", {})))[0]:
        leaf = str(getattr(path[-1], "key", path[-1]))
        if leaf not in _PARAM_NAMES:
          raise OperationError(
            f"{head} creates a parameter named {leaf!r}; parameters are named "
            f"{list(_PARAM_NAMES)} (models.init fills those from their shapes)"
          )


# (name, factory, channels, affine, dtype) of the operations that passed.
_checked: set[tuple[Any, ...]] = set()


def check_operations(
  primitives: Sequence[str], channels: int, *, affine: bool, dtype: Dtype = jnp.float32
) -> None:
  """`check_operation` for each of `primitives` (unknown names refused first); an
  operation that passed with the same factory and arguments is not traced again."""
  check_known(primitives)
  for name in primitives:
    key = (name, OPS[name], channels, affine, jnp.dtype(dtype).name)
    if key not in _checked:
      check_operation(name, channels, affine=affine, dtype=dtype)
      _checked.add(key)


# ---------------------------------------------------------------------------------
# A user's operations: Python files and modules named by `config.model.ops_modules`.

# The files imported by path: real path -> (SHA-256 of the bytes that ran, module,
# [(kind, name)] it registered).
_USER_FILES: dict[str, tuple[str, types.ModuleType, list[tuple[str, str]]]] = {}
# The modules imported by name: name -> module.
_USER_MODULES: dict[str, types.ModuleType] = {}


def _is_path(item: str) -> bool:
  return item.endswith(".py") or "/" in item or os.sep in item


def _import_problem(item: str, e: BaseException, filename: str | None) -> OperationError:
  """One line: what failed to import, the exception and where in the user's file."""
  where = ""
  if isinstance(e, SyntaxError) and e.lineno:
    where = f" (line {e.lineno})"
  elif filename:
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
    where = f" (line {lines[-1]})" if lines else ""
  text = str(e).strip().splitlines()
  return OperationError(
    f"cannot import the operations module {item!r}{where}: "
    f"{type(e).__name__}" + (f": {text[0].strip()}" if text else "")
  )


def _forget(registered: list[tuple[str, str]]) -> None:
  for kind, name in registered:
    (OPS if kind == "op" else PRIMITIVE_SETS).pop(name, None)


def _import_file(item: str) -> types.ModuleType:
  global _registering
  path = os.path.realpath(os.path.abspath(item))
  if not os.path.isfile(path):
    raise OperationError(
      f"operations module {item!r}: no such file {path} (a path is "
      "read relative to the current directory)"
    )
  with open(path, "rb") as f:
    data = f.read()
  digest = hashlib.sha256(data).hexdigest()
  if path in _USER_FILES:
    if _USER_FILES[path][0] == digest:
      return _USER_FILES[path][1]
    _forget(_USER_FILES.pop(path)[2])  # changed since: its new version replaces it
  stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  module_name = f"dnas_jax_user_ops_{stem}_{hashlib.sha256(path.encode()).hexdigest()[:8]}"
  module = types.ModuleType(module_name)
  module.__file__ = path
  sys.modules[module_name] = module  # dataclasses (Flax modules) look their module up
  registered: list[tuple[str, str]] = []
  _registering = registered
  try:
    exec(compile(data, path, "exec"), module.__dict__)  # pylint: disable=exec-used
  except Exception as e:  # pylint: disable=broad-except  (a user's code: any error)
    _forget(registered)
    sys.modules.pop(module_name, None)
    raise _import_problem(item, e, path) from None
  finally:
    _registering = None
  _USER_FILES[path] = (digest, module, registered)
  return module


def _import_module(item: str) -> types.ModuleType:
  if item not in _USER_MODULES:
    try:
      _USER_MODULES[item] = importlib.import_module(item)
    except Exception as e:  # pylint: disable=broad-except  (a user's code: any error)
      raise _import_problem(item, e, None) from None
  return _USER_MODULES[item]


def ops_module_names(spec: str | Sequence[str]) -> list[str]:
  """The items of `config.model.ops_modules`: a comma-separated string (or a list) of
  .py file paths and importable module names; empty items are dropped."""
  if isinstance(spec, str):
    spec = spec.split(",")
  return [str(item).strip() for item in spec if str(item).strip()]


def import_ops_modules(spec: str | Sequence[str]) -> list[types.ModuleType]:
  """Imports a user's operations (`config.model.ops_modules`): each .py file path
  (relative to the current directory) or module name, in order; their top-level code
  registers operations (`register_op`) and lists (`register_primitives`). A file is
  run once per process, again only when its bytes changed (what it registered before is
  forgotten first); a module is imported once. OperationError, one line, when one
  cannot be found or raises."""
  return [
    (_import_file if _is_path(item) else _import_module)(item) for item in ops_module_names(spec)
  ]


def _sha256_of(path: str) -> str | None:
  try:
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  except OSError:
    return None


def imported_user_sources() -> dict[str, str]:
  """{file path: SHA-256 of its bytes} of the user's operation code in this process:
  the files `import_ops_modules` ran (the bytes that ran), the files of the modules it
  imported, and the source file of every registered operation whose factory is not
  built in (an operation registered from a script or a notebook's file). For the
  compiled-executable cache key: a changed operation is another program."""
  out = {path: digest for path, (digest, _, _) in _USER_FILES.items()}
  files = [getattr(m, "__file__", None) for m in _USER_MODULES.values()]
  for name, factory in OPS.items():
    if is_builtin(name):
      continue
    try:
      files.append(inspect.getsourcefile(getattr(factory, "func", factory)))
    except TypeError:  # a built-in callable or a class of no file
      continue
  for path in files:
    if path and path not in out and os.path.isfile(path):
      digest = _sha256_of(path)
      if digest is not None:
        out[os.path.realpath(path)] = digest
  return dict(sorted(out.items()))


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """PC-DARTS's channel shuffle on NHWC: channel g·(C/groups)+c goes to c·groups+g."""
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape(*lead, c)
