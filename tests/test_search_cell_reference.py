"""An independent float64 NumPy reference for one search cell, written from the papers'
definitions (DARTS's operations, PC-DARTS's partial-channel edge and cell, DNAS's
formula 4), not from this code: explicit convolutions over kernel offsets, batch norm
with batch statistics, pools with PyTorch's padding rules, PC-DARTS's channel shuffle
as an index permutation.

Checked against the Flax search cell in float64: the forward values of a reduction cell
(stride-2 edges, max-pooled bypass) and of a normal cell after a reduction (factorized
reduce preprocessing), with DNAS's ψ and edge weights; the same cell with PC-DARTS's
edge normalisation written as PC-DARTS writes it (the edge weight multiplying the whole
shuffled edge output); and the gradients with respect to α, β, γ against central
differences of the NumPy reference.

Only `flax_to_reference_weights` knows the Flax parameter layout; it reads each edge's
kernels out of the network's variables into the reference's per-edge, per-operation
lists (PyTorch's order of modules).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas_jax.models import arch
from dnas_jax.models import init as init_lib
from dnas_jax.models import supernet
from dnas_jax.space import search_space

PRIMS = search_space.PRIMITIVES  # all 7 operations
K = 4  # partial channels
EPS = 1e-5  # batch-norm epsilon (PyTorch's default)

# ---------------------------------------------------------------------------------
# The reference (NumPy, float64, NHWC; kernels [kh, kw, in / groups, out]).


def relu(x):
  return np.maximum(x, 0.0)


def conv(x, w, stride=1, pad=0, dilation=1, groups=1):
  """out[n, y, x, o] = Σ_{dy, dx, c in o's group} xp[n, y·s + dy·d, x·s + dx·d, c] ·
  w[dy, dx, c', o], xp the zero-padded input."""
  n, h, wd, cin = x.shape
  kh, kw, cin_g, cout = w.shape
  assert cin_g * groups == cin
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (h + 2 * pad - dilation * (kh - 1) - 1) // stride + 1
  wo = (wd + 2 * pad - dilation * (kw - 1) - 1) // stride + 1
  out = np.zeros((n, ho, wo, cout))
  cout_g = cout // groups
  for dy in range(kh):
    for dx in range(kw):
      patch = xp[
        :,
        dy * dilation : dy * dilation + stride * (ho - 1) + 1 : stride,
        dx * dilation : dx * dilation + stride * (wo - 1) + 1 : stride,
        :,
      ]
      for g in range(groups):
        out[..., g * cout_g : (g + 1) * cout_g] += np.einsum(
          "nhwc,co->nhwo",
          patch[..., g * cin_g : (g + 1) * cin_g],
          w[dy, dx, :, g * cout_g : (g + 1) * cout_g],
        )
  return out


def batch_norm(x):
  """Training mode, no affine: batch mean and biased variance over (N, H, W)."""
  mean = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + EPS)


def max_pool3(x, stride):
  """MaxPool2d(3, stride, padding=1): padding never wins a max."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  h, w = x.shape[1:3]
  ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
  out = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
  for dy in range(3):
    for dx in range(3):
      out = np.maximum(
        out,
        xp[:, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride],
      )
  return out


def avg_pool3(x, stride):
  """AvgPool2d(3, stride, padding=1, count_include_pad=False)."""
  ones = np.ones(x.shape[:3] + (1,))
  total = conv(x, np.ones((3, 3, 1, 1)) * np.eye(x.shape[3])[None, None], stride, 1)
  count = conv(ones, np.ones((3, 3, 1, 1)), stride, 1)
  return total / count


def dil_conv(x, kernels, stride, pad, dilation):
  dw, pw = kernels
  x = conv(relu(x), dw, stride, pad, dilation, groups=x.shape[-1])
  return batch_norm(conv(x, pw))


def sep_conv(x, kernels, stride, pad):
  x = dil_conv(x, kernels[:2], stride, pad, 1)
  return dil_conv(x, kernels[2:], 1, pad, 1)


def factorized_reduce(x, kernels):
  a, b = kernels
  x = relu(x)
  return batch_norm(np.concatenate([conv(x, a, 2), conv(x[:, 1:, 1:], b, 2)], -1))


def operation(name, x, kernels, stride):
  if name == "max_pool_3x3":
    return batch_norm(max_pool3(x, stride))  # pooling + BN without affine in the search
  if name == "avg_pool_3x3":
    return batch_norm(avg_pool3(x, stride))
  if name == "skip_connect":
    return x if stride == 1 else factorized_reduce(x, kernels)
  if name == "none":
    return np.zeros_like(x[:, ::stride, ::stride])
  size = int(name[-1])
  if name.startswith("sep_conv"):
    return sep_conv(x, kernels, stride, size // 2)
  return dil_conv(x, kernels, stride, size - 1, 2)  # dil_conv_3x3: pad 2; 5x5: pad 4


def channel_shuffle(x, groups):
  """PC-DARTS's channel_shuffle (NCHW view(B, g, C/g, H, W), transpose(1, 2)): input
  channel g·(C/groups) + c goes to output channel c·groups + g."""
  c = x.shape[-1]
  per = c // groups
  out = np.empty_like(x)
  for g in range(groups):
    for i in range(per):
      out[..., i * groups + g] = x[..., g * per + i]
  return out


def mixed_edge(x, op_kernels, op_weights, stride):
  """PC-DARTS's MixedOp: the operations on the first C/K channels, weighted, summed;
  the other channels bypass (2×2 max pool on a stride-2 edge); concatenated and
  channel-shuffled. Returns the shuffled edge output (not yet edge-weighted)."""
  c = x.shape[-1] // K
  x1, x2 = x[..., :c], x[..., c:]
  y = sum(w * operation(name, x1, op_kernels[name], stride) for name, w in zip(PRIMS, op_weights))
  if stride == 2:
    n, h, wd, ch = x2.shape
    x2 = x2.reshape(n, h // 2, 2, wd // 2, 2, ch).max(axis=(2, 4))
  return channel_shuffle(np.concatenate([y, x2], -1), K)


def search_cell(s0, s1, kw, op_weights, edge_weights, reduction, reduction_prev):
  """The cell: preprocessing, 4 nodes each the sum over its 2 + n inputs of
  edge_weight · mixed_edge(input, ψ / edge_weight), the nodes concatenated.
  `op_weights` [14, Op] are the weights *inside* the edge (PC-DARTS: softmax(α);
  DNAS: ψ / σβ(β)), `edge_weights` [14] the factor on the whole edge."""
  s0 = (
    factorized_reduce(s0, kw["pre0"])
    if reduction_prev
    else batch_norm(conv(relu(s0), kw["pre0"][0]))
  )
  s1 = batch_norm(conv(relu(s1), kw["pre1"][0]))
  states = [s0, s1]
  i = 0
  for node in range(4):
    total = 0.0
    for j, h in enumerate(states):
      stride = 2 if reduction and j < 2 else 1
      total = total + edge_weights[i] * mixed_edge(h, kw["edges"][i], op_weights[i], stride)
      i += 1
    states.append(total)
  return np.concatenate(states[2:], -1)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def softmax(v):
  e = np.exp(v - v.max())
  return e / e.sum()


def dnas_weights(alpha, beta_k, gamma_k):
  """Formula (4) for one layer, domain 'layer': the whole edge i carries softmax(β)[i];
  inside it operation j has σ(α[i, j]) · σ(γ[j]) (so that the product is ψ[i, j])."""
  edge = softmax(beta_k)
  inside = sigmoid(alpha) * sigmoid(gamma_k)[None, :]
  return inside, edge


def node_softmax(beta):
  out = np.empty_like(beta)
  start = 0
  for node in range(4):
    out[start : start + 2 + node] = softmax(beta[start : start + 2 + node])
    start += 2 + node
  return out


# ---------------------------------------------------------------------------------
# The Flax side.

_MODULE_OF_OP = {
  "max_pool_3x3": None,
  "avg_pool_3x3": None,
  "skip_connect": None,
  "sep_conv_3x3": "SepConv_0",
  "sep_conv_5x5": "SepConv_1",
  "dil_conv_3x3": "DilConv_0",
  "dil_conv_5x5": "DilConv_1",
}


def flax_to_reference_weights(params, reduction):
  """The cell's kernels as {'pre0': [...], 'pre1': [...], 'edges': [14 × {op: [...]}]}
  in PyTorch's module order (SepConv: dw, pw, dw, pw; DilConv: dw, pw; FactorizedReduce:
  conv_1, conv_2)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  pre0 = p["pre0"]
  out = {
    "pre0": (
      [pre0["Conv_0"]["kernel"], pre0["Conv_1"]["kernel"]]
      if "Conv_1" in pre0
      else [pre0["Conv_0"]["kernel"]]
    ),
    "pre1": [p["pre1"]["Conv_0"]["kernel"]],
    "edges": [None] * 14,
  }
  for node in range(4):
    first = search_space.node_edges(node).start
    n_inputs = 2 + node
    n_strided = 2 if reduction else 0
    for stride, inputs in ((2, range(0, n_strided)), (1, range(n_strided, n_inputs))):
      if not len(inputs):
        continue
      group = p[f"node{node}_stride{stride}"]["edges"]
      for e, inp in enumerate(inputs):
        at = lambda tree: tree["kernel"][e]  # pylint: disable=cell-var-from-loop
        kernels = {}
        for name in PRIMS:
          module = _MODULE_OF_OP[name]
          if name == "skip_connect" and stride == 2:
            fr = group["FactorizedReduce_0"]
            kernels[name] = [at(fr["Conv_0"]), at(fr["Conv_1"])]
          elif module is None:
            kernels[name] = []
          elif module.startswith("SepConv"):
            m = group[module]
            kernels[name] = [
              at(m["DilConv_0"]["Conv_0"]),
              at(m["DilConv_0"]["Conv_1"]),
              at(m["DilConv_1"]["Conv_0"]),
              at(m["DilConv_1"]["Conv_1"]),
            ]
          else:
            m = group[module]
            kernels[name] = [at(m["Conv_0"]), at(m["Conv_1"])]
        out["edges"][first + inp] = kernels
  assert all(e is not None for e in out["edges"])
  return out


