"""The partial-channel supernet: mixed edges, shapes, gradients, parameter counts."""

import functools

import flax
import flax.linen as nn
from flax import traverse_util as flax_traverse
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas_jax.models import arch
from dnas_jax.models import init as init_lib
from dnas_jax.models import supernet
from dnas_jax.space import ops
from dnas_jax.space import search_space

PRIMS = search_space.PRIMITIVES


def _mixed_variables(mixed, x, w):
  return init_lib.init_from_shapes(mixed, 0, x, w)


@pytest.mark.parametrize("op_index", range(len(PRIMS)))
def test_one_hot_mixed_edge_equals_the_operation_alone(op_index):
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
  w = jnp.zeros(len(PRIMS)).at[op_index].set(1.0)
  mixed = supernet.MixedOp(4, 1, PRIMS, partial_k=1)
  variables = _mixed_variables(mixed, x, w)
  got, _ = mixed.apply(variables, x, w, mutable=["batch_stats"])
  # The op alone, with the sub-tree of variables that belongs to it.
  op = ops.create_op(PRIMS[op_index], 4, 1, affine=False, train=True)
  names = [n for n in variables["params"]] + [n for n in variables.get("batch_stats", {})]
  alone_vars = {}
  expected_name = {
    "max_pool_3x3": "Pool_0",
    "avg_pool_3x3": "Pool_1",
    "skip_connect": None,
    "sep_conv_3x3": "SepConv_0",
    "sep_conv_5x5": "SepConv_1",
    "dil_conv_3x3": "DilConv_0",
    "dil_conv_5x5": "DilConv_1",
  }[PRIMS[op_index]]
  if expected_name is not None:
    assert expected_name in names
    for col in ("params", "batch_stats"):
      if expected_name in variables.get(col, {}):
        alone_vars[col] = variables[col][expected_name]
  want = op.apply(alone_vars, x, mutable=["batch_stats"])[0] if alone_vars else x
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stride", [1, 2])
def test_partial_channels_shape_and_bypass(stride):
  c, k = 16, 4
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, c))
  w = jax.random.uniform(jax.random.key(3), (len(PRIMS),))
  mixed = supernet.MixedOp(c // k, stride, PRIMS, partial_k=k)
  variables = _mixed_variables(mixed, x, w)
  edge = jnp.float32(0.3)  # the edge weight multiplies the bypassed channels
  y, _ = mixed.apply(variables, x, w, edge, mutable=["batch_stats"])
  assert y.shape == (2, 8 // stride, 8 // stride, c)
  # Input channel m >= c/k bypasses the ops; after the shuffle of the concatenation
  # [ops (c/k channels), bypass] it sits at (m mod c/k)·k + m div c/k.
  x_np, y_np = np.asarray(x), np.asarray(y)
  group = c // k
  for m in range(group, c):
    pos = (m % group) * k + m // group
    if stride == 1:
      np.testing.assert_allclose(y_np[..., pos], 0.3 * x_np[..., m], rtol=1e-6)
    else:  # reduction edge: 2×2 max pool of the bypassed channel
      pooled = x_np[..., m].reshape(2, 4, 2, 4, 2).max(axis=(2, 4))
      np.testing.assert_allclose(y_np[..., pos], 0.3 * pooled, rtol=1e-6)
  # The other channels are computed from the first c/k input channels only, and the
  # edge weight does not touch them (ψ already holds it).
  ops_positions = [(m % group) * k + m // group for m in range(group)]
  x2 = x.at[..., group:].set(0.0)
  y2, _ = mixed.apply(variables, x2, w, jnp.float32(1.0), mutable=["batch_stats"])
  np.testing.assert_allclose(
    np.asarray(y2)[..., ops_positions], y_np[..., ops_positions], rtol=1e-5, atol=1e-6
  )
  # Without an edge weight the bypass passes unweighted.
  y1, _ = mixed.apply(variables, x, w, mutable=["batch_stats"])
  pos = (group % group) * k + group // group
  assert not np.allclose(np.asarray(y1)[..., pos], y_np[..., pos])


class _CellByCell(nn.Module):
  """DARTS's search network written cell by cell (no scan), with SearchCell for every
  layer: the reference the scanned network must equal."""

  num_layers: int
  channels: int
  primitives: tuple
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, psi, edge):
    x = ops.conv(3 * self.channels, 3, 1, 1, dtype=self.dtype, name="stem_conv")(images)
    s0 = s1 = ops.BatchNorm(True, True, self.dtype, name="stem_bn")(x)
    red = search_space.is_reduction(self.num_layers)
    c = self.channels
    for k in range(self.num_layers):
      c = c * 2 if red[k] else c
      cell = supernet.SearchCell(
        c, red[k], k > 0 and red[k - 1], self.primitives, 4, dtype=self.dtype, name=f"cell{k}"
      )
      s0, s1 = s1, cell(s0, s1, psi[k], edge[k])
    return nn.Dense(10, dtype=self.dtype, name="classifier")(jnp.mean(s1, axis=(1, 2)))


def _to_cell_by_cell(params, num_layers):
  """The scanned network's parameters rearranged into _CellByCell's tree."""
  out = {k: params[k] for k in ("stem_conv", "stem_bn", "classifier")}
  for stage, (reduction, a, b) in enumerate(supernet.stage_plan(num_layers)):
    if reduction is not None:
      out[f"cell{reduction}"] = params[f"cell{reduction}"]
    if b <= a:
      continue
    body = params[f"cells{a}_{b}"]
    pre0, pre1 = params[f"stage{stage}_pre0"], params[f"stage{stage}_pre1"]
    # Which layers keep which kind of kernel (see supernet._Kernels): the stem's width
    # for layers 0 and 1 (s0) and layer 0 (s1) of stage 0, FactorizedReduce's two
    # kernels for layer a's s0 in later stages, full ones otherwise.
    narrow0 = [k for k in (a, a + 1) if k < b] if stage == 0 else []
    narrow1 = [a] if stage == 0 else []
    reduce0 = [a] if stage > 0 else []
    regular0 = [k for k in range(a, b) if k not in narrow0 + reduce0]
    regular1 = [k for k in range(a, b) if k not in narrow1]
    for k in range(a, b):
      cell = {
        name: jax.tree.map(lambda x: x[k - a], tree)  # pylint: disable=cell-var-from-loop
        for name, tree in body.items()
        if name.startswith("node")
      }
      if k in narrow0:
        cell["pre0"] = {"Conv_0": {"kernel": pre0["stem"]["kernel"][narrow0.index(k)]}}
      elif k in reduce0:
        grids = pre0["reduce"]["kernel"]
        cell["pre0"] = {"Conv_0": {"kernel": grids[0]}, "Conv_1": {"kernel": grids[1]}}
      else:
        cell["pre0"] = {"Conv_0": {"kernel": pre0["kernel"][regular0.index(k)]}}
      if k in narrow1:
        cell["pre1"] = {"Conv_0": {"kernel": pre1["stem"]["kernel"][0]}}
      else:
        cell["pre1"] = {"Conv_0": {"kernel": pre1["kernel"][regular1.index(k)]}}
      out[f"cell{k}"] = cell
  return out


@pytest.mark.parametrize("num_layers", [4, 5, 8])
def test_scanned_network_equals_the_cell_by_cell_network(num_layers):
  """Every stage's normal cells run under one scan (the stem's preprocessing and the
  factorized reduce inside it, as padded and block-diagonal kernels); the logits equal
  those of DARTS's cell-by-cell network with the same parameters, and every layer is
  used."""
  prims = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  with jax.enable_x64(True):  # float64: equal up to rounding, not up to BN's amplification
    f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    net = supernet.SearchNetwork(10, num_layers, 8, prims, partial_k=4, dtype=jnp.float64)
    ref = _CellByCell(num_layers, 8, prims, jnp.float64)
    x = f64(jax.random.normal(jax.random.key(0), (2, 8, 8, 3)))
    psi = f64(jax.random.uniform(jax.random.key(1), (num_layers, 14, len(prims))))
    edge = f64(jax.random.uniform(jax.random.key(2), (num_layers, 14)))
    v = f64(init_lib.init_from_shapes(net, 0, x, psi, edge))
    stats_ref = f64(init_lib.init_from_shapes(ref, 0, x, psi, edge)["batch_stats"])
    params = _to_cell_by_cell(v["params"], num_layers)
    assert jax.tree.structure(params) == jax.tree.structure(
      init_lib.init_from_shapes(ref, 0, x, psi, edge)["params"]
    )
    # Each network's forward pass compiled as one program (op by op, each of its
    # hundreds of operations would compile on its own: slower on a CPU).
    apply = jax.jit(lambda v, psi: net.apply(v, x, psi, edge, mutable=["batch_stats"])[0])
    got = apply(v, psi)
    want, _ = jax.jit(functools.partial(ref.apply, mutable=["batch_stats"]))(
      {"params": params, "batch_stats": stats_ref}, x, psi, edge
    )
    assert got.shape == (2, 10) and got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-10)
    # `scan_stages=False` is that cell-by-cell network, with its parameter tree.
    flat = supernet.SearchNetwork(
      10, num_layers, 8, prims, partial_k=4, scan_stages=False, dtype=jnp.float64
    )
    got_flat, _ = jax.jit(functools.partial(flat.apply, mutable=["batch_stats"]))(
      {"params": params, "batch_stats": stats_ref}, x, psi, edge
    )
    np.testing.assert_allclose(np.asarray(got_flat), np.asarray(want), rtol=1e-10, atol=1e-10)
    # Each layer's ψ matters: changing the last layer's ψ changes the logits.
    other = apply(v, psi.at[-1].set(0.0))
    assert not np.allclose(np.asarray(other), np.asarray(got))


def test_stage_plan_scans_every_normal_cell():
  for num_layers in (3, 5, 8, 14, 20, 29):
    red = search_space.is_reduction(num_layers)
    seen = []
    for reduction, a, b in supernet.stage_plan(num_layers):
      if reduction is not None:
        seen.append(reduction)
      seen.extend(range(a, b))
      assert not any(red[k] for k in range(a, b))
    assert seen == list(range(num_layers))
  assert supernet.stage_plan(20) == [(None, 0, 6), (6, 7, 13), (13, 14, 20)]


def _pc_darts_search_param_count(
  num_layers, c=16, k=4, num_classes=10, steps=4, multiplier=4, stem_multiplier=3
):
  """Weight parameters of PC-DARTS's `model_search.Network`, counted by reading its
  code (yuhuixu1993/PC-DARTS): stem conv + affine BN; per cell two preprocessing
  1×1 convs (a factorized reduce after a reduction cell: two 1×1 convs to c/2 each),
  14 MixedOps whose ops act on c/k channels (BNs without affine, pooling and `none`
  parameter-free), and the linear classifier."""

  def mixed(ch, stride):
    sep = lambda kk: 2 * (ch * kk * kk + ch * ch)
    dil = lambda kk: ch * kk * kk + ch * ch
    skip = 2 * ch * (ch // 2) if stride == 2 else 0
    return sep(3) + sep(5) + dil(3) + dil(5) + skip

  c_curr = stem_multiplier * c
  total = 3 * 3 * 3 * c_curr + 2 * c_curr
  c_pp, c_p, c_curr = c_curr, c_curr, c
  reduction_prev = False
  for i in range(num_layers):
    reduction = i in (num_layers // 3, 2 * num_layers // 3)
    if reduction:
      c_curr *= 2
    total += 2 * c_pp * (c_curr // 2) if reduction_prev else c_pp * c_curr
    total += c_p * c_curr
    for node in range(steps):
      for j in range(2 + node):
        total += mixed(c_curr // k, 2 if reduction and j < 2 else 1)
    reduction_prev = reduction
    c_pp, c_p = c_p, multiplier * c_curr
  return total + c_p * num_classes + num_classes


@pytest.mark.parametrize("num_layers", [5, 8, 20])
@pytest.mark.parametrize("primitives", ["dnas", "darts"])
def test_weight_count_equals_pc_darts(num_layers, primitives):
  net = supernet.SearchNetwork(
    10, num_layers, 16, search_space.get_primitives(primitives), partial_k=4
  )
  shapes = jax.eval_shape(
    lambda: net.init(
      jax.random.key(0),
      jnp.zeros((1, 32, 32, 3)),
      jnp.zeros((num_layers, 14, len(search_space.get_primitives(primitives)))),
    )
  )
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
  assert count == _pc_darts_search_param_count(num_layers)


def test_gradient_reaches_alpha_beta_gamma():
  # Three operations (a pooling, the identity, a convolution): which ones does not
  # matter to where the gradient reaches, and each more is compiled for every edge.
  prims = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  spec = arch.ArchSpec("decoupled", 3, len(prims))
  net = supernet.SearchNetwork(4, 3, 8, prims, partial_k=2)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  labels = jnp.array([0, 1, 2, 3])
  variables = init_lib.init_from_shapes(net, 0, x, jnp.zeros((3, 14, len(prims))))
  params = spec.init(jax.random.key(1))

  def loss(arch_params):
    logits, _ = net.apply(variables, x, spec.psi(arch_params), mutable=["batch_stats"])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  grads = jax.jit(jax.grad(loss))(params)
  assert set(grads) == {"alpha", "beta", "gamma"}
  for name, g in grads.items():
    g = np.asarray(g)
    assert np.all(np.isfinite(g)), name
    assert np.abs(g).max() > 0, name


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  prims = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  net = supernet.SearchNetwork(4, 3, 8, prims, partial_k=2, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  psi = jnp.full((3, 14, len(prims)), 0.1)
  variables = init_lib.init_from_shapes(net, 0, x, psi)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  logits, _ = jax.jit(lambda v: net.apply(v, x, psi, mutable=["batch_stats"]))(variables)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))
  # The same network in float32 gives close logits (bf16 has 8 bits of mantissa).
  net32 = supernet.SearchNetwork(4, 3, 8, prims, partial_k=2)
  logits32, _ = jax.jit(lambda v: net32.apply(v, x, psi, mutable=["batch_stats"]))(variables)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(logits32), rtol=0.1, atol=0.1)


def test_skip_connect_dropout_only_on_identity_edges_in_training():
  """Skip dropout (rate p) zeroes each element of the identity op's output with
  probability p and scales the rest by 1/(1-p), during training only; a stride-2 skip
  (a factorized reduce) is never dropped."""
  p = 0.3
  x = jax.random.normal(jax.random.key(5), (4, 8, 8, 8)) + 5.0  # no exact zeros
  prims = ("max_pool_3x3", "skip_connect")
  w = jnp.array([0.0, 1.0])
  mixed = supernet.MixedOp(8, 1, prims, partial_k=1, skip_dropout=p)
  variables = _mixed_variables(mixed, x, w)
  y, _ = mixed.apply(variables, x, w, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
  y, x_np = np.asarray(y), np.asarray(x)
  dropped = y == 0
  np.testing.assert_allclose(y[~dropped], x_np[~dropped] / (1 - p), rtol=1e-6)
  n = y.size  # 2,048 draws: the dropped share is within 4.5 standard deviations of p
  assert abs(dropped.mean() - p) < 4.5 * np.sqrt(p * (1 - p) / n)
  other, _ = mixed.apply(
    variables, x, w, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
  )
  assert not np.array_equal(np.asarray(other) == 0, dropped)  # a new mask per key
  # Evaluation: the identity.
  out = mixed.clone(train=False).apply(variables, x, w)
  np.testing.assert_array_equal(np.asarray(out), x_np)
  # Stride 2: the skip is a factorized reduce and has no dropout.
  reduce = supernet.MixedOp(8, 2, prims, partial_k=1, skip_dropout=p)
  v2 = _mixed_variables(reduce, x, w)
  a, _ = reduce.apply(v2, x, w, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
  b, _ = reduce.apply(v2, x, w, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (np.asarray(a) != 0).mean() > 0.9


@pytest.mark.parametrize("program", ["plain", "cpu"])
def test_a_stored_kernel_of_another_shape_is_refused_as_flax_refuses_it(program):
  """The kernels are read back in `apply` without flax's re-traced initializer
  (`ops.kernel_param`); a stored kernel of the wrong shape still stops the apply with
  flax's own error naming the kernel, in every program."""
  prims = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  kwargs = (
    {}
    if program == "plain"
    else {
      "formulation": ops.Formulation("kernel", "einsum"),
      "edge_layout": "channels",
    }
  )
  net = supernet.SearchNetwork(4, 3, 8, prims, partial_k=2, **kwargs)
  x = jnp.zeros((2, 8, 8, 3))
  psi, edge = jnp.ones((3, 14, len(prims))), jnp.ones((3, 14))
  v = init_lib.init_from_shapes(net, 0, x, psi, edge)
  net.apply(v, x, psi, edge, mutable=["batch_stats"])  # as stored: runs
  flat = flax_traverse.flatten_dict(v["params"])
  kernels = [k for k in flat if k[-1] == "kernel" and flat[k].ndim >= 4]
  assert len(kernels) > 10
  for path in (kernels[0], kernels[len(kernels) // 2], kernels[-1]):
    bad = dict(flat)
    bad[path] = jnp.zeros(flat[path].shape[:-1] + (flat[path].shape[-1] + 1,))
    with pytest.raises(flax.errors.ScopeParamShapeError, match="kernel"):
      net.apply(
        {"params": flax_traverse.unflatten_dict(bad), "batch_stats": v["batch_stats"]},
        x,
        psi,
        edge,
        mutable=["batch_stats"],
      )
