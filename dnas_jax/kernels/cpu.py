"""Kernels for XLA:CPU as FFI custom calls, the depthwise convolution first, built on first use.

XLA:CPU runs the depthwise convolutions of the search's separable and dilated
convolutions as grouped convolutions, its slowest path for them, and their kernel
gradients as per-tap reductions; written as shifted multiply-adds they run fast but
multiply the program that XLA must trace and compile (docs/performance.md). Here each
of the three is one call into `cpu.cc`: `depthwise(x, kernel, stride, padding,
dilation)` with its gradient (`jax.custom_vjp`), the same numbers as
`jax.lax.conv_general_dilated(..., feature_group_count=C)` up to float rounding
(tests/test_kernels.py). Beside it: the pools, the grouped 1×1 convolutions, a
materialising copy, and `random_bits`, the threefry2x32 bits of a JAX key exactly as
`jax.random.bits` draws them (XLA:CPU compiles each of its draws as a loop of its own;
here a draw is one call), used for the skip connection's dropout masks, the batch
normalisation of the stacked stages (`batch_norm_forward`, `batch_norm_backward`), and
`sgd_update`, the weights' whole SGD step (clipping, weight decay, momentum) over every
parameter array in one call.

The library is compiled once per source, jaxlib, compiler and CPU with the C++
compiler found as $CXX, `c++`, `g++` or `clang++` (a few seconds), into
$DNAS_JAX_KERNEL_DIR (default: the user's cache folder, ~/.cache/dnas_jax/kernels),
and registered with JAX under the names in `TARGETS`. `available()` says whether it
could be built and loaded; where it cannot (no compiler), `unavailable_reason()` says
why, and the programs that would use it choose the shifted multiply-adds instead
(`dnas_jax.models.program`). The convolutions and pools take float32 and float64.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu.cc")
# FFI target name -> the symbol of cpu.cc that handles it.
TARGETS = {
  f"dnas_jax_depthwise_{what}_{t}": f"Depthwise{sym}{t.upper()}"
  for what, sym in (
    ("forward", "Forward"),
    ("input_grad", "InputGrad"),
    ("kernel_grad", "KernelGrad"),
  )
  for t in ("f32", "f64")
}
TARGETS.update(
  {
    f"dnas_jax_pool_{what}_{t}": f"Pool{sym}{t.upper()}"
    for what, sym in (("forward", "Forward"), ("backward", "Backward"))
    for t in ("f32", "f64")
  }
)
TARGETS.update(
  {
    f"dnas_jax_grouped_{what}_{t}": f"Grouped{sym}{t.upper()}"
    for what, sym in (
      ("forward", "Forward"),
      ("input_grad", "InputGrad"),
      ("weight_grad", "WeightGrad"),
    )
    for t in ("f32", "f64")
  }
)
TARGETS.update(
  {
    f"dnas_jax_norm_{what}_{t}": f"Norm{sym}{t.upper()}"
    for what, sym in (("forward", "Forward"), ("backward", "Backward"))
    for t in ("f32", "f64")
  }
)
TARGETS["dnas_jax_materialize"] = "MaterializeCopy"
TARGETS["dnas_jax_random_bits"] = "ThreefryBits"
TARGETS["dnas_jax_sgd_update"] = "SgdUpdate"
DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

_lock = threading.Lock()
_state: dict[str, object] = {}  # "ok": bool, "reason": str, "path": str


def kernel_dir() -> str:
  """Where built libraries are kept: $DNAS_JAX_KERNEL_DIR, else
  ~/.cache/dnas_jax/kernels (under $XDG_CACHE_HOME when set)."""
  explicit = os.environ.get("DNAS_JAX_KERNEL_DIR")
  if explicit:
    return explicit
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "dnas_jax", "kernels")


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_identity() -> str:
  """What -march=native depends on: the CPU model and its feature flags."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [l for l in f if l.startswith(("model name", "flags", "Features"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.processor() + platform.machine()


