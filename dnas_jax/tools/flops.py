"""FLOPs of a JAX program counted on its jaxpr, loops multiplied by their trip counts.

XLA's `compiled.cost_analysis()` counts the body of a loop once, so for the supernet,
whose normal cells run under one `scan` per stage, it reports nearly the same FLOPs at
L = 8 and L = 20. This module walks the traced program instead: every convolution and
matrix product is counted (2 FLOPs per multiply-add) and the body of a `scan` is
multiplied by its `length`. Element-wise work (ReLU, batch norm, pooling, the optimiser)
is not counted: these are the model FLOPs one quotes for a network, and they are what
the achieved FLOP/s of the benchmark divide.

Rules:
* `conv_general_dilated`: 2 · batch · output features · (kernel input features, which
  is the per-group count) · (output-position × window-position pairs that read a real
  input element). Pairs that fall in the padding or in the holes of an input dilation
  (the transposed convolutions of an input gradient) do no work and are not counted,
  which is also XLA's convention: for convolutions and matrix products outside loops
  the two counts agree (tests/test_flops.py).
  This covers forward, input-gradient and weight-gradient convolutions (feature or
  batch groups).
* `dot_general`: 2 · |output| · (product of the contracted dimensions).
* the depthwise calls of the CPU kernels (`ffi_call` to `dnas_jax_depthwise_*`,
  `dnas_jax.kernels.cpu`): as the grouped convolution they replace, 2 · batch ·
  channels · (output-position × window-position pairs that read a real input element),
  for the forward call and for each of its two gradient calls; the grouped 1×1 calls
  (`dnas_jax_grouped_*`): 2 · rows · groups · in channels · out channels each.
* `scan`: body × `length`; `cond`: the most expensive branch (the one a warm-up flag
  selects is not known when tracing); `while`: the body once (trip count unknown; the
  count is flagged in `unknown_trip_loops`). Every other primitive holding a sub-program
  (`jit`, `custom_jvp_call`, `custom_vjp_call`, `checkpoint`, …) counts that program once.
Dead code is removed first (JAX's own pass), as XLA would.
"""

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.extend import core as jex_core


@dataclasses.dataclass
class FlopCount:
  """Convolution and matrix-product FLOPs of one call."""

  conv: float = 0.0
  matmul: float = 0.0
  unknown_trip_loops: int = 0

  @property
  def total(self) -> float:
    return self.conv + self.matmul

  def scaled(self, factor: float) -> "FlopCount":
    return FlopCount(self.conv * factor, self.matmul * factor, self.unknown_trip_loops)

  def __add__(self, other: "FlopCount") -> "FlopCount":
    return FlopCount(
      self.conv + other.conv,
      self.matmul + other.matmul,
      self.unknown_trip_loops + other.unknown_trip_loops,
    )


def _window_pairs(in_size, window, out_size, stride, pad_lo, lhs_dilation, rhs_dilation):
  """(output position, window position) pairs of one spatial dimension that read a real
  input element: not padding, not a hole of the input's dilation."""
  out = np.arange(out_size)[:, None] * stride
  pos = out + np.arange(window)[None, :] * rhs_dilation - pad_lo
  real = (pos >= 0) & (pos <= (in_size - 1) * lhs_dilation) & (pos % lhs_dilation == 0)
  return int(real.sum())


def _conv_flops(eqn) -> float:
  lhs = eqn.invars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  p = eqn.params
  dn = p["dimension_numbers"]
  pairs = 1
  for i, (l, r, o) in enumerate(zip(dn.lhs_spec[2:], dn.rhs_spec[2:], dn.out_spec[2:])):
    pairs *= _window_pairs(
      lhs[l],
      rhs[r],
      out[o],
      p["window_strides"][i],
      p["padding"][i][0],
      p["lhs_dilation"][i],
      p["rhs_dilation"][i],
    )
  # Per output feature and batch element: (kernel input features, per group) x pairs.
  return 2.0 * out[dn.out_spec[0]] * out[dn.out_spec[1]] * rhs[dn.rhs_spec[1]] * pairs


