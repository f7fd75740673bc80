"""What the search program's compile time goes to: small programs, one formulation each.

  python -m dnas_jax.tools.compile_study --backend=tpu [--units=ops,edges,cell] [--size=cifar10]
  python -m dnas_jax.tools.compile_study --backend=cpu ...

Each unit is the forward and backward pass (gradients in the inputs, the weights and ψ)
of part of the supernet, at the sizes of the CIFAR-10 search's first stage (batch 96,
32×32, C = 16 with K = 4: 4 channels through the operations) or `--size=digits` (batch
64, 8×8), compiled for a TPU v5e chip from this host (`--backend=tpu`, needs libtpu) or
for this CPU. One JSON line per unit: trace + lower and compile seconds, convolutions
and fusions in the compiled HLO, and on the CPU the time of one execution.

Units:
* `ops`: one operation type alone on a node's 5 edges, `vmap`-ed (the program today);
* `edges`: sep_conv_5x5 on 5 edges, `vmap`-ed against unrolled per edge, and `vmap`-ed
  with the depthwise as shifted multiply-adds and/or the pointwise as an einsum;
* `cell`: a whole normal cell (7 operations, 14 edges) in each formulation;
* `step`: the search step of `--config` in each formulation, with the two halves traced
  one after the other or as one shared body (the other `config.program` fields: the
  backend's `auto`).
Measure one process at a time on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

SIZES = {
  "cifar10": dict(batch=96, size=32, channels=16, edges=5),
  "digits": dict(batch=64, size=8, channels=16, edges=5),
}
FORMULATIONS = {
  "conv": ("conv", "conv"),
  "shifted": ("shifted", "conv"),
  "einsum": ("conv", "einsum"),
  "shifted+einsum": ("shifted", "einsum"),
  "broadcast": ("conv", "broadcast"),
  "shifted+broadcast": ("shifted", "broadcast"),
}


def _compile(fn: Callable, args: tuple, backend: str, run: bool) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  from dnas_jax.tools import aot  # pylint: disable=g-import-not-at-top

  if backend == "tpu":
    mesh = aot.mesh_of(aot.topology_devices("v5e:2x2")[:1])
    args = aot.abstract(args, aot.replicated(mesh))
  t0 = time.perf_counter()
  lowered = jax.jit(fn).trace(*args).lower()
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  out = {
    "trace_lower_s": round(t1 - t0, 2),
    "compile_s": round(t2 - t1, 2),
    **aot.count_hlo(compiled.as_text()),
  }
  if run and backend == "cpu":
    jax.block_until_ready(compiled(*args))
    t3 = time.perf_counter()
    for _ in range(3):
      jax.block_until_ready(compiled(*args))
    out["run_ms"] = round((time.perf_counter() - t3) / 3 * 1e3, 1)
  return out


def _edge_group_unit(prims, formulation, size, per_edge: bool = False, stride: int = 1):
  """(fn, args): Σ(node output · R) differentiated in (params, inputs, ψ, edge weights)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dnas_jax.models import init as init_lib  # pylint: disable=g-import-not-at-top
  from dnas_jax.models import supernet  # pylint: disable=g-import-not-at-top
  from dnas_jax.space import ops  # pylint: disable=g-import-not-at-top

  s = SIZES[size]
  e, c = s["edges"], s["channels"]
  xs = jnp.zeros((e, s["batch"], s["size"], s["size"], c))
  w, ew = jnp.full((e, len(prims)), 0.1), jnp.full((e,), 0.5)
  f = ops.Formulation(*FORMULATIONS[formulation])
  if per_edge:
    mods = [
      supernet.MixedOp(c, stride, tuple(prims), 4, 0.0, True, jnp.float32, f) for _ in range(e)
    ]
    variables = [init_lib.init_from_shapes(m, i, xs[i], w[i], ew[i]) for i, m in enumerate(mods)]

    def apply(params, xs, w, ew):
      total = 0.0
      for i, m in enumerate(mods):
        out, _ = m.apply(
          {"params": params[i], "batch_stats": variables[i].get("batch_stats", {})},
          xs[i],
          w[i],
          ew[i],
          mutable=["batch_stats"],
        )
        total = total + out
      return total

    params = [v.get("params", {}) for v in variables]
  else:
    mod = supernet._EdgeGroup(c, stride, tuple(prims), 4, 0.0, True, jnp.float32, f)  # pylint: disable=protected-access
    variables = init_lib.init_from_shapes(mod, 0, xs, w, ew)

    def apply(params, xs, w, ew):
      out, _ = mod.apply(
        {"params": params, "batch_stats": variables.get("batch_stats", {})},
        xs,
        w,
        ew,
        mutable=["batch_stats"],
      )
      return out

    params = variables.get("params", {})
  fn = jax.grad(lambda p, x, w, ew: jnp.sum(apply(p, x, w, ew) ** 2), argnums=(0, 1, 2, 3))
  return fn, (params, xs, w, ew)


