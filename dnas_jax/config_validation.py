"""Host-side checks of a config, each error naming the field and the valid values."""

from __future__ import annotations

import ml_collections

from dnas_jax import arch as arch_lib
from dnas_jax import program as program_lib

DATASETS = ("cifar10", "cifar100", "tiny_imagenet", "digits", "synthetic")
SOURCES = ("auto", "tfds", "archive", "digits", "synthetic")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config field has a missing, mistyped or out-of-range value."""


def _get(config: ml_collections.ConfigDict, path: str):
  node = config
  for part in path.split("."):
    if part not in node:
      raise ConfigError(f"config.{path} is missing")
    node = node[part]
  return node


def _choice(config, path, valid):
  value = _get(config, path)
  if value not in valid:
    raise ConfigError(f"config.{path}={value!r} is not valid; valid values: {list(valid)}")


def _positive(config, path, allow_zero=False):
  value = _get(config, path)
  if not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
    raise ConfigError(f"config.{path}={value!r} must be a {'non-negative' if allow_zero else 'positive'} number")


def validate_search_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field of a search config."""
  _choice(config, "data.dataset", DATASETS)
  _choice(config, "data.source", SOURCES)
  _choice(config, "arch.kind", arch_lib.KINDS)
  _choice(config, "arch.beta_domain", arch_lib.BETA_DOMAINS)
  _choice(config, "arch.alpha_sharing", arch_lib.ALPHA_SHARINGS)
  for name in ("alpha_activation", "beta_activation", "gamma_activation"):
    _choice(config, f"arch.{name}", arch_lib.ACTIVATIONS)
  _choice(config, "model.dtype", DTYPES)
  for name, valid in program_lib.PROGRAM_CHOICES.items():
    if "program" in config and name in config.program:
      _choice(config, f"program.{name}", valid)
  if (config.get("program", {}).get("halves") == "shared"
      and _get(config, "optim.second_order")):
    raise ConfigError("config.program.halves='shared' is first order only; with "
                      "config.optim.second_order=True use 'separate' or 'auto'")
  edge_norm = config.arch.get("edge_normalization", False)
  if not isinstance(edge_norm, bool):
    raise ConfigError(f"config.arch.edge_normalization={edge_norm!r} must be True or False")
  if edge_norm and _get(config, "arch.kind") == "decoupled":
    raise ConfigError("config.arch.edge_normalization=True applies to arch.kind 'iam' "
                      "and 'full'; the decoupled kind's β is always its edge weight")
  for path in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps",
               "checkpoint_every_steps", "keep_checkpoints", "eval_every_epochs",
               "model.num_layers", "model.channels", "model.partial_k",
               "optim.weight_lr", "optim.arch_lr"):
    _positive(config, path)
  for path in ("optim.weight_min_lr", "optim.weight_decay", "optim.arch_weight_decay",
               "optim.zero_one_weight", "optim.grad_clip", "optim.arch_warmup_epochs",
               "data.crop_padding"):
    _positive(config, path, allow_zero=True)
  tp = _get(config, "data.train_portion")
  if not 0 < tp < 1:
    raise ConfigError(f"config.data.train_portion={tp!r} must be in (0, 1)")
  sd = _get(config, "model.skip_dropout")
  if not 0 <= sd < 1:
    raise ConfigError(f"config.model.skip_dropout={sd!r} must be in [0, 1)")
  if _get(config, "model.num_layers") < 3:
    raise ConfigError("config.model.num_layers must be at least 3 (two reduction cells)")
  c, k = _get(config, "model.channels"), _get(config, "model.partial_k")
  if c % k or (c // k) % 2:
    raise ConfigError(f"config.model.channels={c} must be divisible by "
                      f"config.model.partial_k={k} into an even number of channels "
                      "(factorized reduce halves them)")
