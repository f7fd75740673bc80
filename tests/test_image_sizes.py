"""Image sizes beyond 32 and 64: the search and retraining networks at 96×96 and
128×128, the auxiliary head's pooling to DARTS's 8×8, and the one-line refusals of the
sizes the networks cannot take."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas_jax.configs import test as test_config
from dnas_jax.configs import test_retrain
from dnas_jax.data import registry
from dnas_jax.models import network
from dnas_jax.retrain import setup as retrain_setup
from dnas_jax.search import setup as search_setup
from dnas_jax.space import known_genotypes
from dnas_jax.training import compilation
from dnas_jax.training import sharding
from dnas_jax.training import validation


def _reference_pool(x, out):
  """PyTorch's AdaptiveAvgPool2d, loop by loop."""
  b, h, w, c = x.shape
  y = np.zeros((b, out, out, c))
  for i in range(out):
    for j in range(out):
      r0, r1 = (i * h) // out, -((-(i + 1) * h) // out)
      c0, c1 = (j * w) // out, -((-(j + 1) * w) // out)
      y[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
  return y


@pytest.mark.parametrize("size", [8, 10, 12, 24, 32])
def test_adaptive_avg_pool_equals_pytorchs(size):
  x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
  y = network.adaptive_avg_pool(jnp.asarray(x), (8, 8))
  np.testing.assert_allclose(y, _reference_pool(x, 8), rtol=1e-5, atol=1e-6)


def _shapes(kind, size, auxiliary=True, classes=7):
  net = network.create_network(
    known_genotypes.get_genotype("DARTS_V2", 8), classes, 8, auxiliary, kind
  )
  variables = network.variable_shapes(net, (size, size, 3))
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  logits, aux = jax.eval_shape(
    lambda v, x: net.apply(v, x, 0.2, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])[
      0
    ],
    variables,
    images,
  )
  return variables, logits, aux


@pytest.mark.parametrize("kind, size", [("cifar", 96), ("cifar", 128), ("tiny_imagenet", 128)])
def test_retraining_network_takes_larger_images_with_darts_auxiliary_head(kind, size):
  """Same parameters as at the size the network was made for: the cells are
  convolutional, the classifier reads a global average, and the auxiliary head pools
  its larger map to 8×8 first."""
  variables, logits, aux = _shapes(kind, size)
  assert logits.shape == aux.shape == (2, 7)
  base, _, _ = _shapes(kind, network.INPUT_SHAPES[kind][0])
  assert network.count_params(variables, exclude_auxiliary=False) == (
    network.count_params(base, exclude_auxiliary=False)
  )


def test_search_step_at_96x96():
  """The search step (weights and architecture update) traced for 96×96 images, with
  no compile: state and metrics keep their shapes."""
  config = test_config.get_config()
  config.model.num_layers = 3
  mesh = sharding.create_mesh(jax.devices()[:1])
  setup = search_setup.create_search_setup(config, (96, 96, 3), 5, 2, mesh)
  batch = compilation.abstract_batch(config.batch_size, (96, 96, 3), sharding.batch_sharding(mesh))
  state, _ = jax.eval_shape(setup.step_fn, setup.state, batch, batch, jax.random.key(0))
  assert jax.tree.map(lambda s: s.shape, state.params) == jax.tree.map(
    jnp.shape, setup.state.params
  )
  logits = jax.eval_shape(
    lambda p, s, x: setup.net_eval.apply(
      {"params": p, "batch_stats": s}, x, *setup.spec.arch_weights(setup.state.arch_params)
    ),
    setup.state.params,
    setup.state.batch_stats,
    batch["image"],
  )
  assert logits.shape == (config.batch_size, 5)


def test_retraining_step_at_96x96():
  config = test_retrain.get_config()
  config.model.auxiliary = True
  geno = known_genotypes.get_genotype("DARTS_V1", config.model.num_layers)
  mesh = sharding.create_mesh(jax.devices()[:1])
  setup = retrain_setup.create_train_setup(config, geno, (96, 96, 3), 4, 2, mesh)
  batch = compilation.abstract_batch(config.batch_size, (96, 96, 3), sharding.batch_sharding(mesh))
  state, _ = jax.eval_shape(setup.step_fn, setup.state, batch, jax.random.key(0), jnp.float32(0.1))
  assert jax.tree.map(lambda s: s.shape, state.params) == jax.tree.map(
    jnp.shape, setup.state.params
  )


@pytest.fixture
def sized():
  """Registers a dataset of a given image size for one test."""
  names = []

  def register(h, w, name="sized"):
    names.append(name)
    registry.register_dataset(
      name, lambda s, d: None, num_classes=3, image_shape=(h, w, 3), num_train=100
    )

  yield register
  for name in names:
    registry.unregister_dataset(name)


def _config(search, **data):
  config = test_config.get_config() if search else test_retrain.get_config()
  config.data.update(dataset="sized", source="auto", **data)
  return config


def test_sizes_the_networks_cannot_take_are_refused_in_one_line(sized):
  sized(90, 90)
  with pytest.raises(
    validation.ConfigError,
    match=(
      r"^config.data: the images are 90×90, but the search network needs a height and "
      r"width divisible by 4 \(its two reduction cells halve them\): set "
      r"config.data.image_size to a multiple of 4, e.g. 88$"
    ),
  ):
    validation.validate_search_config(_config(True))
  with pytest.raises(
    validation.ConfigError,
    match=r"the images are 90×90, but "
    r"config.model.network='cifar' needs a height and width divisible "
    r"by 4",
  ):
    validation.validate_train_config(_config(False))
  validation.validate_search_config(_config(True, image_size=96))
  sized(96, 100)
  config = _config(False)
  config.model.network = "tiny_imagenet"
  with pytest.raises(
    validation.ConfigError,
    match=r"the images are 96×100, but "
    r"config.model.network='tiny_imagenet' needs a height and width "
    r"divisible by 8 \(its stem and two reduction cells halve them\)",
  ):
    validation.validate_train_config(config)


def test_auxiliary_head_needs_32x32(sized):
  sized(16, 16)
  config = _config(False)
  config.model.auxiliary = True
  with pytest.raises(
    validation.ConfigError,
    match=(
      r"config.model.auxiliary=True needs images of at least 32×32 with "
      r"config.model.network='cifar' \(the auxiliary head reads an 8×8 map at layer "
      r"2L//3\); the images are 16×16: pass --config.model.auxiliary=False"
    ),
  ):
    validation.validate_train_config(config)
  config.model.auxiliary = False
  validation.validate_train_config(config)
  config.model.auxiliary = True
  config.data.image_size = 32
  validation.validate_train_config(config)
