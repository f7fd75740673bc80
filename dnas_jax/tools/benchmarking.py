"""Measurements for `experiments/benchmark.py`: compile time, step time, memory, FLOPs.

Each function returns one flat dict (a JSON line). `flops_per_step` counts the
convolutions and matrix products of the traced step with every loop body multiplied by
its trip count (`dnas_jax.tools.flops`); `achieved_tflops` divides it by the step time.
`xla_flops_per_step` is XLA's own cost analysis of the compiled step, kept beside it:
it also counts element-wise work, but it counts the body of a loop once, so for the
scanned supernet it misses most cells (L = 8 and L = 20 report nearly the same number).
Throughput counts the images of the training batch per step (`batch_size / step
time`), as the PyTorch PC-DARTS reference figures do; the search step also reads a
validation batch of the same size.
"""

import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dnas_jax.data import input_pipeline
from dnas_jax.tools import flops as flops_lib
from dnas_jax.search import setup as search_setup
from dnas_jax.training import sharding
from dnas_jax.training import validation


def device_facts() -> dict[str, Any]:
  d = jax.devices()[0]
  return {
    "device_kind": d.device_kind,
    "platform": d.platform,
    "device_count": jax.device_count(),
    "jax": jax.__version__,
    # Set, compile_s may time a cache read rather than a compilation.
    "compilation_cache_dir": jax.config.jax_compilation_cache_dir or None,
  }


def peak_memory_bytes() -> int | None:
  """Peak bytes in use on device 0 since the process started (None where unknown)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  return None if not stats else stats.get("peak_bytes_in_use")


def _xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return None if not cost or "flops" not in cost else float(cost["flops"])


def compile_timed(fn: Callable, args: tuple) -> tuple[Any, dict[str, Any]]:
  """Traces, lowers and compiles `fn` for `args`: (the compiled program, its trace +
  lower and compile seconds and FLOPs per step)."""
  t0 = time.perf_counter()
  traced = fn.trace(*args)
  lowered = traced.lower()
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  try:  # a measurement aid: never let it cost the timing run (e.g. on a newer jax)
    counted = flops_lib.count_traced(traced.jaxpr)
    flops = {"flops_per_step": counted.total, "conv_flops_per_step": counted.conv}
  except Exception as e:  # pylint: disable=broad-except
    flops = {"flops_per_step": None, "flops_error": repr(e)[:300]}
  return compiled, {
    "trace_lower_s": round(t1 - t0, 3),
    "compile_s": round(t2 - t1, 3),
    **flops,
    "xla_flops_per_step": _xla_flops(compiled),
  }


def time_steps(compiled, args: list, *, steps: int, warmup: int, carry_state: bool) -> float:
  """Seconds per call of `compiled` over `steps` calls after `warmup`. With
  `carry_state`, the first output feeds the next call's first argument (a training
  step whose state is donated), and `args[0]` is left holding the last state."""
  out = None
  for i in range(warmup + steps):
    if i == warmup:
      jax.block_until_ready(out)
      start = time.perf_counter()
    out = compiled(*args)
    if carry_state:
      args[0] = out[0]
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def time_compiled(
  fn: Callable, args: tuple, *, steps: int, warmup: int, carry_state: bool
) -> dict[str, float]:
  """Compiles `fn` for `args` (timed), then times `steps` calls after `warmup`."""
  compiled, record = compile_timed(fn, args)
  per_step = time_steps(compiled, list(args), steps=steps, warmup=warmup, carry_state=carry_state)
  flops = record["flops_per_step"]
  return {
    **record,
    "ms_per_step": round(per_step * 1e3, 3),
    "achieved_tflops": None if flops is None else round(flops / per_step / 1e12, 5),
  }


def random_batch(batch_size: int, image_shape, num_classes: int, seed: int):
  r = np.random.default_rng(seed)
  return {
    "image": r.normal(size=(batch_size,) + tuple(image_shape)).astype(np.float32),
    "label": r.integers(0, num_classes, batch_size).astype(np.int32),
  }


def _search_record(config, setup, image_shape, record, per_step) -> dict[str, Any]:
  m = config.model
  from dnas_jax.models import program as program_lib  # pylint: disable=g-import-not-at-top

  b = config.batch_size
  flops = record["flops_per_step"]
  return {
    "what": "search_step",
    "arch_kind": config.arch.kind,
    "num_layers": m.num_layers,
    "program": program_lib.resolve_program(config),
    "channels": m.channels,
    "partial_k": m.partial_k,
    "num_ops": setup.spec.num_ops,
    "primitives": list(setup.primitives),
    "batch_size": b,
    "dtype": m.dtype,
    "second_order": bool(config.optim.second_order),
    "image_shape": list(image_shape),
    **record,
    "ms_per_step": round(per_step * 1e3, 3),
    "achieved_tflops": None if flops is None else round(flops / per_step / 1e12, 5),
    "images_per_s": round(b / per_step, 1),
    "peak_memory_bytes": peak_memory_bytes(),
    **device_facts(),
  }


def search_step_runner(
  config: ml_collections.ConfigDict, image_shape=(32, 32, 3), num_classes: int = 10
):
  """The search step of `config` (architecture update on: warm-up 0) compiled for
  random data of the config's batch size: (setup, compile record, time_fn), where
  time_fn(steps, warmup) returns seconds per step (the state carried over) and
  `time_fn.compiled` is the compiled step."""
  mesh = sharding.create_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  with config.unlocked():
    config.optim.arch_warmup_epochs = 0
  setup = search_setup.create_search_setup(config, image_shape, num_classes, 100, mesh)
  b = config.batch_size
  train = sharding.shard_batch(random_batch(b, image_shape, num_classes, 0), mesh)
  val = sharding.shard_batch(random_batch(b, image_shape, num_classes, 1), mesh)
  args = [setup.state, train, val, jax.random.key(0)]
  compiled, record = compile_timed(setup.step_fn, tuple(args))

  def time_fn(steps: int, warmup: int) -> float:
    return time_steps(compiled, args, steps=steps, warmup=warmup, carry_state=True)

  time_fn.compiled = compiled
  return setup, record, time_fn


def benchmark_search_step(
  config: ml_collections.ConfigDict,
  image_shape=(32, 32, 3),
  num_classes: int = 10,
  steps: int = 10,
  warmup: int = 2,
) -> dict[str, Any]:
  """The first-order (or, per config, second-order) search step with the architecture
  update on (warm-up set to 0), on random data of the config's batch size."""
  setup, record, time_fn = search_step_runner(config, image_shape, num_classes)
  return _search_record(config, setup, image_shape, record, time_fn(steps, warmup))


