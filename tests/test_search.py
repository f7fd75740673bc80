"""The bi-level search: update isolation, second-order gradient (the loop itself:
test_search_loop.py; derivation: test_derive.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dnas_jax.models import arch
from dnas_jax.models import init as init_lib
from dnas_jax.models import supernet
from dnas_jax.search import steps as search_steps
from dnas_jax.training import optimizers

# A pooling, the identity and a convolution: what the steps do to the state does not
# depend on which operations; dil_conv_3x3 (one depthwise-pointwise pair, where
# sep_conv_3x3 has two) is the cheapest convolution to compile.
PRIMS = ("max_pool_3x3", "skip_connect", "dil_conv_3x3")
FD_PRIMS = ("max_pool_3x3", "dil_conv_3x3")  # the cheapest set with a conv and a max-pool


def _tiny_setup(
  num_layers=3, channels=4, partial_k=1, primitives=PRIMS, batch=4, size=8, dtype=jnp.float32
):
  net = supernet.SearchNetwork(
    4, num_layers, channels, primitives, partial_k=partial_k, dtype=dtype
  )
  spec = arch.ArchSpec("decoupled", num_layers, len(primitives))
  rng = np.random.default_rng(0)

  def batch_of(seed):
    r = np.random.default_rng(seed)
    return {
      "image": jnp.asarray(r.normal(size=(batch, size, size, 3)), jnp.float32),
      "label": jnp.asarray(r.integers(0, 4, batch), jnp.int32),
    }

  v = init_lib.init_from_shapes(
    net, 0, batch_of(0)["image"], jnp.zeros((num_layers, 14, len(primitives)))
  )
  sched = optimizers.weight_lr_schedule(0.025, 0.001, 10, 5)
  wtx = optimizers.create_weight_tx(sched, 0.9, 3e-4, 5.0)
  atx = optimizers.create_arch_tx(6e-4, 0.5, 0.999, 1e-3)
  arch_params = jax.tree.map(
    lambda a: a + jnp.asarray(rng.normal(size=a.shape), a.dtype), spec.init(jax.random.key(0))
  )
  state = search_steps.create_search_state(v["params"], v["batch_stats"], arch_params, wtx, atx)
  return net, spec, wtx, atx, state, batch_of(1), batch_of(2)


def _trees_equal(a, b):
  return all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def test_arch_update_leaves_weights_and_weight_update_leaves_arch_bit_identical():
  net, spec, wtx, atx, state, tb, vb = _tiny_setup()
  rng = jax.random.key(0)
  arch_step = jax.jit(
    functools.partial(
      search_steps.arch_update,
      net=net,
      spec=spec,
      arch_tx=atx,
      lr=0.025,
      zero_one_weight=10.0,
      second_order=False,
      weight_decay=3e-4,
    )
  )
  after_arch, _ = arch_step(state, tb, vb, rng)
  assert _trees_equal(after_arch.params, state.params)
  assert _trees_equal(after_arch.batch_stats, state.batch_stats)
  assert _trees_equal(after_arch.weight_opt_state, state.weight_opt_state)
  assert not _trees_equal(after_arch.arch_params, state.arch_params)

  weight_step = jax.jit(
    functools.partial(search_steps.weight_update, net=net, spec=spec, weight_tx=wtx)
  )
  after_weights, _ = weight_step(state, tb, rng)
  assert _trees_equal(after_weights.arch_params, state.arch_params)
  assert _trees_equal(after_weights.arch_opt_state, state.arch_opt_state)
  assert not _trees_equal(after_weights.params, state.params)
  assert not _trees_equal(after_weights.batch_stats, state.batch_stats)


def test_momentum_buffer_is_the_sgd_buffer_of_the_weight_step():
  """PyTorch's SGD: buf = μ·buf + (g + wd·w); w -= lr·buf. After one weight step from
  a zero buffer, the buffer that the second-order step reads is (w_old - w_new) / lr."""
  net, spec, wtx, atx, state, tb, vb = _tiny_setup()
  assert all(
    not np.asarray(b).any()
    for b in jax.tree.leaves(search_steps.momentum_buffer(state.weight_opt_state))
  )
  after, _ = jax.jit(
    functools.partial(search_steps.weight_update, net=net, spec=spec, weight_tx=wtx)
  )(state, tb, jax.random.key(0))
  lr = 0.025  # the schedule's value at step 0
  buf = search_steps.momentum_buffer(after.weight_opt_state)
  for b, w0, w1 in zip(
    jax.tree.leaves(buf), jax.tree.leaves(state.params), jax.tree.leaves(after.params)
  ):
    np.testing.assert_allclose(
      np.asarray(b), (np.asarray(w0) - np.asarray(w1)) / lr, rtol=2e-3, atol=1e-5
    )
  assert any(np.asarray(b).any() for b in jax.tree.leaves(buf))


def test_second_order_is_darts_unrolled_step_with_momentum():
  """DARTS's architect.py: w' = w − ξ(μ·buf + ∇_w L_train(w, α) + wd·w), then the
  validation loss at w'. The value against that formula computed here; the exact
  gradient in α against central differences (float64); at ξ = 0 the first-order
  gradient; the buffer is the one in the weight optimiser's state."""
  with jax.enable_x64(True):
    net, spec, wtx, atx, state, tb, vb = _tiny_setup(primitives=FD_PRIMS, dtype=jnp.float64)
    to64 = lambda t: jax.tree.map(
      lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, t
    )
    state, tb, vb = to64(state), to64(tb), to64(vb)
    r = np.random.default_rng(11)
    buffer = jax.tree.map(lambda a: jnp.asarray(r.normal(size=a.shape)), state.params)
    state = state.replace(
      weight_opt_state=optax.tree_utils.tree_set(state.weight_opt_state, trace=buffer)
    )
    rng = jax.random.key(0)
    mu, wd, xi = 0.9, 3e-4, 0.5  # a large virtual step, so that the unrolled term matters
    common = dict(
      params=state.params,
      batch_stats=state.batch_stats,
      val_batch=vb,
      rng=rng,
      net=net,
      spec=spec,
      zero_one_weight=10.0,
    )

    def second_order(arch_params, xi, mu):
      return search_steps.unrolled_arch_objective(
        arch_params, train_batch=tb, xi=xi, weight_decay=wd, momentum=mu, buffer=buffer, **common
      )[0]

    @jax.jit
    def darts_formula(arch_params):
      rng_train, rng_val = jax.random.split(rng)
      arch_weights = spec.arch_weights(arch_params)
      g = jax.grad(
        lambda p: search_steps.weight_loss_fn(
          net, p, state.batch_stats, arch_weights, tb, rng_train
        )[0]
      )(state.params)
      w_virtual = jax.tree.map(
        lambda w, gw, m: w - xi * (mu * m + gw + wd * w), state.params, g, buffer
      )
      return search_steps.arch_objective(
        arch_params, **{**common, "params": w_virtual, "rng": rng_val}
      )[0]

    value_and_grad = jax.jit(jax.value_and_grad(second_order))
    value, grads = value_and_grad(state.arch_params, xi, mu)
    want = darts_formula(state.arch_params)
    np.testing.assert_allclose(float(value), float(want), rtol=1e-12)
    # Leaving the momentum term out (the old step) gives another value.
    assert abs(float(value_and_grad(state.arch_params, xi, 0.0)[0]) - float(want)) > 1e-6
    # The step reads that buffer from the weight optimiser's state.
    assert search_steps.momentum_buffer(state.weight_opt_state) is buffer

    # ReLU and max-pool gradients are piecewise constant, so w'(α) jumps where an
    # activation changes sign: the objective is piecewise smooth, and the central
    # difference uses a step small enough not to straddle a jump.
    eps = 1e-7
    for _ in range(3):
      d = jax.tree.map(lambda a: jnp.asarray(r.normal(size=a.shape)), state.arch_params)
      plus = jax.tree.map(lambda a, b: a + eps * b, state.arch_params, d)
      minus = jax.tree.map(lambda a, b: a - eps * b, state.arch_params, d)
      fd = (float(value_and_grad(plus, xi, mu)[0]) - float(value_and_grad(minus, xi, mu)[0])) / (
        2 * eps
      )
      ad = sum(float(jnp.vdot(g, b)) for g, b in zip(jax.tree.leaves(grads), jax.tree.leaves(d)))
      np.testing.assert_allclose(ad, fd, rtol=1e-5, atol=1e-8)

    # With a zero virtual step the second-order gradient is the first-order one.
    g1 = jax.jit(jax.grad(lambda a: search_steps.arch_objective(a, **common)[0]))(state.arch_params)
    _, g0 = value_and_grad(state.arch_params, 0.0, mu)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-14)
    # And with a non-zero step it differs (the unrolled term is real).
    assert not np.allclose(np.asarray(grads["beta"]), np.asarray(g1["beta"]), rtol=1e-3)


