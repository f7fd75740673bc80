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
import numpy as np

from dnas_jax.kernels import cpu as cpu_kernels
from dnas_jax.space import batched_ops
from dnas_jax.space import ops
from dnas_jax.space import search_space

Dtype = Any


class MixedOp(nn.Module):
  """One mixed edge on a partial channel slice; x [B,H,W,Cin], psi [Op] (ψ[k,i]),
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
  def __call__(self, x, psi, edge_weight=None):
    k = self.partial_k
    if x.shape[-1] % k:
      raise ValueError(f"channels {x.shape[-1]} not divisible by partial_k={k}")
    c = x.shape[-1] // k
    xs = x[..., :c]
    out = None
    for j, name in enumerate(self.primitives):
      y = ops.create_op(
        name,
        c,
        self.stride,
        affine=False,
        train=self.train,
        dtype=self.dtype,
        formulation=self.formulation,
      )(xs)
      if name == "skip_connect" and self.stride == 1 and skip_dropout_on(self.skip_dropout):
        y = _skip_dropout(self, y)
      term = psi[j].astype(y.dtype) * y
      out = term if out is None else out + term
    if k == 1:
      return out
    rest = x[..., c:]
    if self.stride == 2:
      rest = nn.max_pool(rest, (2, 2), (2, 2))
    if edge_weight is not None:
      rest = edge_weight.astype(rest.dtype) * rest
    return ops.channel_shuffle(jnp.concatenate([out, rest], -1), k)


class BatchedMixedOps(nn.Module):
  """The mixed edges of one node that share a stride, with the edges beside the
  channels (`batched_ops`): x [B, H, W, E, Cin], psi [E, Op] (ψ[k, i] of each
  edge), edge_weight [E] (or None: 1) in; the sum over the edges of `MixedOp` out,
  [B, H', W', Cin]. The same variables as `nn.vmap(MixedOp)` and the same numbers."""

  channels: int
  stride: int
  primitives: Sequence[str]
  partial_k: int = 4
  skip_dropout: float = 0.0
  train: bool = True
  dtype: Dtype = jnp.float32
  formulation: ops.Formulation = ops.CONV

  @nn.compact
  def __call__(self, x, psi, edge_weight=None):
    k = self.partial_k
    if x.shape[-1] % k:
      raise ValueError(f"channels {x.shape[-1]} not divisible by partial_k={k}")
    c = x.shape[-1] // k
    xs = x[..., :c]
    # Every operation's module gets the scope `MixedOp` gives it (`ops.unattached_ops`),
    # so that both layouts declare the same variables, a user's operations included.
    built = ops.unattached_ops(
      self.primitives,
      c,
      self.stride,
      affine=False,
      train=self.train,
      dtype=self.dtype,
      formulation=self.formulation,
    )
    if self.formulation.depthwise == "kernel":
      out = self._stacked(xs, psi, built)
    else:
      out = None
      for j, name in enumerate(self.primitives):
        if name == "none":  # zeros: adds nothing, and its weight gets a zero gradient
          continue
        y = self._one_op(xs, name, built[name])
        term = psi[:, j, None].astype(y.dtype) * y
        out = term if out is None else out + term
      out = None if out is None else jnp.sum(out, axis=-2)
    if out is None:
      out = jnp.zeros(xs[:, :: self.stride, :: self.stride, 0].shape, xs.dtype)
    # The sums over the edges are materialised, and so are their gradients: XLA:CPU
    # then reduces plain arrays for ψ's and the edge weights' gradients instead of
    # fusing the channel shuffle's transpose into those reductions.
    out = ops.materialize(out)
    if k == 1:
      return out
    rest = x[..., c:]
    if self.stride == 2:
      rest = batched_ops.max_pool_2x2(rest)
    if edge_weight is not None:
      rest = edge_weight[:, None].astype(rest.dtype) * rest
    rest = ops.materialize(jnp.sum(rest, axis=-2))
    return ops.channel_shuffle(jnp.concatenate([out, rest], -1), k)

  def _one_op(self, xs, name, built):
    """One operation on the E edges of xs [B, H, W, E, c]: its batched form
    (`batched_ops.BATCHED`) or, without one, its `ops` module edge by edge
    (`batched_ops.per_edge`); the skip connection's dropout after it."""
    scope, op = built
    if batched_ops.has_batched(name):
      module = ops.unattached(
        lambda: batched_ops.BATCHED[name](
          xs.shape[-1], self.stride, self.train, self.dtype, self.formulation
        )
      )
      y = module.clone(parent=self, name=scope)(xs)
    else:
      y = batched_ops.per_edge(self, xs, op, scope)
    if name == "skip_connect" and self.stride == 1 and skip_dropout_on(self.skip_dropout):
      # Per edge, as `nn.vmap(MixedOp)` draws the masks: the same random numbers.
      y = jnp.moveaxis(_dropout_per_edge(self, jnp.moveaxis(y, -2, 0)), 0, -2)
    return y

  def _stacked(self, xs, psi, built):
    """Σ over ops and edges of ψ · op(x) with the ops in stacked blocks
    (`batched_ops.stacked_pool_ops`, `stacked_conv_ops`): one weighted sum per block;
    the skip connection and the operations without a batched form one block each."""
    prims = tuple(self.primitives)
    scopes = {p: scope for p, (scope, _) in built.items()}
    blocks = []
    pools = batched_ops.pool_scopes(scopes)
    if pools:
      blocks.append(
        (
          list(pools),
          batched_ops.stacked_pool_ops(self, xs, pools, self.stride, self.train, self.dtype),
        )
      )
    convs = batched_ops.conv_scopes(scopes)
    if convs:
      blocks += batched_ops.stacked_conv_ops(self, xs, convs, self.stride, self.train, self.dtype)
    for p in prims:
      if p != "none" and p not in pools and p not in convs:
        blocks.append(([p], self._one_op(xs, p, built[p])[..., None, :, :]))
    out = None
    for names, y in blocks:  # y [B, H, W, ops, E, c]
      idx = [prims.index(p) for p in names]
      if idx == list(range(idx[0], idx[0] + len(idx))):  # a slice, which XLA fuses
        w = psi[:, idx[0] : idx[0] + len(idx)].T  # [ops, E]
      else:  # a gather, a kernel of its own
        w = psi[:, np.asarray(idx)].T
      term = jnp.sum(y * w[:, :, None].astype(y.dtype), axis=(3, 4))
      out = term if out is None else out + term
    return out