CASES = {  # name: (reduction, reduction_prev, s0 size, s1 size)
  "reduction": (True, False, 8, 8),
  "normal_after_reduction": (False, True, 8, 4),
}


def _setup(case, channels=8, batch=2):
  reduction, reduction_prev, h0, h1 = CASES[case]
  r = np.random.default_rng(0)
  s0 = r.normal(size=(batch, h0, h0, 2 * channels))
  s1 = r.normal(size=(batch, h1, h1, 3 * channels))
  cell = supernet.SearchCell(channels, reduction, reduction_prev, PRIMS, K, dtype=jnp.float64)
  variables = init_lib.init_from_shapes(
    cell, 0, jnp.zeros(s0.shape), jnp.zeros(s1.shape), jnp.zeros((14, len(PRIMS))), jnp.ones(14)
  )
  # Kernels of a larger scale than PyTorch's default init, so that every term matters.
  params = jax.tree.map(
    lambda a: jnp.asarray(r.normal(size=a.shape), jnp.float64), variables["params"]
  )
  return cell, {"params": params, "batch_stats": variables["batch_stats"]}, s0, s1


def _flax_cell(cell, variables, s0, s1, psi_k, edge_k):
  out, _ = cell.apply(variables, s0, s1, psi_k, edge_k, mutable=["batch_stats"])
  return out


