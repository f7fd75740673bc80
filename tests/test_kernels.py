"""The compiled CPU kernels (dnas_jax/kernels) against XLA's own operations, in float64:
values and gradients of the depthwise convolution (every stride, padding and dilation
the search uses, odd sizes too), the pools, the grouped 1×1 convolution and the copy;
their FLOPs; and what happens where they cannot be built."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas_jax.kernels import cpu
from dnas_jax.tools import flops
from dnas_jax.models import program as program_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def float64():
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", False)


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float64)


def _value_and_grads(fn, *args):
  """fn(*args) and the gradients in every argument of Σ(fn(*args) · R)."""
  out = fn(*args)
  r = _random(out.shape, 99)
  return out, jax.grad(lambda *a: jnp.sum(fn(*a) * r), argnums=tuple(range(len(args))))(*args)


def _assert_close(got, want, tol=1e-12):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.shape == w.shape
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=tol, atol=tol)


def test_the_kernels_build_here():
  assert cpu.available(), cpu.unavailable_reason()


# (N, H, W, C, k, stride, padding, dilation): the search's 3×3/5×5 separable (padding
# k//2) and dilated (dilation 2) convolutions at strides 1 and 2, odd sizes, a
# stride 3, no padding, and a padding beyond (k − 1)·d (the input gradient's general
# path).
CASES = [
  (2, 9, 8, 6, 3, 1, 1, 1),
  (2, 8, 8, 6, 5, 1, 2, 1),
  (2, 9, 7, 5, 5, 2, 2, 1),
  (3, 8, 8, 5, 3, 2, 2, 2),
  (2, 7, 9, 4, 5, 1, 4, 2),
  (2, 8, 8, 3, 3, 1, 0, 1),
  (1, 7, 6, 2, 3, 3, 1, 1),
  (2, 6, 6, 3, 3, 1, 3, 1),
]


@pytest.mark.parametrize("n,h,w,c,k,stride,padding,dilation", CASES)
def test_depthwise_kernel_equals_the_grouped_convolution(n, h, w, c, k, stride, padding, dilation):
  x, kernel = _random((n, h, w, c), 0), _random((k, k, c), 1)
  got = _value_and_grads(lambda x, kk: cpu.depthwise(x, kk, stride, padding, dilation), x, kernel)
  want = _value_and_grads(lambda x, kk: cpu.reference(x, kk, stride, padding, dilation), x, kernel)
  _assert_close(got, want)


def test_depthwise_kernel_in_float32_to_float32_rounding():
  x = jnp.asarray(_random((2, 16, 16, 20), 0), jnp.float32)
  kernel = jnp.asarray(_random((5, 5, 20), 1), jnp.float32)
  got = cpu.depthwise(x, kernel, 1, 2, 1)
  want = cpu.reference(x, kernel, 1, 2, 1)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("n,h,w,c,stride", [(2, 8, 8, 5, 1), (2, 9, 7, 3, 2), (1, 5, 6, 2, 3)])
def test_pools_equal_flax_pools(n, h, w, c, stride, average):
  x = _random((n, h, w, c), 0)
  if average:
    ref = lambda x: nn.avg_pool(
      x, (3, 3), (stride, stride), ((1, 1), (1, 1)), count_include_pad=False
    )
  else:
    ref = lambda x: nn.max_pool(x, (3, 3), (stride, stride), ((1, 1), (1, 1)))
  _assert_close(
    _value_and_grads(lambda x: cpu.pool_3x3(x, stride, average), x), _value_and_grads(ref, x)
  )


def test_max_pool_gradient_goes_to_the_first_maximum():
  x = jnp.zeros((1, 3, 3, 1), jnp.float64)  # every window is a tie
  g = jax.grad(lambda x: jnp.sum(cpu.pool_3x3(x, 1, False)))(x)
  want = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))))(x)
  _assert_close(g, want)


# (c, o): sizes at run time, and the search's sizes the kernels fix at compile time.
@pytest.mark.parametrize("c,o", [(6, 7), (4, 4), (8, 8), (16, 16), (32, 32)])
def test_grouped_pointwise_equals_a_product_per_group(c, o):
  # 1,100 rows: more than one block of rows, and more than one partial weight sum.
  x, w = _random((11, 100, 4 * c), 0), _random((4, c, o), 1)

  def reference(x, w):
    return jnp.einsum("...gc,gco->...go", x.reshape(x.shape[:-1] + (4, c)), w).reshape(
      x.shape[:-1] + (4 * o,)
    )

  want_y, (want_dx, want_dw) = _value_and_grads(reference, x, w)
  r = _random(want_y.shape, 99)  # the cotangent `_value_and_grads` used
  _assert_close(cpu.grouped_forward(x, w), want_y)
  _assert_close(cpu.grouped_input_grad(r, w), want_dx)
  _assert_close(cpu.grouped_weight_grad(x, r, w.shape), want_dw)


def test_materialize_is_the_identity_and_so_is_its_gradient():
  x = _random((3, 4, 5), 0)
  y, (g,) = _value_and_grads(cpu.materialize, x)
  _assert_close(y, x)
  _assert_close(g, _random(x.shape, 99))


def test_random_bits_are_threefrys_and_jaxs():
  # Random123's known answer for Threefry-2x32 (20 rounds), key 0 and counter 0:
  # (0x6b200159, 0x99ba4efe); element 0 of a draw is its two words xor-ed.
  zero = jnp.zeros(2, jnp.uint32)
  assert int(cpu.random_bits(zero, (3,))[0]) == 0x6B200159 ^ 0x99BA4EFE
  for shape in [(5,), (3, 4, 7), (2, 40000)]:
    for seed in (0, 1, 2**31 + 5):
      key = jax.random.key(seed)
      got = jax.jit(lambda k: cpu.random_bits(jax.random.key_data(k), shape))(key)
      want = jax.random.bits(key, shape, jnp.uint32)
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  keys = jax.random.split(jax.random.key(3), 4)
  got = jax.jit(jax.vmap(lambda k: cpu.random_bits(jax.random.key_data(k), (6, 5))))(keys)
  want = jax.vmap(lambda k: jax.random.bits(k, (6, 5), jnp.uint32))(keys)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bernoulli_draws_jaxs_booleans():
  jax.config.update("jax_enable_x64", False)  # float32 p: the kernel's path
  for p in (0.8, np.float32(0.25), jnp.float32(0.5)):
    for key in (jax.random.key(11), jax.random.PRNGKey(11)):
      got = jax.jit(lambda k: cpu.bernoulli(k, p, (4, 9, 3)))(key)
      want = jax.random.bernoulli(key, p, (4, 9, 3))
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
      assert 0.0 < float(np.mean(got)) < 1.0
  lowered = jax.jit(lambda k: cpu.bernoulli(k, 0.8, (4,))).lower(jax.random.key(0)).as_text()
  assert "dnas_jax_random_bits" in lowered  # the kernel's path, not JAX's fallback
  # Other keys and other dtypes of p take JAX's own function: the same booleans still.
  key = jax.random.key(5)
  cases = [(jax.random.key(5, impl="rbg"), 0.5)]
  cases += [(key, jnp.asarray(0.7, t)) for t in (jnp.bfloat16, jnp.float16)]
  for k, p in cases:
    fn = lambda k, p=p: cpu.bernoulli(k, p, (64,))
    assert "dnas_jax_random_bits" not in jax.jit(fn).lower(k).as_text()
    np.testing.assert_array_equal(np.asarray(fn(k)), np.asarray(jax.random.bernoulli(k, p, (64,))))
  with jax.enable_x64(True):  # a Python number is float64 there
    fn = lambda k: cpu.bernoulli(k, 0.7, (64,))
    assert "dnas_jax_random_bits" not in jax.jit(fn).lower(key).as_text()
    np.testing.assert_array_equal(
      np.asarray(fn(key)), np.asarray(jax.random.bernoulli(key, 0.7, (64,)))
    )


class _SkipDropout(nn.Module):
  skip_dropout: object
  formulation: object
  train: bool = True

  @nn.compact
  def __call__(self, y, per_edge: bool):
    from dnas_jax.models import supernet  # pylint: disable=g-import-not-at-top

    return supernet._dropout_per_edge(self, y) if per_edge else supernet._skip_dropout(self, y)


@pytest.mark.parametrize("per_edge", [False, True])
@pytest.mark.parametrize("rate", [0.2, "array"])
def test_kernel_programs_skip_dropout_draws_the_plain_programs_masks(rate, per_edge):
  """The CPU program's skip dropout (mask bits from the kernel) against the plain
  program's (flax's `nn.Dropout`, or `jax.random.bernoulli` for a scheduled rate):
  the same outputs bit for bit, for one edge and for edges under `nn.vmap`."""
  from dnas_jax.space import ops  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_enable_x64", False)
  rate = jnp.float32(0.3) if rate == "array" else rate
  y = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 5, 5, 4)), jnp.float32)
  outs = []
  for depthwise in ("conv", "kernel"):
    module = _SkipDropout(rate, ops.Formulation(depthwise=depthwise))
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = module.init(rngs, y, per_edge)
    apply = jax.jit(lambda v, y, k: module.apply(v, y, per_edge, rngs={"dropout": k}))
    # The kernel program draws with the kernel, the plain one with JAX.
    text = apply.lower(variables, y, jax.random.key(2)).as_text()
    assert ("dnas_jax_random_bits" in text) == (depthwise == "kernel")
    outs.append(apply(variables, y, jax.random.key(2)))
  plain, kernel = (np.asarray(o) for o in outs)
  np.testing.assert_array_equal(kernel, plain)
  dropped = float(np.mean(plain == 0))
  assert 0.1 < dropped < 0.5  # some elements dropped, most kept
  if per_edge:  # each edge its own mask
    assert not np.array_equal(plain[0] == 0, plain[1] == 0)


@pytest.mark.parametrize("stride,padding,dilation,k", [(1, 1, 1, 3), (2, 2, 1, 5), (1, 4, 2, 5)])
def test_kernel_calls_count_the_flops_of_the_convolution_they_replace(stride, padding, dilation, k):
  x, kernel = _random((2, 9, 8, 4), 0), _random((k, k, 4), 1)
  r = _random(cpu.reference(x, kernel, stride, padding, dilation).shape, 2)

  def count(fn):
    loss = lambda x, kk: jnp.sum(fn(x, kk, stride, padding, dilation) * r)
    return flops.count_flops(jax.grad(loss, argnums=(0, 1)), x, kernel).total

  assert count(cpu.depthwise) == count(cpu.reference) > 0


def test_grouped_calls_count_their_multiply_adds():
  x, w = _random((10, 3 * 4), 0), _random((3, 4, 5), 1)
  assert flops.count_flops(cpu.grouped_forward, x, w).total == 2 * 10 * 3 * 4 * 5


def test_without_a_compiler_the_program_falls_back_and_says_why(tmp_path):
  """A fresh kernel folder and no compiler: the kernels are unavailable with the
  reason, "auto" takes the shifted multiply-adds with one warning, and a config
  naming 'kernel' is refused by validation with that reason."""
  script = """
