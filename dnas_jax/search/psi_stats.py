"""ψ's per-layer statistics, the ones TensorBoard shows during a search
(`artifacts.psi_summary`): its entropy, skip-connect's weight in it, and the share of
parameter-free operations in the cells derived from it (the collapse of DARTS-like
searches towards skip-connects and pools).

NumPy only, so that a reader of a `psi.npy` needs neither JAX nor matplotlib.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import search_space

# The operations without parameters (DARTS's names); skip_connect only at stride 1: on
# a reduction cell's edges from s0 and s1 it is a factorized reduce, with 1×1 convs.
PARAMETER_FREE = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")


def psi_entropy(psi: np.ndarray) -> np.ndarray:
  """Per layer, the entropy (nats) of ψ[k] normalised to sum to one over all its
  (connection, operation) pairs; [L].

  Low values mean a layer whose ψ sits on few operations of few connections; the
  largest value is log(C · Op), ψ uniform over the layer.
  """
  flat = psi.reshape(psi.shape[0], -1)
  p = flat / flat.sum(-1, keepdims=True)
  return -(p * np.log(np.maximum(p, 1e-30))).sum(-1)


def psi_skip(psi: np.ndarray, primitives: Sequence[str]) -> np.ndarray:
  """Per layer, skip-connect's ψ averaged over the connections: mean_i ψ[k, i, skip];
  [L].

  Where each connection's ψ sums to one over the operations (the `iam` and `full`
  kinds without edge weights) this is skip-connect's share of the layer's ψ.

  Raises:
    ValueError: 'skip_connect' is not one of `primitives`.
  """
  if "skip_connect" not in primitives:
    raise ValueError(f"no 'skip_connect' in primitives {list(primitives)}")
  return psi[:, :, list(primitives).index("skip_connect")].mean(-1)


def is_parameter_free(op: str, reduction: bool, inp: int) -> bool:
  """Whether an edge of a cell (its operation, the cell's kind and the edge's input)
  has no parameters."""
  if op == "skip_connect":
    return not (reduction and inp < search_space.NUM_INPUTS)
  return op in PARAMETER_FREE


def parameter_free_share(genotype: genotype_lib.GlobalGenotype) -> np.ndarray:
  """Per layer, the share of the derived cell's edges whose operation has no
  parameters (`is_parameter_free`); [L]. Above one half, the cell has collapsed
  mostly to skip-connects and pools."""
  out = []
  for cell in genotype.cells:
    edges = [(op, inp) for node in cell.nodes for op, inp in node]
    free = sum(is_parameter_free(op, cell.reduction, inp) for op, inp in edges)
    out.append(free / len(edges) if edges else 0.0)
  return np.asarray(out, np.float64)