def _depthwise_ffi_flops(eqn) -> float:
  """A depthwise call of the CPU kernels: its (output, window) pairs as the forward
  convolution has them, whichever of the three calls it is."""
  attrs = dict(eqn.params["attributes"])
  stride, padding, dilation = (int(attrs[k]) for k in ("stride", "padding", "dilation"))
  target = eqn.params["target_name"]
  if "_forward_" in target:
    x, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
    k = eqn.invars[1].aval.shape[0]
  elif "_input_grad_" in target:  # (g, kernel) -> dx
    x, out = eqn.outvars[0].aval.shape, eqn.invars[0].aval.shape
    k = eqn.invars[1].aval.shape[0]
  else:  # kernel grad: (x, g) -> dk
    x, out = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    k = eqn.outvars[0].aval.shape[0]
  pairs = 1
  for i in (1, 2):
    pairs *= _window_pairs(x[i], k, out[i], stride, padding, 1, dilation)
  return 2.0 * x[0] * x[3] * pairs


def _dot_flops(eqn) -> float:
  lhs = eqn.invars[0].aval.shape
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  out = eqn.outvars[0].aval.shape
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _sub_jaxprs(value):
  """Jaxprs held in one equation parameter (a jaxpr, a closed jaxpr, or a tuple)."""
  if isinstance(value, jex_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jex_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def count_jaxpr(jaxpr) -> FlopCount:
  """FLOPs of a (closed) jaxpr under the module's rules."""
  if isinstance(jaxpr, jex_core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  count = FlopCount()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      count += FlopCount(conv=_conv_flops(eqn))
    elif name == "dot_general":
      count += FlopCount(matmul=_dot_flops(eqn))
    elif name == "ffi_call" and str(eqn.params.get("target_name", "")).startswith(
      "dnas_jax_depthwise_"
    ):
      count += FlopCount(conv=_depthwise_ffi_flops(eqn))
    elif name == "ffi_call" and str(eqn.params.get("target_name", "")).startswith(
      "dnas_jax_grouped_"
    ):
      w = (
        eqn.outvars[0] if "_weight_grad_" in eqn.params["target_name"] else eqn.invars[1]
      ).aval.shape  # [G, c, o]
      rows = math.prod(eqn.invars[0].aval.shape) // (
        w[0] * (w[2] if "_input_grad_" in eqn.params["target_name"] else w[1])
      )
      count += FlopCount(conv=2.0 * rows * math.prod(w))
    elif name == "scan":
      count += count_jaxpr(eqn.params["jaxpr"]).scaled(eqn.params["length"])
    elif name == "cond":
      branches = [count_jaxpr(b) for b in eqn.params["branches"]]
      count += max(branches, key=lambda c: c.total)
    elif name == "while":
      body = count_jaxpr(eqn.params["body_jaxpr"]) + count_jaxpr(eqn.params["cond_jaxpr"])
      count += body + FlopCount(unknown_trip_loops=1)
    else:
      for value in eqn.params.values():
        for sub in _sub_jaxprs(value):
          count += count_jaxpr(sub)
  return count


def remove_dead_code(closed: jex_core.ClosedJaxpr) -> jex_core.Jaxpr:
  """The jaxpr without equations whose results no output needs (recursively, through
  `jit`, `scan` and `cond`), as XLA would remove them: a gradient traced for some
  inputs only carries forward values nobody reads. Uses JAX's own dead-code pass."""
  from jax._src.interpreters import partial_eval as pe  # pylint: disable=g-import-not-at-top

  jaxpr, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
  return jaxpr


def count_traced(closed: jex_core.ClosedJaxpr) -> FlopCount:
  """FLOPs of a traced program (`jax.make_jaxpr(f)(...)`, `jax.jit(f).trace(...).jaxpr`)
  after dead-code removal."""
  return count_jaxpr(remove_dead_code(closed))


def count_flops(fn: Callable[..., Any], *args, **kwargs) -> FlopCount:
  """Traces `fn(*args, **kwargs)` (a function or a `jax.jit` of one) and counts it."""
  return count_traced(jax.make_jaxpr(fn)(*args, **kwargs))