import logging, sys
from dnas_jax.kernels import cpu
from dnas_jax.models import program
from dnas_jax.configs import test as test_config
from dnas_jax.training import validation
from absl import logging as absl_logging
assert not cpu.available()
print("REASON", cpu.unavailable_reason())
c = test_config.get_config()
resolved = program.resolve_program(c, "cpu")
print("AUTO", resolved["depthwise"], resolved["optimizer"])
for field in ("depthwise", "optimizer"):
  d = test_config.get_config()
  d.program[field] = "kernel"
  try:
    validation.validate_search_config(d)
  except validation.ConfigError as e:
    print("ERROR", e)
"""
  env = dict(
    os.environ,
    DNAS_JAX_KERNEL_DIR=str(tmp_path),
    CXX="/nonexistent/c++",
    PATH="/nonexistent",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=ROOT,
  )
  done = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    env=env,
    cwd=ROOT,
    timeout=300,
    check=False,
  )
  assert done.returncode == 0, done.stderr
  out = done.stdout
  assert "REASON no C++ compiler found" in out
  assert "AUTO shifted optax" in out
  assert "ERROR config.program.depthwise='kernel': the CPU kernels cannot be built" in out
  assert "ERROR config.program.optimizer='kernel': the CPU kernels cannot be built" in out
  assert "shifted multiply-adds" not in done.stdout and "using 'shifted'" in done.stderr
  assert "using 'optax'" in done.stderr
  assert os.listdir(tmp_path) == []


def test_kernels_are_built_once_into_the_kernel_folder(tmp_path):
  env = dict(os.environ, DNAS_JAX_KERNEL_DIR=str(tmp_path), JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  script = "from dnas_jax.kernels import cpu; print(cpu.available(), cpu.kernel_dir())"
  first = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, check=True
  )
  assert first.stdout.split() == ["True", str(tmp_path)]
  built = os.listdir(tmp_path)
  assert len(built) == 1 and built[0].startswith("cpu-") and built[0].endswith(".so")
  stamp = os.path.getmtime(tmp_path / built[0])
  subprocess.run(
    [sys.executable, "-c", script], env=env, timeout=300, check=True, capture_output=True
  )
  assert os.listdir(tmp_path) == built and os.path.getmtime(tmp_path / built[0]) == stamp


def test_kernel_program_is_the_cpus_choice_and_only_the_cpus():
  assert program_lib.AUTO_PROGRAM["cpu"]["depthwise"] == "kernel"
  assert program_lib.AUTO_PROGRAM["cpu"]["optimizer"] == "kernel"
  assert program_lib.kernel_problem("cpu") is None
  assert "CPU only" in program_lib.kernel_problem("gpu")
  for backend in ("gpu", "tpu"):
    assert program_lib.AUTO_PROGRAM[backend]["depthwise"] != "kernel"
    assert program_lib.AUTO_PROGRAM[backend]["optimizer"] == "optax"


def test_a_stored_program_without_the_optimizer_field_resolves_it_as_auto():
  """Runs stored before `program.optimizer` existed resume with the backend's choice
  (the field changes no parameter and no number); any other missing field is an
  error (test below)."""
  from dnas_jax.configs import cifar10  # pylint: disable=g-import-not-at-top

  config = cifar10.get_config()
  stored = program_lib.resolve_program(config, "cpu")
  del stored["optimizer"]
  assert program_lib.resolve_program(config, "cpu", stored=stored)["optimizer"] == "kernel"
  assert program_lib.resolve_program(config, "tpu", stored=stored)["optimizer"] == "optax"


def _sgd_reference(params, grads, momenta, lr, momentum, weight_decay, max_norm):
  """PyTorch's SGD step after `clip_grad_norm_`, element by element in float64."""
  norm = np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in grads))
  factor = max_norm / norm if max_norm > 0 and norm >= max_norm else 1.0
  new_w, new_m = [], []
  for w, g, m in zip(params, grads, momenta):
    w, g, m = (np.asarray(a, np.float64) for a in (w, g, m))
    d = g * factor + weight_decay * w
    buf = momentum * m + d
    new_w.append(w - lr * buf)
    new_m.append(buf)
  return new_w, new_m


