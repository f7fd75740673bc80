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
(up to float rounding; tests/test_formulations.py), the skip connection's dropout
masks included (`supernet.BatchedMixedOps` draws them per edge, with the keys
`nn.vmap` gives the edges).

`BATCHED` names the operations written here. Any other operation (a user's, one of
`ops` without a batched form such as `conv_7x1_1x7`, or a built-in name a user
replaced) runs edge by edge: `per_edge` applies its `ops` module `nn.vmap`-ed over the
edge axis, on each edge's channel slice, with the variables `nn.vmap(MixedOp)` gives it.
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
  return jnp.pad(
    x, ((0, 0), (padding, padding), (padding, padding), (0, 0), (0, 0)), constant_values=value
  )


def _tap(xp: jax.Array, i: int, j: int, ho: int, wo: int, stride: int) -> jax.Array:
  """The window offsets (i, j) of a padded input, strided: [B, ho, wo, E, c]."""
  return xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]


def _correlate(
  xp: jax.Array, taps, k: int, dilation: int, stride: int, ho: int, wo: int
) -> jax.Array:
  """Σ_{i,j} xp[:, y·s + i·d, x·s + j·d] · taps[i][j]: the k² shifted multiply-adds."""
  out = None
  for i in range(k):
    for j in range(k):
      term = _tap(xp, i * dilation, j * dilation, ho, wo, stride) * taps[i][j]
      out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def shifted_depthwise(
  x: jax.Array, kernel: jax.Array, stride: int, padding: int, dilation: int
) -> jax.Array:
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
  gp = jax.lax.pad(
    g,
    zero,
    ((0, 0, 0), (front, back_h, stride - 1), (front, back_w, stride - 1), (0, 0, 0), (0, 0, 0)),
  )
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
    xi = xp[:, i * dilation : i * dilation + stride * (ho - 1) + 1 : stride]
    xi = jnp.transpose(xi.reshape(b * ho, xi.shape[2], n), (2, 0, 1))  # [n, b·ho, Wp]
    pairs = jnp.einsum("nmv,nmw->nvw", xi, gt)  # [n, Wp, wo]
    rows.append(
      jnp.stack([jnp.sum(pairs[:, cols + j * dilation, np.arange(wo)], -1) for j in range(k)])
    )  # [k, n]
  dk = jnp.stack(rows).reshape(k, k, e, c).transpose(2, 0, 1, 3)
  return dx, dk.astype(kernel.dtype)


shifted_depthwise.defvjp(_shifted_fwd, _shifted_bwd)


def depthwise(
  x: jax.Array,
  kernel: jax.Array,
  stride: int,
  padding: int,
  dilation: int,
  formulation: str,
  dtype: Dtype,
) -> jax.Array:
  """Per-edge depthwise k×k convolution: x [B, H, W, E, c], kernel [E, k, k, 1, c]."""
  b, h, w, e, c = x.shape
  k = kernel.shape[1]
  x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=dtype)
  if formulation == "conv":  # one grouped convolution over the E·c channels
    rhs = jnp.transpose(kernel[:, :, :, 0, :], (1, 2, 0, 3)).reshape(k, k, 1, e * c)
    y = jax.lax.conv_general_dilated(
      x.reshape(b, h, w, e * c),
      rhs,
      (stride, stride),
      ((padding, padding),) * 2,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=e * c,
    )
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


def pointwise(
  x: jax.Array, kernel: jax.Array, stride: int, formulation: str, dtype: Dtype
) -> jax.Array:
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
    y = jax.lax.conv_general_dilated(
      x.reshape(b, h, wd, e * c),
      rhs,
      (1, 1),
      "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=e,
    )
    return ops.saved(y.reshape(b, h, wd, e, -1))
  y = x.reshape(b * h * wd, e * c) @ _block_diagonal(w)
  return ops.saved(y.reshape(b, h, wd, e, -1))