def skip_dropout_on(rate) -> bool:
  """Whether the skip connection's dropout is traced: a Python number when it is above
  0; an array (a schedule's rate, traced in the step) always."""
  return not isinstance(rate, (int, float)) or rate > 0


def _skip_dropout(module: nn.Module, y):
  """The skip connection's dropout at `module.skip_dropout`: flax's `nn.Dropout` for a
  Python number; for an array (`models.skip_dropout`'s schedule, one rate per epoch
  computed in the step) the same operation with the rate as data: each element kept
  with probability 1 - rate and scaled by 1 / (1 - rate). Under the CPU kernels
  (`depthwise="kernel"`) the masks' random bits come from `kernels.cpu.bernoulli`: the
  same masks, one kernel call per draw instead of a compiled loop."""
  rate = module.skip_dropout
  fast = module.formulation.depthwise == "kernel"
  if isinstance(rate, (int, float)):
    if fast:
      return Dropout(rate, deterministic=not module.train)(y)
    return nn.Dropout(rate, deterministic=not module.train)(y)
  if not module.train:
    return y
  keep = 1.0 - jnp.asarray(rate, jnp.float32)
  bernoulli = cpu_kernels.bernoulli if fast else jax.random.bernoulli
  mask = bernoulli(module.make_rng("dropout"), keep, y.shape)
  return jax.lax.select(mask, y / keep.astype(y.dtype), jnp.zeros_like(y))


