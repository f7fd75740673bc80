"""The operations registry (`dnas_jax/space/ops.py`): built-in and user operations by
name, the contract checked before compiling, user operations modules from the command
line, DARTS's `sep_conv_7x7` and `conv_7x1_1x7` in the search (CPU and plain programs
equal) and in retraining, and docs/extending.md's example run as written."""

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas_jax.configs import test as test_config
from dnas_jax.models import init as init_lib
from dnas_jax.models import network
from dnas_jax.models import supernet
from dnas_jax.search import figures
from dnas_jax.space import batched_ops
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import ops
from dnas_jax.space import search_space
from dnas_jax.training import validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTENDING = os.path.join(ROOT, "docs", "extending.md")
DNAS = (
  "max_pool_3x3",
  "avg_pool_3x3",
  "skip_connect",
  "sep_conv_3x3",
  "sep_conv_5x5",
  "dil_conv_3x3",
  "dil_conv_5x5",
)
# quark0/darts cnn/operations.py's OPS.
DARTS_OPS = {
  "none",
  "avg_pool_3x3",
  "max_pool_3x3",
  "skip_connect",
  "sep_conv_3x3",
  "sep_conv_5x5",
  "sep_conv_7x7",
  "dil_conv_3x3",
  "dil_conv_5x5",
  "conv_7x1_1x7",
}


@pytest.fixture
def registry():
  """The registry, restored after the test: what a test registers or imports is
  forgotten (the module's dictionaries are the registry; private state included)."""
  saved = [
    (d, dict(d))
    for d in (
      ops.OPS,
      ops.PRIMITIVE_SETS,
      ops._USER_FILES,  # pylint: disable=protected-access
      ops._USER_MODULES,
    )
  ]  # pylint: disable=protected-access
  yield ops
  for d, before in saved:
    d.clear()
    d.update(before)


def _env():
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")


# ---------------------------------------------------------------------------------
# The registry.


def test_the_built_in_lists_are_unchanged_and_every_darts_operation_is_there():
  assert search_space.PRIMITIVES == DNAS
  assert search_space.DARTS_PRIMITIVES == ("none",) + DNAS
  assert search_space.get_primitives("dnas") == DNAS
  assert ops.get_primitives("darts") == ("none",) + DNAS
  assert {"dnas", "darts"} <= set(search_space.PRIMITIVE_SETS)
  assert DARTS_OPS <= set(ops.registered_ops())
  assert all(ops.is_builtin(p) for p in DARTS_OPS)
  # The issue: a registered operation outside DARTS's list is accepted by name.
  assert validation.primitives_of("sep_conv_7x7,skip_connect") == ("sep_conv_7x7", "skip_connect")
  assert validation.primitives_of("conv_7x1_1x7") == ("conv_7x1_1x7",)
  with pytest.raises(validation.ConfigError, match=r"Unknown operations \['foo'\]"):
    validation.primitives_of("skip_connect,foo")
  with pytest.raises(validation.ConfigError, match="listed more than once"):
    validation.primitives_of("skip_connect,skip_connect")


def _pool(c, stride, affine, train, dtype, formulation):
  del c, affine, train, dtype, formulation
  return ops.Pool("max", stride)


def test_registering_a_name_again_needs_replace(registry):
  with pytest.raises(ops.OperationError, match="already registered; pass replace=True"):
    registry.register_op("skip_connect", _pool)
  assert registry.is_builtin("skip_connect")
  registry.register_op("skip_connect", _pool, replace=True)
  assert not registry.is_builtin("skip_connect")
  assert not batched_ops.has_batched("skip_connect")  # a replaced built-in: edge by edge
  registry.register_op("my_pool", _pool)
  with pytest.raises(ops.OperationError, match="'my_pool' is already registered"):
    registry.register_op("my_pool", _pool)
  with pytest.raises(ops.OperationError, match="use letters, digits"):
    registry.register_op("a,b", _pool)
  with pytest.raises(ops.OperationError, match="not callable"):
    registry.register_op("thing", 3)