def _batch_norm(train: bool, dtype: Dtype, formulation: ops.Formulation) -> ops.BatchNorm:
  """The search's batch norm (no affine) with statistics per edge and channel; under
  the CPU kernels (`depthwise="kernel"`) a kernel call (`ops.BatchNorm`)."""
  return ops.BatchNorm(False, train, dtype, axis=(-2, -1), kernel=formulation.depthwise == "kernel")


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
    dw = ops.Kernel((e, self.kernel, self.kernel, 1, c), name="Conv_0")()
    pw = ops.Kernel((e, 1, 1, c, self.features), name="Conv_1")()
    y = depthwise(nn.relu(x), dw, self.stride, self.padding, self.dilation, f.depthwise, self.dtype)
    y = pointwise(y, pw, 1, f.pointwise, self.dtype)
    return _batch_norm(self.train, self.dtype, self.formulation)(y)


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
    x = DilConv(
      c, self.kernel, self.stride, self.padding, 1, self.train, self.dtype, self.formulation
    )(x)
    return DilConv(
      self.features, self.kernel, 1, self.padding, 1, self.train, self.dtype, self.formulation
    )(x)


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
    a = pointwise(x, ops.Kernel((e, 1, 1, c, half), name="Conv_0")(), 2, pw, self.dtype)
    b = pointwise(x[:, 1:, 1:], ops.Kernel((e, 1, 1, c, half), name="Conv_1")(), 2, pw, self.dtype)
    return _batch_norm(self.train, self.dtype, self.formulation)(jnp.concatenate([a, b], -1))


def _window_counts(size: int, stride: int) -> np.ndarray:
  """How many of a 3×3 window's positions (padding 1) fall inside a row of `size`."""
  out = _out_size(size, 3, stride, 1)
  starts = np.arange(out) * stride - 1
  return (np.minimum(starts + 3, size) - np.maximum(starts, 0)).astype(np.float32)


class Pool(nn.Module):
  """3×3 max or average pool (padding 1; the average excludes the padding, as DARTS),
  then a BN without affine: `ops.Pool(bn=True)` on E edges. With the depthwise
  formulation ``kernel`` (the CPU kernels) the pool is `cpu_kernels.pool_3x3`."""

  kind: str
  stride: int
  train: bool = True
  dtype: Dtype = jnp.float32
  formulation: ops.Formulation = ops.CONV

  @nn.compact
  def __call__(self, x):
    if self.formulation.depthwise == "kernel":
      b, h, w, e, c = x.shape
      compute = jnp.promote_types(x.dtype, jnp.float32)
      y = cpu_kernels.pool_3x3(
        x.reshape(b, h, w, e * c).astype(compute), self.stride, self.kind == "avg"
      )
      y = y.reshape(y.shape[:3] + (e, c)).astype(x.dtype)
      return _batch_norm(self.train, self.dtype, self.formulation)(y)
    window = (1, 3, 3, 1, 1)
    strides = (1, self.stride, self.stride, 1, 1)
    pad = ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0))
    if self.kind == "max":
      y = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pad)
    else:
      y = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
      counts = np.outer(
        _window_counts(x.shape[1], self.stride), _window_counts(x.shape[2], self.stride)
      )
      y = y / jnp.asarray(counts, y.dtype)[:, :, None, None]
    return _batch_norm(self.train, self.dtype, self.formulation)(y)