class Dropout(nn.Module):
  """flax's `nn.Dropout` (no broadcast dimensions) with its mask drawn by
  `kernels.cpu.bernoulli`. The class name is flax's, so that an instance gets the
  scope name `nn.Dropout` gets (`Dropout_0`) and with it the same dropout key: the
  same masks (tests/test_kernels.py)."""

  rate: float
  deterministic: bool

  @nn.compact
  def __call__(self, inputs):
    if self.rate == 0.0 or self.deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    mask = cpu_kernels.bernoulli(self.make_rng("dropout"), keep_prob, inputs.shape)
    return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


def _edge_dropout(module: BatchedMixedOps, y):
  return _skip_dropout(module, y)


# The skip connection's dropout on y [E, B, H, W, c] with the edge axis mapped and the
# dropout key split over the edges in `module`'s own scope, as `nn.vmap(MixedOp)`
# splits it: the channels layout draws the masks the vmapped edges draw.
_dropout_per_edge = nn.vmap(
  _edge_dropout,
  in_axes=0,
  out_axes=0,
  variable_axes={},
  split_rngs={"params": True, "dropout": True},
)


class _EdgeGroup(nn.Module):
  """The edges of one node that share a stride: `inputs` a list of E arrays [B,H,W,C]
  (or one array [E,B,H,W,C]), psi [E,Op], edge [E]; returns the sum of the edges.
  `edge_layout`: "vmap" (`MixedOp` vmapped over a leading edge axis) or "channels"
  (`BatchedMixedOps`, the edge axis beside the channels)."""

  channels: int
  stride: int
  primitives: Sequence[str]
  partial_k: int
  skip_dropout: float
  train: bool
  dtype: Dtype
  formulation: ops.Formulation
  edge_layout: str = "vmap"

  @nn.compact
  def __call__(self, inputs, psi, edge):
    args = (
      self.channels,
      self.stride,
      tuple(self.primitives),
      self.partial_k,
      self.skip_dropout,
      self.train,
      self.dtype,
      self.formulation,
    )
    if self.edge_layout == "channels":
      xs = jnp.moveaxis(inputs, 0, -2) if hasattr(inputs, "shape") else jnp.stack(inputs, axis=-2)
      return BatchedMixedOps(*args, name="edges")(xs, psi, edge)
    if self.edge_layout != "vmap":
      raise ValueError(f"edge_layout {self.edge_layout!r}; valid: {list(EDGE_LAYOUTS)}")
    xs = inputs if hasattr(inputs, "shape") else jnp.stack(inputs)
    batched = nn.vmap(
      MixedOp,
      in_axes=(0, 0, 0),
      out_axes=0,
      variable_axes={"params": 0, "batch_stats": 0},
      split_rngs={"params": True, "dropout": True},
    )
    return jnp.sum(batched(*args, name="edges")(xs, psi, edge), axis=0)


EDGE_LAYOUTS = ("vmap", "channels")