def benchmark_peer(
  config: ml_collections.ConfigDict,
  peer_dir: str,
  image_shape=(32, 32, 3),
  num_classes: int = 10,
  steps: int = 5,
  warmup: int = 2,
  peer_python: str | None = None,
  threads: int | None = None,
) -> dict[str, Any]:
  """Our search step against the official PC-DARTS search step on the same setting
  (depth, channels, batch, image size, classes, first order, random data), one process
  at a time: ours is compiled and timed, then the peer runs in a subprocess
  (`dnas_jax.tools.peer_pc_darts`, from the checkout `peer_dir`) with `threads`
  torch threads (default: every core, as XLA uses), then ours is timed again. The
  ratio `speedup` is the peer's time per step over ours (the mean of our two
  timings): above 1, ours is faster."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from dnas_jax.tools import peer_pc_darts  # pylint: disable=g-import-not-at-top

  missing = peer_pc_darts.missing_files(peer_dir)
  if missing:
    raise validation.ConfigError(
      f"--peer_dir={peer_dir} is not a PC-DARTS checkout (missing "
      f"{', '.join(missing)}); get one with: git clone "
      "https://github.com/yuhuixu1993/PC-DARTS"
    )
  setup, record, time_fn = search_step_runner(config, image_shape, num_classes)
  before = time_fn(steps, warmup)
  device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  threads = threads or os.cpu_count() or 1
  m = config.model
  command = [
    peer_python or sys.executable,
    "-m",
    "dnas_jax.tools.peer_pc_darts",
    f"--peer_dir={peer_dir}",
    f"--layers={m.num_layers}",
    f"--channels={m.channels}",
    f"--batch_size={config.batch_size}",
    f"--image_size={image_shape[0]}",
    f"--num_classes={num_classes}",
    f"--threads={threads}",
    f"--steps={steps}",
    f"--warmup={warmup}",
    f"--device={device}",
  ]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
  if done.returncode or not lines:
    raise RuntimeError(
      f"the peer benchmark failed ({' '.join(command)}):\n{done.stderr.strip()[-2000:]}"
    )
  peer = json.loads(lines[-1])
  after = time_fn(steps, 0)
  ours = _search_record(config, setup, image_shape, record, (before + after) / 2)
  ours["ms_per_step_before_after"] = [round(before * 1e3, 3), round(after * 1e3, 3)]
  same = (
    m.partial_k == peer["partial_k"]
    and len(setup.primitives) == peer["num_ops"]
    and config.arch.kind == "iam"
    and bool(config.arch.edge_normalization)
  )
  return {
    "what": "peer",
    "ours": ours,
    "peer": peer,
    "speedup": round(peer["ms_per_step"] / ours["ms_per_step"], 3),
    "same_method": same,
    "threads": threads,
  }


def benchmark_prefetch(
  config: ml_collections.ConfigDict,
  image_shape=(32, 32, 3),
  num_classes: int = 10,
  steps: int = 10,
  warmup: int = 2,
  prefetch: int = 2,
) -> dict[str, Any]:
  """Search steps/s fed as the loop feeds them (random uint8 images through
  `input_pipeline.search_batches`: crop, flip, normalise, then `shard_batch`), without
  and with `prefetch` batches prepared ahead by a host thread, in one process, with the
  same compiled step; the ratio is with / without."""
  mesh = sharding.create_mesh()
  with config.unlocked():
    config.optim.arch_warmup_epochs = 0
  n = 2 * config.batch_size * (steps + warmup)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n,) + tuple(image_shape), dtype=np.uint8)
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  half = n // 2
  weight_split = input_pipeline.Split(images[:half], labels[:half])
  arch_split = input_pipeline.Split(images[half:], labels[half:])
  aug = input_pipeline.AugmentConfig(crop_padding=config.data.crop_padding, flip=config.data.flip)
  setup = search_setup.create_search_setup(config, image_shape, num_classes, steps + warmup, mesh)
  key = sharding.replicate(jax.random.key(0), mesh)
  step_fn = setup.step_fn  # jitted, the state donated: each pass starts from a copy
  rates = {}
  for ahead in (0, prefetch, 0, prefetch):  # twice each, alternating; the best counts
    batches = input_pipeline.search_batches(
      weight_split,
      arch_split,
      config.batch_size,
      config.seed,
      0,
      aug,
      (0.5,) * image_shape[-1],
      (0.25,) * image_shape[-1],
    )
    placed = ((sharding.shard_batch(t, mesh), sharding.shard_batch(v, mesh)) for t, v in batches)
    state, start = jax.tree.map(jnp.copy, setup.state), None
    for i, (t, v) in enumerate(input_pipeline.prefetch(placed, ahead)):
      if i == warmup:
        jax.block_until_ready(state)
        start = time.perf_counter()
      state, _ = step_fn(state, t, v, key)
    jax.block_until_ready(state)
    rate = steps / (time.perf_counter() - start)
    rates[ahead] = max(rates.get(ahead, 0.0), rate)
  return {
    "what": "prefetch",
    "num_layers": config.model.num_layers,
    "batch_size": config.batch_size,
    "image_shape": list(image_shape),
    "steps": steps,
    "prefetch": prefetch,
    "steps_per_s_without": round(rates[0], 3),
    "steps_per_s_with": round(rates[prefetch], 3),
    "ratio": round(rates[prefetch] / rates[0], 3),
    **device_facts(),
  }


def search_programs(
  config: ml_collections.ConfigDict, image_shape, num_classes: int, mesh, backend: str | None = None
) -> dict[str, tuple[Callable, tuple, tuple]]:
  """The search's jitted programs (written for `backend`) on random inputs of the
  config's sizes: name -> (jitted fn, args, roles), each role "state" (replicated) or
  "batch" (sharded)."""
  setup = search_setup.create_search_setup(config, image_shape, num_classes, 100, mesh, backend)
  b, e = config.batch_size, config.eval_batch_size
  train = random_batch(b, image_shape, num_classes, 0)
  val = random_batch(b, image_shape, num_classes, 1)
  evaluation = {**random_batch(e, image_shape, num_classes, 2), "mask": np.ones(e, bool)}
  arch_weights = setup.spec.arch_weights(setup.state.arch_params)
  state = setup.state
  return {
    "search_step": (
      setup.step_fn,
      (state, train, val, jax.random.key(0)),
      ("state", "batch", "batch", "state"),
    ),
    "search_eval_step": (
      setup.eval_fn,
      (state.params, state.batch_stats, evaluation, arch_weights),
      ("state", "state", "batch", "state"),
    ),
  }


def edge_program(
  config: ml_collections.ConfigDict, image_shape, backend: str | None = None
) -> tuple[Callable, tuple, tuple]:
  """The smallest piece of the search step: one mixed edge of the first cell (the
  config's operations, partial channels and formulation), forward and backward in its
  weights, input, ψ and edge weight, at the config's batch size."""
  from dnas_jax.models import init as init_lib  # pylint: disable=g-import-not-at-top
  from dnas_jax.models import program as program_lib  # pylint: disable=g-import-not-at-top
  from dnas_jax.models import supernet  # pylint: disable=g-import-not-at-top
  from dnas_jax.space import ops  # pylint: disable=g-import-not-at-top

  m = config.model
  prims = validation.primitives_of(m.primitives)
  p = program_lib.resolve_program(config, backend)
  edge = supernet.MixedOp(
    m.channels,
    1,
    prims,
    m.partial_k,
    m.skip_dropout,
    True,
    jnp.dtype(m.dtype),
    ops.Formulation(p["depthwise"], p["pointwise"]),
  )
  x = np.zeros((config.batch_size,) + tuple(image_shape[:2]) + (m.channels,), np.float32)
  w, e = np.full(len(prims), 0.1, np.float32), np.float32(0.5)
  variables = init_lib.init_from_shapes(edge, 0, x, w, e)

  def loss(params, x, w, e, rng):
    out, _ = edge.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      x,
      w,
      e,
      mutable=["batch_stats"],
      rngs={"dropout": rng},
    )
    return jnp.sum(out**2)

  fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
  return (
    fn,
    (variables["params"], x, w, e, jax.random.key(0)),
    ("state", "batch", "state", "state", "state"),
  )