class Identity(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x


def _skip(c, stride, train, dtype, formulation):
  return Identity() if stride == 1 else FactorizedReduce(c, train, dtype, formulation)


# name -> factory(channels, stride, train, dtype, formulation), as `ops.OPS` with
# affine=False (the search network); `none` is absent: it adds nothing to a node.
BATCHED = {
  "max_pool_3x3": lambda c, s, t, d, f: Pool("max", s, t, d, f),
  "avg_pool_3x3": lambda c, s, t, d, f: Pool("avg", s, t, d, f),
  "skip_connect": _skip,
  "sep_conv_3x3": lambda c, s, t, d, f: SepConv(c, 3, s, 1, t, d, f),
  "sep_conv_5x5": lambda c, s, t, d, f: SepConv(c, 5, s, 2, t, d, f),
  "sep_conv_7x7": lambda c, s, t, d, f: SepConv(c, 7, s, 3, t, d, f),
  "dil_conv_3x3": lambda c, s, t, d, f: DilConv(c, 3, s, 2, 2, t, d, f),
  "dil_conv_5x5": lambda c, s, t, d, f: DilConv(c, 5, s, 4, 2, t, d, f),
}


def has_batched(name: str) -> bool:
  """Whether operation `name` has a batched form here: one of `BATCHED` whose
  registered factory is still the built-in one (`ops.is_builtin`)."""
  return name in BATCHED and ops.is_builtin(name)


def supports(primitives) -> bool:
  """Whether every operation has a batched form here (`none` needs none); the others
  run edge by edge (`per_edge`)."""
  return all(p == "none" or has_batched(p) for p in primitives)


def per_edge(module: nn.Module, xs: jax.Array, op: nn.Module, scope: str) -> jax.Array:
  """An operation without a batched form on E edges: `op` (its `ops` module, made
  unattached: `ops.unattached_ops`) `nn.vmap`-ed over the edge axis of xs
  [B, H, W, E, c], its variables declared in `module`'s scope under `scope` with a
  leading edge axis, as `nn.vmap(MixedOp)` declares them; returns [B, H', W', E, c]."""

  def apply(parent, x):
    return op.clone(parent=parent, name=scope)(x)

  mapped = nn.vmap(
    apply,
    in_axes=0,
    out_axes=0,
    variable_axes={"params": 0, "batch_stats": 0},
    split_rngs={"params": True, "dropout": True},
  )
  return jnp.moveaxis(mapped(module, jnp.moveaxis(xs, -2, 0)), 0, -2)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2×2 max pooling, stride 2, of [B, H, W, ...] (H and W even): the reduction edges'
  bypassed channels."""
  b, h, w = x.shape[0], x.shape[1] // 2, x.shape[2] // 2
  x = x[:, : 2 * h, : 2 * w]  # an odd last row or column is dropped, as nn.max_pool does
  return jnp.max(x.reshape((b, h, 2, w, 2) + x.shape[3:]), axis=(2, 4))


# ---------------------------------------------------------------------------------
# The convolution operations of a node, stacked (depthwise formulation ``kernel``).
#
# The first halves of all separable and dilated convolutions of the E edges read the
# same ReLU(x); their depthwise outputs are stacked on the channel axis and go
# through one grouped pointwise product and one batch norm (CPU kernels); the second halves
# of the separable convolutions likewise, each reading its own slice. Each of these
# two stages is one `jax.custom_vjp` function whose backward pass is written out and
# keeps only its input, its output and 1/σ, so a node's six conv halves become two
# stages in the program, with a handful of saved arrays instead of dozens.

EPS = ops.BN_EPS


def _op_inputs(r, specs, shared: bool):
  """Each op's input: all of r (shared) or its own consecutive slice of r."""
  if shared:
    return [r] * len(specs)
  n = r.shape[-1] // len(specs)
  return [r[..., m * n : (m + 1) * n] for m in range(len(specs))]


def _depthwise_stage(x, kernels, specs, stride, shared):
  """ReLU and each op's depthwise convolution (`specs[m]` = (padding, dilation)),
  stacked on the channel axis: (the stacked outputs [B, H', W', F], the ops' inputs)."""
  inputs = _op_inputs(jnp.maximum(x, 0), specs, shared)
  outs = [
    cpu_kernels.depthwise_forward(r, kernel, stride, p, d)
    for r, kernel, (p, d) in zip(inputs, kernels, specs)
  ]
  return (outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)), inputs


def _stage_forward(x, kernels, weight, specs, stride, shared):
  """`_depthwise_stage` and the grouped pointwise product (`weight` [G, c, c], one
  group per op and edge): (the product [N, F], the depthwise outputs)."""
  d, _ = _depthwise_stage(x, kernels, specs, stride, shared)
  return cpu_kernels.grouped_forward(d.reshape(-1, d.shape[-1]), weight), d


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def conv_stage(x, kernels, weight, specs, stride, shared):
  """Stacked convolution halves in training mode: x [B, H, W, C]; `kernels` the ops'
  depthwise kernels [k, k, n] (n = C with `shared` inputs, else C / ops); `weight`
  the pointwise kernels [G, c, c] of every op and edge (F = G · c = ops · n). Returns
  (y [B, H', W', F] normalised per feature, (batch mean, batch variance) [F]); the
  statistics are for the running averages and are not differentiated."""
  return _conv_stage_fwd(x, kernels, weight, specs, stride, shared)[0]


