"""The program formulations (`config.program`) compute the same numbers as the plain
convolution formulation: forward values and gradients with respect to the inputs, the
weights and ψ, to float32 tolerance; and a search step with one shared body for both
halves gives the same updates as the two separate halves."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dnas_jax.models import arch
from dnas_jax.models import init as init_lib
from dnas_jax.models import supernet
from dnas_jax.search import steps as search_steps
from dnas_jax.space import ops
from dnas_jax.space import search_space
from dnas_jax.training import optimizers


def _close(a, b, rtol=2e-5, atol=2e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = max(float(np.abs(np.asarray(y)).max()), 1e-3)
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol * scale)


def _assert_same_value_and_gradients(plain, alternative, x):
  """Σ(out · R) and its gradients in the parameters and the input, for two modules
  with the same parameters."""
  params = plain.init(jax.random.key(1), x)
  r = jax.random.normal(jax.random.key(2), plain.apply(params, x).shape)
  f = lambda m: jax.jit(
    jax.value_and_grad(lambda p, x: jnp.sum(m.apply(p, x) * r), argnums=(0, 1))
  )(params, x)
  (v_plain, g_plain), (v_alt, g_alt) = f(plain), f(alternative)
  np.testing.assert_allclose(float(v_alt), float(v_plain), rtol=1e-5)
  _close(g_alt, g_plain)


@pytest.mark.parametrize(
  "k,stride,padding,dilation", [(3, 1, 1, 1), (5, 2, 2, 1), (3, 2, 2, 2), (5, 1, 4, 2)]
)
def test_shifted_depthwise_equals_the_grouped_convolution(k, stride, padding, dilation):
  _assert_same_value_and_gradients(
    ops.DepthwiseConv(k, stride, padding, dilation, "conv"),
    ops.DepthwiseConv(k, stride, padding, dilation, "shifted"),
    jax.random.normal(jax.random.key(0), (2, 9, 8, 6)),
  )


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("formulation", ["einsum", "broadcast"])
def test_pointwise_formulations_equal_the_1x1_convolution(stride, formulation):
  _assert_same_value_and_gradients(
    ops.PointwiseConv(5, stride, "conv"),
    ops.PointwiseConv(5, stride, formulation),
    jax.random.normal(jax.random.key(0), (2, 7, 8, 6)),
  )


@pytest.mark.parametrize("stride", [1, 2])
def test_edge_group_of_every_operation_is_the_same_in_every_formulation(stride):
  """A node's edges (vmapped), all 7 operations, partial channels, edge weights: the
  value and the gradients in the input, the weights, ψ and the edge weights."""
  prims = search_space.PRIMITIVES
  xs = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 8))
  w = jax.random.uniform(jax.random.key(1), (3, len(prims)))
  e = jax.random.uniform(jax.random.key(2), (3,))
  make = lambda f: supernet._EdgeGroup(8, stride, prims, 4, 0.0, True, jnp.float32, f)  # pylint: disable=protected-access
  plain = make(ops.CONV)
  variables = init_lib.init_from_shapes(plain, 0, xs, w, e)
  r = jax.random.normal(jax.random.key(3), (2, 8 // stride, 8 // stride, 8))

  def run(module):
    def loss(params, xs, w, e):
      out, _ = module.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        xs,
        w,
        e,
        mutable=["batch_stats"],
      )
      return jnp.sum(out * r)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(variables["params"], xs, w, e)

  v_plain, g_plain = run(plain)
  v_alt, g_alt = run(make(ops.Formulation("shifted", "einsum")))
  np.testing.assert_allclose(float(v_alt), float(v_plain), rtol=1e-5)
  _close(g_alt, g_plain)


def _tiny(num_layers=3, prims=("max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")):
  net = supernet.SearchNetwork(4, num_layers, 8, prims, partial_k=2, skip_dropout=0.2)
  spec = arch.ArchSpec("decoupled", num_layers, len(prims))
  r = np.random.default_rng(0)
  batch = lambda: {
    "image": jnp.asarray(r.normal(size=(4, 8, 8, 3)), jnp.float32),
    "label": jnp.asarray(r.integers(0, 4, 4), jnp.int32),
  }
  tb, vb = batch(), batch()
  v = init_lib.init_from_shapes(net, 0, tb["image"], jnp.zeros((num_layers, 14, len(prims))))
  sched = optimizers.weight_lr_schedule(0.025, 0.001, 10, 5)
  wtx = optimizers.create_weight_tx(sched, 0.9, 3e-4, 5.0)
  atx = optimizers.create_arch_tx(6e-4, 0.5, 0.999, 1e-3)
  arch_params = jax.tree.map(
    lambda a: a + jnp.asarray(r.normal(size=a.shape), a.dtype), spec.init(jax.random.key(0))
  )
  state = search_steps.create_search_state(v["params"], v["batch_stats"], arch_params, wtx, atx)
  kwargs = dict(
    net=net,
    spec=spec,
    weight_tx=wtx,
    arch_tx=atx,
    lr_schedule=sched,
    arch_warmup_steps=1,
    zero_one_weight=10.0,
    second_order=False,
    weight_decay=3e-4,
    momentum=0.9,
  )
  return state, tb, vb, kwargs


def _kernel_sgd(kwargs):
  """`_tiny`'s weight optimizer (cosine 0.025 → 0.001, momentum 0.9, wd 3e-4, clip 5)
  as the CPU program's `KernelSGD`."""
  return optimizers.KernelSGD(kwargs["weight_tx"], kwargs["lr_schedule"], 0.9, 3e-4, 5.0)