def test_named_lists_of_operations_are_registered_too(registry):
  assert registry.register_primitives("mine", ["skip_connect", "conv_7x1_1x7"]) == (
    "skip_connect",
    "conv_7x1_1x7",
  )
  assert validation.primitives_of("mine") == ("skip_connect", "conv_7x1_1x7")
  with pytest.raises(ops.OperationError, match="'mine' is already registered"):
    registry.register_primitives("mine", ["skip_connect"])
  registry.register_primitives("mine", ["skip_connect"], replace=True)
  assert registry.get_primitives("mine") == ("skip_connect",)
  with pytest.raises(ops.OperationError, match=r"Unknown operations \['nope'\]"):
    registry.register_primitives("other", ["skip_connect", "nope"])
  with pytest.raises(ops.OperationError, match="listed more than once"):
    registry.register_primitives("other", ["skip_connect", "skip_connect"])
  with pytest.raises(ops.OperationError, match="Unknown primitive set 'other'"):
    registry.get_primitives("other")


USER_FILE = """
import flax.linen as nn
from dnas_jax.space import ops

class Twice(nn.Module):
  stride: int

  @nn.compact
  def __call__(self, x):
    return 2 * x[:, ::self.stride, ::self.stride]

ops.register_op("twice", lambda c, stride, affine, train, dtype, f: Twice(stride))
ops.register_primitives("with_twice", ["skip_connect", "twice"])
"""


def test_a_users_file_registers_its_operations_and_its_bytes_are_hashed(registry, tmp_path):
  path = tmp_path / "user_ops.py"
  path.write_text(USER_FILE)
  registry.import_ops_modules(f" {path} ,")
  assert "twice" in registry.OPS and registry.get_primitives("with_twice")
  sources = registry.imported_user_sources()
  assert sources[str(path)] == hashlib.sha256(path.read_bytes()).hexdigest()
  registry.import_ops_modules(str(path))  # the same bytes: not run again
  # A changed file replaces what it registered before.
  path.write_text(USER_FILE.replace('"twice"', '"thrice"'))
  registry.import_ops_modules(str(path))
  assert "thrice" in registry.OPS and "twice" not in registry.OPS
  assert (
    registry.imported_user_sources()[str(path)] == hashlib.sha256(path.read_bytes()).hexdigest()
  )
  # An operation registered from code outside any imported file: its source file.
  registry.register_op("here", _pool)
  assert os.path.abspath(__file__) in registry.imported_user_sources()


def test_an_operations_module_that_cannot_be_imported_is_one_line(registry, tmp_path):
  bad = tmp_path / "bad_ops.py"
  bad.write_text("from dnas_jax.space import ops\n\nx = 1\nraise RuntimeError('oops')\n")
  with pytest.raises(ops.OperationError) as e:
    registry.import_ops_modules(str(bad))
  assert str(e.value) == (
    f"cannot import the operations module {str(bad)!r} (line 4): RuntimeError: oops"
  )
  config = test_config.get_config()
  config.model.ops_modules = str(tmp_path / "absent.py")
  with pytest.raises(validation.ConfigError, match="no such file"):
    validation.validate_search_config(config)
  config.model.ops_modules = "no_such_module_xyz"
  with pytest.raises(validation.ConfigError, match="ModuleNotFoundError"):
    validation.validate_search_config(config)


def test_figures_colour_any_operation():
  for op, colour in figures.OP_COLORS.items():
    assert figures.op_color(op) == colour
  assert figures.op_color("sep_conv_7x7") != figures.op_color("sep_conv_5x5")
  mine = figures.op_color("my_strange_op")
  assert mine == figures.op_color("my_strange_op")
  assert mine in figures._EXTRA_COLORS  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------
# The contract, checked from shapes before compiling.


