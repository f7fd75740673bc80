"""Host-side checks of the search and retraining configs, each error naming the field and
the valid values. They run before any data is loaded (of your own files only the headers
are read, for the image shape, classes and size), any folder is made or anything is
compiled: a bad field costs a second, not a compile.
"""

from __future__ import annotations

import dataclasses

import math

import jax
import ml_collections

from dnas_jax.data import errors as data_errors
from dnas_jax.data import input_pipeline
from dnas_jax.data import registry
from dnas_jax.models import arch as arch_lib
from dnas_jax.models import network
from dnas_jax.models import program as program_lib
from dnas_jax.models import skip_dropout
from dnas_jax.models import supernet
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import known_genotypes
from dnas_jax.space import ops
from dnas_jax.space import search_space
from dnas_jax.training import optimizers

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
  """A finite number > 0 (>= 0 with `allow_zero`); NaN and inf are refused."""
  value = _get(config, path)
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, float))
    or not math.isfinite(value)
    or value < 0
    or (value == 0 and not allow_zero)
  ):
    raise ConfigError(
      f"config.{path}={value!r} must be a finite "
      f"{'non-negative' if allow_zero else 'positive'} number"
    )


def _positive_int(config, path):
  value = _get(config, path)
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f"config.{path}={value!r} must be a positive integer")


def _in_range(config, path, low, high):
  """low <= value < high, finite."""
  value = _get(config, path)
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, float))
    or not math.isfinite(value)
    or not low <= value < high
  ):
    raise ConfigError(f"config.{path}={value!r} must be in [{low}, {high})")


