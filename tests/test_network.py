"""Tests of the discrete retraining networks and the published genotypes."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas_jax.models import init as init_lib
from dnas_jax.models import network
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import known_genotypes

# Official counts, obtained by transcribing quark0/darts `cnn/model.py` (NetworkCIFAR,
# Cell, AuxiliaryHeadCIFAR), `cnn/operations.py` and the genotypes of quark0/darts
# `cnn/genotypes.py` (DARTS_V1, DARTS_V2) and yuhuixu1993/PC-DARTS `genotypes.py`
# (PC_DARTS_cifar) into a scratch directory, building
# `NetworkCIFAR(36, 10, 20, True, genotype)` with PyTorch 2.13.0 (CPU) and counting
# `sum(np.prod(v.size()) for name, v in model.named_parameters()
#      if "auxiliary" not in name)`, as DARTS's `utils.count_parameters_in_MB` does.
# Published: DARTS (second order) 3.3M, PC-DARTS 3.6M. DARTS's paper lists 3.3M for
# its first-order cell too; the code gives 3.17M for DARTS_V1.
OFFICIAL_COUNTS = {"DARTS_V1": 3_169_414, "DARTS_V2": 3_349_342, "PC_DARTS": 3_634_678}
# The auxiliary head's parameters in the same networks (10 classes, C = 36).
OFFICIAL_AUXILIARY_COUNT = 476_426


def _shapes(net, input_shape=(32, 32, 3)):
  return network.variable_shapes(net, input_shape)


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_parameter_counts_equal_official_code(name):
  net = network.create_network(known_genotypes.get_genotype(name, 20), 10, 36, True)
  shapes = _shapes(net)
  assert network.count_params(shapes) == OFFICIAL_COUNTS[name]
  assert (
    network.count_params(shapes, exclude_auxiliary=False) - network.count_params(shapes)
  ) == OFFICIAL_AUXILIARY_COUNT


def _small_net(name="DARTS_V2", layers=5, channels=4, **kwargs):
  return network.create_network(known_genotypes.get_genotype(name, layers), 10, channels, **kwargs)


def test_eval_returns_logits_only_and_never_runs_auxiliary_head():
  net = _small_net(auxiliary=True)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = _shapes(net)
  assert network.AUXILIARY_NAME in variables["params"]
  logits, aux = jax.eval_shape(
    lambda v, x: net.apply(v, x, 0.2, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])[
      0
    ],
    variables,
    images,
  )
  assert logits.shape == aux.shape == (2, 10)
  eval_net = net.clone(train=False)
  out = jax.eval_shape(eval_net.apply, variables, images)
  assert isinstance(out, jax.ShapeDtypeStruct) and out.shape == (2, 10)
  # An eval-mode trace never creates (so never runs) the auxiliary head.
  eval_init = jax.eval_shape(eval_net.init, jax.random.key(0), images)
  assert network.AUXILIARY_NAME not in eval_init["params"]


# Logits of the official NetworkCIFAR(4, 10, 5, False, PC_DARTS_cifar), the same
# transcription as for OFFICIAL_COUNTS, on `_reference_inputs()`, with every parameter
# set to the value `_reference_variables` gives its Flax counterpart (kernels transposed
# to PyTorch's layout), running statistics at their initial values; rounded to 1e-5.
REFERENCE_TRAIN_LOGITS = [
  [4.42818, 0.89857, 11.64663, -4.11673, 3.80290, -1.59326, -1.76778, 0.93036, 3.17569, 5.46415],
  [4.89391, 0.59702, 10.90449, -2.96175, 2.97462, -1.47328, -1.03348, 0.85071, 3.11848, 5.49873],
]
REFERENCE_EVAL_LOGITS = [
  [3.52242, 4.06383, 13.44401, -5.81898, 5.79248, 3.35202, -0.78791, 2.51387, 4.30792, 8.62880],
  [3.47258, 4.32623, 13.88150, -6.23086, 5.94325, 3.29901, -0.80239, 2.68434, 4.52790, 8.54698],
]


def _reference_inputs():
  return jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)


def _reference_variables(net, images):
  """Parameter i (in sorted path order) ~ N(0, 0.3²) for kernels, N(0, 1) for vectors."""
  shapes = network.variable_shapes(net, images.shape[1:])
  flat = flax.traverse_util.flatten_dict(shapes["params"])
  params = {}
  for i, path in enumerate(sorted(flat)):
    shape = flat[path].shape
    scale = 0.3 if len(shape) > 1 else 1.0
    params[path] = jnp.asarray(np.random.default_rng(i).normal(size=shape) * scale, jnp.float32)
  stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["batch_stats"])
  stats = flax.traverse_util.flatten_dict(stats)
  stats = {p: (jnp.ones_like(v) if p[-1] == "var" else v) for p, v in stats.items()}
  return {
    "params": flax.traverse_util.unflatten_dict(params),
    "batch_stats": flax.traverse_util.unflatten_dict(stats),
  }


def test_tiny_forward_equals_official_code():
  net = _small_net("PC_DARTS", auxiliary=False)
  images = _reference_inputs()
  variables = _reference_variables(net, images)
  (logits, aux), _ = net.apply(variables, images, mutable=["batch_stats"])
  assert logits.shape == (2, 10) and aux is None
  np.testing.assert_allclose(logits, REFERENCE_TRAIN_LOGITS, atol=2e-4, rtol=1e-5)
  logits = net.clone(train=False).apply(variables, images)
  np.testing.assert_allclose(logits, REFERENCE_EVAL_LOGITS, atol=2e-4, rtol=1e-5)


def _cell(edges_op):
  nodes = tuple(((edges_op, 0), (edges_op, 1 + n)) for n in range(4))
  return genotype_lib.CellGenotype(nodes, reduction=False)


def _run_cell(cell_genotype, drop_prob, seed):
  cell = network.Cell(cell_genotype, 4, reduction_prev=False, train=True)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, 6, 4)), jnp.float32)
  variables = init_lib.init_from_shapes(cell, 0, x, x)
  out, _ = cell.apply(
    variables, x, x, drop_prob, rngs={"dropout": jax.random.key(seed)}, mutable=["batch_stats"]
  )
  return np.asarray(out)


def test_drop_path_never_touches_identity_edges():
  cell = _cell("skip_connect")
  reference = _run_cell(cell, 0.0, 0)
  for seed in range(3):
    np.testing.assert_array_equal(_run_cell(cell, jnp.float32(0.7), seed), reference)


def test_drop_path_drops_conv_edges_per_example():
  cell = _cell("dil_conv_3x3")
  reference = _run_cell(cell, 0.0, 0)
  dropped = _run_cell(cell, jnp.float32(0.5), 0)
  differs = [not np.allclose(dropped[b], reference[b]) for b in range(4)]
  assert any(differs)
  # A traced zero drop probability changes nothing.
  np.testing.assert_allclose(_run_cell(cell, jnp.float32(0.0), 3), reference, rtol=1e-6)


def test_drop_path_function():
  x = jnp.ones((64, 2, 2, 3))
  y = np.asarray(network.drop_path(x, 0.25, jax.random.key(0)))
  per_example = y.reshape(64, -1)
  kept = per_example[:, 0] != 0
  assert 0 < kept.sum() < 64
  np.testing.assert_array_equal(per_example[~kept], 0)  # one draw per example
  np.testing.assert_allclose(per_example[kept], 1 / 0.75, rtol=1e-6)
  assert network.is_identity_edge("skip_connect", 1)
  assert not network.is_identity_edge("skip_connect", 2)


def test_reduction_flags_must_match_layers():
  good = known_genotypes.get_genotype("DARTS_V2", 8)
  cells = list(good.cells)
  cells[2], cells[3] = cells[3], cells[2]  # the reduction moved from layer 2 to 3
  with pytest.raises(ValueError, match="reduction flags disagree"):
    network.create_network(genotype_lib.GlobalGenotype(tuple(cells)), 10, 4)


def test_unknown_names_list_valid_ones():
  with pytest.raises(ValueError, match="DARTS_V2"):
    known_genotypes.get_genotype("DARTS_V3", 20)
  with pytest.raises(ValueError, match="tiny_imagenet"):
    _small_net(dataset_kind="resnet")


def test_known_genotypes_stack_over_layers():
  g = known_genotypes.get_genotype("PC_DARTS", 20)
  assert g.num_layers == 20
  assert [k for k, c in enumerate(g.cells) if c.reduction] == [6, 13]
  assert g.cells[0].nodes[0] == (("sep_conv_3x3", 1), ("skip_connect", 0))


def test_tiny_imagenet_variant():
  c = 8
  genotype = known_genotypes.get_genotype("DARTS_V2", 5)
  tiny = network.create_network(genotype, 200, c, dataset_kind="tiny_imagenet")
  cifar = network.create_network(genotype, 200, c)
  tiny_shapes = _shapes(tiny, network.INPUT_SHAPES["tiny_imagenet"])
  # Extra stem conv 3->C and its BN; the second stem conv reads C instead of 3 channels.
  extra = 27 * c + 2 * c + 9 * c * 3 * c - 27 * 3 * c
  assert network.count_params(tiny_shapes) == network.count_params(_shapes(cifar)) + extra
  logits, aux = jax.eval_shape(
    lambda v, x: tiny.apply(v, x, mutable=["batch_stats"])[0],
    tiny_shapes,
    jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32),
  )
  assert logits.shape == aux.shape == (2, 200)


def test_auxiliary_head_on_too_small_images_is_a_clear_error():
  net = _small_net(auxiliary=True)
  with pytest.raises(ValueError, match="auxiliary=False"):
    network.variable_shapes(net, (8, 8, 3))