@pytest.mark.parametrize("grad_scale,max_norm", [(1.0, 1000.0), (100.0, 5.0), (100.0, 0.0)])
def test_sgd_update_is_clipped_sgd_with_momentum_and_weight_decay(grad_scale, max_norm):
  """`sgd_update` against the step written out in NumPy: unclipped, clipped and
  without clipping, over arrays of several shapes (one larger than a work chunk),
  with their buffers donated so that the outputs reuse them."""
  r = np.random.default_rng(0)
  shapes = [(3, 4), (70_000,), (2, 1, 1, 5), ()]
  draw = lambda scale: [(scale * r.normal(size=s)).astype(np.float32) for s in shapes]
  params, grads, momenta = draw(1.0), draw(grad_scale), draw(0.1)
  expect_w, expect_m = _sgd_reference(params, grads, momenta, 0.05, 0.9, 3e-4, max_norm)
  norm = np.sqrt(sum(np.sum(np.float64(g) ** 2) for g in grads))
  assert (max_norm > 0 and norm >= max_norm) == (grad_scale == 100.0 and max_norm > 0)
  step = jax.jit(
    lambda w, g, m, lr: cpu.sgd_update(w, g, m, lr, 0.9, 3e-4, max_norm), donate_argnums=(0, 2)
  )
  new_w, new_m = step(
    [jnp.asarray(a) for a in params], grads, [jnp.asarray(a) for a in momenta], jnp.float32(0.05)
  )
  for got, want in zip(new_w + new_m, expect_w + expect_m):
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=2e-6 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,features", [(3000, 20), (7, 3), (1, 5)])
def test_batch_norm_kernels_equal_numpy_and_autodiff(rows, features, dtype):
  """Forward: mean, biased variance, 1/sqrt(var + eps) and the normalised rows, against
  NumPy in float64; backward: against JAX's gradient of the same formula written in
  jnp. One row gives variance 0 (y = 0); a column offset of 100 tests the variance's
  cancellation (E[p²] − E[p]², as `nn.BatchNorm` computes it)."""
  r = np.random.default_rng(1)
  offset = 100.0 * (np.arange(features) == 0) * (rows > 1)
  p = (r.normal(size=(rows, features)) * r.uniform(0.5, 3, features) + offset).astype(dtype)
  g = r.normal(size=(rows, features)).astype(dtype)
  eps = 1e-5
  with jax.enable_x64(dtype == np.float64):
    y, mean, var, rstd = jax.jit(lambda p: cpu.batch_norm_forward(p, eps))(p)
    p64 = p.astype(np.float64)
    want_var = np.maximum(np.mean(p64**2, axis=0) - p64.mean(axis=0) ** 2, 0.0)
    want_y = (p64 - p64.mean(axis=0)) / np.sqrt(want_var + eps)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(mean), p64.mean(axis=0), **tol)
    np.testing.assert_allclose(np.asarray(var), want_var, rtol=tol["rtol"], atol=tol["atol"] * 100)
    np.testing.assert_allclose(np.asarray(rstd), 1 / np.sqrt(want_var + eps), rtol=tol["rtol"] * 10)
    np.testing.assert_allclose(np.asarray(y), want_y, rtol=tol["rtol"], atol=tol["atol"] * 10)

    def plain(p):
      m = jnp.mean(p, axis=0)
      v = jnp.maximum(jnp.mean(p * p, axis=0) - m * m, 0.0)
      return (p - m) * jax.lax.rsqrt(v + eps)

    want_dp = jax.vjp(plain, jnp.asarray(p))[1](jnp.asarray(g))[0]
    dp = jax.jit(cpu.batch_norm_backward)(jnp.asarray(g), y, rstd)
    scale = float(np.abs(np.asarray(want_dp)).max()) or 1.0
    np.testing.assert_allclose(
      np.asarray(dp), np.asarray(want_dp), rtol=tol["rtol"] * 50, atol=tol["atol"] * 50 * scale
    )
    assert dp.dtype == dtype and y.dtype == dtype