class _WrongChannels(nn.Module):
  channels: int
  stride: int

  @nn.compact
  def __call__(self, x):
    return nn.Conv(2 * self.channels, (1, 1), strides=self.stride, use_bias=False)(x)


class _NoHalving(nn.Module):
  channels: int

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.channels, (3, 3), padding=1, use_bias=False)(x)


@jax.custom_batching.custom_vmap
def _unbatchable(x):
  return x


@_unbatchable.def_vmap
def _unbatchable_rule(axis_size, in_batched, x):
  raise NotImplementedError("this operation cannot be vmapped")


class _NoVmap(nn.Module):
  stride: int

  @nn.compact
  def __call__(self, x):
    return _unbatchable(x[:, :: self.stride, :: self.stride])


@pytest.mark.parametrize(
  "factory, message",
  [
    (
      lambda c, s, a, t, d, f: _WrongChannels(c, s),
      "config.model.primitives: operation 'broken' (stride 1) on input [2, 8, 8, 2] "
      "float32 gave [2, 8, 8, 4] float32, expected [2, 8, 8, 2] float32",
    ),
    (
      lambda c, s, a, t, d, f: _NoHalving(c),
      "config.model.primitives: operation 'broken' (stride 2) on input [2, 8, 8, 2] "
      "float32 gave [2, 8, 8, 2] float32, expected [2, 4, 4, 2] float32",
    ),
    (
      lambda c, s, a, t, d, f: _NoVmap(s),
      "config.model.primitives: operation 'broken' (stride 1, vmapped over 2 edges) on "
      "input [2, 2, 8, 8, 2] float32 fails to trace: NotImplementedError: this "
      "operation cannot be vmapped",
    ),
  ],
)
def test_a_broken_operation_is_refused_in_one_line(registry, factory, message):
  registry.register_op("broken", factory)
  config = test_config.get_config()
  config.model.primitives = "skip_connect,broken"
  with pytest.raises(validation.ConfigError) as e:
    validation.validate_search_config(config)
  assert str(e.value).startswith(message)
  assert "\n" not in str(e.value)


