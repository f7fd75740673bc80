"""Every rate and coefficient of the search and retraining configs must be finite and
in its range: NaN, inf or a negative value is a ConfigError naming the field."""

import pytest

from dnas_jax.configs import test_retrain
from dnas_jax.training import validation

import run_helpers as rh  # tests/run_helpers.py


@pytest.mark.parametrize(
  "field",
  [
    "optim.weight_lr",
    "optim.arch_lr",
    "optim.weight_min_lr",
    "optim.weight_decay",
    "optim.arch_weight_decay",
    "optim.zero_one_weight",
    "optim.grad_clip",
    "optim.momentum",
    "optim.arch_b1",
    "optim.arch_b2",
    "model.skip_dropout",
    "data.train_portion",
    "arch.init_scale",
  ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_search_rates_must_be_finite_and_in_range(field, value):
  with pytest.raises(validation.ConfigError, match=f"config.{field}="):
    validation.validate_search_config(rh.config(**{field: value}))


@pytest.mark.parametrize(
  "field",
  [
    "optim.weight_lr",
    "optim.weight_min_lr",
    "optim.weight_decay",
    "optim.grad_clip",
    "optim.momentum",
    "optim.auxiliary_weight",
    "optim.drop_path_prob",
  ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_retraining_rates_must_be_finite_and_in_range(field, value):
  with pytest.raises(validation.ConfigError, match=f"config.{field}="):
    validation.validate_train_config(rh.config(test_retrain.get_config(), **{field: value}))