def source_digest() -> str:
  with open(SOURCE, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _flags(native: bool) -> list[str]:
  return (
    ["-O3", "-std=c++17", "-shared", "-fPIC", "-w"]
    + (["-march=native"] if native else [])
    + ["-I", jax.ffi.include_dir()]
  )


def _build(compiler: str) -> str:
  """Compiles cpu.cc (with -march=native where the compiler takes it) into the
  kernel folder unless it is there; returns the library's path."""
  import jaxlib  # pylint: disable=g-import-not-at-top

  key = hashlib.sha256(
    "\0".join([source_digest(), jaxlib.__version__, compiler, _cpu_identity()]).encode()
  ).hexdigest()[:20]
  folder = kernel_dir()
  path = os.path.join(folder, f"cpu-{key}.so")
  if os.path.exists(path):
    return path
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
  os.close(fd)
  try:
    errors = ""
    for native in (True, False):
      done = subprocess.run(
        [compiler, *_flags(native), SOURCE, "-o", tmp], capture_output=True, text=True, timeout=300
      )
      if done.returncode == 0:
        os.replace(tmp, path)  # atomic: a concurrent build writes the same file
        return path
      errors = done.stderr.strip()
    raise RuntimeError(f"{compiler} failed: {errors[-600:]}")
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _load() -> None:
  compiler = _compiler()
  if compiler is None:
    raise RuntimeError("no C++ compiler found ($CXX, c++, g++ or clang++)")
  library = ctypes.cdll.LoadLibrary(_build(compiler))
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")


def available() -> bool:
  """Builds (once per machine) and registers the kernels; False where that fails
  (`unavailable_reason` says why)."""
  with _lock:
    if "ok" not in _state:
      try:
        _load()
        _state["ok"] = True
      except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _state["ok"], _state["reason"] = False, str(e)
    return bool(_state["ok"])


def unavailable_reason() -> str | None:
  return None if available() else str(_state["reason"])


def _call(what: str, dtype, out_shape, a, b, stride: int, padding: int, dilation: int):
  name = DTYPES.get(np.dtype(dtype))
  if name is None:
    raise TypeError(f"the depthwise kernel takes float32 or float64, not {dtype}")
  if not available():
    raise RuntimeError(f"the CPU depthwise kernel is unavailable: {unavailable_reason()}")
  return jax.ffi.ffi_call(
    f"dnas_jax_depthwise_{what}_{name}",
    jax.ShapeDtypeStruct(out_shape, dtype),
    vmap_method="sequential",
  )(a, b, stride=np.int64(stride), padding=np.int64(padding), dilation=np.int64(dilation))


def _out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
  return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def depthwise_forward(
  x: jax.Array, kernel: jax.Array, stride: int, padding: int, dilation: int
) -> jax.Array:
  """The forward call alone (no gradient): x [N, H, W, C], kernel [K, K, C]."""
  if x.dtype != kernel.dtype:
    raise TypeError(f"input {x.dtype} and kernel {kernel.dtype} differ")
  n, h, w, c = x.shape
  k = kernel.shape[0]
  if kernel.shape != (k, k, c):
    raise ValueError(f"kernel {kernel.shape} for input {x.shape}: expected {(k, k, c)}")
  shape = (
    n,
    _out_size(h, k, stride, padding, dilation),
    _out_size(w, k, stride, padding, dilation),
    c,
  )
  return _call("forward", x.dtype, shape, x, kernel, stride, padding, dilation)


def depthwise_input_grad(
  g: jax.Array, kernel: jax.Array, x_shape, stride: int, padding: int, dilation: int
) -> jax.Array:
  """The gradient in the input [N, H, W, C] (`x_shape`) of Σ(y · g)."""
  return _call("input_grad", g.dtype, tuple(x_shape), g, kernel, stride, padding, dilation)


def depthwise_kernel_grad(
  x: jax.Array, g: jax.Array, k: int, stride: int, padding: int, dilation: int
) -> jax.Array:
  """The gradient in the kernel [K, K, C] of Σ(y · g)."""
  return _call("kernel_grad", x.dtype, (k, k, x.shape[-1]), x, g, stride, padding, dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise(
  x: jax.Array, kernel: jax.Array, stride: int, padding: int, dilation: int
) -> jax.Array:
  """Depthwise convolution of x [N, H, W, C] with kernel [K, K, C] (zero padding
  `padding` on every side, `stride`, `dilation`): [N, H', W', C]."""
  return depthwise_forward(x, kernel, stride, padding, dilation)


def _forward(x, kernel, stride, padding, dilation):
  return depthwise_forward(x, kernel, stride, padding, dilation), (x, kernel)


def _backward(stride, padding, dilation, residuals, g):
  x, kernel = residuals
  return (
    depthwise_input_grad(g, kernel, x.shape, stride, padding, dilation),
    depthwise_kernel_grad(x, g, kernel.shape[0], stride, padding, dilation),
  )


depthwise.defvjp(_forward, _backward)


def _grouped_call(what: str, out_shape, a, b):
  name = DTYPES.get(np.dtype(a.dtype))
  if name is None or a.dtype != b.dtype:
    raise TypeError(f"the grouped 1×1 kernel takes float32 or float64, not {a.dtype}, {b.dtype}")
  if not available():
    raise RuntimeError(f"the CPU kernels are unavailable: {unavailable_reason()}")
  return jax.ffi.ffi_call(
    f"dnas_jax_grouped_{what}_{name}",
    jax.ShapeDtypeStruct(tuple(out_shape), a.dtype),
    vmap_method="sequential",
  )(a, b)


def grouped_forward(x: jax.Array, w: jax.Array) -> jax.Array:
  """Grouped 1×1 convolution: x [..., G·c], w [G, c, o] -> [..., G·o], group g of the
  output the product of group g of the input with w[g]."""
  g, c, o = w.shape
  if x.shape[-1] != g * c:
    raise ValueError(f"input {x.shape} for groups {w.shape}: expected {g * c} channels")
  return _grouped_call("forward", x.shape[:-1] + (g * o,), x, w)


def grouped_input_grad(gy: jax.Array, w: jax.Array) -> jax.Array:
  """The gradient in the input of Σ(grouped_forward(x, w) · gy)."""
  g, c, _ = w.shape
  return _grouped_call("input_grad", gy.shape[:-1] + (g * c,), gy, w)


def grouped_weight_grad(x: jax.Array, gy: jax.Array, w_shape) -> jax.Array:
  """The gradient in w [G, c, o] of Σ(grouped_forward(x, w) · gy)."""
  return _grouped_call("weight_grad", w_shape, x, gy)


def _pool_call(what: str, out_shape, args, stride: int, average: bool):
  x = args[0]
  name = DTYPES.get(np.dtype(x.dtype))
  if name is None:
    raise TypeError(f"the pooling kernel takes float32 or float64, not {x.dtype}")
  if not available():
    raise RuntimeError(f"the CPU kernels are unavailable: {unavailable_reason()}")
  return jax.ffi.ffi_call(
    f"dnas_jax_pool_{what}_{name}",
    jax.ShapeDtypeStruct(out_shape, x.dtype),
    vmap_method="sequential",
  )(*args, stride=np.int64(stride), average=np.int64(average))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def pool_3x3(x: jax.Array, stride: int, average: bool) -> jax.Array:
  """3×3 max (or, with `average`, mean) pooling with padding 1 of x [N, H, W, C], as
  DARTS's pools: padding never wins a max and is not counted in a mean
  (count_include_pad=False)."""
  return _pool_forward(x, stride, average)[0]


def _pool_forward(x, stride, average):
  n, h, w, c = x.shape
  shape = (n, _out_size(h, 3, stride, 1, 1), _out_size(w, 3, stride, 1, 1), c)
  return _pool_call("forward", shape, (x,), stride, average), x


def _pool_backward(stride, average, x, g):
  return (_pool_call("backward", x.shape, (x, g), stride, average),)


pool_3x3.defvjp(_pool_forward, _pool_backward)


def reference(
  x: jax.Array, kernel: jax.Array, stride: int, padding: int, dilation: int
) -> jax.Array:
  """The same convolution by XLA (a grouped convolution), for tests and fallbacks."""
  return jax.lax.conv_general_dilated(
    x,
    kernel[:, :, None, :],
    (stride, stride),
    ((padding, padding),) * 2,
    rhs_dilation=(dilation, dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=x.shape[-1],
  )


def _norm_name(dtype) -> str:
  name = DTYPES.get(np.dtype(dtype))
  if name is None:
    raise TypeError(f"the batch norm kernel takes float32 or float64, not {dtype}")
  if not available():
    raise RuntimeError(f"the CPU kernels are unavailable: {unavailable_reason()}")
  return name


def batch_norm_forward(p: jax.Array, eps: float):
  """Batch normalisation of p [N, F] over its rows in training mode, no affine
  transform, as `nn.BatchNorm` computes it (mean, and variance E[p²] − E[p]² clipped at
  0): (y [N, F], mean [F], var [F], 1 / sqrt(var + eps) [F]), in one call where XLA:CPU
  compiles reductions and element-wise kernels (the sums are taken in float64)."""
  name = _norm_name(p.dtype)
  f = p.shape[-1]
  vec = jax.ShapeDtypeStruct((f,), p.dtype)
  return tuple(
    jax.ffi.ffi_call(
      f"dnas_jax_norm_forward_{name}",
      (jax.ShapeDtypeStruct(p.shape, p.dtype), vec, vec, vec),
      vmap_method="sequential",
    )(p, eps=np.float64(eps))
  )


def batch_norm_backward(g: jax.Array, y: jax.Array, rstd: jax.Array) -> jax.Array:
  """The input gradient of `batch_norm_forward` (its y and rstd) for the output
  gradient g [N, F]: (g − mean(g) − y · mean(g · y)) · rstd, the means over the rows."""
  name = _norm_name(g.dtype)
  if g.shape != y.shape or rstd.shape != g.shape[-1:] or not g.dtype == y.dtype == rstd.dtype:
    raise ValueError(
      f"g {g.dtype}{list(g.shape)}, y {y.dtype}{list(y.shape)}, rstd {rstd.dtype}{list(rstd.shape)}"
    )
  out = jax.ShapeDtypeStruct(g.shape, g.dtype)
  return jax.ffi.ffi_call(f"dnas_jax_norm_backward_{name}", out, vmap_method="sequential")(
    g, y, rstd
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def batch_norm(p: jax.Array, eps: float):
  """`batch_norm_forward` with its gradient: (y, (mean, var)) of p [N, F]; the
  statistics are for the running averages and are not differentiated."""
  y, mean, var, _ = batch_norm_forward(p, eps)
  return y, (mean, var)


def _batch_norm_fwd(p, eps):
  y, mean, var, rstd = batch_norm_forward(p, eps)
  return (y, (mean, var)), (y, rstd)


def _batch_norm_bwd(eps, residuals, cotangents):
  del eps
  y, rstd = residuals
  return (batch_norm_backward(cotangents[0], y, rstd),)


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


@jax.custom_vjp
def materialize(x: jax.Array) -> jax.Array:
  """A copy of `x` that XLA computes into memory once, and so is its gradient: XLA
  fuses nothing across a custom call. Where XLA:CPU would fuse a long element-wise
  chain or a transpose into several reductions (recomputing it in each, with poor
  memory access), they then read one plain array."""
  if not available():
    raise RuntimeError(f"the CPU kernels are unavailable: {unavailable_reason()}")
  return jax.ffi.ffi_call(
    "dnas_jax_materialize", jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method="broadcast_all"
  )(x)


materialize.defvjp(lambda x: (materialize(x), None), lambda _, g: (materialize(g),))


def _threefry_data(key: jax.Array) -> jax.Array | None:
  """The uint32 [..., 2] data of `key` (a typed key, or a raw key of the default
  type) where it is a threefry2x32 key that JAX splits into bits the partitionable way
  (`jax_threefry_partitionable`, JAX's default); None for any other key."""
  if not jax.config.jax_threefry_partitionable:
    return None
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if str(jax.random.key_impl(key)) != "threefry2x32":
      return None
    return jax.random.key_data(key)
  if key.dtype != np.uint32 or key.shape[-1:] != (2,):
    return None
  return key if jax.config.jax_default_prng_impl == "threefry2x32" else None


def random_bits(key_data: jax.Array, shape) -> jax.Array:
  """uint32 bits [*shape] of the threefry2x32 key whose data is `key_data` (uint32
  [2]): the numbers `jax.random.bits(key, shape)` draws, as one call into `cpu.cc`
  instead of XLA:CPU's loop per draw (tests/test_kernels.py checks them bit for bit).
  Mapped over keys with `jax.vmap`. The call has no sharding rule: under data-parallel
  sharding every device draws the whole array and keeps its own rows (the same
  numbers; more work than JAX's partitioned draw on several devices)."""
  if not available():
    raise RuntimeError(f"the CPU kernels are unavailable: {unavailable_reason()}")
  if key_data.shape != (2,) or key_data.dtype != np.uint32:
    raise ValueError(f"key data uint32[2] expected, not {key_data.dtype}{list(key_data.shape)}")
  return jax.ffi.ffi_call(
    "dnas_jax_random_bits",
    jax.ShapeDtypeStruct(tuple(shape), np.uint32),
    vmap_method="broadcast_all",
  )(key_data)


def bernoulli(key: jax.Array, p, shape) -> jax.Array:
  """`jax.random.bernoulli(key, p, shape)` (`shape` required), the same booleans, with
  the bits from `random_bits` where the key is a threefry2x32 key and p is float32
  (JAX's own function otherwise): True where the uniform number 1.m − 1 made of the bits' 23 high
  ones is below p, as `jax.random.uniform` forms it."""
  data = _threefry_data(key)
  # p's own dtype, as JAX draws with it (a weak bfloat16 stays bfloat16); a Python
  # number takes the default float.
  dtype = p.dtype if hasattr(p, "dtype") else jax.numpy.result_type(p)
  if data is None or np.dtype(dtype) != np.float32:
    return jax.random.bernoulli(key, p, shape)
  bits = random_bits(data, shape)
  mantissa = jax.lax.shift_right_logical(bits, np.uint32(9)) | np.uint32(0x3F800000)
  uniform = jax.lax.bitcast_convert_type(mantissa, np.float32) - np.float32(1.0)
  return uniform < jax.lax.convert_element_type(p, np.float32)


def sgd_update(params, grads, momenta, lr, momentum: float, weight_decay: float, max_norm: float):
  """The weights' SGD step over lists of float32 arrays, in one call into `cpu.cc`:
  the gradients clipped to global norm `max_norm` (none where it is 0), weight decay
  added (g + wd·w), the momentum buffers m ← g + momentum·m, and w ← w − lr·m, in
  optax's order of operations (`training.optimizers.create_weight_tx`; the same
  numbers up to float32 rounding, tests/test_kernels.py). XLA would compile a
  reduction and two element-wise kernels per array. Returns (new params, new momenta);
  each output may reuse its input's buffer."""
  if not available():
    raise RuntimeError(f"the CPU kernels are unavailable: {unavailable_reason()}")
  params, grads, momenta = list(params), list(grads), list(momenta)
  n = len(params)
  if len(grads) != n or len(momenta) != n:
    raise ValueError(f"{n} parameter arrays, {len(grads)} gradients, {len(momenta)} momenta")
  for w, g, m in zip(params, grads, momenta):
    if not w.dtype == g.dtype == m.dtype == np.float32 or not w.shape == g.shape == m.shape:
      raise TypeError(
        f"float32 arrays of one shape expected, not {w.dtype}{list(w.shape)}, "
        f"{g.dtype}{list(g.shape)}, {m.dtype}{list(m.shape)}"
      )
  if n == 0:
    return [], []
  f32 = np.float32
  hyper = jax.numpy.stack(
    [jax.numpy.asarray(lr, f32), f32(momentum), f32(weight_decay), f32(max_norm)]
  )
  outs = jax.ffi.ffi_call(
    "dnas_jax_sgd_update",
    [jax.ShapeDtypeStruct(w.shape, f32) for w in params + momenta],
    input_output_aliases={
      **{1 + i: i for i in range(n)},
      **{1 + 2 * n + i: n + i for i in range(n)},
    },
  )(hyper, *params, *grads, *momenta)
  return list(outs[:n]), list(outs[n:])
