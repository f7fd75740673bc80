"""Global genotypes: one discrete cell per layer, derived from ψ (docs/design.md §1).

A `CellGenotype` lists, per intermediate node, the (operation, input) pairs it sums;
inputs are numbered as in DARTS (0 = s0, 1 = s1, 2 + n = node n). A node may keep no
pair (the threshold rule of `Derivation`); then no node reads it and its cell's concat
leaves it out. A `GlobalGenotype` is the tuple of the cells of layers 0..L-1.

`genotype.json` schema (version 1)::

    {"version": 1,
     "primitives": ["max_pool_3x3", ...],        # the search's candidate operations
     "cells": [                                  # one per layer, in order
        {"reduction": false,
         "nodes": [[["sep_conv_3x3", 0], ["skip_connect", 1]], ...],  # 4 nodes
         "concat": [2, 3, 4, 5]},
        ...],
     "meta": {...}}                              # free-form: step, epoch, num_epochs, ...
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import numpy as np

from dnas_jax import files
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
    # A node may keep no edge (FairDARTS's threshold derivation); then nothing reads it
    # and the cell's concat leaves it out.
    empty = {search_space.NUM_INPUTS + n for n, edges in enumerate(self.nodes) if not edges}
    for n, edges in enumerate(self.nodes):
      for op, inp in edges:
        if not 0 <= inp < search_space.NUM_INPUTS + n:
          raise ValueError(f"node {n} reads input {inp}, valid: 0..{1 + n}")
        if op == "none":
          raise ValueError(f"node {n} has a 'none' edge")
        if inp in empty:
          raise ValueError(
            f"node {n} reads node {inp - search_space.NUM_INPUTS}, which has no incoming edge"
          )
      search_space.check_primitives([op for op, _ in edges])
    if empty & set(self.concat):
      raise ValueError(
        f"concat {list(self.concat)} names a node without incoming edges "
        f"(n{min(empty & set(self.concat)) - search_space.NUM_INPUTS})"
      )

  def to_dict(self) -> dict[str, Any]:
    return {
      "reduction": self.reduction,
      "nodes": [[[op, inp] for op, inp in edges] for edges in self.nodes],
      "concat": list(self.concat),
    }

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "CellGenotype":
    return cls(
      nodes=tuple(tuple((str(op), int(i)) for op, i in edges) for edges in d["nodes"]),
      reduction=bool(d["reduction"]),
      concat=tuple(d.get("concat", (2, 3, 4, 5))),
    )

  def describe(self) -> str:
    kind = "reduce" if self.reduction else "normal"
    parts = [
      " + ".join(f"{op}({_input_name(i)})" for op, i in edges) or "(no edge)"
      for edges in self.nodes
    ]
    return f"{kind}: " + " | ".join(f"n{n}={p}" for n, p in enumerate(parts))


def _input_name(i: int) -> str:
  return f"s{i}" if i < search_space.NUM_INPUTS else f"n{i - search_space.NUM_INPUTS}"


@dataclasses.dataclass(frozen=True)
class GlobalGenotype:
  cells: tuple[CellGenotype, ...]

  @property
  def num_layers(self) -> int:
    return len(self.cells)

  def to_json(
    self, primitives: Sequence[str] = search_space.PRIMITIVES, meta: dict[str, Any] | None = None
  ) -> str:
    return json.dumps(
      {
        "version": SCHEMA_VERSION,
        "primitives": list(primitives),
        "cells": [c.to_dict() for c in self.cells],
        "meta": meta or {},
      },
      indent=1,
    )

  @classmethod
  def from_json(cls, text: str) -> "GlobalGenotype":
    """Parses the schema of the module docstring; GenotypeFormatError says where a
    document departs from it."""
    try:
      d = json.loads(text)
    except ValueError as e:
      raise GenotypeFormatError(f"not JSON ({e})") from None
    if not isinstance(d, dict):
      raise GenotypeFormatError(
        f"the top level is a {type(d).__name__}, not an object with 'version' and 'cells'"
      )
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
        raise GenotypeFormatError(
          f"cells[{k}]: {what} (expected {{'reduction': bool, "
          "'nodes': [[[op, input], ...], ...]}})"
        ) from None
    return cls(tuple(cells))

  def save(self, path: str, **kwargs) -> None:
    """Writes `to_json(**kwargs)` to `path` atomically (`dnas_jax.files`)."""
    files.atomic_write(path, self.to_json(**kwargs))

  @classmethod
  def load(cls, path: str) -> "GlobalGenotype":
    with open(path) as f:
      return cls.from_json(f.read())

  def describe(self) -> str:
    return "\n".join(f"layer {k:2d} {c.describe()}" for k, c in enumerate(self.cells))


def read_meta(path: str) -> dict[str, Any]:
  """The free-form meta of a genotype.json ({} when it has none or is not an object);
  OSError when it cannot be read, ValueError when it is not JSON."""
  with open(path) as f:
    d = json.load(f)
  meta = d.get("meta", {}) if isinstance(d, dict) else {}
  return meta if isinstance(meta, dict) else {}


# How a cell is read off ψ (docs/design.md §1 tabulates them with their sources):
# `top_k`, per node the `edges_per_node` strongest connections (DARTS's parse);
# `threshold`, the same connections, each kept only where its operation's weight reaches
# `op_threshold` (FairDARTS's `threshold_sparse`).
DERIVATION_RULES = ("top_k", "threshold")
NO_SKIP_CAP = -1  # max_skip_connects: no cap


@dataclasses.dataclass(frozen=True)
class Derivation:
  """The options of the derivation (`config.derive`, the flags of experiments.derive).

  rule: one of `DERIVATION_RULES`.
  edges_per_node: incoming connections considered per node (DARTS, FairDARTS: 2).
  op_threshold: `threshold` only: an operation is kept where its weight without the
    edge weight, ψ[k,i,j] / e[k,i], is at least this (FairDARTS: σ(α) ≥ 0.85).
  max_skip_connects: in each normal layer at most this many skip-connects (P-DARTS's
    cap, 2 in its paper): while there are more, the weakest skip-connect is removed
    from its connection's candidates and the cell derived again; -1: no cap.
  """

  rule: str = "top_k"
  edges_per_node: int = 2
  op_threshold: float = 0.85
  max_skip_connects: int = NO_SKIP_CAP

  def check(self, prefix: str = "") -> None:
    """ValueError, one line naming the option as `prefix` + its name."""
    if self.rule not in DERIVATION_RULES:
      raise ValueError(
        f"{prefix}rule={self.rule!r} is not valid; valid values: {list(DERIVATION_RULES)}"
      )
    n = self.edges_per_node
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
      raise ValueError(f"{prefix}edges_per_node={n!r} must be at least 1")
    t = self.op_threshold
    if (
      isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or not 0 < t <= 1
    ):
      raise ValueError(f"{prefix}op_threshold={t!r} must be in (0, 1]")
    m = self.max_skip_connects
    if isinstance(m, bool) or not isinstance(m, int) or m < NO_SKIP_CAP:
      raise ValueError(
        f"{prefix}max_skip_connects={m!r} must be an integer >= 0, or {NO_SKIP_CAP} for no cap"
      )

  @classmethod
  def from_config(cls, section: Any) -> "Derivation":
    """From a config's `derive` section (a mapping; absent fields take the defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(section or {}).items() if k in names})


