"""The partial-channel supernet of the search, with ψ as an input (docs/design.md §1, §5).

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

from dnas_jax.space import ops
from dnas_jax.space import search_space

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
  formulation: ops.Formulation = ops.CONV

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
                        dtype=self.dtype, formulation=self.formulation)(xs)
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
  formulation: ops.Formulation

  @nn.compact
  def __call__(self, xs, weights, edge):  # xs [E,B,H,W,C], weights [E,Op], edge [E]
    batched = nn.vmap(MixedOp, in_axes=(0, 0, 0), out_axes=0,
                      variable_axes={"params": 0, "batch_stats": 0},
                      split_rngs={"params": True, "dropout": True})
    ys = batched(self.channels, self.stride, tuple(self.primitives), self.partial_k,
                 self.skip_dropout, self.train, self.dtype, self.formulation,
                 name="edges")(xs, weights,
                                                                         edge)
    return jnp.sum(ys, axis=0)


def _cell_nodes(module: nn.Module, p0, p1, psi_k, edge_k, *, reduction: bool):
  """The 4 nodes of a cell from its preprocessed inputs, in the scope of `module` (a
  SearchCell or a stage's scan body): each node sums its incoming mixed edges, grouped
  by stride and batched; returns the nodes concatenated."""
  c = module.channels
  states = [p0, p1]
  for node in range(search_space.NUM_NODES):
    edges = search_space.node_edges(node)
    w = psi_k[edges.start:edges.stop]
    e = edge_k[edges.start:edges.stop]
    # On a reduction cell the edges from s0 and s1 have stride 2, the others 1.
    n_strided = search_space.NUM_INPUTS if reduction else 0
    groups = [(2, range(0, n_strided)), (1, range(n_strided, len(states)))]
    total = None
    for stride, inputs in groups:
      if not len(inputs):
        continue
      xs = jnp.stack([states[i] for i in inputs])
      y = _EdgeGroup(c, stride, tuple(module.primitives), module.partial_k,
                     module.skip_dropout, module.train, module.dtype, module.formulation,
                     name=f"node{node}_stride{stride}")(
                         xs, w[inputs.start:inputs.stop], e[inputs.start:inputs.stop])
      total = y if total is None else total + y
    states.append(total)
  return jnp.concatenate(states[search_space.NUM_INPUTS:], axis=-1)


class SearchCell(nn.Module):
  """A search cell: s0, s1, ψ[k] [14, Op] and e[k] [14] in, the 4 nodes concatenated
  out. Preprocessing as DARTS: s0 by a 1×1 ReLU-conv-BN (a factorized reduce after a
  reduction cell), s1 by a 1×1 ReLU-conv-BN, both to `channels`."""
  channels: int
  reduction: bool
  reduction_prev: bool
  primitives: Sequence[str]
  partial_k: int = 4
  skip_dropout: float = 0.0
  train: bool = True
  dtype: Dtype = jnp.float32
  formulation: ops.Formulation = ops.CONV

  @nn.compact
  def __call__(self, s0, s1, psi_k, edge_k):
    c = self.channels
    if self.reduction_prev:
      s0 = ops.FactorizedReduce(c, False, self.train, self.dtype, self.formulation,
                                name="pre0")(s0)
    else:
      s0 = ops.ReLUConvBN(c, affine=False, train=self.train, dtype=self.dtype,
                          name="pre0")(s0)
    s1 = ops.ReLUConvBN(c, affine=False, train=self.train, dtype=self.dtype,
                        name="pre1")(s1)
    return _cell_nodes(self, s0, s1, psi_k, edge_k, reduction=self.reduction)


def _relu_conv_bn(module: nn.Module, x, kernel, name: str):
  """ReLU, 1×1 convolution with a given kernel [1, 1, Cin, Cout], BN without affine."""
  x, kernel = nn.dtypes.promote_dtype(nn.relu(x), kernel, dtype=module.dtype)
  y = ops.saved(jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
  return ops.BatchNorm(False, module.train, module.dtype, name=name)(y)


class _StageCell(nn.Module):
  """Scan body for the normal cells of a stage. Carry: the raw outputs (s0, s1) of the
  two previous layers, [B, H, W, 4C] (zeros where a previous layer's output has another
  shape). Scanned: ψ[k], e[k], the 1×1 preprocessing kernels of layer k, and which
  preprocessed input comes from outside the scan (`use0`, `use1`: an index into
  `outside0`/`outside1`, or -1). Layers whose preprocessing reads another shape (the
  stem, or the output before a reduction, through a factorized reduce) get it computed
  before the scan and selected here, so that every normal cell of a stage is this one
  traced body."""
  channels: int
  primitives: Sequence[str]
  partial_k: int
  skip_dropout: float
  train: bool
  dtype: Dtype
  formulation: ops.Formulation

  @nn.compact
  def __call__(self, carry, xs, outside):
    s0, s1 = carry
    psi_k, edge_k, kernel0, kernel1, use0, use1 = xs
    outside0, outside1 = outside
    p0 = _relu_conv_bn(self, s0, kernel0, "pre0")
    p1 = _relu_conv_bn(self, s1, kernel1, "pre1")
    if outside0 is not None:
      p0 = jnp.where(use0 >= 0, outside0[jnp.maximum(use0, 0)], p0)
    if outside1 is not None:
      p1 = jnp.where(use1 >= 0, outside1[jnp.maximum(use1, 0)], p1)
    out = _cell_nodes(self, p0, p1, psi_k, edge_k, reduction=False)
    return (s1, out), None


class _Kernels(nn.Module):
  """1×1 kernels [n, 1, 1, Cin, Cout] for the layers of a scan that preprocess inside
  it, scattered into [length, ...] with zeros for the layers preprocessed outside."""
  length: int
  regular: tuple[int, ...]
  cin: int
  cout: int

  @nn.compact
  def __call__(self):
    full = jnp.zeros((self.length, 1, 1, self.cin, self.cout), jnp.float32)
    if not self.regular:
      return full
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (len(self.regular), 1, 1, self.cin, self.cout))
    return full.at[jnp.asarray(self.regular)].set(kernel)


def stage_plan(num_layers: int) -> list[tuple[int | None, int, int]]:
  """Per stage: (its reduction layer or None for the first stage, first and end layer of
  its normal cells). Every stage's normal cells run under one scan, so the program has
  three scanned cell bodies and two reduction cells at any depth."""
  r1, r2 = search_space.reduction_layers(num_layers)
  return [(None, 0, r1), (r1, r1 + 1, r2), (r2, r2 + 1, num_layers)]


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
  formulation: ops.Formulation = ops.CONV
  remat: bool = False  # recompute a normal cell's element-wise work in its backward
  scan_stages: bool = True  # False: every cell traced on its own (cell by cell)

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
    x = images.astype(self.dtype)
    x = ops.conv(self.stem_multiplier * self.channels, 3, 1, 1, dtype=self.dtype,
                 name="stem_conv")(x)
    stem = ops.BatchNorm(True, self.train, self.dtype, name="stem_bn")(x)
    prims = tuple(self.primitives)
    common = (prims, self.partial_k, self.skip_dropout, self.train, self.dtype,
              self.formulation)
    c = self.channels
    if not self.scan_stages:  # DARTS's network as written: one traced cell per layer
      red = search_space.is_reduction(L)
      s0 = s1 = stem
      for k in range(L):
        c = c * 2 if red[k] else c
        s0, s1 = s1, SearchCell(c, red[k], k > 0 and red[k - 1], *common,
                                name=f"cell{k}")(s0, s1, psi[k], edge_weights[k])
      return self._classify(s1)
    before, last = stem, stem  # outputs of the layers k-2 and k-1
    for stage, (reduction, a, b) in enumerate(stage_plan(L)):
      if reduction is not None:
        c *= 2
        out = SearchCell(c, True, reduction > 0 and reduction - 1 in
                         search_space.reduction_layers(L), *common,
                         name=f"cell{reduction}")(before, last, psi[reduction],
                                                  edge_weights[reduction])
        before, last = last, out
      if b <= a:
        continue
      # Preprocessed inputs that come from outside the scan: the stem's (stage 0,
      # layers 0 and 1) and the factorized reduce of the output before the reduction.
      outside0, outside1, use0, use1 = [], [], [-1] * (b - a), [-1] * (b - a)
      if stage == 0:
        for k in range(a, min(a + 2, b)):
          use0[k - a] = len(outside0)
          outside0.append(ops.ReLUConvBN(c, affine=False, train=self.train,
                                         dtype=self.dtype, name=f"cell{k}_pre0")(stem))
        use1[0] = 0
        outside1.append(ops.ReLUConvBN(c, affine=False, train=self.train,
                                       dtype=self.dtype, name=f"cell{a}_pre1")(stem))
      else:
        use0[0] = 0
        outside0.append(ops.FactorizedReduce(c, False, self.train, self.dtype,
                                             self.formulation, name=f"cell{a}_pre0")(before))
      width = 4 * c  # a normal cell's output channels
      regular0 = tuple(i for i in range(b - a) if use0[i] < 0)
      regular1 = tuple(i for i in range(b - a) if use1[i] < 0)
      kernel0 = _Kernels(b - a, regular0, width, c, name=f"stage{stage}_pre0")()
      kernel1 = _Kernels(b - a, regular1, width, c, name=f"stage{stage}_pre1")()
      zeros = jnp.zeros(last.shape[:-1] + (width,), last.dtype) if stage == 0 else None
      # Carry: s0 is only read through the in-scan preprocessing from layer a + 2 on
      # (stage 0) or a + 1 on; a different shape before that is replaced by zeros.
      s0 = jnp.zeros_like(last) if stage > 0 else zeros
      s1 = last if stage > 0 else zeros
      body = (nn.remat(_StageCell, policy=ops.REMAT_POLICY, prevent_cse=False)
              if self.remat else _StageCell)
      scan = nn.scan(body,
                     variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                     split_rngs={"params": True, "dropout": True},
                     in_axes=(0, nn.broadcast), length=b - a)
      xs = (psi[a:b], edge_weights[a:b], kernel0, kernel1,
            jnp.asarray(use0, jnp.int32), jnp.asarray(use1, jnp.int32))
      outside = (jnp.stack(outside0) if outside0 else None,
                 jnp.stack(outside1) if outside1 else None)
      (before, last), _ = scan(c, *common, name=f"cells{a}_{b}")((s0, s1), xs, outside)
      if stage == 0 and b - a == 1:  # the carry's s0 was a placeholder: the layer
        before = stem                # before layer 0 is the stem
    return self._classify(last)

  def _classify(self, features):
    x = jnp.mean(features, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return logits.astype(jnp.promote_types(self.dtype, jnp.float32))