def test_architecture_loss_adds_the_zero_one_term_with_its_sign_and_weight():
  """arch loss = CE + w · (−mean((σ − 0.5)²)) over the sigmoid factors σ(α), σ(γ) (β
  goes through a softmax, so it is not in the term): computed here in NumPy."""
  net, spec, wtx, atx, state, tb, vb = _tiny_setup()
  common = dict(
    params=state.params,
    batch_stats=state.batch_stats,
    val_batch=vb,
    rng=jax.random.key(0),
    net=net,
    spec=spec,
  )
  objective = jax.jit(lambda a, w: search_steps.arch_objective(a, zero_one_weight=w, **common))
  loss0, (ce0, _, _) = objective(state.arch_params, 0.0)
  loss10, (ce10, _, z) = objective(state.arch_params, 10.0)
  sig = lambda x: 1 / (1 + np.exp(-np.asarray(x, np.float64)))
  s = np.concatenate(
    [sig(state.arch_params["alpha"]).ravel(), sig(state.arch_params["gamma"]).ravel()]
  )
  zero_one = -np.mean((s - 0.5) ** 2)
  assert zero_one < 0
  np.testing.assert_allclose(float(z), zero_one, rtol=1e-5)
  np.testing.assert_allclose(float(ce0), float(loss0), rtol=1e-6)
  np.testing.assert_allclose(float(loss10) - float(ce10), 10 * zero_one, rtol=1e-4)
  # Its gradient pushes every sigmoid factor away from 1/2 (toward 0 or 1).
  grad_z = jax.grad(lambda a: spec.zero_one_loss(a))(state.arch_params)
  for name in ("alpha", "gamma"):
    x, g = np.asarray(state.arch_params[name]), np.asarray(grad_z[name])
    assert np.all(np.sign(-g) == np.sign(x)), name  # descent increases |x|
  assert not np.asarray(grad_z["beta"]).any()


