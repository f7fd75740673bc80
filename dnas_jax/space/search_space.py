"""The DARTS cell search space, per layer (docs/design.md §1).

A network is a stem and ``L`` cells. Cells at ``L // 3`` and ``2 * L // 3`` are
reduction cells (stride 2, channels doubled); the others are normal cells. A cell
reads the outputs of the two previous cells (inputs 0 and 1) and has
``NUM_NODES = 4`` intermediate nodes; node ``n`` sums one mixed edge from each of its
``2 + n`` predecessors, giving ``NUM_CONNECTIONS = 14`` connections, numbered node by
node in the order DARTS uses (node 0: inputs 0, 1; node 1: inputs 0, 1, 2; ...).
"""

from __future__ import annotations

from typing import Sequence

from dnas_jax.space import ops

NUM_NODES = 4
NUM_INPUTS = 2  # s0 and s1, the outputs of the two previous cells

# The candidate operations and their named lists live in one registry (`ops.OPS`,
# `ops.PRIMITIVE_SETS`; `ops.register_op`, `ops.register_primitives`).
# DNAS's 7 operations (no `none`: its weights are sigmoids, FairDARTS, so an operation
# is switched off by its own weight).
PRIMITIVES = ops.get_primitives("dnas")
# DARTS's list, for the DARTS baseline: `none` and the 7.
DARTS_PRIMITIVES = ops.get_primitives("darts")

PRIMITIVE_SETS = ops.PRIMITIVE_SETS  # name -> operations, users' lists included


def get_primitives(name: str) -> tuple[str, ...]:
  """Returns the named list of candidate operations ('dnas': 7 ops, 'darts': 8, or one
  registered with `ops.register_primitives`)."""
  return ops.get_primitives(name)


def _build_topology():
  node_of, input_of = [], []
  for node in range(NUM_NODES):
    for inp in range(NUM_INPUTS + node):
      node_of.append(node)
      input_of.append(inp)
  return tuple(node_of), tuple(input_of)


# EDGE_NODE[i]: the node connection i feeds; EDGE_INPUT[i]: the state it reads
# (0 = s0, 1 = s1, 2 + n = intermediate node n).
EDGE_NODE, EDGE_INPUT = _build_topology()
NUM_CONNECTIONS = len(EDGE_NODE)  # 14


def node_edges(node: int) -> range:
  """The connection indices that feed `node`, a contiguous range."""
  start = sum(NUM_INPUTS + n for n in range(node))
  return range(start, start + NUM_INPUTS + node)


def reduction_layers(num_layers: int) -> tuple[int, ...]:
  """The indices of the reduction cells of an L-layer network (L//3 and 2L//3)."""
  if num_layers < 3:
    raise ValueError(
      f"num_layers must be at least 3 (got {num_layers}) so that the "
      "two reduction cells are distinct layers."
    )
  return (num_layers // 3, 2 * num_layers // 3)


def is_reduction(num_layers: int) -> tuple[bool, ...]:
  """Per layer, whether it is a reduction cell."""
  red = reduction_layers(num_layers)
  return tuple(k in red for k in range(num_layers))


def stage_of_layers(num_layers: int) -> tuple[int, ...]:
  """Per layer, its stage: 0 before the first reduction, 1 from it, 2 from the second."""
  r1, r2 = reduction_layers(num_layers)
  return tuple(0 if k < r1 else (1 if k < r2 else 2) for k in range(num_layers))


def check_primitives(primitives: Sequence[str]) -> None:
  """Raises ValueError (`ops.OperationError`) naming the operations that are not
  registered, with the registered ones."""
  ops.check_known(primitives)