def test_sgd_update_refuses_mixed_arrays():
  w = jnp.zeros((3,), jnp.float32)
  with pytest.raises(TypeError, match="float32 arrays of one shape"):
    cpu.sgd_update([w], [jnp.zeros((4,), jnp.float32)], [w], 0.1, 0.9, 0.0, 0.0)
  with pytest.raises(TypeError, match="float32 arrays of one shape"):
    cpu.sgd_update([w], [w.astype(jnp.bfloat16)], [w], 0.1, 0.9, 0.0, 0.0)
  with pytest.raises(ValueError, match="1 parameter arrays, 2 gradients"):
    cpu.sgd_update([w], [w, w], [w], 0.1, 0.9, 0.0, 0.0)


@pytest.mark.parametrize(
  "num_layers,cpu_scan", [(3, "none"), (5, "none"), (6, "stages"), (8, "stages"), (20, "stages")]
)
def test_the_cpu_scans_only_stages_of_two_cells_or_more(num_layers, cpu_scan):
  """Normal cells per stage at L = 5: 1, 1, 1 (reductions at 1 and 3); at L = 6: 2, 1,
  1. Other backends, an explicit value and a stored one are left as they are."""
  from dnas_jax.configs import cifar10  # pylint: disable=g-import-not-at-top

  config = cifar10.get_config()
  config.model.num_layers = num_layers
  assert program_lib.resolve_program(config, "cpu")["scan"] == cpu_scan
  assert program_lib.resolve_program(config, "tpu")["scan"] == "stages"
  stored = program_lib.resolve_program(config, "tpu")  # what a run stores: every field
  assert program_lib.resolve_program(config, "cpu", stored=stored) == stored
  with pytest.raises(KeyError):  # a partial program is no program a run stored
    program_lib.resolve_program(config, "cpu", stored={"scan": "stages"})
  config.program.scan = "stages"
  assert program_lib.resolve_program(config, "cpu")["scan"] == "stages"


def test_batch_norm_gradient_under_vmap_is_per_mapped_slice():
  """`batch_norm` mapped with `vmap` normalises each mapped slice on its own (the
  calls run one slice at a time), and its gradient is JAX's gradient of the formula."""
  x = jax.random.normal(jax.random.key(0), (3, 50, 6)) * 2 + 1
  r = jax.random.normal(jax.random.key(1), x.shape)

  def plain(p):
    m = jnp.mean(p, axis=0)
    v = jnp.maximum(jnp.mean(p * p, axis=0) - m * m, 0.0)
    return (p - m) * jax.lax.rsqrt(v + 1e-5)

  loss = lambda f: lambda x: jnp.sum(jax.vmap(f)(x) * r)
  got_v, got_g = jax.value_and_grad(loss(lambda p: cpu.batch_norm(p, 1e-5)[0]))(x)
  want_v, want_g = jax.value_and_grad(loss(plain))(x)
  np.testing.assert_allclose(float(got_v), float(want_v), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), rtol=1e-4, atol=1e-5)