def train_program(
  config: ml_collections.ConfigDict, image_shape, num_classes: int, mesh
) -> tuple[Callable, tuple, tuple]:
  """The retraining step of a retrain config (its genotype, drop path 0.2) on random
  data: (jitted fn, args, roles) as `search_programs`. A streaming config's step takes
  the streaming pipeline's batches (uint8 images and colour-jitter parameters, jittered
  and normalised in the step) of its image size and dataset's classes."""
  from dnas_jax.retrain import setup as retrain_setup  # pylint: disable=g-import-not-at-top

  geno = retrain_setup.resolve_genotype(config.genotype, config.model.num_layers)
  normalization = None
  batch = random_batch(config.batch_size, image_shape, num_classes, 0)
  if config.data.get("streaming", False):
    spec = validation.dataset_spec(config)
    image_shape, num_classes = spec.image_shape, spec.num_classes
    normalization = (tuple(spec.mean), tuple(spec.std))
    batch = random_streamed_batch(config.batch_size, image_shape, num_classes, 0)
  setup = retrain_setup.create_train_setup(
    config, geno, image_shape, num_classes, 100, mesh, normalization
  )
  return (
    setup.step_fn,
    (setup.state, batch, jax.random.key(0), jnp.float32(0.2)),
    ("state", "batch", "state", "state"),
  )