def test_the_kernel_optimizer_gives_optaxs_step():
  """The weights' SGD step as one CPU kernel call (`program.optimizer="kernel"`) and
  as optax's per-leaf updates, in the shared halves (whose architecture pass keeps
  the weights as they were; the separate halves: the test below): the same new
  weights, momentum buffers and step count to float32 rounding."""
  halves = "shared"
  state, tb, vb, kwargs = _tiny()
  optax_step = jax.jit(functools.partial(search_steps.search_step, halves=halves, **kwargs))
  kernel_kwargs = dict(kwargs, weight_tx=_kernel_sgd(kwargs))
  kernel_step = jax.jit(functools.partial(search_steps.search_step, halves=halves, **kernel_kwargs))
  rng = jax.random.key(3)
  assert "dnas_jax_sgd_update" in kernel_step.lower(state, tb, vb, rng).as_text()
  assert "dnas_jax_sgd_update" not in optax_step.lower(state, tb, vb, rng).as_text()
  # Two steps, each from the same state (the second with a momentum buffer and a
  # count of 1): a network's gradients amplify float32 rounding over steps.
  s = state.replace(step=jnp.int32(1))
  for _ in range(2):
    a, _ = optax_step(s, tb, vb, rng)
    b, _ = kernel_step(s, tb, vb, rng)
    _close(b.params, a.params, rtol=1e-6, atol=1e-6)
    _close(b.weight_opt_state, a.weight_opt_state, rtol=1e-6, atol=1e-6)
    assert jax.tree.structure(b.weight_opt_state) == jax.tree.structure(a.weight_opt_state)
    s = a
  counts = [optax.tree_utils.tree_get(s.weight_opt_state, "count") for s in (a, b)]
  assert int(counts[0]) == int(counts[1]) == 2
  moved = [
    np.abs(np.asarray(x) - np.asarray(y)).max()
    for x, y in zip(jax.tree.leaves(b.params), jax.tree.leaves(state.params))
  ]
  assert max(moved) > 1e-4  # the weights did move


def test_shared_halves_step_equals_separate_halves():
  state, tb, vb, kwargs = _tiny()
  separate = jax.jit(functools.partial(search_steps.search_step, halves="separate", **kwargs))
  shared = jax.jit(functools.partial(search_steps.search_step, halves="shared", **kwargs))
  rng = jax.random.key(3)
  for step in (0, 1):  # in the warm-up (no architecture update), then with it
    s = state.replace(step=jnp.int32(step))
    a, ma = separate(s, tb, vb, rng)
    b, mb = shared(s, tb, vb, rng)
    _close(b.params, a.params)
    _close(b.batch_stats, a.batch_stats)
    _close(b.weight_opt_state, a.weight_opt_state)
    _close(b.arch_params, a.arch_params, rtol=1e-5, atol=1e-6)
    _close(b.arch_opt_state, a.arch_opt_state)
    for k, v in ma.compute().items():
      np.testing.assert_allclose(float(mb.compute()[k]), float(v), rtol=1e-5, atol=1e-6, err_msg=k)
    moved = any(
      not np.array_equal(np.asarray(x), np.asarray(y))
      for x, y in zip(jax.tree.leaves(b.arch_params), jax.tree.leaves(state.arch_params))
    )
    assert moved == (step == 1)
  # The architecture pass leaves the weights bit-identical: only the weight pass, on
  # the training batch, changes them (a step with another validation batch agrees).
  other = {"image": vb["image"][::-1], "label": vb["label"][::-1]}
  b1, _ = shared(state.replace(step=jnp.int32(1)), tb, vb, rng)
  b2, _ = shared(state.replace(step=jnp.int32(1)), tb, other, rng)
  assert not np.array_equal(
    np.asarray(jax.tree.leaves(b1.arch_params)[0]), np.asarray(jax.tree.leaves(b2.arch_params)[0])
  )