def _cell_unit(formulation, size):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dnas_jax.models import init as init_lib  # pylint: disable=g-import-not-at-top
  from dnas_jax.models import supernet  # pylint: disable=g-import-not-at-top
  from dnas_jax.space import ops  # pylint: disable=g-import-not-at-top
  from dnas_jax.space import search_space  # pylint: disable=g-import-not-at-top

  s = SIZES[size]
  c = s["channels"]
  x = jnp.zeros((s["batch"], s["size"], s["size"], 4 * c))
  prims = search_space.PRIMITIVES
  cell = supernet.SearchCell(
    c, False, False, prims, 4, formulation=ops.Formulation(*FORMULATIONS[formulation])
  )
  psi, edge = jnp.full((14, len(prims)), 0.1), jnp.full((14,), 0.2)
  v = init_lib.init_from_shapes(cell, 0, x, x, psi, edge)

  def loss(params, s0, s1, psi, edge):
    out, _ = cell.apply(
      {"params": params, "batch_stats": v["batch_stats"]},
      s0,
      s1,
      psi,
      edge,
      mutable=["batch_stats"],
    )
    return jnp.sum(out**2)

  return jax.grad(loss, argnums=(0, 1, 2, 3, 4)), (v["params"], x, x, psi, edge)


def _step_record(
  config_path: str, formulation: str, halves: str, backend: str, run: bool
) -> dict[str, Any]:
  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from dnas_jax.data import registry  # pylint: disable=g-import-not-at-top
  from dnas_jax.models import program as program_lib  # pylint: disable=g-import-not-at-top
  from dnas_jax.tools import benchmarking  # pylint: disable=g-import-not-at-top
  from dnas_jax.training import sharding  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("_study_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  depthwise, pointwise = FORMULATIONS[formulation]
  config.program.depthwise, config.program.pointwise = depthwise, pointwise
  config.program.halves = halves
  config.optim.arch_warmup_epochs = 0  # time steps that update the architecture
  shape = registry.resolve(config.data).image_shape
  mesh = sharding.create_mesh(jax.devices()[:1])
  progs = benchmarking.search_programs(config, shape, 10, mesh, backend)
  fn, args, _ = progs["search_step"]
  out = _compile(fn, args, backend, run)  # jit(jit(step)): the donation is dropped
  return {
    "config": os.path.basename(config_path),
    "program": program_lib.resolve_program(config, backend),
    **out,
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--backend", choices=("cpu", "tpu"), default="cpu")
  parser.add_argument("--units", default="ops,edges,cell")
  parser.add_argument("--size", choices=sorted(SIZES), default="cifar10")
  parser.add_argument("--formulations", default=",".join(FORMULATIONS))
  parser.add_argument(
    "--config", default="experiments/configs/test.py", help="search config of the `step` unit"
  )
  parser.add_argument("--halves", default="separate,shared")
  parser.add_argument("--ops", default="")
  args = parser.parse_args(argv)
  if args.backend == "tpu":
    from dnas_jax.tools import aot  # pylint: disable=g-import-not-at-top

    aot.prepare_environment("v5e:2x2")
  from dnas_jax.space import search_space  # pylint: disable=g-import-not-at-top

  units = args.units.split(",")
  forms = args.formulations.split(",")
  run = args.backend == "cpu"

  settings = {
    "backend": args.backend,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "disable_most_optimizations": os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS", ""),
  }

  def emit(record):
    size = {} if record["unit"] == "search step" else {"size": args.size}
    print(json.dumps({**settings, **size, **record}), flush=True)

  if "ops" in units:
    for op in args.ops.split(",") if args.ops else search_space.PRIMITIVES:
      emit(
        {
          "unit": "op",
          "op": op,
          "formulation": "conv",
          **_compile(*_edge_group_unit([op], "conv", args.size), args.backend, run),
        }
      )
  if "edges" in units:
    emit(
      {
        "unit": "sep_conv_5x5 edges",
        "batching": "per edge",
        "formulation": "conv",
        **_compile(
          *_edge_group_unit(["sep_conv_5x5"], "conv", args.size, per_edge=True), args.backend, run
        ),
      }
    )
    for f in forms:
      emit(
        {
          "unit": "sep_conv_5x5 edges",
          "batching": "vmap",
          "formulation": f,
          **_compile(*_edge_group_unit(["sep_conv_5x5"], f, args.size), args.backend, run),
        }
      )
  if "cell" in units:
    for f in forms:
      emit(
        {
          "unit": "normal cell",
          "formulation": f,
          **_compile(*_cell_unit(f, args.size), args.backend, run),
        }
      )
  if "step" in units:
    for f in forms:
      for halves in args.halves.split(","):
        emit(
          {
            "unit": "search step",
            "formulation": f,
            "halves": halves,
            **_step_record(args.config, f, halves, args.backend, run),
          }
        )


if __name__ == "__main__":
  main(sys.argv[1:])