def test_warmup_gates_the_architecture_update_and_each_half_uses_its_batch():
  """Before `arch_warmup_steps` a step leaves ψ's parameters bit-identical; from it on
  they move. The weight update reads only the training batch and the (first-order)
  architecture update only the validation batch."""
  net, spec, wtx, atx, state, tb, vb = _tiny_setup()
  other = {"image": tb["image"][::-1] * 0.5, "label": tb["label"][::-1]}
  step = jax.jit(
    functools.partial(
      search_steps.search_step,
      net=net,
      spec=spec,
      weight_tx=wtx,
      arch_tx=atx,
      lr_schedule=optimizers.weight_lr_schedule(0.025, 0.001, 10, 5),
      arch_warmup_steps=3,
      zero_one_weight=10.0,
      second_order=False,
      weight_decay=3e-4,
      momentum=0.9,
    )
  )
  rng = jax.random.key(0)
  before = state.replace(step=jnp.int32(2))  # the last warm-up step
  after = state.replace(step=jnp.int32(3))  # the first step with an update

  s, m = step(before, tb, vb, rng)
  assert _trees_equal(s.arch_params, state.arch_params)
  assert _trees_equal(s.arch_opt_state, state.arch_opt_state)
  assert float(m.compute()["arch_updates"]) == 0.0
  s_other_val, _ = step(before, tb, other, rng)
  assert _trees_equal(s_other_val.params, s.params)  # val batch unused by the weights
  s_other_train, _ = step(before, other, vb, rng)
  assert not _trees_equal(s_other_train.params, s.params)

  s, m = step(after, tb, vb, rng)
  assert not _trees_equal(s.arch_params, state.arch_params)
  assert float(m.compute()["arch_updates"]) == 1.0
  s_other_train, _ = step(after, other, vb, rng)
  assert _trees_equal(s_other_train.arch_params, s.arch_params)  # train batch unused
  s_other_val, _ = step(after, tb, other, rng)
  assert not _trees_equal(s_other_val.arch_params, s.arch_params)


def test_weight_learning_rate_is_darts_cosine_stepped_per_epoch():
  """PyTorch's CosineAnnealingLR(T_max=50, eta_min) stepped once per epoch, computed by
  its recursive definition, against the schedule at each step of 4-step epochs."""
  base, low, epochs, per_epoch = 0.025, 0.001, 50, 4
  schedule = optimizers.weight_lr_schedule(base, low, epochs, per_epoch)
  lr = [base]
  for t in range(1, epochs):  # torch/optim/lr_scheduler.py, recursive form
    prev = lr[-1]
    lr.append(
      low + (prev - low) * (1 + np.cos(np.pi * t / epochs)) / (1 + np.cos(np.pi * (t - 1) / epochs))
    )
  got = np.asarray([schedule(s) for s in range(epochs * per_epoch)])
  np.testing.assert_allclose(got, np.repeat(lr, per_epoch), rtol=1e-5)
  assert got[0] == np.float32(base) and abs(got[25 * per_epoch] - 0.013) < 1e-6