def test_a_broken_operation_stops_the_entry_point_before_compiling(tmp_path):
  """The refusal docs/extending.md shows, from the command line: one line, status 1,
  nothing compiled (an operation that ignores its stride)."""
  path = tmp_path / "broken_ops.py"
  path.write_text(
    "from dnas_jax.space import ops\n"
    "ops.register_op('my_op', lambda c, stride, affine, train, dtype, f: "
    "ops.ReLUConvBN(c, 1, 1, 0, affine, train, dtype))\n"
  )
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.search",
      "--config=experiments/configs/test.py",
      f"--workdir={tmp_path / 'run'}",
      f"--config.model.ops_modules={path}",
      "--config.model.primitives=skip_connect,my_op",
    ],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 1, out.stderr[-2000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in out.stderr
  assert errors[0] in open(EXTENDING, encoding="utf-8").read()
  assert "compiling" not in out.stderr and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------
# DARTS's sep_conv_7x7 and conv_7x1_1x7.


def _numpy_conv(x, w, stride, padding):
  """Cross-correlation of x [B, H, W, Cin] with w [kh, kw, Cin, Cout], stride and
  padding per axis: an independent reference."""
  (sh, sw), (ph, pw) = stride, padding
  kh, kw = w.shape[:2]
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
  for i in range(ho):
    for j in range(wo):
      window = xp[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
      out[:, i, j, :] = np.einsum("bhwc,hwco->bo", window, w)
  return out


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_7x1_1x7_is_darts_two_convolutions(stride):
  """ReLU, conv (1, 7) stride (1, s), conv (7, 1) stride (s, 1), BN: against NumPy in
  float64 (the batch norm in evaluation with its initial statistics: x / √(1 + ε))."""
  with jax.enable_x64(True):
    x = np.random.default_rng(0).normal(size=(2, 9, 10, 3))
    op = ops.create_op("conv_7x1_1x7", 3, stride, affine=True, train=False, dtype=jnp.float64)
    variables = jax.tree.map(
      lambda a: np.asarray(a, np.float64), init_lib.init_from_shapes(op, 0, jnp.asarray(x))
    )
    k1 = variables["params"]["Conv_0"]["kernel"]
    k2 = variables["params"]["Conv_1"]["kernel"]
    assert k1.shape == (1, 7, 3, 3) and k2.shape == (7, 1, 3, 3)
    got = np.asarray(op.apply(variables, jnp.asarray(x)))
  y = _numpy_conv(np.maximum(x, 0), k1, (1, stride), (0, 3))
  y = _numpy_conv(y, k2, (stride, 1), (3, 0))
  np.testing.assert_allclose(got, y / np.sqrt(1 + 1e-5), rtol=1e-10, atol=1e-12)
  assert got.shape == (2, -(-9 // stride), -(-10 // stride), 3)


def _f64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _close(a, b, rtol, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = max(float(np.abs(np.asarray(y)).max()), 1e-3)
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol * scale)


class _Conv3x3(nn.Module):
  """A user's operation: ReLU, 3×3 convolution, BN."""

  channels: int
  stride: int
  affine: bool
  train: bool
  dtype: object

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(
      self.channels, (3, 3), strides=self.stride, padding=1, use_bias=False, dtype=self.dtype
    )(nn.relu(x))
    return ops.BatchNorm(self.affine, self.train, self.dtype)(x)


@pytest.mark.parametrize("stride", [1, 2])
def test_new_operations_search_the_same_in_the_cpu_and_vmap_programs(registry, stride):
  """A node's mixed edges, as a search step computes them at the test config's size
  (8×8, C = 8, K = 4, skip dropout), in float64: the CPU's default program (edges
  beside the channels, compiled kernels: sep_conv_7x7 batched, conv_7x1_1x7 and a
  user's operation edge by edge) and the plain vmapped one declare the same variables
  and give the same value, gradients in the weights, the inputs, ψ and the edge
  weights, and batch statistics; in evaluation the same output. (The rest of the
  network is the same code in both programs: tests/test_formulations.py.)"""
  registry.register_op("user_conv_3x3", lambda c, s, a, t, d, f: _Conv3x3(c, s, a, t, d))
  prims = ("none", "skip_connect", "user_conv_3x3", "sep_conv_7x7", "conv_7x1_1x7")
  with jax.enable_x64(True):
    r = np.random.default_rng(0)
    xs = _f64(r.normal(size=(3, 2, 8, 8, 8)))
    w = _f64(r.uniform(size=(3, len(prims))))
    e = _f64(r.uniform(size=(3,)))
    g = _f64(r.normal(size=(2, 8 // stride, 8 // stride, 8)))

    def make(layout, train=True):
      f = ops.Formulation("kernel", "einsum") if layout == "channels" else ops.CONV
      return supernet._EdgeGroup(8, stride, prims, 4, 0.3, train, jnp.float64, f, layout)  # pylint: disable=protected-access

    v = _f64(init_lib.init_from_shapes(make("vmap", False), 0, xs, w, e))
    assert jax.tree.structure(
      _f64(init_lib.init_from_shapes(make("channels", False), 0, xs, w, e))
    ) == jax.tree.structure(v)

    def run(module):
      def loss(params, xs, w, e):
        out, new = module.apply(
          {"params": params, "batch_stats": v["batch_stats"]},
          xs,
          w,
          e,
          mutable=["batch_stats"],
          rngs={"dropout": jax.random.key(7)},
        )
        return jnp.sum(out * g), new

      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
        v["params"], xs, w, e
      )

    (value_plain, stats_plain), g_plain = run(make("vmap"))
    (value_cpu, stats_cpu), g_cpu = run(make("channels"))
    np.testing.assert_allclose(float(value_cpu), float(value_plain), rtol=1e-12)
    _close(g_cpu, g_plain, 1e-10, 1e-10)
    _close(stats_cpu, stats_plain, 1e-10, 1e-10)
    assert all(float(jnp.abs(g_plain[2][:, j]).max()) > 0 for j in range(1, len(prims)))
    trained = {"params": v["params"], **stats_plain}
    _close(
      make("channels", False).apply(trained, xs, w, e),
      make("vmap", False).apply(trained, xs, w, e),
      1e-10,
      1e-10,
    )


def test_sep_conv_7x7_and_conv_7x1_1x7_retrain():
  """A tiny retraining network whose cells use both: forward and backward, finite,
  with DARTS's parameter count for conv_7x1_1x7 (two C×C×7 kernels and an affine BN)."""
  pairs = [
    ("sep_conv_7x7", 0),
    ("conv_7x1_1x7", 1),
    ("skip_connect", 2),
    ("skip_connect", 1),
    ("skip_connect", 0),
    ("conv_7x1_1x7", 3),
    ("skip_connect", 4),
    ("skip_connect", 2),
  ]
  geno = genotype_lib.stack_block_genotype(pairs, pairs, 3)
  assert genotype_lib.GlobalGenotype.from_json(geno.to_json()) == geno
  net = network.create_network(geno, 4, 8, auxiliary=False)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  v = init_lib.init_from_shapes(net, 0, x)
  params = v["params"]
  edge = params["cell0"]["node0_edge1"]
  assert network.count_params({"params": edge}) == 2 * 7 * 8 * 8 + 2 * 8

  def loss(params):
    (logits, _), _ = net.apply(
      {"params": params, "batch_stats": v["batch_stats"]},
      x,
      0.2,
      rngs={"dropout": jax.random.key(1)},
      mutable=["batch_stats"],
    )
    return jnp.mean(logits**2)

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(float(value))
  g = grads["cell2"]["node2_edge1"]["AsymmetricConv_0"]["Conv_1"]["kernel"]
  assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) > 0


# ---------------------------------------------------------------------------------
# docs/extending.md, run as written.


def _doc_blocks(kind: str) -> list[str]:
  """The `kind` blocks of docs/extending.md's "Your own operation" section."""
  text = open(EXTENDING, encoding="utf-8").read()
  text = text[text.index("## Your own operation") :].split("\n## ")[0]
  return re.findall(rf"```{kind}\n(.*?)```", text, flags=re.S)


def test_the_extending_example_runs_as_written(tmp_path):
  """The worked example file and the commands of docs/extending.md, as written: search
  with the new operation, derive, retrain, evaluate. They run in a folder that stands
  for the checkout's root (its `experiments` links to the checkout's), which holds
  my_ops.py and gets the workdirs; nothing in the checkout changes."""
  (code,) = _doc_blocks("python")
  (commands,) = _doc_blocks("sh")
  (tmp_path / "my_ops.py").write_text(code)
  os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
  commands = re.sub(r"\\\n\s*", " ", commands).strip().splitlines()
  assert [c.split()[2] for c in commands] == [
    "experiments.search",
    "experiments.derive",
    "experiments.train",
    "experiments.evaluate",
  ]
  for command in commands:
    args = shlex.split(command)
    assert args[:2] == ["python", "-m"]
    out = subprocess.run(
      [sys.executable, *args[1:]],
      cwd=tmp_path,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert out.returncode == 0, (command, out.stderr[-3000:])
  with open(tmp_path / "workdirs" / "my_ops_search" / "genotype.json") as f:
    derived = json.load(f)
  assert derived["primitives"] == ["skip_connect", "conv_3x3"]
  assert len(derived["cells"]) == 3
  assert os.path.isfile(tmp_path / "workdirs" / "my_ops_retrain" / "final_metrics.json")
  assert "test accuracy" in out.stdout
