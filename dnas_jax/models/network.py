"""Discrete networks built from a global genotype (docs/design.md §1, Retraining).

`NetworkCIFAR` is DARTS's `NetworkCIFAR` (quark0/darts `cnn/model.py`) with one cell
per layer taken from a `GlobalGenotype`: a 3×3 stem convolution to 3C channels and an
affine BN, L cells (reductions at L//3 and 2L//3, channels doubled there), DARTS's
CIFAR auxiliary head on the output of cell 2L//3 (training only), global average
pooling and a linear classifier. Stacking DARTS's own genotypes 20 times at C = 36
gives exactly the official parameter counts (tests/test_network.py).
`NetworkTinyImageNet` is our variant for 64×64 inputs (see its docstring), and
`NetworkImageNet` DARTS's ImageNet network (224×224: a three-convolution stem, DARTS's
ImageNet auxiliary head on a 7×7 map).

Input sizes: any height and width that the network's stride-2 layers divide
(`size_divisor`: 4 for `cifar`, 8 for `tiny_imagenet`, 32 for `imagenet`). The CIFAR
auxiliary head is DARTS's for an 8×8 map (the ImageNet head: 7×7): a larger map at layer
2L//3 is first average-pooled to that size (`adaptive_avg_pool`, PyTorch's
AdaptiveAvgPool2d), so the head and its parameters are DARTS's at every size; a smaller
one cannot feed it (`auxiliary_min_size`).

Call convention: `net.apply(variables, images, drop_prob, rngs={"dropout": key},
mutable=["batch_stats"])` in training returns `(logits, aux_logits)` (`aux_logits`
is None when the network has no auxiliary head); in evaluation (`train=False`) it
returns the logits only and the auxiliary head is never run. `drop_prob` is an input,
so a linear ramp over training does not retrace; None or 0 (a Python number) turns
drop path off without needing a dropout key.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import ops
from dnas_jax.space import search_space

Dtype = Any
AUXILIARY_NAME = "auxiliary_head"


def is_identity_edge(op: str, stride: int) -> bool:
  """Whether an edge is DARTS's `Identity` (skip_connect at stride 1): no drop path."""
  return op == "skip_connect" and stride == 1


def drop_path(x: jax.Array, drop_prob, rng: jax.Array) -> jax.Array:
  """DARTS's drop path: zero whole examples with probability `drop_prob`, scale the
  kept ones by 1 / (1 - drop_prob). The mask is one Bernoulli draw per example."""
  keep = 1.0 - jnp.asarray(drop_prob, jnp.float32)
  mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x / keep.astype(x.dtype) * mask.astype(x.dtype)


def _drop_path_active(train: bool, drop_prob) -> bool:
  """Static decision: drop path is traced only in training with a non-zero input."""
  if not train or drop_prob is None:
    return False
  if isinstance(drop_prob, (int, float)):
    return drop_prob > 0
  return True  # an array (possibly traced): applied; 0 gives an all-ones mask


def check_genotype(genotype: genotype_lib.GlobalGenotype) -> None:
  """Raises ValueError when the cells' reduction flags are not at L//3 and 2L//3 or a
  cell concatenates a state it does not have."""
  expected = search_space.is_reduction(genotype.num_layers)
  wrong = [
    k for k, (cell, red) in enumerate(zip(genotype.cells, expected)) if cell.reduction != red
  ]
  if wrong:
    raise ValueError(
      f"genotype reduction flags disagree with the network's layers at {wrong}: a "
      f"{genotype.num_layers}-layer network reduces at layers "
      f"{search_space.reduction_layers(genotype.num_layers)}, the genotype at "
      f"{[k for k, c in enumerate(genotype.cells) if c.reduction]} "
      "(use genotype.map_to_depth to change depth)"
    )
  for k, cell in enumerate(genotype.cells):
    num_states = search_space.NUM_INPUTS + len(cell.nodes)
    if not cell.concat or any(not 0 <= i < num_states for i in cell.concat):
      raise ValueError(f"layer {k}: concat {cell.concat} outside 0..{num_states - 1}")


class Edge(nn.Module):
  """One discrete edge: the named operation with affine batch norms."""

  op: str
  channels: int
  stride: int
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return ops.create_op(
      self.op, self.channels, self.stride, affine=True, train=self.train, dtype=self.dtype
    )(x)