def _common(config, integers, rates, non_negative):
  """The fields search and retraining configs share."""
  _choice(config, "model.dtype", DTYPES)
  for path in (
    "batch_size",
    "eval_batch_size",
    "num_epochs",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_every_epochs",
    "model.num_layers",
    "model.channels",
  ) + integers:
    _positive_int(config, path)
  if not isinstance(_get(config, "seed"), int) or isinstance(config.seed, bool):
    raise ConfigError(f"config.seed={config.seed!r} must be an integer")
  for path in ("optim.weight_lr",) + rates:
    _positive(config, path)
  for path in (
    "optim.weight_min_lr",
    "optim.weight_decay",
    "optim.grad_clip",
    "data.crop_padding",
  ) + non_negative:
    _positive(config, path, allow_zero=True)
  _in_range(config, "optim.momentum", 0, 1)
  for path in ("prefetch", "profile.first_step", "profile.num_steps"):
    value = _get(config, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ConfigError(f"config.{path}={value!r} must be a non-negative integer")
  if _get(config, "model.num_layers") < 3:
    raise ConfigError("config.model.num_layers must be at least 3 (two reduction cells)")
  _check_schedule(config)


def _check_schedule(config) -> None:
  """config.optim.schedule (absent: cosine) and the fields its kind reads."""
  if "schedule" not in _get(config, "optim"):
    return
  _choice(config, "optim.schedule", optimizers.SCHEDULES)
  if config.optim.schedule == "exponential":
    _positive(config, "optim.lr_decay")
    if config.optim.lr_decay > 1:
      raise ConfigError(f"config.optim.lr_decay={config.optim.lr_decay!r} must be at most 1")
  elif config.optim.schedule == "pc_darts_linear":
    if _get(config, "num_epochs") <= 5:
      raise ConfigError(
        f"config.num_epochs={config.num_epochs} must exceed 5 with "
        "config.optim.schedule='pc_darts_linear' (its last 5 epochs decay separately)"
      )
    warmup = config.optim.get("warmup_epochs", 0)
    if (
      isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < config.num_epochs
    ):
      raise ConfigError(
        f"config.optim.warmup_epochs={warmup!r} must be an integer in [0, config.num_epochs)"
      )


def dataset_spec(config: ml_collections.ConfigDict) -> registry.DatasetSpec:
  """The registry's entry for config.data (`registry.resolve`): a registered dataset's
  facts, or those your own files' headers give; a bad field is a ConfigError."""
  for path in ("data.dataset", "data.source"):
    _get(config, path)
  for name in ("path", "train_split", "test_split"):
    value = config.data.get(name, "")
    if not isinstance(value, str) or (name != "path" and not value):
      raise ConfigError(
        f"config.data.{name}={value!r} must be a {'' if name == 'path' else 'non-empty '}string"
      )
  size = config.data.get("image_size", 0)
  if isinstance(size, bool) or not isinstance(size, int) or size < 0:
    raise ConfigError(
      f"config.data.image_size={size!r} must be a non-negative integer (0: the images' own size)"
    )
  dataset, source = config.data.dataset, config.data.source
  if config.data.get("streaming", False) and dataset in STREAMED_ONLY and source == "folder":
    # ImageNet as a folder tree: the registered facts, the crops' size.
    spec = registry.registered_datasets()[dataset]
    return dataclasses.replace(spec, image_shape=(size, size, 3) if size else spec.image_shape)
  try:
    return registry.resolve(config.data)
  except data_errors.DataConfigError as e:
    raise ConfigError(str(e)) from None


def check_image_shape(config: ml_collections.ConfigDict, image_shape, search: bool) -> None:
  """The images fit the search network (`search`) or the retraining network: the
  stride-2 layers divide their height and width, and the auxiliary head has its 8×8."""
  h, w = image_shape[:2]
  if search:
    divisor, net = supernet.SIZE_DIVISOR, "the search network"
    why = "its two reduction cells halve them"
  else:
    kind = _get(config, "model.network")
    divisor, net = network.size_divisor(kind), f"config.model.network={kind!r}"
    why = {
      "tiny_imagenet": "its stem and two reduction cells halve them",
      "imagenet": "its three stem convolutions and two reduction cells halve them",
    }.get(kind, "its two reduction cells halve them")
  if h % divisor or w % divisor:
    near = max(divisor, divisor * round(max(h, w) / divisor))
    raise ConfigError(
      f"config.data: the images are {h}×{w}, but {net} needs a height "
      f"and width divisible by {divisor} ({why}): set "
      f"config.data.image_size to a multiple of {divisor}, e.g. {near}"
    )
  if not search and _get(config, "model.auxiliary"):
    least, m = network.auxiliary_min_size(kind), network.auxiliary_map(kind)
    if min(h, w) < least:
      raise ConfigError(
        f"config.model.auxiliary=True needs images of at least "
        f"{least}×{least} with config.model.network={kind!r} (the "
        f"auxiliary head reads {'an' if m == 8 else 'a'} {m}×{m} map at layer 2L//3); the images "
        f"are {h}×{w}: pass --config.model.auxiliary=False"
      )


def check_batch_fits(
  batch_size: int, num_examples: int, what: str, field: str = "config.batch_size"
) -> None:
  if batch_size > num_examples:
    raise ConfigError(f"{field}={batch_size} is larger than the {num_examples} {what}")


def primitives_of(spec: str) -> tuple[str, ...]:
  """config.model.primitives: 'dnas' (7 ops), 'darts' (8, with none), another list
  registered with `ops.register_primitives`, or a comma-separated list of registered
  operation names."""
  if spec in search_space.PRIMITIVE_SETS:
    return search_space.PRIMITIVE_SETS[spec]
  names = tuple(p.strip() for p in str(spec).split(",") if p.strip())
  try:
    ops.check_candidates(names)
  except ValueError as e:
    raise ConfigError(
      f"config.model.primitives={spec!r}: {e}; or one of {sorted(search_space.PRIMITIVE_SETS)}"
    ) from None
  if not names:
    raise ConfigError(f"config.model.primitives={spec!r} names no operation")
  return names


def import_ops_modules(config: ml_collections.ConfigDict) -> None:
  """Imports config.model.ops_modules (a user's operations: .py paths or module names,
  comma-separated; `ops.import_ops_modules`), before anything reads the operations. A
  config without the field (stored by an older version) has none."""
  spec = config.get("model", {}).get("ops_modules", "")
  if not isinstance(spec, str):
    raise ConfigError(
      f"config.model.ops_modules={spec!r} must be a string: .py file "
      "paths or module names, comma-separated"
    )
  try:
    ops.import_ops_modules(spec)
  except ops.OperationError as e:
    raise ConfigError(f"config.model.ops_modules={spec!r}: {e}") from None


def check_operations(primitives, channels: int, *, affine: bool, dtype: str, field: str) -> None:
  """The operations keep the contract of `ops.register_op` (`ops.check_operations`:
  traced from shapes, nothing compiled); ConfigError, one line, naming `field`."""
  try:
    ops.check_operations(primitives, channels, affine=affine, dtype=dtype)
  except ops.OperationError as e:
    raise ConfigError(f"{field}: {e}") from None


def validate_search_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field of a search config; a user's operations
  (config.model.ops_modules) are imported first, and every operation in use is traced
  from shapes (`check_operations`)."""
  import_ops_modules(config)
  _common(
    config,
    integers=("model.partial_k",),
    rates=("optim.arch_lr",),
    non_negative=("optim.arch_weight_decay", "optim.zero_one_weight", "optim.arch_warmup_epochs"),
  )
  if config.data.get("streaming", False) or config.data.get("dataset") in STREAMED_ONLY:
    raise ConfigError(
      "config.data.streaming: the search holds its data in memory (CIFAR-sized sets); "
      f"streaming ({', '.join(STREAMED_ONLY)}, or data too large for memory) is for "
      "the retraining, experiments.train"
    )
  # decoupled (DNAS), iam (DARTS's identical cells: one α per cell type), full (Ψ per
  # layer).
  _choice(config, "arch.kind", arch_lib.KINDS)
  _choice(config, "arch.beta_domain", arch_lib.BETA_DOMAINS)
  _choice(config, "arch.alpha_sharing", arch_lib.ALPHA_SHARINGS)
  for name in ("alpha_activation", "beta_activation", "gamma_activation"):
    _choice(config, f"arch.{name}", arch_lib.ACTIVATIONS)
  for name, valid in program_lib.PROGRAM_CHOICES.items():
    if "program" in config and name in config.program:
      _choice(config, f"program.{name}", valid)
  for name, others in (
    ("depthwise", "'auto', 'shifted' or 'conv'"),
    ("optimizer", "'auto' or 'optax'"),
  ):
    if config.get("program", {}).get(name) == "kernel":
      problem = program_lib.kernel_problem(jax.default_backend())
      if problem:
        raise ConfigError(f"config.program.{name}='kernel': {problem}; use {others}")
  if config.get("program", {}).get("halves") == "shared" and _get(config, "optim.second_order"):
    raise ConfigError(
      "config.program.halves='shared' is first order only; with "
      "config.optim.second_order=True use 'separate' or 'auto'"
    )
  edge_norm = config.arch.get("edge_normalization", False)
  if not isinstance(edge_norm, bool):
    raise ConfigError(f"config.arch.edge_normalization={edge_norm!r} must be True or False")
  if edge_norm and _get(config, "arch.kind") == "decoupled":
    raise ConfigError(
      "config.arch.edge_normalization=True applies to arch.kind 'iam' "
      "and 'full'; the decoupled kind's β is always its edge weight"
    )
  _in_range(config, "optim.arch_b1", 0, 1)
  _in_range(config, "optim.arch_b2", 0, 1)
  _positive(config, "arch.init_scale", allow_zero=True)
  tp = _get(config, "data.train_portion")
  if not isinstance(tp, (int, float)) or not math.isfinite(tp) or not 0 < tp < 1:
    raise ConfigError(f"config.data.train_portion={tp!r} must be in (0, 1)")
  _in_range(config, "model.skip_dropout", 0, 1)
  check_regularizers(config)
  primitives = primitives_of(_get(config, "model.primitives"))
  spec = dataset_spec(config)
  check_image_shape(config, spec.image_shape, search=True)
  if spec.num_train is not None:
    num_train = spec.num_train
    smaller = min(int(num_train * tp), num_train - int(num_train * tp))
    check_batch_fits(
      config.batch_size,
      smaller,
      f"images of the smaller search split ({config.data.dataset}, config.data.train_portion={tp})",
    )
  c, k = _get(config, "model.channels"), _get(config, "model.partial_k")
  if c % k or (c // k) % 2:
    raise ConfigError(
      f"config.model.channels={c} must be divisible by "
      f"config.model.partial_k={k} into an even number of channels "
      "(factorized reduce halves them)"
    )
  # An edge's operations see C / K channels in the first stage.
  check_operations(
    primitives, c // k, affine=False, dtype=config.model.dtype, field="config.model.primitives"
  )


def check_regularizers(config: ml_collections.ConfigDict) -> None:
  """The options against skip-connect collapse (docs/design.md §1)."""
  _choice(config, "model.skip_dropout_schedule", skip_dropout.SCHEDULES)
  _choice(config, "optim.zero_one_target", arch_lib.ZERO_ONE_TARGETS)
  _choice(config, "data.arch_sampling", input_pipeline.ARCH_SAMPLINGS)
  for name in ("rule", "edges_per_node", "op_threshold", "max_skip_connects"):
    _get(config, f"derive.{name}")
  try:
    genotype_lib.Derivation.from_config(config.derive).check("config.derive.")
  except ValueError as e:
    raise ConfigError(str(e)) from None


STREAMED_ONLY = ("imagenet2012",)  # registered datasets read only by streaming


def validate_train_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad field of a retraining config; a user's
  operations (config.model.ops_modules) are imported first (the genotype's operations
  are checked when it is read: `retrain.setup.genotype_of`)."""
  import_ops_modules(config)
  _common(
    config,
    integers=(),
    rates=(),
    non_negative=("optim.auxiliary_weight", "data.cutout", "data.rotate_degrees"),
  )
  _choice(config, "model.network", tuple(network.NETWORKS))
  _in_range(config, "optim.drop_path_prob", 0, 1)
  if "label_smoothing" in config.optim:
    _in_range(config, "optim.label_smoothing", 0, 1)
  if not isinstance(_get(config, "genotype"), str) or not config.genotype:
    raise ConfigError(
      "config.genotype must be a known genotype name "
      f"{sorted(known_genotypes.KNOWN_GENOTYPES)} or a genotype.json "
      "path"
    )
  _check_streaming(config)
  spec = dataset_spec(config)
  check_image_shape(config, spec.image_shape, search=False)
  if spec.num_train is not None:
    check_batch_fits(config.batch_size, spec.num_train, f"training images of {config.data.dataset}")


def _check_streaming(config: ml_collections.ConfigDict) -> None:
  """config.data.streaming (absent: False) and config.data.workers; a streamed dataset
  is cropped to config.data.image_size, which it must set."""
  streaming = config.data.get("streaming", False)
  if not isinstance(streaming, bool):
    raise ConfigError(f"config.data.streaming={streaming!r} must be True or False")
  workers = config.data.get("workers", 0)
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
    raise ConfigError(
      f"config.data.workers={workers!r} must be a non-negative integer (0: decode in "
      "the training process)"
    )
  if streaming and not config.data.get("image_size", 0):
    raise ConfigError(
      "config.data.streaming=True needs config.data.image_size: the side of the square "
      "crops the streaming pipeline makes (ImageNet: 224)"
    )
  if not streaming and config.data.get("dataset") in STREAMED_ONLY:
    raise ConfigError(
      f"config.data.dataset={config.data.dataset!r} does not fit in memory: set "
      "config.data.streaming=True (experiments/configs/imagenet_retrain.py does)"
    )


def check_devices(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """The batch sizes split evenly over the data-parallel devices."""
  for field in ("batch_size", "eval_batch_size"):
    value = _get(config, field)
    if value % num_devices:
      raise ConfigError(
        f"config.{field}={value} is not divisible by the {num_devices} "
        f"devices of the mesh; use a multiple of {num_devices}"
      )