def random_streamed_batch(batch_size: int, image_shape, num_classes: int, seed: int):
  """A batch as the streaming pipeline delivers it: uint8 images, labels, and each
  image's colour jitter parameters drawn as the pipeline draws them
  (`image_transforms.jitter_params`)."""
  from dnas_jax.data import image_transforms  # pylint: disable=g-import-not-at-top

  r = np.random.default_rng(seed)
  return {
    "image": r.integers(0, 256, (batch_size,) + tuple(image_shape), dtype=np.uint8),
    "label": r.integers(0, num_classes, batch_size).astype(np.int32),
    "jitter": np.stack([image_transforms.jitter_params(r) for _ in range(batch_size)]),
  }


def count_convolutions(
  config: ml_collections.ConfigDict, image_shape=(8, 8, 3), num_classes: int = 10
) -> int:
  """Convolution instructions in the lowered (StableHLO) search step of `config`."""
  mesh = sharding.create_mesh(jax.devices()[:1])
  setup = search_setup.create_search_setup(config, image_shape, num_classes, 10, mesh)
  batch = random_batch(config.batch_size, image_shape, num_classes, 0)
  text = setup.step_fn.lower(setup.state, batch, batch, jax.random.key(0)).as_text()
  return text.count("stablehlo.convolution")


