"""Architecture weights ψ[layer, connection, operation]: three parameterisations.

All functions here are pure functions of small pytrees. The kinds, their trainable
arrays, ψ and the edge weights of each, and the options where the paper is silent are
tabulated once, in docs/design.md §1:

* ``decoupled``: DNAS's global search, formula (4) of Xu & He (CVPR-W 2022),
  ψ = σα(α) · σβ(β[k]) · σγ(γ[k]) (`decoupled_psi`);
* ``iam``: DARTS's block search, the identical-cell kind: one α for the normal cells
  and one for the reduction cells, shared by every layer of that type;
* ``full``: every layer its own Ψ (the naive global search).

Every kind returns `ArchWeights(psi, edge)`: ``psi`` [L, C, Op] multiplies operation
j's output on connection i of layer k (formula 5) and already contains the edge weight;
``edge`` [L, C] multiplies the channels that bypass the operations on a partial-channel
edge (PC-DARTS's edge normalisation), so the whole edge is
edge[k,i] · shuffle(concat(Σ_j (psi[k,i,j] / edge[k,i]) O_j(x₁), x₂)), PC-DARTS's cell.
The derivation uses ``psi``, edge weight included, as PC-DARTS's `genotype()` does.

The zero-one loss of FairDARTS, ``-mean((s - 0.5)**2)``, is taken over what
`ArchSpec.zero_one_target` names (`config.optim.zero_one_target`): ``factors``, one mean
over all entries of the factors whose activation is a sigmoid (0 with no sigmoid
factor); ``psi``, ψ itself; ``per_factor``, each sigmoid factor's own mean, summed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dnas_jax.space import search_space

# decoupled: DNAS (formula 4); iam: DARTS's block search, one α per cell type shared by
# every layer of that type (identical cells); full: one Ψ per layer (naive global).
KINDS = ("decoupled", "iam", "full")
BETA_DOMAINS = ("layer", "node")
ALPHA_SHARINGS = ("global", "cell_type")
ACTIVATIONS = ("sigmoid", "softmax")
# What the zero-one loss pushes towards 0 or 1 (`ArchSpec.zero_one_loss`).
ZERO_ONE_TARGETS = ("factors", "psi", "per_factor")

ArchParams = dict[str, jax.Array]


class ArchWeights(NamedTuple):
  """What the supernet takes: ψ [L, C, Op] for the operations (edge weight included)
  and the edge weights [L, C] for the bypassed channels."""

  psi: jax.Array
  edge: jax.Array


def _check(name: str, value: Any, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ValueError(f"arch.{name}={value!r} is not valid; valid values: {list(valid)}")


def node_softmax(beta: jax.Array) -> jax.Array:
  """Softmax of β [..., C] within each node's incoming connections (PC-DARTS)."""
  parts = [
    jax.nn.softmax(beta[..., r.start : r.stop], axis=-1)
    for r in (search_space.node_edges(n) for n in range(search_space.NUM_NODES))
  ]
  return jnp.concatenate(parts, axis=-1)


def _activate(x: jax.Array, activation: str, axis: int = -1) -> jax.Array:
  return jax.nn.sigmoid(x) if activation == "sigmoid" else jax.nn.softmax(x, axis=axis)


def beta_factor(
  beta: jax.Array, beta_domain: str = "layer", beta_activation: str = "softmax"
) -> jax.Array:
  """σβ(β) [L, C]: the connection factor of formula (4), DNAS's edge weight."""
  _check("beta_domain", beta_domain, BETA_DOMAINS)
  if beta_activation == "softmax":
    return node_softmax(beta) if beta_domain == "node" else jax.nn.softmax(beta, axis=-1)
  return jax.nn.sigmoid(beta)