class Cell(nn.Module):
  """A discrete DARTS cell: preprocess s0 and s1 to `channels`, each node sums its
  edges (one op each, affine BNs), output the concatenation of `genotype.concat`."""

  genotype: genotype_lib.CellGenotype
  channels: int
  reduction_prev: bool
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, s0, s1, drop_prob=None):
    c, cell = self.channels, self.genotype
    if self.reduction_prev:
      s0 = ops.FactorizedReduce(c, True, self.train, self.dtype, name="pre0")(s0)
    else:
      s0 = ops.ReLUConvBN(c, train=self.train, dtype=self.dtype, name="pre0")(s0)
    s1 = ops.ReLUConvBN(c, train=self.train, dtype=self.dtype, name="pre1")(s1)
    use_drop = _drop_path_active(self.train, drop_prob)
    states = [s0, s1]
    for n, edges in enumerate(cell.nodes):
      total = None
      for e, (op, inp) in enumerate(edges):
        stride = 2 if cell.reduction and inp < search_space.NUM_INPUTS else 1
        y = Edge(op, c, stride, self.train, self.dtype, name=f"node{n}_edge{e}")(states[inp])
        if use_drop and not is_identity_edge(op, stride):
          y = drop_path(y, drop_prob, self.make_rng("dropout"))
        total = y if total is None else total + y
      states.append(total)
    return jnp.concatenate([states[i] for i in cell.concat], axis=-1)


