"""The jaxpr FLOP counter against hand formulas and XLA's cost analysis of loop-free
programs, and its loop rule on `lax.scan` and `flax.linen.scan`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from dnas_jax.tools import flops
from dnas_jax.models import supernet
from dnas_jax.space import search_space


def _conv(x, w, stride=1, dilation=1, groups=1, padding="SAME"):
  return lax.conv_general_dilated(
    x,
    w,
    (stride, stride),
    padding,
    rhs_dilation=(dilation, dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
  )


def _loop_macs(x_shape, w_shape, stride, dilation, groups, pad):
  """Multiply-adds of a NHWC/HWIO convolution by explicit loops over every output
  element and window position, skipping positions that read padding."""
  n, h, w, cin = x_shape
  kh, kw, cin_g, cout = w_shape
  (plo_h, phi_h), (plo_w, phi_w) = pad
  ho = (h + plo_h + phi_h - dilation * (kh - 1) - 1) // stride + 1
  wo = (w + plo_w + phi_w - dilation * (kw - 1) - 1) // stride + 1
  real = 0
  for i in range(ho):
    for j in range(wo):
      for a in range(kh):
        for b in range(kw):
          y, xx = i * stride + a * dilation - plo_h, j * stride + b * dilation - plo_w
          real += 0 <= y < h and 0 <= xx < w
  return n * cout * cin_g * real


@pytest.mark.parametrize(
  "stride,dilation,groups,pad",
  [
    (1, 1, 1, ((1, 1), (1, 1))),
    (2, 2, 4, ((2, 2), (2, 2))),
    (2, 1, 8, ((0, 1), (1, 0))),
    (1, 2, 2, ((0, 0), (0, 0))),
  ],
)
def test_convolution_matches_loops_and_xla(stride, dilation, groups, pad):
  x = jnp.ones((2, 9, 9, 8))
  w = jnp.ones((3, 3, 8 // groups, 8))
  f = lambda x, w: _conv(x, w, stride, dilation, groups, pad)
  counted = flops.count_flops(f, x, w)
  assert counted.conv == 2 * _loop_macs(x.shape, w.shape, stride, dilation, groups, pad)
  assert counted.matmul == 0
  assert counted.total == jax.jit(f).lower(x, w).compile().cost_analysis()["flops"]


def test_matmul_matches_hand_formula():
  a, b = jnp.ones((3, 4, 5)), jnp.ones((3, 5, 6))  # batched: 3 × (4×5 @ 5×6)
  counted = flops.count_flops(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b)
  assert counted.matmul == 2 * 3 * 4 * 5 * 6 and counted.conv == 0


def test_gradients_equal_xla_and_dead_forward_is_dropped():
  x = jnp.ones((2, 11, 11, 8))
  w = jnp.ones((3, 3, 2, 8))
  m = jnp.ones((8, 5))

  def f(x, w, m):  # strided, dilated, grouped: its input gradient is lhs-dilated
    return jnp.einsum("bhwc,cd->bhwd", _conv(x, w, 2, 2, 4), m)

  cotangent = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 5)), jnp.float32)
  # The vector-Jacobian product alone: no element-wise work for XLA to add.
  vjp = jax.jit(lambda *a: jax.vjp(f, *a)[1](cotangent))
  assert (
    flops.count_flops(vjp, x, w, m).total == (vjp.lower(x, w, m).compile().cost_analysis()["flops"])
  )
  # d/dw of a linear loss needs the weight-gradient convolution only: the traced
  # forward convolution is dead code and must not be counted.
  x2, w2 = jnp.ones((2, 9, 9, 8)), jnp.ones((3, 3, 8, 8))
  forward = flops.count_flops(_conv, x2, w2).conv
  weight_grad = jax.jit(jax.grad(lambda w, x: jnp.sum(_conv(x, w))))
  assert flops.count_flops(weight_grad, w2, x2).conv == forward
  # Stride 1, 'SAME': forward, input gradient and weight gradient cost the same.
  full = jax.jit(jax.grad(lambda w, x: jnp.sum(_conv(x, w) ** 2), argnums=(0, 1)))
  assert flops.count_flops(full, w2, x2).conv == 3 * forward


def test_scan_counts_body_times_length_where_xla_counts_it_once():
  x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))

  def scanned(x, w):
    y, _ = lax.scan(lambda c, _: (_conv(c, w), None), x, None, length=5)
    return y

  def unrolled(x, w):
    for _ in range(5):
      x = _conv(x, w)
    return x

  one = flops.count_flops(_conv, x, w).conv
  assert flops.count_flops(scanned, x, w).conv == 5 * one
  xla_unrolled = jax.jit(unrolled).lower(x, w).compile().cost_analysis()["flops"]
  assert flops.count_flops(unrolled, x, w).conv == 5 * one == xla_unrolled
  xla_scanned = jax.jit(scanned).lower(x, w).compile().cost_analysis()["flops"]
  assert xla_scanned < 2 * one  # the undercount this module exists for


def test_cond_counts_the_dearest_branch():
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  f = lambda p, x, w: lax.cond(p, lambda: _conv(_conv(x, w), w), lambda: _conv(x, w))
  one = flops.count_flops(_conv, x, w).conv
  assert flops.count_flops(f, True, x, w).conv == 2 * one


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.relu(nn.Conv(4, (3, 3), use_bias=False)(x)), None


class _Scanned(nn.Module):
  @nn.compact
  def __call__(self, x):
    scan = nn.scan(_Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=6)
    return scan()(x, None)[0]


class _Unrolled(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(6):
      x = _Block()(x, None)[0]
    return x


def test_flax_scan_gradient_equals_unrolled_network():
  x = jnp.ones((2, 8, 8, 4))
  counts = []
  for module in (_Scanned(), _Unrolled()):
    params = module.init(jax.random.key(0), x)
    step = jax.jit(jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2)))
    counts.append(flops.count_flops(step, params).conv)
  one = flops.count_flops(_conv, x, jnp.ones((3, 3, 4, 4))).conv
  # Unrolled: 6 forward + 6 weight-gradient + 5 input-gradient convolutions (the
  # first block's input gradient is dead). The loop body cannot drop it for one
  # iteration, so the scanned program really runs 6 input-gradient convolutions.
  assert counts[1] == 17 * one
  assert counts[0] == 18 * one


def test_supernet_forward_grows_linearly_with_scanned_depth():
  """From L = 8 to 14 and from 14 to 20 each stage gains two scanned normal cells of
  the same shapes, so the two increments are equal and positive."""
  prims = search_space.PRIMITIVES[:3]
  x = jnp.ones((2, 8, 8, 3))
  total = {}
  for depth in (8, 14, 20):
    net = supernet.SearchNetwork(
      num_classes=10, num_layers=depth, channels=8, primitives=prims, partial_k=2, train=False
    )
    psi = jnp.ones((depth, search_space.NUM_CONNECTIONS, len(prims))) / len(prims)
    shapes = jax.eval_shape(net.init, jax.random.key(0), x, psi)
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total[depth] = flops.count_flops(lambda v: net.apply(v, x, psi), variables).conv
  assert total[14] - total[8] == total[20] - total[14] > 0
  np.testing.assert_allclose(total[20] - total[8], 2 * (total[14] - total[8]))