def benchmark_train_step(
  config: ml_collections.ConfigDict,
  image_shape=(32, 32, 3),
  num_classes: int = 10,
  steps: int = 10,
  warmup: int = 2,
) -> dict[str, Any]:
  """The retraining step of a retrain config (its genotype, drop path 0.2) on random
  data of the config's batch size."""
  mesh = sharding.create_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  step_fn, (state, batch, rng, drop), _ = train_program(config, image_shape, num_classes, mesh)
  b = config.batch_size
  image_shape = batch["image"].shape[1:]  # a streaming config's own size
  batch = sharding.shard_batch(batch, mesh)
  result = time_compiled(
    step_fn, (state, batch, rng, drop), steps=steps, warmup=warmup, carry_state=True
  )
  return {
    "what": "train_step",
    "genotype": str(config.genotype),
    "num_layers": config.model.num_layers,
    "channels": config.model.channels,
    "auxiliary": bool(config.model.auxiliary),
    "batch_size": b,
    "dtype": config.model.dtype,
    "image_shape": list(image_shape),
    **result,
    "images_per_s": round(b / (result["ms_per_step"] / 1e3), 1),
    "peak_memory_bytes": peak_memory_bytes(),
    **device_facts(),
  }


def aot_compile(
  config: ml_collections.ConfigDict | None,
  retrain_config: ml_collections.ConfigDict | None,
  topology: str,
  image_shape=(32, 32, 3),
  num_classes: int = 10,
  num_chips: int = 1,
  programs: Sequence[str] = ("search_step", "search_eval_step", "train_step"),
) -> list[dict[str, Any]]:
  """Compiles the search step, the search's evaluation step and the retraining step (or
  `mixed_edge`, one mixed edge of the search: `edge_program`) for `num_chips` chips of
  a TPU `topology` from this (CPU) host: one record each (trace + lower and compile
  seconds, memory analysis against the chip's HBM, convolutions and fusions in the
  compiled HLO). `aot.prepare_environment` must have run first."""
  from dnas_jax.tools import aot  # pylint: disable=g-import-not-at-top

  devices = aot.topology_devices(topology)[:num_chips]
  tpu_mesh = aot.mesh_of(devices)
  host_mesh = sharding.create_mesh(jax.devices()[:1])
  roles = {"state": aot.replicated(tpu_mesh), "batch": aot.batch_sharded(tpu_mesh)}
  todo = {}
  if config is not None and "mixed_edge" in programs:
    todo["mixed_edge"] = edge_program(config, image_shape, "tpu")
  if config is not None and {"search_step", "search_eval_step"} & set(programs):
    todo.update(search_programs(config, image_shape, num_classes, host_mesh, "tpu"))
  if retrain_config is not None and "train_step" in programs:
    todo["train_step"] = train_program(retrain_config, image_shape, num_classes, host_mesh)
  records = []
  for name in programs:
    if name not in todo:
      continue
    fn, args, arg_roles = todo[name]
    abstract = tuple(aot.abstract(a, roles[r]) for a, r in zip(args, arg_roles))
    c = retrain_config if name == "train_step" else config
    record = {
      "what": f"aot_{name}",
      "topology": topology,
      "num_chips": num_chips,
      "device_kind": devices[0].device_kind,
      "num_layers": c.model.num_layers,
      "channels": c.model.channels,
      "batch_size": c.batch_size,
      "dtype": c.model.dtype,
      "image_shape": list(args[1]["image"].shape[1:] if name == "train_step" else image_shape),
      **aot.compile_report(fn, abstract, hbm=aot.hbm_bytes(topology)),
      "jax": jax.__version__,
    }
    if name == "train_step":
      record["genotype"] = str(c.genotype)
    else:
      from dnas_jax.models import program as program_lib  # pylint: disable=g-import-not-at-top

      record.update(
        arch_kind=c.arch.kind,
        partial_k=c.model.partial_k,
        primitives=str(c.model.primitives),
        program=program_lib.resolve_program(c, "tpu"),
      )
      if name == "search_eval_step":
        record["batch_size"] = c.eval_batch_size
    records.append(record)
  return records