def decoupled_psi(
  alpha: jax.Array,
  beta: jax.Array,
  gamma: jax.Array,
  *,
  beta_domain: str = "layer",
  alpha_activation: str = "sigmoid",
  beta_activation: str = "softmax",
  gamma_activation: str = "sigmoid",
  reduction: Any = None,
) -> jax.Array:
  """ψ of DNAS, formula (4): σα(α[i,j]) · σβ(β[k])[i] · σγ(γ[k,j]).

  Args:
    alpha: [C, Op] connection-operation weights shared by all layers, or [2, C, Op]
      (normal, reduction) with `reduction` a bool [L] saying which one each layer uses.
    beta: [L, C] layer-connection weights.
    gamma: [L, Op] layer-operation weights.
    beta_domain: "layer" (softmax over the C connections of a layer) or "node"
      (softmax over each node's incoming connections).
  Returns:
    ψ [L, C, Op].
  """
  a = _activate(alpha, alpha_activation)
  if a.ndim == 3:
    if reduction is None:
      raise ValueError("alpha of shape [2, C, Op] needs `reduction`, a bool per layer.")
    a = a[jnp.asarray(reduction, jnp.int32)]  # [L, C, Op]
  else:
    a = a[None]
  b = beta_factor(beta, beta_domain, beta_activation)
  g = _activate(gamma, gamma_activation)
  return a * b[:, :, None] * g[:, None, :]


