"""ψ parameterisations against plain NumPy loops over (k, i, j)."""

import jax
import numpy as np
import pytest

from dnas_jax.models import arch
from dnas_jax.space import search_space

L, C, OP = 6, search_space.NUM_CONNECTIONS, 7


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _softmax(v):
  e = np.exp(v - np.max(v))
  return e / e.sum()


def _node_of_connection(i):
  # Written out by hand from the DARTS topology: node n has 2 + n incoming edges.
  bounds = [(0, 2), (2, 5), (5, 9), (9, 14)]
  for lo, hi in bounds:
    if lo <= i < hi:
      return lo, hi
  raise AssertionError(i)


def numpy_decoupled(alpha, beta, gamma, domain, reduction=None):
  psi = np.zeros((L, C, OP))
  for k in range(L):
    if domain == "layer":
      b = _softmax(beta[k])
    for i in range(C):
      if domain == "node":
        lo, hi = _node_of_connection(i)
        b_i = _softmax(beta[k, lo:hi])[i - lo]
      else:
        b_i = b[i]
      for j in range(OP):
        a = alpha[int(reduction[k]), i, j] if alpha.ndim == 3 else alpha[i, j]
        psi[k, i, j] = _sigmoid(a) * b_i * _sigmoid(gamma[k, j])
  return psi


@pytest.mark.parametrize("domain", ["layer", "node"])
def test_decoupled_psi_matches_numpy_loop(domain):
  rng = np.random.default_rng(0)
  alpha, beta, gamma = rng.normal(size=(C, OP)), rng.normal(size=(L, C)), rng.normal(size=(L, OP))
  got = np.asarray(arch.decoupled_psi(alpha, beta, gamma, beta_domain=domain))
  np.testing.assert_allclose(got, numpy_decoupled(alpha, beta, gamma, domain), rtol=1e-5, atol=1e-7)


def test_decoupled_psi_per_cell_type_alpha():
  rng = np.random.default_rng(1)
  spec = arch.ArchSpec("decoupled", L, OP, alpha_sharing="cell_type")
  params = {
    "alpha": rng.normal(size=(2, C, OP)),
    "beta": rng.normal(size=(L, C)),
    "gamma": rng.normal(size=(L, OP)),
  }
  red = search_space.is_reduction(L)
  expected = numpy_decoupled(params["alpha"], params["beta"], params["gamma"], "layer", red)
  np.testing.assert_allclose(np.asarray(spec.psi(params)), expected, rtol=1e-5, atol=1e-7)


def test_node_domain_sums_to_one_per_node_and_layer_domain_per_layer():
  rng = np.random.default_rng(2)
  beta = rng.normal(size=(L, C))
  ones = np.full((C, OP), 50.0)  # sigmoid(50) == 1 in float32
  g = np.full((L, OP), 50.0)
  psi_layer = np.asarray(arch.decoupled_psi(ones, beta, g, beta_domain="layer"))
  np.testing.assert_allclose(psi_layer[:, :, 0].sum(-1), 1.0, rtol=1e-5)
  psi_node = np.asarray(arch.decoupled_psi(ones, beta, g, beta_domain="node"))
  for lo, hi in [(0, 2), (2, 5), (5, 9), (9, 14)]:
    np.testing.assert_allclose(psi_node[:, lo:hi, 0].sum(-1), 1.0, rtol=1e-5)


