"""The partial-channel supernet of the search, with ψ as an input (DESIGN.md §1, §4).

* `MixedOp`: one mixed edge, formula (5): X = Σ_j ψ[k,i,j] · O_j(x), computed on the
  first 1/K of the channels (PC-DARTS); the other channels bypass (max-pooled on
  reduction edges), multiplied by the edge weight e[k,i], and the result is
  channel-shuffled: shuffle(concat(Σ_j ψ[k,i,j]·O_j(x₁), e[k,i]·x₂)). Since ψ already
  holds the edge weight (`arch.ArchWeights`), the whole edge carries it, as in PC-DARTS's
  edge normalisation. K = 1 turns partial channels off (no bypass).
* `SearchCell`: a DARTS cell whose edges into a node are batched: the 2 to 5 inputs of
  a node are stacked and every operation is `vmap`-ed over them (with per-edge weights
  and batch statistics), so a cell traces 4 nodes × Op operations, not 14 × Op.
* `SearchNetwork`: stem, L cells, global pooling, linear classifier. The normal cells of
  a stage whose inputs share one shape (all but the first after a reduction, and the
  first two of the network) run under one `nn.scan` over layers, with weights stacked
  on a leading layer axis and (ψ[k], e[k]) as the scanned input. The program therefore has the
  same size for any depth: per-layer architectures are data, not code.

Batch norms of the cells have no scale or bias; the stem's BN is affine, as in PC-DARTS's
`model_search.py`, so that weight counts equal that network's.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dnas_jax import ops
from dnas_jax import search_space

Dtype = Any


class MixedOp(nn.Module):
  """One mixed edge on a partial channel slice; x [B,H,W,Cin], weights [Op] (ψ[k,i]),
  edge_weight [] (e[k,i], multiplies the bypassed channels; None: 1)."""
  channels: int
  stride: int
  primitives: Sequence[str]
  partial_k: int = 4
  skip_dropout: float = 0.0
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, weights, edge_weight=None):
    k = self.partial_k
    if x.shape[-1] % k:
      raise ValueError(f"channels {x.shape[-1]} not divisible by partial_k={k}")
    c = x.shape[-1] // k
    xs = x[..., :c]
    out = None
    for j, name in enumerate(self.primitives):
      y = ops.create_op(name, c, self.stride, affine=False, train=self.train,
                        dtype=self.dtype)(xs)
      if name == "skip_connect" and self.stride == 1 and self.skip_dropout > 0:
        y = nn.Dropout(self.skip_dropout, deterministic=not self.train)(y)
      term = weights[j].astype(y.dtype) * y
      out = term if out is None else out + term
    if k == 1:
      return out
    rest = x[..., c:]
    if self.stride == 2:
      rest = nn.max_pool(rest, (2, 2), (2, 2))
    if edge_weight is not None:
      rest = edge_weight.astype(rest.dtype) * rest
    return ops.channel_shuffle(jnp.concatenate([out, rest], -1), k)


class _EdgeGroup(nn.Module):
  """The edges of one node that share a stride: inputs stacked on axis 0."""
  channels: int
  stride: int
  primitives: Sequence[str]
  partial_k: int
  skip_dropout: float
  train: bool
  dtype: Dtype

  @nn.compact
  def __call__(self, xs, weights, edge):  # xs [E,B,H,W,C], weights [E,Op], edge [E]
    batched = nn.vmap(MixedOp, in_axes=(0, 0, 0), out_axes=0,
                      variable_axes={"params": 0, "batch_stats": 0},
                      split_rngs={"params": True, "dropout": True})
    ys = batched(self.channels, self.stride, tuple(self.primitives), self.partial_k,
                 self.skip_dropout, self.train, self.dtype, name="edges")(xs, weights,
                                                                         edge)
    return jnp.sum(ys, axis=0)


class SearchCell(nn.Module):
  """A search cell: s0, s1, ψ[k] [14, Op] and e[k] [14] in, the 4 nodes concatenated
  out."""
  channels: int
  reduction: bool
  reduction_prev: bool
  primitives: Sequence[str]
  partial_k: int = 4
  skip_dropout: float = 0.0
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, s0, s1, psi_k, edge_k):
    c = self.channels
    if self.reduction_prev:
      s0 = ops.FactorizedReduce(c, False, self.train, self.dtype, name="pre0")(s0)
    else:
      s0 = ops.ReLUConvBN(c, affine=False, train=self.train, dtype=self.dtype,
                          name="pre0")(s0)
    s1 = ops.ReLUConvBN(c, affine=False, train=self.train, dtype=self.dtype,
                        name="pre1")(s1)
    states = [s0, s1]
    for node in range(search_space.NUM_NODES):
      edges = search_space.node_edges(node)
      w = psi_k[edges.start:edges.stop]
      e = edge_k[edges.start:edges.stop]
      # On a reduction cell the edges from s0 and s1 have stride 2, the others 1.
      n_strided = search_space.NUM_INPUTS if self.reduction else 0
      groups = [(2, range(0, n_strided)), (1, range(n_strided, len(states)))]
      total = None
      for stride, inputs in groups:
        if not len(inputs):
          continue
        xs = jnp.stack([states[i] for i in inputs])
        y = _EdgeGroup(c, stride, tuple(self.primitives), self.partial_k,
                       self.skip_dropout, self.train, self.dtype,
                       name=f"node{node}_stride{stride}")(
                           xs, w[inputs.start:inputs.stop], e[inputs.start:inputs.stop])
        total = y if total is None else total + y
      states.append(total)
    return jnp.concatenate(states[search_space.NUM_INPUTS:], axis=-1)


class _ScannedCell(nn.Module):
  """Scan body: carry (s0, s1), scanned input (ψ[k], e[k])."""
  channels: int
  primitives: Sequence[str]
  partial_k: int
  skip_dropout: float
  train: bool
  dtype: Dtype

  @nn.compact
  def __call__(self, carry, weights_k):
    s0, s1 = carry
    out = SearchCell(self.channels, False, False, self.primitives, self.partial_k,
                     self.skip_dropout, self.train, self.dtype, name="cell")(
                         s0, s1, *weights_k)
    return (s1, out), None


def layer_plan(num_layers: int) -> list[tuple[str, int, int]]:
  """How the network runs its layers: ('cell', k, k+1) for a cell traced on its own,
  ('scan', a, b) for layers a..b-1 under one scan (empty when the stage is too short to
  have a scannable cell). A stage traces at most 2 cells on their own and one scan body,
  so the program's size does not grow with depth."""
  reduction = search_space.is_reduction(num_layers)
  plan: list[tuple[str, int, int]] = []
  k = 0
  for stage_end in (*search_space.reduction_layers(num_layers), num_layers):
    # Scannable: a normal cell at k >= 2 whose predecessor is normal.
    while k < stage_end and (k < 2 or reduction[k] or reduction[k - 1]):
      plan.append(("cell", k, k + 1))
      k += 1
    plan.append(("scan", k, stage_end))
    k = stage_end
  return plan