def zero_one_loss(values: list[jax.Array]) -> jax.Array:
  """FairDARTS's zero-one loss, -mean((s - 0.5)^2) over all entries of `values`."""
  if not values:
    return jnp.zeros((), jnp.float32)
  flat = jnp.concatenate([jnp.ravel(v) for v in values])
  return -jnp.mean((flat - 0.5) ** 2)


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """Static description of one parameterisation of ψ for an L-layer network.

  `edge_normalization` (kinds ``iam`` and ``full``) adds PC-DARTS's edge weights: β
  [C] per cell type (``iam``: `beta_normal`, `beta_reduce`, as PC-DARTS's
  `betas_normal`, `betas_reduce`) or β [L, C] (``full``), a softmax over each node's
  incoming edges that multiplies the whole edge. The decoupled kind always has them:
  its β is the edge weight.
  """

  kind: str
  num_layers: int
  num_ops: int
  beta_domain: str = "layer"
  alpha_sharing: str = "global"
  alpha_activation: str = "sigmoid"
  beta_activation: str = "softmax"
  gamma_activation: str = "sigmoid"
  init_scale: float = 1e-3
  edge_normalization: bool = False
  zero_one_target: str = "factors"

  def __post_init__(self):
    _check("kind", self.kind, KINDS)
    _check("beta_domain", self.beta_domain, BETA_DOMAINS)
    _check("alpha_sharing", self.alpha_sharing, ALPHA_SHARINGS)
    _check("alpha_activation", self.alpha_activation, ACTIVATIONS)
    _check("beta_activation", self.beta_activation, ACTIVATIONS)
    _check("gamma_activation", self.gamma_activation, ACTIVATIONS)
    if self.zero_one_target not in ZERO_ONE_TARGETS:
      raise ValueError(
        f"optim.zero_one_target={self.zero_one_target!r} is not valid; "
        f"valid values: {list(ZERO_ONE_TARGETS)}"
      )
    if not isinstance(self.edge_normalization, bool):
      raise ValueError(f"arch.edge_normalization={self.edge_normalization!r} must be True or False")
    if self.edge_normalization and self.kind == "decoupled":
      raise ValueError(
        "arch.edge_normalization=True applies to the kinds 'iam' and "
        "'full'; the decoupled kind's β is always its edge weight"
      )

  @property
  def num_connections(self) -> int:
    return search_space.NUM_CONNECTIONS

  @property
  def reduction(self) -> np.ndarray:
    return np.asarray(search_space.is_reduction(self.num_layers))

  def shapes(self) -> dict[str, tuple[int, ...]]:
    L, C, O = self.num_layers, self.num_connections, self.num_ops
    if self.kind == "iam":
      out = {"alpha_normal": (C, O), "alpha_reduce": (C, O)}
      if self.edge_normalization:
        out.update(beta_normal=(C,), beta_reduce=(C,))
      return out
    if self.kind == "full":
      out = {"psi_logits": (L, C, O)}
      if self.edge_normalization:
        out["beta"] = (L, C)
      return out
    alpha = (2, C, O) if self.alpha_sharing == "cell_type" else (C, O)
    return {"alpha": alpha, "beta": (L, C), "gamma": (L, O)}

  def init(self, rng: jax.Array) -> ArchParams:
    """Initial parameters: init_scale · N(0, 1), as DARTS (1e-3 · randn)."""
    shapes = self.shapes()
    keys = jax.random.split(rng, len(shapes))
    return {
      name: self.init_scale * jax.random.normal(k, shape, jnp.float32)
      for k, (name, shape) in zip(keys, sorted(shapes.items()))
    }

  def num_params(self) -> int:
    """Trainable architecture numbers (decoupled, global α: L·C + L·Op + C·Op)."""
    return int(sum(np.prod(s) for s in self.shapes().values()))

  def _per_layer(self, per_type: jax.Array) -> jax.Array:
    """[2, ...] (normal, reduction) → [L, ...] by each layer's cell type."""
    return per_type[jnp.asarray(self.reduction, jnp.int32)]

  def arch_weights(self, params: Mapping[str, jax.Array]) -> ArchWeights:
    """ψ [L, C, Op] and the edge weights [L, C] from the parameters (table above)."""
    L, C = self.num_layers, self.num_connections
    if self.kind == "decoupled":
      edge = beta_factor(params["beta"], self.beta_domain, self.beta_activation)
      psi = decoupled_psi(
        params["alpha"],
        params["beta"],
        params["gamma"],
        beta_domain=self.beta_domain,
        alpha_activation=self.alpha_activation,
        beta_activation=self.beta_activation,
        gamma_activation=self.gamma_activation,
        reduction=self.reduction,
      )
      return ArchWeights(psi, edge)
    if self.kind == "iam":
      ops = self._per_layer(
        jnp.stack(
          [
            jax.nn.softmax(params["alpha_normal"], axis=-1),
            jax.nn.softmax(params["alpha_reduce"], axis=-1),
          ]
        )
      )
      edge = (
        self._per_layer(node_softmax(jnp.stack([params["beta_normal"], params["beta_reduce"]])))
        if self.edge_normalization
        else None
      )
    else:
      ops = jax.nn.softmax(params["psi_logits"], axis=-1)
      edge = node_softmax(params["beta"]) if self.edge_normalization else None
    if edge is None:
      return ArchWeights(ops, jnp.ones((L, C), ops.dtype))
    return ArchWeights(ops * edge[:, :, None], edge)

  def psi(self, params: Mapping[str, jax.Array]) -> jax.Array:
    """ψ [L, C, Op] from the parameters: the weight of each operation's output."""
    return self.arch_weights(params).psi

  def sigmoid_factors(self, params: Mapping[str, jax.Array]) -> list[jax.Array]:
    """The factors of ψ that pass through a sigmoid (for the zero-one loss)."""
    if self.kind != "decoupled":
      return []
    out = []
    for name, act in (
      ("alpha", self.alpha_activation),
      ("beta", self.beta_activation),
      ("gamma", self.gamma_activation),
    ):
      if act == "sigmoid":
        out.append(jax.nn.sigmoid(params[name]))
    return out

  def zero_one_loss(self, params: Mapping[str, jax.Array]) -> jax.Array:
    """FairDARTS's zero-one loss of what `zero_one_target` names (module docstring)."""
    if self.zero_one_target == "psi":
      return zero_one_loss([self.psi(params)])
    if self.zero_one_target == "per_factor":
      return sum(
        (zero_one_loss([f]) for f in self.sigmoid_factors(params)), jnp.zeros((), jnp.float32)
      )
    return zero_one_loss(self.sigmoid_factors(params))


def create_arch_spec(
  arch_config: Mapping[str, Any], num_layers: int, num_ops: int, zero_one_target: str = "factors"
) -> ArchSpec:
  """An ArchSpec from the `config.arch` section (kind, beta_domain, ...) and the
  zero-one loss's target (`config.optim.zero_one_target`)."""
  fields = {f.name for f in dataclasses.fields(ArchSpec)} - {
    "num_layers",
    "num_ops",
    "zero_one_target",
  }
  kwargs = {k: v for k, v in dict(arch_config).items() if k in fields}
  return ArchSpec(num_layers=num_layers, num_ops=num_ops, zero_one_target=zero_one_target, **kwargs)
