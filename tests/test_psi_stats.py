"""ψ's per-layer entropy and skip-connect weight (dnas_jax/search/psi_stats.py), and
the TensorBoard summary built from them, against the definitions computed here entry by
entry."""

import math

import numpy as np
import pytest

from dnas_jax.search import artifacts
from dnas_jax.search import psi_stats
from dnas_jax.space import search_space

PRIMS = search_space.PRIMITIVES


def _entropy_by_hand(layer):
  """-Σ q log q over the (connection, operation) entries of one layer, q = ψ / Σ ψ."""
  total = sum(float(v) for v in layer.ravel())
  h = 0.0
  for v in layer.ravel():
    q = float(v) / total
    if q > 0:
      h -= q * math.log(q)
  return h


def _skip_by_hand(layer, primitives):
  """The mean over the connections of ψ[i, skip_connect]."""
  j = list(primitives).index("skip_connect")
  return sum(float(layer[i, j]) for i in range(layer.shape[0])) / layer.shape[0]


def _psis():
  rng = np.random.default_rng(0)
  num_ops = len(PRIMS)
  # Decoupled-like ψ (products of factors in (0, 1), no sum fixed), per-connection
  # softmax ψ (each connection sums to one), one-hot ψ (zeros) and uniform ψ.
  one_hot = np.zeros((4, 14, num_ops))
  one_hot[:, :, 1] = 1.0
  return [
    rng.uniform(0.01, 1.0, (6, 14, num_ops)),
    rng.dirichlet(np.ones(num_ops), size=(5, 14)),
    one_hot,
    np.full((3, 14, num_ops), 0.3),
  ]


@pytest.mark.parametrize("index", range(4))
def test_entropy_and_skip_match_the_definitions(index):
  psi = _psis()[index]
  np.testing.assert_allclose(
    psi_stats.psi_entropy(psi), [_entropy_by_hand(layer) for layer in psi], rtol=1e-12, atol=1e-12
  )
  np.testing.assert_allclose(
    psi_stats.psi_skip(psi, PRIMS), [_skip_by_hand(layer, PRIMS) for layer in psi], rtol=1e-12
  )


def test_entropy_bounds():
  num_ops = len(PRIMS)
  uniform = np.full((2, 14, num_ops), 0.3)
  np.testing.assert_allclose(psi_stats.psi_entropy(uniform), math.log(14 * num_ops))
  one_hot = np.zeros((2, 14, num_ops))
  one_hot[:, 0, 0] = 1.0
  np.testing.assert_allclose(psi_stats.psi_entropy(one_hot), 0.0, atol=1e-12)


def test_skip_needs_skip_connect():
  with pytest.raises(ValueError, match="skip_connect"):
    psi_stats.psi_skip(np.ones((2, 14, 2)), ("max_pool_3x3", "avg_pool_3x3"))


def test_tensorboard_summary_uses_the_same_definitions():
  psi = _psis()[0].astype(np.float32)
  summary = artifacts.psi_summary(psi, PRIMS)
  assert sorted(summary) == sorted(
    [f"psi_entropy/layer_{k:02d}" for k in range(6)] + [f"psi_skip/layer_{k:02d}" for k in range(6)]
  )
  for k, layer in enumerate(psi):
    assert summary[f"psi_entropy/layer_{k:02d}"] == pytest.approx(_entropy_by_hand(layer), rel=1e-5)
    assert summary[f"psi_skip/layer_{k:02d}"] == pytest.approx(
      _skip_by_hand(layer, PRIMS), rel=1e-5
    )
  no_skip = artifacts.psi_summary(psi[:, :, :2], ("max_pool_3x3", "avg_pool_3x3"))
  assert sorted(no_skip) == [f"psi_entropy/layer_{k:02d}" for k in range(6)]
