"""The bi-level search: update isolation, second-order gradient, derivation (the loop
itself: test_search_loop.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dnas_jax import arch
from dnas_jax import genotype as genotype_lib
from dnas_jax import init as init_lib
from dnas_jax import search
from dnas_jax import search_loop
from dnas_jax import search_space

PRIMS = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
FD_PRIMS = ("max_pool_3x3", "sep_conv_3x3")  # the cheapest set with a conv and a max-pool


def _tiny_setup(num_layers=3, channels=4, partial_k=1, primitives=PRIMS, batch=4, size=8,
                dtype=jnp.float32):
  net = search_loop.supernet.SearchNetwork(4, num_layers, channels, primitives,
                                           partial_k=partial_k, dtype=dtype)
  spec = arch.ArchSpec("decoupled", num_layers, len(primitives))
  rng = np.random.default_rng(0)
  def batch_of(seed):
    r = np.random.default_rng(seed)
    return {"image": jnp.asarray(r.normal(size=(batch, size, size, 3)), jnp.float32),
            "label": jnp.asarray(r.integers(0, 4, batch), jnp.int32)}
  v = init_lib.init_from_shapes(net, 0, batch_of(0)["image"],
                                jnp.zeros((num_layers, 14, len(primitives))))
  sched = search.weight_lr_schedule(0.025, 0.001, 10, 5)
  wtx = search.create_weight_tx(sched, 0.9, 3e-4, 5.0)
  atx = search.create_arch_tx(6e-4, 0.5, 0.999, 1e-3)
  arch_params = jax.tree.map(lambda a: a + jnp.asarray(rng.normal(size=a.shape), a.dtype),
                             spec.init(jax.random.key(0)))
  state = search.create_search_state(v["params"], v["batch_stats"], arch_params, wtx, atx)
  return net, spec, wtx, atx, state, batch_of(1), batch_of(2)


def _trees_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_arch_update_leaves_weights_and_weight_update_leaves_arch_bit_identical():
  net, spec, wtx, atx, state, tb, vb = _tiny_setup()
  rng = jax.random.key(0)
  arch_step = jax.jit(functools.partial(
      search.arch_update, net=net, spec=spec, arch_tx=atx, lr=0.025, zero_one_weight=10.0,
      second_order=False, weight_decay=3e-4))
  after_arch, _ = arch_step(state, tb, vb, rng)
  assert _trees_equal(after_arch.params, state.params)
  assert _trees_equal(after_arch.batch_stats, state.batch_stats)
  assert _trees_equal(after_arch.weight_opt_state, state.weight_opt_state)
  assert not _trees_equal(after_arch.arch_params, state.arch_params)

  weight_step = jax.jit(functools.partial(search.weight_update, net=net, spec=spec,
                                          weight_tx=wtx))
  after_weights, _ = weight_step(state, tb, rng)
  assert _trees_equal(after_weights.arch_params, state.arch_params)
  assert _trees_equal(after_weights.arch_opt_state, state.arch_opt_state)
  assert not _trees_equal(after_weights.params, state.params)
  assert not _trees_equal(after_weights.batch_stats, state.batch_stats)


def test_second_order_gradient_matches_finite_differences_and_first_order_at_zero_lr():
  with jax.enable_x64(True):
    net, spec, wtx, atx, state, tb, vb = _tiny_setup(primitives=FD_PRIMS, dtype=jnp.float64)
    to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                                  if jnp.issubdtype(a.dtype, jnp.floating) else a, t)
    state, tb, vb = to64(state), to64(tb), to64(vb)
    rng = jax.random.key(0)
    common = dict(params=state.params, batch_stats=state.batch_stats, val_batch=vb,
                  rng=rng, net=net, spec=spec, zero_one_weight=10.0)

    def second_order(arch_params, xi):
      return search.unrolled_arch_objective(arch_params, train_batch=tb, xi=xi,
                                            weight_decay=3e-4, **common)[0]

    def first_order(arch_params):
      return search.arch_objective(arch_params, **common)[0]

    value_and_grad = jax.jit(jax.value_and_grad(second_order))
    xi = 0.5  # a large virtual step, so that the second-order term matters
    _, grads = value_and_grad(state.arch_params, xi)
    # ReLU and max-pool gradients are piecewise constant, so w'(α) jumps where an
    # activation changes sign: the objective is piecewise smooth, and the central
    # difference uses a step small enough not to straddle a jump.
    r = np.random.default_rng(7)
    eps = 1e-7
    for _ in range(3):
      d = jax.tree.map(lambda a: jnp.asarray(r.normal(size=a.shape)), state.arch_params)
      plus = jax.tree.map(lambda a, b: a + eps * b, state.arch_params, d)
      minus = jax.tree.map(lambda a, b: a - eps * b, state.arch_params, d)
      fd = (float(value_and_grad(plus, xi)[0]) - float(value_and_grad(minus, xi)[0])) / (
          2 * eps)
      ad = sum(float(jnp.vdot(g, b)) for g, b in zip(jax.tree.leaves(grads),
                                                      jax.tree.leaves(d)))
      np.testing.assert_allclose(ad, fd, rtol=1e-5, atol=1e-8)

    # With a zero virtual step the second-order gradient is the first-order one.
    g1 = jax.jit(jax.grad(first_order))(state.arch_params)
    _, g0 = value_and_grad(state.arch_params, 0.0)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-14)
    # And with a non-zero step it differs (the unrolled term is real).
    assert not np.allclose(np.asarray(grads["beta"]), np.asarray(g1["beta"]), rtol=1e-3)


def test_derivation_on_hand_written_psi():
  prims = search_space.PRIMITIVES
  op = {p: j for j, p in enumerate(prims)}
  psi = np.full((3, 14, len(prims)), 0.01)
  # Layer 0, node 0 (edges 0, 1): sep_conv_3x3 on s0 and skip on s1.
  psi[0, 0, op["sep_conv_3x3"]] = 0.9
  psi[0, 1, op["skip_connect"]] = 0.5
  # Node 1 (edges 2, 3, 4 from s0, s1, n0): strongest on edges 4 and 2.
  psi[0, 2, op["dil_conv_5x5"]] = 0.6
  psi[0, 3, op["max_pool_3x3"]] = 0.2
  psi[0, 3, op["avg_pool_3x3"]] = 0.3
  psi[0, 4, op["sep_conv_5x5"]] = 0.8
  # Node 3 (edges 9..13: s0, s1, n0, n1, n2): edges 12 and 13.
  psi[0, 12, op["avg_pool_3x3"]] = 0.7
  psi[0, 13, op["dil_conv_3x3"]] = 0.75
  geno = genotype_lib.derive_genotype(psi, prims)
  cell = geno.cells[0]
  assert cell.nodes[0] == (("sep_conv_3x3", 0), ("skip_connect", 1))
  assert cell.nodes[1] == (("dil_conv_5x5", 0), ("sep_conv_5x5", 2))
  assert cell.nodes[3] == (("avg_pool_3x3", 3), ("dil_conv_3x3", 4))
  assert [c.reduction for c in geno.cells] == [False, True, True]
  # `none` is never chosen, even with the largest weight.
  dprims = search_space.DARTS_PRIMITIVES
  psi_d = np.full((3, 14, len(dprims)), 0.01)
  psi_d[:, :, 0] = 0.99
  psi_d[1, 5, dprims.index("sep_conv_3x3")] = 0.5
  g = genotype_lib.derive_genotype(psi_d, dprims)
  assert all(o != "none" for c in g.cells for edges in c.nodes for o, _ in edges)
  assert ("sep_conv_3x3", 0) in g.cells[1].nodes[2]
  # JSON round trip.
  assert genotype_lib.GlobalGenotype.from_json(geno.to_json()) == geno
