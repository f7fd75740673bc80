"""How the search step is written for XLA (`config.program`): formulations that compute
the same numbers (up to float rounding) and differ in compile and step time.

* `depthwise`: ``conv`` (a grouped convolution), ``shifted`` (k² shifted multiply-adds)
  or ``kernel`` (the compiled CPU kernels of `dnas_jax.kernels.cpu`, XLA FFI calls; the
  pools too, and with `edges=channels` a node's convolution halves run as two stacked
  stages, `batched_ops.conv_stage`), `ops.DepthwiseConv`;
* `pointwise`: ``conv`` (a 1×1 convolution), ``einsum`` (a channel contraction; the
  stem's 3×3 convolution as patches and a contraction too) or ``broadcast``,
  `ops.PointwiseConv`;
* `edges`: ``vmap`` (a node's edges on a leading axis, every operation `nn.vmap`-ed) or
  ``channels`` (the edges beside the channels, `batched_ops`: [B, H, W, E, c]);
* `halves`: ``separate`` (the architecture half and the weight half of a step traced
  one after the other: the network appears twice in the program, the architecture
  half without weight gradients) or ``shared`` (one traced body run twice by a scan,
  `search.shared_halves`: the network appears once, and the architecture pass computes
  weight gradients it drops; first order only).

* `remat`: ``none`` or ``convs`` (the normal cells keep only their convolutions'
  outputs for the backward pass and recompute the element-wise work after them:
  less memory, the same convolutions).

* `scan`: ``stages`` (every stage's normal cells under one scan over layers: the
  program has 3 cell bodies and 2 reduction cells at any depth) or ``none`` (every
  cell traced on its own, as DARTS's network is written: the program grows with
  depth). The two have different parameter trees, so the resolved value is stored with
  the run's checkpoints and used when it is restored or resumed.

* `optimizer`: ``optax`` (the weights' SGD step leaf by leaf, as optax writes it) or
  ``kernel`` (the whole step in one compiled CPU kernel call,
  `training.optimizers.KernelSGD`: the same state and numbers, about a thousand fewer
  kernels for XLA:CPU to compile in a search step).

"auto" takes the choice measured best on the backend the run is on (`AUTO_PROGRAM`;
the measurements are in docs/performance.md). On the CPU that is the compiled kernels;
where they cannot be built (no C++ compiler), "auto" takes ``shifted`` instead and says
why once. The CPU scans the stages only where a stage has two normal cells or more
(L >= 6); shallower networks are traced cell by cell.
"""

from __future__ import annotations

import jax
import ml_collections
from absl import logging

from dnas_jax.kernels import cpu as cpu_kernels
from dnas_jax.space import ops
from dnas_jax.space import search_space

# "auto" per backend: measured (docs/performance.md §8 and the sections it cites);
# tests/test_formulations.py checks that every formulation computes the same numbers.
AUTO_PROGRAM = {
  "cpu": {
    "depthwise": "kernel",
    "pointwise": "einsum",
    "edges": "channels",
    "halves": "separate",
    "remat": "none",
    "scan": "stages",
    "optimizer": "kernel",
  },
  "gpu": {
    "depthwise": "conv",
    "pointwise": "conv",
    "edges": "vmap",
    "halves": "separate",
    "remat": "none",
    "scan": "stages",
    "optimizer": "optax",
  },
  "tpu": {
    "depthwise": "conv",
    "pointwise": "conv",
    "edges": "vmap",
    "halves": "shared",
    "remat": "convs",
    "scan": "stages",
    "optimizer": "optax",
  },
}
EDGES = ("vmap", "channels")  # supernet.EDGE_LAYOUTS
HALVES = ("separate", "shared")  # search.steps.search_step(halves=...)
REMAT = ("none", "convs")
SCAN = ("stages", "none")
OPTIMIZERS = ("optax", "kernel")
PROGRAM_CHOICES = {
  "depthwise": ("auto",) + ops.DEPTHWISE,
  "pointwise": ("auto",) + ops.POINTWISE,
  "edges": ("auto",) + EDGES,
  "halves": ("auto",) + HALVES,
  "remat": ("auto",) + REMAT,
  "scan": ("auto",) + SCAN,
  "optimizer": ("auto",) + OPTIMIZERS,
}
# Fields a stored program may lack (they were added later and change no parameter or
# number): they resolve as "auto" does.
_OPTIONAL = ("optimizer",)


def resolve_program(
  config: ml_collections.ConfigDict, backend: str | None = None, stored: dict | None = None
) -> dict[str, str]:
  """`config.program` with "auto" replaced by the value `stored` with a run's
  checkpoints (when resuming: the whole resolved program), else by the backend's
  measured choice; a config without the section is all "auto". The second-order step
  always has separate halves."""
  backend = backend or jax.default_backend()
  auto = AUTO_PROGRAM.get(backend, AUTO_PROGRAM["gpu"])
  program = dict(config.get("program", {}))
  out = {}
  for key in PROGRAM_CHOICES:
    value = program.get(key, "auto")
    source = auto if stored and key in _OPTIONAL and key not in stored else (stored or auto)
    out[key] = value if value != "auto" else source[key]
  if (
    program.get("scan", "auto") == "auto"
    and not stored
    and backend == "cpu"
    and _longest_stage(config.model.num_layers) < 2
  ):
    # A stage of one normal cell gains nothing from a scan over it: on the CPU such a
    # network (L <= 5: the quick start, the tests) traces and compiles faster cell by
    # cell (docs/performance.md).
    out["scan"] = "none"
  if config.optim.get("second_order", False):
    out["halves"] = "separate"
  if out["depthwise"] == "kernel" and kernel_problem(backend):
    # The formulation changes no number and no parameter: a run stored with it (or a
    # config naming it) runs anywhere, with this backend's choice instead.
    fallback = "shifted" if backend == "cpu" else auto["depthwise"]
    _warn_once(
      f"program.depthwise='kernel': {kernel_problem(backend)}; using "
      f"'{fallback}' (the same numbers)"
    )
    out["depthwise"] = fallback
  if out["optimizer"] == "kernel" and kernel_problem(backend):
    _warn_once(
      f"program.optimizer='kernel': {kernel_problem(backend)}; using 'optax' (the same numbers)"
    )
    out["optimizer"] = "optax"
  return out


def _longest_stage(num_layers: int) -> int:
  """The most normal cells between two reductions (or an end) of an L-layer network."""
  r1, r2 = search_space.reduction_layers(num_layers)
  return max(r1, r2 - r1 - 1, num_layers - r2 - 1)


def kernel_problem(backend: str) -> str | None:
  """Why the compiled CPU kernels cannot run on `backend` (None: they can)."""
  if backend != "cpu":
    return f"the compiled kernels run on the CPU only, not on {backend}"
  if not cpu_kernels.available():
    return f"the CPU kernels cannot be built ({cpu_kernels.unavailable_reason()})"
  return None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
  if message not in _warned:
    _warned.add(message)
    logging.warning("%s", message)


def with_resolved_program(
  config: ml_collections.ConfigDict, backend: str | None = None, stored: dict | None = None
) -> ml_collections.ConfigDict:
  """A copy of `config` whose `program` holds the resolved values (what a run stores
  with its checkpoints, so that restoring it anywhere builds the same network)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.program = ml_collections.ConfigDict(resolve_program(config, backend, stored))
  return out