def _cell_nodes(module: nn.Module, p0, p1, psi_k, edge_k, *, reduction: bool):
  """The 4 nodes of a cell from its preprocessed inputs, in the scope of `module` (a
  SearchCell or a stage's scan body): each node sums its incoming mixed edges, grouped
  by stride and batched; returns the nodes concatenated."""
  c = module.channels
  if module.edge_layout == "channels":
    p0, p1 = ops.materialize((p0, p1))
  states = [p0, p1]
  for node in range(search_space.NUM_NODES):
    edges = search_space.node_edges(node)
    w = psi_k[edges.start : edges.stop]
    e = edge_k[edges.start : edges.stop]
    # On a reduction cell the edges from s0 and s1 have stride 2, the others 1.
    n_strided = search_space.NUM_INPUTS if reduction else 0
    groups = [(2, range(0, n_strided)), (1, range(n_strided, len(states)))]
    total = None
    for stride, inputs in groups:
      if not len(inputs):
        continue
      y = _EdgeGroup(
        c,
        stride,
        tuple(module.primitives),
        module.partial_k,
        module.skip_dropout,
        module.train,
        module.dtype,
        module.formulation,
        module.edge_layout,
        name=f"node{node}_stride{stride}",
      )([states[i] for i in inputs], w[inputs.start : inputs.stop], e[inputs.start : inputs.stop])
      total = y if total is None else total + y
    if module.edge_layout == "channels":
      total = ops.materialize(total)
    states.append(total)
  return jnp.concatenate(states[search_space.NUM_INPUTS :], axis=-1)


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
  edge_layout: str = "vmap"

  @nn.compact
  def __call__(self, s0, s1, psi_k, edge_k):
    c = self.channels
    if self.reduction_prev:
      s0 = ops.FactorizedReduce(c, False, self.train, self.dtype, self.formulation, name="pre0")(s0)
    else:
      s0 = ops.ReLUConvBN(
        c,
        affine=False,
        train=self.train,
        dtype=self.dtype,
        formulation=self.formulation,
        name="pre0",
      )(s0)
    s1 = ops.ReLUConvBN(
      c, affine=False, train=self.train, dtype=self.dtype, formulation=self.formulation, name="pre1"
    )(s1)
    return _cell_nodes(self, s0, s1, psi_k, edge_k, reduction=self.reduction)


def _relu_conv_bn(module: nn.Module, x, kernel, name: str):
  """ReLU, 1×1 convolution with a given kernel [1, 1, Cin, Cout], BN without affine."""
  x, kernel = nn.dtypes.promote_dtype(nn.relu(x), kernel, dtype=module.dtype)
  if module.formulation.pointwise == "conv":
    y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  else:  # a matrix product over the channels: XLA:CPU's 1×1 convolution computes its
    # kernel gradient as a convolution over the whole image, 100× slower than this
    y = jnp.einsum("...c,co->...o", x, kernel[0, 0])
  y = ops.saved(y)
  kernel = module.formulation.depthwise == "kernel"
  return ops.BatchNorm(False, module.train, module.dtype, kernel=kernel, name=name)(y)


class _StageCell(nn.Module):
  """Scan body for the normal cells of a stage. Carry: the raw outputs (s0, s1) of the
  two previous layers as the body reads them, [B, H, W, 4C]. Scanned: ψ[k], e[k] and
  the 1×1 preprocessing kernels of layer k (`_Kernels`). Inputs of another shape reach
  the body already in this one (the stem zero-padded from 3C channels to 4C; the
  output before a reduction as its two offset grids side by side, which a
  block-diagonal kernel turns into a factorized reduce), so that every normal cell of
  a stage is this one traced body and no preprocessing runs on placeholders."""

  channels: int
  primitives: Sequence[str]
  partial_k: int
  skip_dropout: float
  train: bool
  dtype: Dtype
  formulation: ops.Formulation
  edge_layout: str = "vmap"

  @nn.compact
  def __call__(self, carry, xs):
    s0, s1 = carry
    psi_k, edge_k, kernel0, kernel1 = xs
    p0 = _relu_conv_bn(self, s0, kernel0, "pre0")
    p1 = _relu_conv_bn(self, s1, kernel1, "pre1")
    out = _cell_nodes(self, p0, p1, psi_k, edge_k, reduction=False)
    return (s1, out), None


