"""Global genotypes: one discrete cell per layer, derived from ψ (docs/design.md §1).

A `CellGenotype` lists, per intermediate node, the (operation, input) pairs it sums;
inputs are numbered as in DARTS (0 = s0, 1 = s1, 2 + n = node n). A `GlobalGenotype`
is the tuple of the cells of layers 0..L-1.

`genotype.json` schema (version 1)::

    {"version": 1,
     "primitives": ["max_pool_3x3", ...],        # the search's candidate operations
     "cells": [                                  # one per layer, in order
        {"reduction": false,
         "nodes": [[["sep_conv_3x3", 0], ["skip_connect", 1]], ...],  # 4 nodes
         "concat": [2, 3, 4, 5]},
        ...],
     "meta": {...}}                              # free-form: source, epoch, ...
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import numpy as np

from dnas_jax.space import search_space

SCHEMA_VERSION = 1


class GenotypeFormatError(ValueError):
  """A genotype.json that does not follow the schema; the message names what is wrong."""


class NonFinitePsiError(ValueError):
  """ψ holds NaN or inf; the message says where ψ came from and how many values."""


@dataclasses.dataclass(frozen=True)
class CellGenotype:
  nodes: tuple[tuple[tuple[str, int], ...], ...]
  reduction: bool = False
  concat: tuple[int, ...] = (2, 3, 4, 5)

  def __post_init__(self):
    for n, edges in enumerate(self.nodes):
      if not edges:
        raise ValueError(f"node {n} has no incoming edge")
      for op, inp in edges:
        if not 0 <= inp < search_space.NUM_INPUTS + n:
          raise ValueError(f"node {n} reads input {inp}, valid: 0..{1 + n}")
        if op == "none":
          raise ValueError(f"node {n} has a 'none' edge")
      search_space.check_primitives([op for op, _ in edges])

  def to_dict(self) -> dict[str, Any]:
    return {"reduction": self.reduction,
            "nodes": [[[op, inp] for op, inp in edges] for edges in self.nodes],
            "concat": list(self.concat)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "CellGenotype":
    return cls(nodes=tuple(tuple((str(op), int(i)) for op, i in edges)
                           for edges in d["nodes"]),
               reduction=bool(d["reduction"]), concat=tuple(d.get("concat", (2, 3, 4, 5))))

  def describe(self) -> str:
    kind = "reduce" if self.reduction else "normal"
    parts = [" + ".join(f"{op}({_input_name(i)})" for op, i in edges)
             for edges in self.nodes]
    return f"{kind}: " + " | ".join(f"n{n}={p}" for n, p in enumerate(parts))


def _input_name(i: int) -> str:
  return f"s{i}" if i < search_space.NUM_INPUTS else f"n{i - search_space.NUM_INPUTS}"


@dataclasses.dataclass(frozen=True)
class GlobalGenotype:
  cells: tuple[CellGenotype, ...]

  @property
  def num_layers(self) -> int:
    return len(self.cells)

  def to_json(self, primitives: Sequence[str] = search_space.PRIMITIVES,
              meta: dict[str, Any] | None = None) -> str:
    return json.dumps({"version": SCHEMA_VERSION, "primitives": list(primitives),
                       "cells": [c.to_dict() for c in self.cells], "meta": meta or {}},
                      indent=1)

  @classmethod
  def from_json(cls, text: str) -> "GlobalGenotype":
    """Parses the schema of the module docstring; GenotypeFormatError says where a
    document departs from it."""
    try:
      d = json.loads(text)
    except ValueError as e:
      raise GenotypeFormatError(f"not JSON ({e})") from None
    if not isinstance(d, dict):
      raise GenotypeFormatError(f"the top level is a {type(d).__name__}, not an object "
                                "with 'version' and 'cells'")
    if d.get("version") != SCHEMA_VERSION:
      raise GenotypeFormatError(f"version {d.get('version')!r} is not {SCHEMA_VERSION}")
    if not isinstance(d.get("cells"), list) or not d["cells"]:
      raise GenotypeFormatError("it has no 'cells' list (one cell per layer)")
    cells = []
    for k, c in enumerate(d["cells"]):
      try:
        cells.append(CellGenotype.from_dict(c))
      except (KeyError, TypeError, ValueError, AttributeError) as e:
        what = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise GenotypeFormatError(f"cells[{k}]: {what} (expected {{'reduction': bool, "
                                  "'nodes': [[[op, input], ...], ...]}})") from None
    return cls(tuple(cells))

  def save(self, path: str, **kwargs) -> None:
    with open(path, "w") as f:
      f.write(self.to_json(**kwargs))

  @classmethod
  def load(cls, path: str) -> "GlobalGenotype":
    with open(path) as f:
      return cls.from_json(f.read())

  def describe(self) -> str:
    return "\n".join(f"layer {k:2d} {c.describe()}" for k, c in enumerate(self.cells))


def derive_cell(psi_k: np.ndarray, primitives: Sequence[str], reduction: bool,
                edges_per_node: int = 2) -> CellGenotype:
  """One layer's cell from ψ[k] [C, Op]: per node, the `edges_per_node` incoming
  connections with the largest best-operation weight (never `none`), each with its
  arg-max operation (DARTS's `parse`, applied per layer)."""
  psi_k = np.asarray(psi_k, np.float64)
  usable = np.array([p != "none" for p in primitives])
  masked = np.where(usable[None, :], psi_k, -np.inf)
  nodes = []
  for node in range(search_space.NUM_NODES):
    rows = search_space.node_edges(node)
    strength = masked[rows.start:rows.stop].max(axis=1)
    keep = min(edges_per_node, len(rows))
    # Stable: ties go to the lower input index.
    chosen = sorted(np.argsort(-strength, kind="stable")[:keep])
    nodes.append(tuple((primitives[int(np.argmax(masked[rows.start + e]))], int(e))
                       for e in chosen))
  return CellGenotype(tuple(nodes), reduction)


def check_finite_psi(psi: np.ndarray, source: str = "ψ") -> None:
  """NonFinitePsiError when ψ holds NaN or inf (no arg-max means anything then);
  `source` names where ψ came from in the message."""
  psi = np.asarray(psi)
  bad = int(psi.size - np.count_nonzero(np.isfinite(psi)))
  if bad:
    raise NonFinitePsiError(f"{source} holds {bad} of {psi.size} values that are not "
                            "finite (NaN or inf): no genotype can be derived from it")


def derive_genotype(psi: np.ndarray, primitives: Sequence[str],
                    edges_per_node: int = 2) -> GlobalGenotype:
  """The global genotype of ψ [L, C, Op]: one derived cell per layer. A ψ holding NaN
  or inf is refused (NonFinitePsiError)."""
  psi = np.asarray(psi)
  L = psi.shape[0]
  if psi.shape[1:] != (search_space.NUM_CONNECTIONS, len(primitives)):
    raise ValueError(f"psi has shape {psi.shape}, expected [L, "
                     f"{search_space.NUM_CONNECTIONS}, {len(primitives)}]")
  check_finite_psi(psi)
  red = search_space.is_reduction(L)
  return GlobalGenotype(tuple(derive_cell(psi[k], primitives, red[k], edges_per_node)
                              for k in range(L)))


def map_to_depth(genotype: GlobalGenotype, num_layers: int) -> GlobalGenotype:
  """The genotype for a network of another depth: reduction cells map to reduction
  cells in order, and the normal cells of each stage map proportionally onto the normal
  cells of the same stage of the source (layer p of n_t takes source floor(p·n_s/n_t))."""
  src_red = search_space.is_reduction(genotype.num_layers)
  src_stage = search_space.stage_of_layers(genotype.num_layers)
  dst_red = search_space.is_reduction(num_layers)
  dst_stage = search_space.stage_of_layers(num_layers)
  src_reductions = [k for k in range(genotype.num_layers) if src_red[k]]
  cells = []
  for t in range(num_layers):
    if dst_red[t]:
      cells.append(genotype.cells[src_reductions[dst_stage[t] - 1]])
      continue
    src_normals = [k for k in range(genotype.num_layers)
                   if src_stage[k] == dst_stage[t] and not src_red[k]]
    dst_normals = [k for k in range(num_layers)
                   if dst_stage[k] == dst_stage[t] and not dst_red[k]]
    if not src_normals:
      raise ValueError(f"source stage {dst_stage[t]} has no normal cell to map from")
    p = dst_normals.index(t)
    cells.append(genotype.cells[src_normals[p * len(src_normals) // len(dst_normals)]])
  return GlobalGenotype(tuple(cells))


def stack_block_genotype(normal: Sequence[tuple[str, int]], reduce: Sequence[tuple[str, int]],
                         num_layers: int, normal_concat: Sequence[int] = (2, 3, 4, 5),
                         reduce_concat: Sequence[int] = (2, 3, 4, 5)) -> GlobalGenotype:
  """A DARTS-style block genotype (8 (op, input) pairs per cell type, two per node)
  stacked over `num_layers` layers."""
  def cell(pairs, concat, reduction):
    pairs = list(pairs)
    return CellGenotype(tuple(tuple(pairs[2 * n:2 * n + 2])
                              for n in range(search_space.NUM_NODES)), reduction,
                        tuple(concat))
  red = search_space.is_reduction(num_layers)
  n, r = cell(normal, normal_concat, False), cell(reduce, reduce_concat, True)
  return GlobalGenotype(tuple(r if red[k] else n for k in range(num_layers)))