def _pool_matrix(size: int, out: int) -> np.ndarray:
  """[out, size]: row i averages the inputs floor(i·size/out) .. ceil((i+1)·size/out)-1."""
  m = np.zeros((out, size), np.float32)
  for i in range(out):
    lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """PyTorch's AdaptiveAvgPool2d on NHWC: [B, H, W, C] → [B, size[0], size[1], C]; an
  output cell averages its share of the input rows and columns (equal windows when the
  size divides H and W)."""
  (h, w), (oh, ow) = x.shape[1:3], size
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:
    return nn.avg_pool(x, (h // oh, w // ow), (h // oh, w // ow))
  rows = jnp.asarray(_pool_matrix(h, oh), x.dtype)
  cols = jnp.asarray(_pool_matrix(w, ow), x.dtype)
  return jnp.einsum("ih,bhwc,jw->bijc", rows, x, cols)


# The auxiliary head reads an 8×8 map (DARTS's CIFAR head; a larger one is pooled).
AUXILIARY_MAP = 8


class AuxiliaryHeadCIFAR(nn.Module):
  """DARTS's CIFAR auxiliary head, for an 8×8 input: ReLU, 5×5 average pool stride 3
  (no padding) to 2×2, 1×1 conv 128 + BN + ReLU, 2×2 conv 768 + BN + ReLU, linear. A
  larger input is average-pooled to 8×8 after the ReLU (`adaptive_avg_pool`)."""

  num_classes: int
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if min(x.shape[1:3]) < AUXILIARY_MAP:  # the pool must leave 2×2 for the 2×2 conv
      raise ValueError(
        f"the auxiliary head needs a feature map of at least 8×8 at "
        f"layer 2L//3, got {x.shape[1]}×{x.shape[2]}: use images of at "
        "least 32×32 (64×64 for tiny_imagenet) or auxiliary=False"
      )
    x = adaptive_avg_pool(nn.relu(x), (AUXILIARY_MAP, AUXILIARY_MAP))
    x = nn.avg_pool(x, (5, 5), (3, 3), padding="VALID")
    x = ops.conv(128, 1, dtype=self.dtype)(x)
    x = nn.relu(ops.BatchNorm(True, self.train, self.dtype)(x))
    x = ops.conv(768, 2, dtype=self.dtype)(x)
    x = nn.relu(ops.BatchNorm(True, self.train, self.dtype)(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)


class NetworkCIFAR(nn.Module):
  """DARTS's NetworkCIFAR with a different cell per layer (32×32 inputs, or any size
  divisible by 4).

  Attributes:
    genotype: one cell per layer; reduction flags must be set at L//3 and 2L//3.
    num_classes: classifier outputs.
    channels: C, the channels of the first stage's cells (the stem has 3C).
    auxiliary: whether the auxiliary head exists (it runs in training only).
    train: batch statistics and drop path (True) or running averages (False).
    dtype: the compute dtype; parameters stay float32, logits are float32.
  """

  genotype: genotype_lib.GlobalGenotype
  num_classes: int
  channels: int = 36
  auxiliary: bool = True
  stem_multiplier: int = 3
  train: bool = True
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    check_genotype(self.genotype)
    super().__post_init__()

  # The first cell's s0 comes from a layer of twice its resolution (NetworkImageNet).
  first_reduction_prev = False
  auxiliary_head_class = AuxiliaryHeadCIFAR

  def stem(self, x):
    x = ops.conv(self.stem_multiplier * self.channels, 3, 1, 1, dtype=self.dtype, name="stem_conv")(
      x
    )
    return ops.BatchNorm(True, self.train, self.dtype, name="stem_bn")(x)

  def stems(self, x):
    """(s0, s1), the first cell's two inputs: both the stem's output here."""
    s = self.stem(x)
    return s, s

  @nn.compact
  def __call__(self, images, drop_prob=None):
    L = self.genotype.num_layers
    aux_layer = 2 * L // 3
    s0, s1 = self.stems(images.astype(self.dtype))
    c, reduction_prev, aux_logits = self.channels, self.first_reduction_prev, None
    for k, cell_genotype in enumerate(self.genotype.cells):
      if cell_genotype.reduction:
        c *= 2
      cell = Cell(cell_genotype, c, reduction_prev, self.train, self.dtype, name=f"cell{k}")
      s0, s1 = s1, cell(s0, s1, drop_prob)
      reduction_prev = cell_genotype.reduction
      if k == aux_layer and self.auxiliary and self.train:
        aux_logits = self.auxiliary_head_class(
          self.num_classes, self.train, self.dtype, name=AUXILIARY_NAME
        )(s1)
        aux_logits = aux_logits.astype(jnp.float32)
    x = jnp.mean(s1, axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    logits = logits.astype(jnp.float32)
    return (logits, aux_logits) if self.train else logits


class NetworkTinyImageNet(NetworkCIFAR):
  """The retraining network for Tiny-ImageNet (64×64 inputs, 200 classes): our design.

  Choice: a two-convolution stem, 3×3 conv stride 1 to C + BN + ReLU, then 3×3 conv
  stride 2 to 3C + BN, that brings 64×64 images to the 32×32×3C tensor the CIFAR
  network's stem produces; the cells, the classifier and the auxiliary head are the
  CIFAR network's unchanged (its input at layer 2L//3 is 8×8, as on CIFAR, so DARTS's
  CIFAR head applies as it is).

  Reason: the cells, where the searched architecture lives and nearly all the compute
  is, run at the resolutions they were searched at, so compute per image stays close to
  the CIFAR network's (the stem adds ~40 M multiply-adds at C = 36, about 7 % of
  DARTS-V2's ~0.53 G), and the only new parameters are the stem's first conv (27C) and
  the wider classifier. The alternatives cost more or see less: running the cells at
  64×64 quadruples compute, an extra reduction cell changes the searched layer plan, and
  a single strided 3×3 stem conv samples only a quarter of the pixel positions once.
  """

  def stem(self, x):
    x = ops.conv(self.channels, 3, 1, 1, dtype=self.dtype, name="stem_conv0")(x)
    x = nn.relu(ops.BatchNorm(True, self.train, self.dtype, name="stem_bn0")(x))
    x = ops.conv(
      self.stem_multiplier * self.channels, 3, 2, 1, dtype=self.dtype, name="stem_conv1"
    )(x)
    return ops.BatchNorm(True, self.train, self.dtype, name="stem_bn1")(x)


# DARTS's ImageNet auxiliary head reads a 7×7 map (a larger one is pooled to it).
AUXILIARY_MAP_IMAGENET = 7


class AuxiliaryHeadImageNet(nn.Module):
  """DARTS's `AuxiliaryHeadImageNet` (quark0/darts `cnn/model.py`; PC-DARTS's copy is the
  same): ReLU, 5×5 average pool stride 2 (no padding), 1×1 conv 128 + BN + ReLU, 2×2
  conv 768 + ReLU, linear. There is no BN after the 768-channel conv: DARTS left it
  commented out ("omitted in my earlier implementation due to a typo"), for consistency
  with the paper's experiments, so this head has none either.

  Its input: DARTS's docstring says "assuming input size 14x14", but the head reads the
  output of cell 2L//3, the second reduction cell, which at 224×224 is 7×7 (224 → 112
  → 56 in stem0, 28 in stem1, 14 and 7 in the reductions at L//3 and 2L//3). At 7×7
  the pool gives 2×2 and the 2×2 conv 1×1×768, the 768 inputs of DARTS's linear layer;
  at 14×14 it would give 4×4×768 = 12288 features, which that layer could not take. A
  larger map (images over 224×224) is average-pooled to 7×7 after the ReLU, so the
  head and its parameters are DARTS's at every size; a smaller one cannot feed it.
  """

  num_classes: int
  train: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    m = AUXILIARY_MAP_IMAGENET
    if min(x.shape[1:3]) < m:
      raise ValueError(
        f"the ImageNet auxiliary head needs a feature map of at least {m}×{m} at layer "
        f"2L//3, got {x.shape[1]}×{x.shape[2]}: use images of at least 224×224 or "
        "auxiliary=False"
      )
    x = adaptive_avg_pool(nn.relu(x), (m, m))
    x = nn.avg_pool(x, (5, 5), (2, 2), padding="VALID")
    x = ops.conv(128, 1, dtype=self.dtype)(x)
    x = nn.relu(ops.BatchNorm(True, self.train, self.dtype)(x))
    x = nn.relu(ops.conv(768, 2, dtype=self.dtype)(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)


class NetworkImageNet(NetworkCIFAR):
  """DARTS's `NetworkImageNet` (quark0/darts `cnn/model.py`, the mobile setting: C = 48,
  L = 14 at 224×224) with a different cell per layer.

  stem0: 3×3 conv stride 2 to C/2 + BN + ReLU, 3×3 conv stride 2 to C + BN (the first
  cell's s0, 56×56 at 224); stem1: ReLU, 3×3 conv stride 2 to C + BN (its s1, 28×28).
  The first cell therefore sees `reduction_prev=True` (a factorized reduce brings s0 to
  28×28). Cells as in NetworkCIFAR (reductions at L//3 and 2L//3: 28 → 14 → 7), the
  ImageNet auxiliary head on cell 2L//3's 7×7 output (`AuxiliaryHeadImageNet`), then
  DARTS's 7×7 average pooling, which at 224×224 is global pooling: it is a global mean
  here, so smaller inputs (any size divisible by 32) work too, and a linear classifier.
  The convolutions have no bias; only the linear layers do.
  """

  first_reduction_prev = True
  auxiliary_head_class = AuxiliaryHeadImageNet

  def stems(self, x):
    c, t, d = self.channels, self.train, self.dtype
    x = ops.conv(c // 2, 3, 2, 1, dtype=d, name="stem0_conv0")(x)
    x = nn.relu(ops.BatchNorm(True, t, d, name="stem0_bn0")(x))
    x = ops.conv(c, 3, 2, 1, dtype=d, name="stem0_conv1")(x)
    s0 = ops.BatchNorm(True, t, d, name="stem0_bn1")(x)
    x = ops.conv(c, 3, 2, 1, dtype=d, name="stem1_conv")(nn.relu(s0))
    return s0, ops.BatchNorm(True, t, d, name="stem1_bn")(x)


NETWORKS = {
  "cifar": NetworkCIFAR,
  "tiny_imagenet": NetworkTinyImageNet,
  "imagenet": NetworkImageNet,
}
INPUT_SHAPES = {"cifar": (32, 32, 3), "tiny_imagenet": (64, 64, 3), "imagenet": (224, 224, 3)}
# The stride-2 layers between the input and the last stage: the stem's (tiny_imagenet:
# one; imagenet: three) and the two reduction cells'.
_STRIDE2_LAYERS = {"cifar": 2, "tiny_imagenet": 3, "imagenet": 5}
# The map the auxiliary head reads at layer 2L//3.
_AUXILIARY_MAPS = {
  "cifar": AUXILIARY_MAP,
  "tiny_imagenet": AUXILIARY_MAP,
  "imagenet": AUXILIARY_MAP_IMAGENET,
}


def size_divisor(network_kind: str) -> int:
  """What the input height and width must be divisible by: each stride-2 layer halves
  them, and a factorized reduce needs an even size."""
  return 2 ** _STRIDE2_LAYERS[network_kind]


def auxiliary_map(network_kind: str) -> int:
  """The height and width of the map the auxiliary head reads (8, or 7 for imagenet)."""
  return _AUXILIARY_MAPS[network_kind]


def auxiliary_min_size(network_kind: str) -> int:
  """The smallest input height and width whose map at layer 2L//3 feeds the auxiliary
  head: 32 for `cifar`, 64 for `tiny_imagenet` (8×8 there), 224 for `imagenet` (7×7)."""
  return auxiliary_map(network_kind) * size_divisor(network_kind)


def create_network(
  genotype: genotype_lib.GlobalGenotype,
  num_classes: int,
  channels: int = 36,
  auxiliary: bool = True,
  dataset_kind: str = "cifar",
  train: bool = True,
  dtype: Dtype = jnp.float32,
) -> NetworkCIFAR:
  """The retraining network for `dataset_kind` ('cifar', 'tiny_imagenet' or 'imagenet')."""
  try:
    cls = NETWORKS[dataset_kind]
  except KeyError:
    raise ValueError(
      f"Unknown dataset kind {dataset_kind!r}; valid names: {sorted(NETWORKS)}"
    ) from None
  return cls(genotype, num_classes, channels, auxiliary, train=train, dtype=dtype)


def variable_shapes(network: nn.Module, input_shape=(32, 32, 3), batch: int = 1):
  """The network's variables as `jax.ShapeDtypeStruct`s, from shapes only (nothing is
  compiled or run). Built in training mode so the auxiliary head's are included."""
  images = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
  return jax.eval_shape(network.clone(train=True).init, jax.random.key(0), images)


def count_params(variables, exclude_auxiliary: bool = True) -> int:
  """Trainable parameters, as DARTS's `count_parameters_in_MB` counts them (×1e6):
  batch statistics are not parameters, and the auxiliary head is excluded unless
  `exclude_auxiliary=False`. Takes the variables dict or its 'params' collection,
  arrays or shape structs."""
  variables = flax.core.unfreeze(variables)
  params = variables.get("params", variables)
  flat = flax.traverse_util.flatten_dict(params)
  return int(
    sum(
      np.prod(v.shape)
      for path, v in flat.items()
      if path[0] != "batch_stats" and not (exclude_auxiliary and AUXILIARY_NAME in path)
    )
  )


def _conv_multiply_adds(eqn) -> int:
  """Output elements × kernel window × input channels per group (padding included)."""
  rhs, out = eqn.invars[1].aval.shape, eqn.outvars[0].aval.shape
  spec = eqn.params["dimension_numbers"].rhs_spec
  return math.prod(out) * rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])


def _dot_multiply_adds(eqn) -> int:
  """Output elements × the contracted dimensions."""
  (contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)


def _jaxpr_multiply_adds(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += _conv_multiply_adds(eqn)
    elif name == "dot_general":
      total += _dot_multiply_adds(eqn)
    elif name in ("scan", "while", "cond"):
      raise ValueError(f"multiply_adds counts a network without loops or branches, not {name!r}")
    else:  # sub-programs (jit, custom_jvp_call, ...) count once
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          if hasattr(sub, "eqns"):
            total += _jaxpr_multiply_adds(sub)
          elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
            total += _jaxpr_multiply_adds(sub.jaxpr)
  return total


def multiply_adds(network: nn.Module, variables, input_shape) -> int:
  """Multiply-adds of one image through the evaluation network (no auxiliary head), as
  the DARTS and PC-DARTS papers quote them: each convolution counts output elements ×
  kernel window × input channels per group (padding positions included, as one counts
  from the layer shapes), each linear layer inputs × outputs; batch norm, activations,
  pooling and additions are not counted. Traced from shapes (`variables` may be
  `variable_shapes`' structs): nothing is compiled or run. Unlike
  `dnas_jax.tools.flops`, which counts executed FLOPs (2 per multiply-add, padding
  positions left out) of any program."""
  images = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  jaxpr = jax.make_jaxpr(network.clone(train=False).apply)(variables, images)
  return _jaxpr_multiply_adds(jaxpr.jaxpr)