def _select(
  psi_k: np.ndarray, op_weight: np.ndarray, candidate: np.ndarray, derivation: Derivation
) -> list[list[tuple[int, int]]]:
  """Per node, the kept (operation index, input) pairs: the `edges_per_node` inputs
  whose best candidate ψ is largest (stable: ties go to the lower input), each with
  its arg-max candidate; with the threshold rule only where that operation's weight
  reaches the threshold."""
  masked = np.where(candidate, psi_k, -np.inf)
  nodes = []
  for node in range(search_space.NUM_NODES):
    rows = search_space.node_edges(node)
    strength = masked[rows.start : rows.stop].max(axis=1)
    keep = min(derivation.edges_per_node, len(rows))
    chosen = sorted(np.argsort(-strength, kind="stable")[:keep])
    pairs = []
    for e in chosen:
      j = int(np.argmax(masked[rows.start + e]))
      if (
        derivation.rule == "threshold"
        and not op_weight[rows.start + e, j] >= derivation.op_threshold
      ):
        continue
      pairs.append((j, int(e)))
    nodes.append(pairs)
  return nodes


def derive_cell(
  psi_k: np.ndarray,
  primitives: Sequence[str],
  reduction: bool,
  edges_per_node: int = 2,
  *,
  derivation: Derivation | None = None,
  edge_k: np.ndarray | None = None,
) -> CellGenotype:
  """One layer's cell from ψ[k] [C, Op] (`derivation`, default: DARTS's `parse` per
  layer; `edges_per_node` is used when no `derivation` is given).

  Per node, the `edges_per_node` incoming connections with the largest best-operation
  weight (never `none`), each with its arg-max operation. The threshold rule keeps a
  connection only where that operation's weight without the edge weight
  (ψ[k,i,j] / `edge_k`[i]; without `edge_k`, ψ itself) reaches the threshold; a node
  may then keep no edge: the connections reading it are dropped (FairDARTS's
  `DCOCell` skips them when it runs), and the concat lists the nodes that kept one.
  With a skip cap, a normal cell derives again without its weakest skip-connect
  (smallest ψ) until it has at most the cap (P-DARTS's `delete_min_sk_prob`,
  `keep_1_on`, `keep_2_branches`).

  Raises:
    ValueError: no node keeps an edge (the threshold is above every operation).
  """
  derivation = derivation or Derivation(edges_per_node=edges_per_node)
  psi_k = np.asarray(psi_k, np.float64)
  candidate = np.broadcast_to(
    np.array([p != "none" for p in primitives])[None, :], psi_k.shape
  ).copy()
  op_weight = psi_k
  if derivation.rule == "threshold" and edge_k is not None:
    with np.errstate(divide="ignore", invalid="ignore"):
      op_weight = psi_k / np.asarray(edge_k, np.float64)[:, None]
  skip = list(primitives).index("skip_connect") if "skip_connect" in primitives else None
  while True:
    nodes = _select(psi_k, op_weight, candidate, derivation)
    if reduction or skip is None or derivation.max_skip_connects < 0:
      break
    skips = [
      (psi_k[search_space.node_edges(n).start + e, skip], search_space.node_edges(n).start + e)
      for n, pairs in enumerate(nodes)
      for j, e in pairs
      if j == skip
    ]
    if len(skips) <= derivation.max_skip_connects:
      break
    candidate[min(skips)[1], skip] = False
  live, cells = set(range(search_space.NUM_INPUTS)), []
  for n, pairs in enumerate(nodes):
    kept = tuple((primitives[j], e) for j, e in pairs if e in live)
    if kept:
      live.add(search_space.NUM_INPUTS + n)
    cells.append(kept)
  concat = tuple(
    i
    for i in range(search_space.NUM_INPUTS, search_space.NUM_INPUTS + search_space.NUM_NODES)
    if i in live
  )
  if not concat:
    raise ValueError(
      f"no operation reaches op_threshold={derivation.op_threshold}: the cell keeps no node"
    )
  return CellGenotype(tuple(cells), reduction, concat)