def test_iam_matches_numpy_loop():
  rng = np.random.default_rng(3)
  spec = arch.ArchSpec("iam", L, OP)
  params = {"alpha_normal": rng.normal(size=(C, OP)), "alpha_reduce": rng.normal(size=(C, OP))}
  red = search_space.is_reduction(L)
  assert red == tuple(k in (L // 3, 2 * L // 3) for k in range(L))
  expected = np.zeros((L, C, OP))
  for k in range(L):
    a = params["alpha_reduce"] if red[k] else params["alpha_normal"]
    for i in range(C):
      for j in range(OP):
        expected[k, i, j] = np.exp(a[i, j]) / np.exp(a[i]).sum()
  np.testing.assert_allclose(np.asarray(spec.psi(params)), expected, rtol=1e-5, atol=1e-7)


def test_full_matches_numpy_loop():
  rng = np.random.default_rng(4)
  spec = arch.ArchSpec("full", L, OP)
  logits = rng.normal(size=(L, C, OP))
  expected = np.zeros((L, C, OP))
  for k in range(L):
    for i in range(C):
      for j in range(OP):
        expected[k, i, j] = np.exp(logits[k, i, j]) / np.exp(logits[k, i]).sum()
  np.testing.assert_allclose(
    np.asarray(spec.psi({"psi_logits": logits})), expected, rtol=1e-5, atol=1e-7
  )


def test_number_of_architecture_parameters():
  assert arch.ArchSpec("decoupled", 20, 7).num_params() == 20 * 14 + 20 * 7 + 14 * 7
  assert arch.ArchSpec("decoupled", 20, 7).num_params() == 518
  assert arch.ArchSpec("full", 20, 7).num_params() == 20 * 14 * 7
  assert arch.ArchSpec("iam", 20, 8).num_params() == 2 * 14 * 8
  assert arch.ArchSpec("decoupled", 20, 7, alpha_sharing="cell_type").num_params() == (
    20 * 14 + 20 * 7 + 2 * 14 * 7
  )
  for kind in arch.KINDS:
    spec = arch.ArchSpec(kind, 8, 7)
    params = spec.init(jax.random.key(0))
    assert sum(v.size for v in params.values()) == spec.num_params()
    assert spec.psi(params).shape == (8, C, 7)


def test_zero_one_loss_against_numpy():
  rng = np.random.default_rng(5)
  spec = arch.ArchSpec("decoupled", L, OP)
  params = {
    "alpha": rng.normal(size=(C, OP)),
    "beta": rng.normal(size=(L, C)),
    "gamma": rng.normal(size=(L, OP)),
  }
  s = np.concatenate([_sigmoid(params["alpha"]).ravel(), _sigmoid(params["gamma"]).ravel()])
  np.testing.assert_allclose(float(spec.zero_one_loss(params)), -np.mean((s - 0.5) ** 2), rtol=1e-5)
  # Pushing the factors to 0 or 1 lowers the loss; at 0.5 it is 0.
  zeros = {k: np.zeros_like(v) for k, v in params.items()}
  assert float(spec.zero_one_loss(zeros)) == 0.0
  far = {k: 10 * np.sign(v) for k, v in params.items()}
  assert float(spec.zero_one_loss(far)) < float(spec.zero_one_loss(params)) < 0
  assert (
    float(arch.ArchSpec("full", L, OP).zero_one_loss({"psi_logits": rng.normal(size=(L, C, OP))}))
    == 0.0
  )


def test_bad_values_name_the_field_and_valid_values():
  with pytest.raises(ValueError, match=r"arch.kind='fancy'.*decoupled"):
    arch.ArchSpec("fancy", 8, 7)
  with pytest.raises(ValueError, match=r"arch.beta_domain='edge'.*layer.*node"):
    arch.ArchSpec("decoupled", 8, 7, beta_domain="edge")


def test_edge_weights_of_every_kind_against_numpy_loops():
  """PC-DARTS's edge normalisation (iam, full) and DNAS's σβ: the edge weight is a
  softmax over each node's incoming connections (or over the layer, for DNAS's default
  domain), and ψ = (weight inside the edge) × (edge weight)."""
  rng = np.random.default_rng(6)
  red = search_space.is_reduction(L)
  # iam with edge normalisation: β per cell type, as PC-DARTS's betas_normal/_reduce.
  spec = arch.ArchSpec("iam", L, OP, edge_normalization=True)
  params = {
    "alpha_normal": rng.normal(size=(C, OP)),
    "alpha_reduce": rng.normal(size=(C, OP)),
    "beta_normal": rng.normal(size=(C,)),
    "beta_reduce": rng.normal(size=(C,)),
  }
  w = spec.arch_weights(params)
  for k in range(L):
    kind = "reduce" if red[k] else "normal"
    for i in range(C):
      lo, hi = _node_of_connection(i)
      e = _softmax(params[f"beta_{kind}"][lo:hi])[i - lo]
      np.testing.assert_allclose(float(w.edge[k, i]), e, rtol=1e-5)
      np.testing.assert_allclose(
        np.asarray(w.psi[k, i]), _softmax(params[f"alpha_{kind}"][i]) * e, rtol=1e-5
      )
  # full with edge normalisation: β per layer.
  spec = arch.ArchSpec("full", L, OP, edge_normalization=True)
  params = {"psi_logits": rng.normal(size=(L, C, OP)), "beta": rng.normal(size=(L, C))}
  w = spec.arch_weights(params)
  for k in range(L):
    for i in range(C):
      lo, hi = _node_of_connection(i)
      e = _softmax(params["beta"][k, lo:hi])[i - lo]
      np.testing.assert_allclose(float(w.edge[k, i]), e, rtol=1e-5)
      np.testing.assert_allclose(
        np.asarray(w.psi[k, i]), _softmax(params["psi_logits"][k, i]) * e, rtol=1e-5
      )
  # Without edge normalisation the edge weight is 1 and ψ the softmax alone.
  spec = arch.ArchSpec("full", L, OP)
  w = spec.arch_weights({"psi_logits": params["psi_logits"]})
  np.testing.assert_array_equal(np.asarray(w.edge), np.ones((L, C)))
  # DNAS: the edge weight is σβ, in either β domain; ψ / edge = σα · σγ.
  for domain in ("layer", "node"):
    spec = arch.ArchSpec("decoupled", L, OP, beta_domain=domain)
    params = {
      "alpha": rng.normal(size=(C, OP)),
      "beta": rng.normal(size=(L, C)),
      "gamma": rng.normal(size=(L, OP)),
    }
    w = spec.arch_weights(params)
    psi = numpy_decoupled(params["alpha"], params["beta"], params["gamma"], domain)
    np.testing.assert_allclose(np.asarray(w.psi), psi, rtol=1e-5, atol=1e-7)
    for k in range(L):
      for i in range(C):
        if domain == "layer":
          e = _softmax(params["beta"][k])[i]
        else:
          lo, hi = _node_of_connection(i)
          e = _softmax(params["beta"][k, lo:hi])[i - lo]
        np.testing.assert_allclose(float(w.edge[k, i]), e, rtol=1e-5)


def test_edge_normalization_parameters_and_errors():
  assert arch.ArchSpec("iam", 8, 8, edge_normalization=True).num_params() == 2 * 14 * 8 + 2 * 14
  assert arch.ArchSpec("full", 20, 8, edge_normalization=True).num_params() == 20 * 14 * 9
  for kind in ("iam", "full"):
    spec = arch.ArchSpec(kind, 8, 7, edge_normalization=True)
    params = spec.init(jax.random.key(0))
    assert sum(v.size for v in params.values()) == spec.num_params()
    assert (
      float(np.abs(np.asarray(params["beta" if kind == "full" else "beta_normal"])).max()) < 0.01
    )
  with pytest.raises(ValueError, match="edge_normalization=True applies to"):
    arch.ArchSpec("decoupled", 8, 7, edge_normalization=True)
  with pytest.raises(ValueError, match="must be True or False"):
    arch.ArchSpec("iam", 8, 7, edge_normalization="yes")