class _Kernels(nn.Module):
  """The 1×1 preprocessing kernels [length, 1, 1, width, cout] of a scan's layers.

  Most layers read a `width`-channel input and keep a full kernel (`kernel`). Layers
  reading the stem (`narrow`: its `narrow_cin` channels, zero-padded to `width`) keep
  a kernel of the stem's width (`stem/kernel`), padded here with zero rows: DARTS's
  ReLUConvBN of the stem. With `factorized`, layer 0 reads the output before the
  reduction as its two offset grids x[::2, ::2] and x[1::2, 1::2] side by side and
  keeps FactorizedReduce's two kernels (`reduce/kernel`, [2, 1, 1, width/2, cout/2]) as
  the diagonal blocks of its kernel: DARTS's FactorizedReduce."""

  length: int
  width: int
  cout: int
  narrow: tuple[int, ...] = ()
  narrow_cin: int = 0
  factorized: bool = False

  @nn.compact
  def __call__(self):
    special = set(self.narrow) | ({0} if self.factorized else set())
    regular = tuple(i for i in range(self.length) if i not in special)
    parts = []  # (where in the full kernel, the kernel kept there)
    if regular:
      kernel = ops.kernel_param(self, (len(regular), 1, 1, self.width, self.cout))
      parts.append(((jnp.asarray(regular),), kernel))
    if self.narrow:
      stem = ops.Kernel((len(self.narrow), 1, 1, self.narrow_cin, self.cout), name="stem")()
      parts.append(
        ((jnp.asarray(self.narrow), slice(None), slice(None), slice(0, self.narrow_cin)), stem)
      )
    if self.factorized:
      half_in, half_out = self.width // 2, self.cout // 2
      grids = ops.Kernel((2, 1, 1, half_in, half_out), name="reduce")()
      parts.append(((0, slice(None), slice(None), slice(0, half_in), slice(0, half_out)), grids[0]))
      parts.append(
        ((0, slice(None), slice(None), slice(half_in, None), slice(half_out, None)), grids[1])
      )
    full = jnp.zeros((self.length, 1, 1, self.width, self.cout), parts[0][1].dtype)
    for where, kernel in parts:
      full = full.at[where].set(kernel)
    return full


def offset_grids(x: jax.Array) -> jax.Array:
  """x[:, ::2, ::2] and x[:, 1::2, 1::2] side by side on the channel axis: what the two
  stride-2 1×1 convolutions of a factorized reduce read."""
  if x.shape[1] % 2 or x.shape[2] % 2:
    raise ValueError(
      f"a factorized reduce needs an even height and width, got {x.shape[1]}×{x.shape[2]}"
    )
  return jnp.concatenate([x[:, ::2, ::2], x[:, 1::2, 1::2]], axis=-1)


# What the input height and width must be divisible by: the two reduction cells halve
# them (stride-2 edges; a factorized reduce needs an even size).
SIZE_DIVISOR = 4


def stage_plan(num_layers: int) -> list[tuple[int | None, int, int]]:
  """Per stage: (its reduction layer or None for the first stage, first and end layer of
  its normal cells). Every stage's normal cells run under one scan, so the program has
  three scanned cell bodies and two reduction cells at any depth."""
  r1, r2 = search_space.reduction_layers(num_layers)
  return [(None, 0, r1), (r1, r1 + 1, r2), (r2, r2 + 1, num_layers)]