def check_finite_psi(psi: np.ndarray, source: str = "ψ") -> None:
  """NonFinitePsiError when ψ holds NaN or inf (no arg-max means anything then);
  `source` names where ψ came from in the message."""
  psi = np.asarray(psi)
  bad = int(psi.size - np.count_nonzero(np.isfinite(psi)))
  if bad:
    raise NonFinitePsiError(
      f"{source} holds {bad} of {psi.size} values that are not "
      "finite (NaN or inf): no genotype can be derived from it"
    )


def derive_genotype(
  psi: np.ndarray,
  primitives: Sequence[str],
  edges_per_node: int = 2,
  *,
  derivation: Derivation | None = None,
  edge_weights: np.ndarray | None = None,
) -> GlobalGenotype:
  """The global genotype of ψ [L, C, Op]: one derived cell per layer (`derive_cell`;
  `edge_weights` [L, C] for the threshold rule). A ψ holding NaN or inf is refused
  (NonFinitePsiError)."""
  derivation = derivation or Derivation(edges_per_node=edges_per_node)
  derivation.check()
  psi = np.asarray(psi)
  L = psi.shape[0]
  if psi.shape[1:] != (search_space.NUM_CONNECTIONS, len(primitives)):
    raise ValueError(
      f"psi has shape {psi.shape}, expected [L, {search_space.NUM_CONNECTIONS}, {len(primitives)}]"
    )
  check_finite_psi(psi)
  if edge_weights is not None and np.shape(edge_weights) != psi.shape[:2]:
    raise ValueError(
      f"edge weights have shape {np.shape(edge_weights)}, expected {list(psi.shape[:2])}"
    )
  red = search_space.is_reduction(L)
  cells = []
  for k in range(L):
    try:
      cells.append(
        derive_cell(
          psi[k],
          primitives,
          red[k],
          derivation=derivation,
          edge_k=None if edge_weights is None else edge_weights[k],
        )
      )
    except ValueError as e:
      raise ValueError(f"layer {k}: {e}") from None
  return GlobalGenotype(tuple(cells))


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
    src_normals = [
      k for k in range(genotype.num_layers) if src_stage[k] == dst_stage[t] and not src_red[k]
    ]
    dst_normals = [k for k in range(num_layers) if dst_stage[k] == dst_stage[t] and not dst_red[k]]
    if not src_normals:
      raise ValueError(f"source stage {dst_stage[t]} has no normal cell to map from")
    p = dst_normals.index(t)
    cells.append(genotype.cells[src_normals[p * len(src_normals) // len(dst_normals)]])
  return GlobalGenotype(tuple(cells))


def stack_block_genotype(
  normal: Sequence[tuple[str, int]],
  reduce: Sequence[tuple[str, int]],
  num_layers: int,
  normal_concat: Sequence[int] = (2, 3, 4, 5),
  reduce_concat: Sequence[int] = (2, 3, 4, 5),
) -> GlobalGenotype:
  """A DARTS-style block genotype (8 (op, input) pairs per cell type, two per node)
  stacked over `num_layers` layers."""

  def cell(pairs, concat, reduction):
    pairs = list(pairs)
    return CellGenotype(
      tuple(tuple(pairs[2 * n : 2 * n + 2]) for n in range(search_space.NUM_NODES)),
      reduction,
      tuple(concat),
    )

  red = search_space.is_reduction(num_layers)
  n, r = cell(normal, normal_concat, False), cell(reduce, reduce_concat, True)
  return GlobalGenotype(tuple(r if red[k] else n for k in range(num_layers)))
