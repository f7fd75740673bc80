"""ψ's per-layer statistics, the ones TensorBoard shows during a search
(`artifacts.psi_summary`): its entropy and skip-connect's weight in it.

NumPy only, so that a reader of a `psi.npy` needs neither JAX nor matplotlib.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


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