@pytest.mark.parametrize("case", list(CASES))
def test_cell_forward_equals_the_reference_for_dnas_and_pc_darts(case):
  with jax.enable_x64(True):
    cell, variables, s0, s1 = _setup(case)
    reduction, reduction_prev = CASES[case][:2]
    kw = flax_to_reference_weights(variables["params"], reduction)
    r = np.random.default_rng(1)
    forward = jax.jit(lambda psi, edge: _flax_cell(cell, variables, s0, s1, psi, edge))

    # DNAS: ψ = σα · softmax(β) · σγ (formula 4, layer 1 of a 3-layer network, which
    # is a reduction layer), edges weighted by softmax(β).
    alpha, beta, gamma = r.normal(size=(14, 7)), r.normal(size=(3, 14)), r.normal(size=(3, 7))
    spec = arch.ArchSpec("decoupled", 3, 7)
    w = spec.arch_weights({"alpha": alpha, "beta": beta, "gamma": gamma})
    got = np.asarray(forward(w.psi[1], w.edge[1]))
    inside, edge = dnas_weights(alpha, beta[1], gamma[1])
    want = search_cell(s0, s1, kw, inside, edge, reduction, reduction_prev)
    size = CASES[case][3] // (2 if reduction else 1)
    assert got.shape == want.shape == (2, size, size, 32)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)

    # PC-DARTS: softmax(α) inside the edge, node-wise softmax(β) on the whole edge.
    a_pc, b_pc = r.normal(size=(14, 7)), r.normal(size=(14,))
    spec = arch.ArchSpec("iam", 3, 7, edge_normalization=True)
    w = spec.arch_weights(
      {
        "alpha_normal": r.normal(size=(14, 7)),
        "alpha_reduce": a_pc,
        "beta_normal": r.normal(size=(14,)),
        "beta_reduce": b_pc,
      }
    )
    got = np.asarray(forward(w.psi[1], w.edge[1]))
    inside = np.stack([softmax(a) for a in a_pc])
    want = search_cell(s0, s1, kw, inside, node_softmax(b_pc), reduction, reduction_prev)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)

    # The bypass matters: with the edge weights left at 1 the output differs.
    unweighted = np.asarray(forward(w.psi[1], jnp.ones(14)))
    assert np.abs(unweighted - want).max() > 1e-2