def _conv_stage_fwd(x, kernels, weight, specs, stride, shared):
  p, d = _stage_forward(x, kernels, weight, specs, stride, shared)
  y, mean, var, rstd = cpu_kernels.batch_norm_forward(p, EPS)
  return (y.reshape(d.shape), (mean, var)), (x, kernels, weight, y, rstd)


def _conv_stage_bwd(specs, stride, shared, residuals, cotangents):
  x, kernels, weight, y, rstd = residuals
  g = cotangents[0].reshape(y.shape)
  # Batch norm: dp = (g − mean(g) − ŷ · mean(g · ŷ)) / σ.
  dp = cpu_kernels.batch_norm_backward(g, y, rstd)
  # The depthwise outputs are recomputed rather than kept: fewer saved arrays.
  d, inputs = _depthwise_stage(x, kernels, specs, stride, shared)
  dweight = cpu_kernels.grouped_weight_grad(d.reshape(-1, d.shape[-1]), dp, weight.shape)
  dd = cpu_kernels.grouped_input_grad(dp, weight).reshape(d.shape)
  n = dd.shape[-1] // len(specs)
  dkernels, dinputs = [], []
  for m, (r, kernel, (p, dil)) in enumerate(zip(inputs, kernels, specs)):
    g_m = dd[..., m * n : (m + 1) * n]
    dkernels.append(cpu_kernels.depthwise_kernel_grad(r, g_m, kernel.shape[0], stride, p, dil))
    dinputs.append(cpu_kernels.depthwise_input_grad(g_m, kernel, r.shape, stride, p, dil))
  if shared:
    dr = functools.reduce(jnp.add, dinputs)
  else:
    dr = dinputs[0] if len(dinputs) == 1 else jnp.concatenate(dinputs, axis=-1)
  return jnp.where(x > 0, dr, 0.0), tuple(dkernels), dweight


conv_stage.defvjp(_conv_stage_fwd, _conv_stage_bwd)


class _BatchNormScope(nn.Module):
  """`ops.BatchNorm`'s scope (it holds an `nn.BatchNorm` named BatchNorm_0)."""

  shape: tuple[int, ...]

  @nn.compact
  def __call__(self, mean=None, var=None):
    return ops.BatchNormStats(self.shape, name="BatchNorm_0")(mean, var)


class _HalfVariables(nn.Module):
  """The variables of one ReLU–depthwise–pointwise–BN block over E edges, named as
  `DilConv`'s: Conv_0 (depthwise [E, k, k, 1, c]), Conv_1 (pointwise [E, 1, 1, c, c])
  and the batch norm's statistics. Called with a batch's statistics (training), it
  only updates the running ones and returns None."""

  edges: int
  channels: int
  kernel: int

  @nn.compact
  def __call__(self, mean=None, var=None):
    e, c, k = self.edges, self.channels, self.kernel
    if mean is not None:  # a batch's statistics: only the running averages change
      _BatchNormScope((e, c), name="BatchNorm_0")(mean, var)
      return None
    dw = ops.Kernel((e, k, k, 1, c), name="Conv_0")()
    pw = ops.Kernel((e, 1, 1, c, c), name="Conv_1")()
    stats = _BatchNormScope((e, c), name="BatchNorm_0")(mean, var)
    return dw, pw, stats


class _SepConvVariables(nn.Module):
  """`SepConv`'s variables: two `_HalfVariables`, DilConv_0 and DilConv_1."""

  edges: int
  channels: int
  kernel: int

  @nn.compact
  def __call__(self, stats0=(None, None), stats1=(None, None)):
    return (
      _HalfVariables(self.edges, self.channels, self.kernel, name="DilConv_0")(*stats0),
      _HalfVariables(self.edges, self.channels, self.kernel, name="DilConv_1")(*stats1),
    )


