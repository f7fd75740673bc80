"""How the search step is written for XLA (`config.program`): formulations that compute
the same numbers (up to float rounding) and differ in compile and step time.

* `depthwise`: ``conv`` (a grouped convolution) or ``shifted`` (k² shifted multiply-adds),
  `ops.DepthwiseConv`;
* `pointwise`: ``conv`` (a 1×1 convolution) or ``einsum`` (a channel contraction),
  `ops.PointwiseConv`;
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

"auto" takes the choice measured best on the backend the run is on (`AUTO_PROGRAM`;
the measurements are in the README's *Performance* section).
"""

from __future__ import annotations

import jax
import ml_collections

from dnas_jax.space import ops

# "auto" per backend: measured (README, Performance); tests/test_formulations.py checks
# that every formulation computes the same numbers.
AUTO_PROGRAM = {
    "cpu": {"depthwise": "conv", "pointwise": "einsum", "edges": "vmap", "halves": "separate",
            "remat": "none", "scan": "none"},
    "gpu": {"depthwise": "conv", "pointwise": "conv", "edges": "vmap", "halves": "separate",
            "remat": "none", "scan": "stages"},
    "tpu": {"depthwise": "conv", "pointwise": "conv", "edges": "vmap", "halves": "shared",
            "remat": "convs", "scan": "stages"},
}
EDGES = ("vmap", "channels")  # supernet.EDGE_LAYOUTS
HALVES = ("separate", "shared")  # search.steps.search_step(halves=...)
REMAT = ("none", "convs")
SCAN = ("stages", "none")
PROGRAM_CHOICES = {"depthwise": ("auto",) + ops.DEPTHWISE,
                   "pointwise": ("auto",) + ops.POINTWISE,
                   "edges": ("auto",) + EDGES,
                   "halves": ("auto",) + HALVES,
                   "remat": ("auto",) + REMAT,
                   "scan": ("auto",) + SCAN}


def resolve_program(config: ml_collections.ConfigDict, backend: str | None = None,
                    stored: dict | None = None) -> dict[str, str]:
  """`config.program` with "auto" replaced by the value `stored` with a run's
  checkpoints (when resuming), else by the backend's measured choice; a config without
  the section (stored by an older version) is all "auto". The second-order step always
  has separate halves."""
  backend = backend or jax.default_backend()
  auto = AUTO_PROGRAM.get(backend, AUTO_PROGRAM["gpu"])
  program = dict(config.get("program", {}))
  stored = stored or {}
  out = {}
  for key in PROGRAM_CHOICES:
    value = program.get(key, "auto")
    out[key] = value if value != "auto" else stored.get(key, auto[key])
  if config.optim.get("second_order", False):
    out["halves"] = "separate"
  return out


def with_resolved_program(config: ml_collections.ConfigDict, backend: str | None = None,
                          stored: dict | None = None) -> ml_collections.ConfigDict:
  """A copy of `config` whose `program` holds the resolved values (what a run stores
  with its checkpoints, so that restoring it anywhere builds the same network)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.program = ml_collections.ConfigDict(resolve_program(config, backend, stored))
  return out