def test_cell_gradients_wrt_alpha_beta_gamma_equal_reference_finite_differences():
  with jax.enable_x64(True):
    cell, variables, s0, s1 = _setup("reduction")
    kw = flax_to_reference_weights(variables["params"], True)
    r = np.random.default_rng(2)
    alpha, beta, gamma = r.normal(size=(14, 7)), r.normal(size=(3, 14)), r.normal(size=(3, 7))
    weights = r.normal(size=(2, 4, 4, 32))  # loss = Σ out · weights
    spec = arch.ArchSpec("decoupled", 3, 7)

    def loss(params):
      w = spec.arch_weights(params)
      return jnp.sum(_flax_cell(cell, variables, s0, s1, w.psi[1], w.edge[1]) * weights)

    grads = jax.jit(jax.grad(loss))({"alpha": alpha, "beta": beta, "gamma": gamma})

    def ref_loss(a, b_k, g_k):
      inside, edge = dnas_weights(a, b_k, g_k)
      return float(np.sum(search_cell(s0, s1, kw, inside, edge, True, False) * weights))

    def central(f, x, eps=1e-6):
      g = np.zeros_like(x)
      for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = (f(xp) - f(xm)) / (2 * eps)
      return g

    fd_alpha = central(lambda a: ref_loss(a, beta[1], gamma[1]), alpha)
    fd_beta = central(lambda b: ref_loss(alpha, b, gamma[1]), beta[1])
    fd_gamma = central(lambda g: ref_loss(alpha, beta[1], g), gamma[1])
    for name, got, want in (
      ("alpha", grads["alpha"], fd_alpha),
      ("beta", grads["beta"][1], fd_beta),
      ("gamma", grads["gamma"][1], fd_gamma),
    ):
      got = np.asarray(got)
      assert np.abs(want).max() > 1e-3, name
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=name)
    # Layers 0 and 2 do not enter this cell.
    assert not np.asarray(grads["beta"])[[0, 2]].any()
    assert not np.asarray(grads["gamma"])[[0, 2]].any()