# (kind, kernel size, padding, dilation) of the convolution operations.
CONV_OPS = {
  "sep_conv_3x3": ("sep", 3, 1, 1),
  "sep_conv_5x5": ("sep", 5, 2, 1),
  "sep_conv_7x7": ("sep", 7, 3, 1),
  "dil_conv_3x3": ("dil", 3, 2, 2),
  "dil_conv_5x5": ("dil", 5, 4, 2),
}


def conv_scopes(scopes: dict[str, str]) -> dict[str, str]:
  """{conv primitive: its variable scope} of the built-in convolutions among `scopes`
  ({primitive: the scope Flax gives the `ops` module a `MixedOp` creates for it, e.g.
  SepConv_0, DilConv_1}: `ops.unattached_ops`), in primitive order."""
  return {p: scope for p, scope in scopes.items() if p in CONV_OPS and has_batched(p)}


def _taps(dw: jax.Array) -> jax.Array:
  """[E, k, k, 1, c] -> [k, k, E·c]: the depthwise kernel over the E·c channels."""
  e, k, _, _, c = dw.shape
  return jnp.transpose(dw[:, :, :, 0, :], (1, 2, 0, 3)).reshape(k, k, e * c)


def stacked_conv_ops(
  module: nn.Module, xs: jax.Array, names: dict[str, str], stride: int, train: bool, dtype: Dtype
) -> list[tuple[list[str], jax.Array]]:
  """The separable and dilated convolutions of E edges, `names` = {primitive: the
  variable scope `ops` gives it (SepConv_0, DilConv_1, ...)}, in two `conv_stage`s
  (first halves of all, then second halves of the separable ones), the variables
  declared in `module`'s scope as `nn.vmap` of the `ops` modules declares them.
  xs [B, H, W, E, c]; returns blocks (primitives, [B, H', W', len(primitives), E, c])."""
  b, h, w, e, c = xs.shape
  n = e * c
  seps = [p for p in names if CONV_OPS[p][0] == "sep"]
  dils = [p for p in names if CONV_OPS[p][0] == "dil"]
  order = seps + dils  # the separable ones first: stage 2 reads a prefix of stage 1
  holders = {
    p: (_SepConvVariables if CONV_OPS[p][0] == "sep" else _HalfVariables)(
      e, c, CONV_OPS[p][1], name=names[p]
    )
    for p in order
  }
  params = {p: holders[p]() for p in order}
  first = {p: params[p][0] if p in seps else params[p] for p in order}
  compute = jnp.promote_types(dtype, jnp.float32)  # the kernels take float32/float64
  x = xs.reshape(b, h, w, n).astype(compute)

  def stage(x, halves, specs, stride, shared):
    kernels = tuple(_taps(dw).astype(compute) for dw, _, _ in halves)
    weight = jnp.concatenate([pw[:, 0, 0] for _, pw, _ in halves]).astype(compute)
    if train:
      return conv_stage(x, kernels, weight, tuple(specs), stride, shared)
    p, d = _stage_forward(x, kernels, weight, tuple(specs), stride, shared)
    mean = jnp.concatenate([s[0].reshape(-1) for _, _, s in halves])
    var = jnp.concatenate([s[1].reshape(-1) for _, _, s in halves])
    return ((p - mean) * jax.lax.rsqrt(var + EPS)).reshape(d.shape), None

  y1, stats1 = stage(x, [first[p] for p in order], [CONV_OPS[p][2:] for p in order], stride, True)
  blocks = []
  if seps:
    y2, stats2 = stage(
      y1[..., : len(seps) * n],
      [params[p][1] for p in seps],
      [(CONV_OPS[p][2], 1) for p in seps],
      1,
      False,
    )
    blocks.append((seps, y2))
  if dils:
    blocks.append((dils, y1[..., len(seps) * n :]))
  if train and not module.is_initializing():
    split = lambda stats, i: (stats[0][i * n : (i + 1) * n], stats[1][i * n : (i + 1) * n])
    for i, p in enumerate(order):
      if p in seps:
        holders[p](split(stats1, i), split(stats2, seps.index(p)))
      else:
        holders[p](*split(stats1, i))
  return [(ps, y.reshape(y.shape[:3] + (len(ps), e, c)).astype(dtype)) for ps, y in blocks]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def pool_stage(x, kinds, stride):
  """The 3×3 pools `kinds` ("max", "avg") of x [B, H, W, n], stacked on the channel
  axis and batch-normalised per feature (training mode): (y [B, H', W', len·n],
  (batch mean, batch variance)); the statistics are not differentiated."""
  return _pool_stage_fwd(x, kinds, stride)[0]