class SearchNetwork(nn.Module):
  """Stem, L search cells, global average pooling, linear classifier.

  `__call__(images [B,H,W,3], psi [L,14,Op], edge_weights [L,14])` returns logits
  [B, num_classes]; ψ and the edge weights come from `arch.ArchSpec.arch_weights`.
  `edge_weights=None` leaves the bypassed channels unweighted (all ones).
  `skip_dropout` is a Python number, or a scalar array when a schedule changes it
  during the search (`models.skip_dropout`; the step clones the network with it).
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
  edge_layout: str = "vmap"  # a node's edges: "vmap" or "channels" (`_EdgeGroup`)

  @nn.compact
  def __call__(self, images, psi, edge_weights=None):
    L = self.num_layers
    expected = (L, search_space.NUM_CONNECTIONS, len(self.primitives))
    if tuple(psi.shape) != expected:
      raise ValueError(f"psi has shape {tuple(psi.shape)}, expected {expected}")
    if edge_weights is None:
      edge_weights = jnp.ones(expected[:2], psi.dtype)
    if tuple(edge_weights.shape) != expected[:2]:
      raise ValueError(
        f"edge_weights has shape {tuple(edge_weights.shape)}, expected {expected[:2]}"
      )
    x = images.astype(self.dtype)
    x = ops.StemConv(
      self.stem_multiplier * self.channels,
      3,
      self.formulation.pointwise == "einsum",
      self.dtype,
      name="stem_conv",
    )(x)
    stem = ops.BatchNorm(True, self.train, self.dtype, name="stem_bn")(x)
    prims = tuple(self.primitives)
    common = (
      prims,
      self.partial_k,
      self.skip_dropout,
      self.train,
      self.dtype,
      self.formulation,
      self.edge_layout,
    )
    c = self.channels
    if not self.scan_stages:  # DARTS's network as written: one traced cell per layer
      red = search_space.is_reduction(L)
      s0 = s1 = stem
      for k in range(L):
        c = c * 2 if red[k] else c
        s0, s1 = (
          s1,
          SearchCell(c, red[k], k > 0 and red[k - 1], *common, name=f"cell{k}")(
            s0, s1, psi[k], edge_weights[k]
          ),
        )
      return self._classify(s1)
    before, last = stem, stem  # outputs of the layers k-2 and k-1
    for stage, (reduction, a, b) in enumerate(stage_plan(L)):
      if reduction is not None:
        c *= 2
        out = SearchCell(
          c,
          True,
          reduction > 0 and reduction - 1 in search_space.reduction_layers(L),
          *common,
          name=f"cell{reduction}",
        )(before, last, psi[reduction], edge_weights[reduction])
        before, last = last, out
      if b <= a:
        continue
      width = 4 * c  # a normal cell's output channels
      if stage == 0:
        # Layers 0 and 1 read the stem (3C channels) through their s0, layer 0 also
        # through its s1: the stem enters zero-padded to 4C, and their kernels are
        # the stem's width, padded with zero rows.
        if stem.shape[-1] > width:
          raise ValueError(
            f"stem_multiplier={self.stem_multiplier} > 4: the stem is "
            "wider than a cell's output, which the stage scan needs"
          )
        padded = jnp.pad(stem, ((0, 0),) * 3 + ((0, width - stem.shape[-1]),))
        s0 = s1 = padded
        kernel0 = _Kernels(
          b - a,
          width,
          c,
          narrow=tuple(range(min(2, b - a))),
          narrow_cin=stem.shape[-1],
          name=f"stage{stage}_pre0",
        )()
        kernel1 = _Kernels(
          b - a, width, c, narrow=(0,), narrow_cin=stem.shape[-1], name=f"stage{stage}_pre1"
        )()
      else:
        # Layer a reads the output before the reduction through a factorized reduce:
        # its two offset grids (2 × 2C = 4C channels) and a block-diagonal kernel.
        s0, s1 = offset_grids(before), last
        kernel0 = _Kernels(b - a, width, c, factorized=True, name=f"stage{stage}_pre0")()
        kernel1 = _Kernels(b - a, width, c, name=f"stage{stage}_pre1")()
      body = (
        nn.remat(_StageCell, policy=ops.REMAT_POLICY, prevent_cse=False)
        if self.remat
        else _StageCell
      )
      scan = nn.scan(
        body,
        variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=0,
        length=b - a,
      )
      xs = (psi[a:b], edge_weights[a:b], kernel0, kernel1)
      (before, last), _ = scan(c, *common, name=f"cells{a}_{b}")((s0, s1), xs)
      if stage == 0 and b - a == 1:  # the carry's s0 is the padded stem: the layer
        before = stem  # before layer 0 is the stem itself
    return self._classify(last)

  def _classify(self, features):
    x = jnp.mean(features, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return logits.astype(jnp.promote_types(self.dtype, jnp.float32))