class SearchNetwork(nn.Module):
  """Stem, L search cells, global average pooling, linear classifier.

  `__call__(images [B,H,W,3], psi [L,14,Op], edge_weights [L,14])` returns logits
  [B, num_classes]; ψ and the edge weights come from `arch.ArchSpec.weights`.
  `edge_weights=None` leaves the bypassed channels unweighted (all ones).
  """
  num_classes: int
  num_layers: int
  channels: int = 16
  primitives: Sequence[str] = search_space.PRIMITIVES
  partial_k: int = 4
  skip_dropout: float = 0.0
  stem_multiplier: int = 3
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, psi, edge_weights=None):
    L = self.num_layers
    expected = (L, search_space.NUM_CONNECTIONS, len(self.primitives))
    if tuple(psi.shape) != expected:
      raise ValueError(f"psi has shape {tuple(psi.shape)}, expected {expected}")
    if edge_weights is None:
      edge_weights = jnp.ones(expected[:2], psi.dtype)
    if tuple(edge_weights.shape) != expected[:2]:
      raise ValueError(f"edge_weights has shape {tuple(edge_weights.shape)}, "
                       f"expected {expected[:2]}")
    reduction = search_space.is_reduction(L)
    x = images.astype(self.dtype)
    x = ops.conv(self.stem_multiplier * self.channels, 3, 1, 1, dtype=self.dtype,
                 name="stem_conv")(x)
    x = ops.BatchNorm(True, self.train, self.dtype, name="stem_bn")(x)
    s0 = s1 = x
    prims = tuple(self.primitives)
    for kind, a, b in layer_plan(L):
      c = self.channels * 2 ** sum(reduction[:a + 1 if kind == "cell" else a])
      if kind == "cell":
        cell = SearchCell(c, reduction[a], a > 0 and reduction[a - 1], prims,
                          self.partial_k, self.skip_dropout, self.train, self.dtype,
                          name=f"cell{a}")
        s0, s1 = s1, cell(s0, s1, psi[a], edge_weights[a])
      elif b > a:
        scan = nn.scan(_ScannedCell,
                       variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                       split_rngs={"params": True, "dropout": True},
                       in_axes=0, length=b - a)
        (s0, s1), _ = scan(c, prims, self.partial_k, self.skip_dropout, self.train,
                           self.dtype, name=f"cells{a}_{b}")((s0, s1),
                                                       (psi[a:b], edge_weights[a:b]))
    x = jnp.mean(s1, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return logits.astype(jnp.promote_types(self.dtype, jnp.float32))