def test_rematerialised_cells_give_the_same_gradients():
  prims = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  psi = jax.random.uniform(jax.random.key(1), (8, 14, len(prims)))
  edge = jax.random.uniform(jax.random.key(2), (8, 14))
  nets = [supernet.SearchNetwork(4, 8, 8, prims, partial_k=4, remat=r) for r in (False, True)]
  v = init_lib.init_from_shapes(nets[0], 0, x, psi, edge)

  def grads(net):
    def loss(params, psi, edge):
      out, _ = net.apply(
        {"params": params, "batch_stats": v["batch_stats"]}, x, psi, edge, mutable=["batch_stats"]
      )
      return jnp.sum(out**2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(v["params"], psi, edge)

  (v0, g0), (v1, g1) = grads(nets[0]), grads(nets[1])
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
  _close(g1, g0)


def _f64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(
  "formulation",
  [("kernel", "einsum"), ("shifted", "einsum"), ("conv", "conv"), ("shifted", "broadcast")],
)
def test_edges_beside_the_channels_equal_the_vmapped_edges(stride, formulation):
  """A node's edges laid out [B, H, W, E, c] (`BatchedMixedOps`, with every depthwise
  and pointwise formulation; `kernel` stacks the conv ops into two stages) against the
  vmapped `MixedOp`s, in float64, with DARTS's 8 operations: the same parameter tree,
  value, gradients in the parameters, the inputs, ψ and the edge weights, and batch
  statistics, the skip connection's dropout masks included; and in evaluation mode the
  same output from the running statistics."""
  prims = search_space.DARTS_PRIMITIVES
  with jax.enable_x64(True):
    xs = _f64(jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 8)))
    w = _f64(jax.random.uniform(jax.random.key(1), (3, len(prims))))
    e = _f64(jax.random.uniform(jax.random.key(2), (3,)))
    r = _f64(jax.random.normal(jax.random.key(3), (2, 8 // stride, 8 // stride, 8)))

    def make(f, layout, train=True):
      return supernet._EdgeGroup(8, stride, prims, 4, 0.3, train, jnp.float64, f, layout)  # pylint: disable=protected-access

    plain = make(ops.CONV, "vmap")
    # Initialised in evaluation mode (no dropout key needed): the same variables.
    variables = _f64(init_lib.init_from_shapes(make(ops.CONV, "vmap", train=False), 0, xs, w, e))
    batched = make(ops.Formulation(*formulation), "channels")
    assert jax.tree.structure(
      _f64(
        init_lib.init_from_shapes(
          make(ops.Formulation(*formulation), "channels", train=False), 0, xs, w, e
        )
      )
    ) == jax.tree.structure(variables)

    def run(module):
      def loss(params, xs, w, e):
        out, new = module.apply(
          {"params": params, "batch_stats": variables["batch_stats"]},
          xs,
          w,
          e,
          mutable=["batch_stats"],
          rngs={"dropout": jax.random.key(7)},
        )
        return jnp.sum(out * r), new

      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
        variables["params"], xs, w, e
      )

    (v_plain, stats_plain), g_plain = run(plain)
    (v_alt, stats_alt), g_alt = run(batched)
    np.testing.assert_allclose(float(v_alt), float(v_plain), rtol=1e-12)
    _close(g_alt, g_plain, rtol=1e-10, atol=1e-10)
    _close(stats_alt, stats_plain, rtol=1e-10, atol=1e-10)
    # Evaluation: the running statistics just updated, not the batch's.
    trained = {"params": variables["params"], **stats_plain}
    want = make(ops.CONV, "vmap", train=False).apply(trained, xs, w, e)
    got = make(ops.Formulation(*formulation), "channels", train=False).apply(trained, xs, w, e)
    _close(got, want, rtol=1e-10, atol=1e-10)


def test_the_cpu_program_equals_the_plain_program_on_a_whole_network():
  """The scanned search network with the CPU's program (edges beside the channels,
  compiled kernels, matrix products) against the plain one (vmapped edges,
  convolutions), float64: logits, gradients in the weights, ψ and the edge weights,
  and the batch statistics."""
  prims = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_5x5")
  with jax.enable_x64(True):
    x = _f64(jax.random.normal(jax.random.key(0), (2, 8, 8, 3)))
    psi = _f64(jax.random.uniform(jax.random.key(1), (5, 14, len(prims))))
    edge = _f64(jax.random.uniform(jax.random.key(2), (5, 14)))

    def net(formulation, layout):
      return supernet.SearchNetwork(
        4, 5, 8, prims, partial_k=2, dtype=jnp.float64, formulation=formulation, edge_layout=layout
      )

    plain, cpu = net(ops.CONV, "vmap"), net(ops.Formulation("kernel", "einsum"), "channels")
    v = _f64(init_lib.init_from_shapes(plain, 0, x, psi, edge))

    def grads(module):
      def loss(params, psi, edge):
        out, new = module.apply(
          {"params": params, "batch_stats": v["batch_stats"]}, x, psi, edge, mutable=["batch_stats"]
        )
        return jnp.sum(out**2), (out, new)

      return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(v["params"], psi, edge)

    g_plain, (out_plain, stats_plain) = grads(plain)
    g_cpu, (out_cpu, stats_cpu) = grads(cpu)
    _close(out_cpu, out_plain, rtol=1e-10, atol=1e-10)
    _close(g_cpu, g_plain, rtol=1e-9, atol=1e-9)
    _close(stats_cpu, stats_plain, rtol=1e-10, atol=1e-10)


def test_a_search_step_with_the_cpu_program_equals_the_plain_step():
  """One whole search step (architecture and weight updates) in float32: the CPU's
  program and the plain one give the same new state to float32 rounding, skip
  dropout included (both layouts draw the same masks)."""
  state, tb, vb, kwargs = _tiny()
  net = kwargs.pop("net")
  assert net.skip_dropout > 0
  cpu_net = net.clone(formulation=ops.Formulation("kernel", "einsum"), edge_layout="channels")
  plain = jax.jit(functools.partial(search_steps.search_step, net=net, **kwargs))
  cpu_kwargs = dict(kwargs, weight_tx=_kernel_sgd(kwargs))
  cpu = jax.jit(functools.partial(search_steps.search_step, net=cpu_net, **cpu_kwargs))
  rng = jax.random.key(3)
  s = state.replace(step=jnp.int32(1))  # after the warm-up: both halves
  assert "dnas_jax_sgd_update" in cpu.lower(s, tb, vb, rng).as_text()
  a, ma = plain(s, tb, vb, rng)
  b, mb = cpu(s, tb, vb, rng)
  _close(b.params, a.params, rtol=1e-4, atol=1e-5)
  _close(b.weight_opt_state, a.weight_opt_state, rtol=1e-4, atol=1e-5)
  _close(b.batch_stats, a.batch_stats, rtol=1e-4, atol=1e-5)
  _close(b.arch_params, a.arch_params, rtol=1e-4, atol=1e-6)
  for k, v in ma.compute().items():
    np.testing.assert_allclose(float(mb.compute()[k]), float(v), rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("new_dtype", [jnp.float32, jnp.bfloat16])
def test_running_average_is_the_jnp_expression_it_replaces(new_dtype):
  """`ops.running_average` (written with lax, cheap to trace) traces to the
  operations of MOMENTUM · old + (1 − MOMENTUM) · new in jnp, constants and dtypes
  included, and gives the same numbers."""
  old = jnp.asarray(np.random.default_rng(0).normal(size=64), jnp.float32)
  new = jnp.asarray(np.random.default_rng(1).normal(size=64), new_dtype)
  m = ops.BN_MOMENTUM
  want = lambda o, n: m * o + (1 - m) * n
  assert str(jax.make_jaxpr(ops.running_average)(old, new)) == str(jax.make_jaxpr(want)(old, new))
  got = jax.jit(ops.running_average)(old, new)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.jit(want)(old, new)))