def _pool_stage_fwd(x, kinds, stride):
  outs = [cpu_kernels.pool_3x3(x, stride, kind == "avg") for kind in kinds]
  d = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
  y, mean, var, rstd = cpu_kernels.batch_norm_forward(d.reshape(-1, d.shape[-1]), EPS)
  return (y.reshape(d.shape), (mean, var)), (x, y, rstd)


def _pool_stage_bwd(kinds, stride, residuals, cotangents):
  x, y, rstd = residuals
  g = cotangents[0].reshape(y.shape)
  dp = cpu_kernels.batch_norm_backward(g, y, rstd)
  n = x.shape[-1]
  b, ho, wo = cotangents[0].shape[:3]
  dp = dp.reshape(b, ho, wo, -1)
  dx = [
    jax.vjp(lambda x, kind=kind: cpu_kernels.pool_3x3(x, stride, kind == "avg"), x)[1](
      dp[..., m * n : (m + 1) * n]
    )[0]
    for m, kind in enumerate(kinds)
  ]
  return (functools.reduce(jnp.add, dx),)


pool_stage.defvjp(_pool_stage_fwd, _pool_stage_bwd)


class _PoolVariables(nn.Module):
  """`Pool`'s variables: its batch norm's statistics (BatchNorm_0)."""

  edges: int
  channels: int

  @nn.compact
  def __call__(self, mean=None, var=None):
    return _BatchNormScope((self.edges, self.channels), name="BatchNorm_0")(mean, var)


def pool_scopes(scopes: dict[str, str]) -> dict[str, str]:
  """{pool primitive: its variable scope} of the built-in pools among `scopes` (as
  `conv_scopes`), in primitive order."""
  return {
    p: scope
    for p, scope in scopes.items()
    if p in ("max_pool_3x3", "avg_pool_3x3") and has_batched(p)
  }


def stacked_pool_ops(
  module: nn.Module, xs: jax.Array, names: dict[str, str], stride: int, train: bool, dtype: Dtype
) -> jax.Array:
  """The pools of E edges (`names` = {primitive: its scope}, in primitive order) in
  one `pool_stage`, each followed by its batch norm as `Pool` does: xs
  [B, H, W, E, c] -> [B, H', W', len(names), E, c]."""
  b, h, w, e, c = xs.shape
  n = e * c
  order = list(names)
  kinds = tuple("max" if p == "max_pool_3x3" else "avg" for p in order)
  holders = [_PoolVariables(e, c, name=names[p]) for p in order]
  compute = jnp.promote_types(dtype, jnp.float32)
  x = xs.reshape(b, h, w, n).astype(compute)
  if train:
    y, (mean, var) = pool_stage(x, kinds, stride)
    if not module.is_initializing():
      for i, holder in enumerate(holders):
        holder(mean[i * n : (i + 1) * n], var[i * n : (i + 1) * n])
    else:
      for holder in holders:
        holder()
  else:
    stats = [holder() for holder in holders]
    outs = [cpu_kernels.pool_3x3(x, stride, kind == "avg") for kind in kinds]
    y = jnp.concatenate(
      [(o - s[0].reshape(-1)) * jax.lax.rsqrt(s[1].reshape(-1) + EPS) for o, s in zip(outs, stats)],
      axis=-1,
    )
  return y.reshape(y.shape[:3] + (len(order), e, c)).astype(dtype)
