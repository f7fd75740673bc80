"""The evaluation step and loop of both phases: loss and accuracy over every example
of a split, in order, with the running batch statistics.

The last batch is padded to the fixed batch size (one compilation); `batch['mask']`
marks the real examples, and only they count.
"""

from typing import Callable, Iterable

import flax
import flax.linen as nn
import jax.numpy as jnp
import optax
from clu import metrics

from dnas_jax.data import device_augment
from dnas_jax.data import input_pipeline
from dnas_jax.training import monitor
from dnas_jax.training import sharding


def output_metric(base: type[metrics.Metric], output: str) -> type[metrics.Metric]:
  """`base.from_output(output)` (a clu metric of the step output named `output`) as a
  class that pickle finds by name, `dnas_jax.training.evaluation.{Base}_{output}`; the
  same class for the same arguments. clu makes a local class, which cannot be pickled,
  and a compiled step's output structure holds these classes: `compilation` stores
  that structure with the executable it caches."""
  name = f"{base.__name__}_{output}"
  cls = globals().get(name)
  if cls is None:
    cls = base.from_output(output)
    cls.__name__ = cls.__qualname__ = name
    cls.__module__ = __name__
    globals()[name] = cls
  return cls


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: output_metric(metrics.Average, "loss")
  accuracy: output_metric(metrics.Average, "accuracy")


def eval_step(
  params, batch_stats, batch, net_inputs=(), *, net: nn.Module, normalization=None
) -> EvalMetrics:
  """`net` in evaluation mode on `batch['image']` (and `net_inputs` after it: the
  search passes ψ's `ArchWeights`); a streamed batch's uint8 images are normalised
  here with `normalization` = (mean, std) (`device_augment.model_input`)."""
  images = device_augment.model_input(batch, normalization)
  logits = net.apply({"params": params, "batch_stats": batch_stats}, images, *net_inputs)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  return EvalMetrics.single_from_model_output(loss=loss, accuracy=correct, mask=batch["mask"])


def evaluate(
  eval_fn: Callable,
  params,
  batch_stats,
  split: input_pipeline.Split,
  batch_size: int,
  mean,
  std,
  mesh,
  net_inputs=(),
  prefix: str = "test",
) -> dict[str, float]:
  """{prefix}_loss, _accuracy and _error of `eval_fn` (a jitted `eval_step`) over
  every example of `split`. Each process reads only its rows of each batch."""
  rows = sharding.host_rows(mesh, batch_size)
  batches = input_pipeline.eval_batches(split, batch_size, mean, std, rows)
  return evaluate_batches(
    eval_fn, params, batch_stats, batches, batch_size, mesh, net_inputs, prefix
  )


def evaluate_batches(
  eval_fn: Callable,
  params,
  batch_stats,
  batches: Iterable[dict],
  batch_size: int,
  mesh,
  net_inputs=(),
  prefix: str = "test",
) -> dict[str, float]:
  """`evaluate` over `batches`: this process's rows of global batches of `batch_size`
  with their 'mask' (e.g. the streaming pipeline's `eval_batches`)."""
  collected = [
    eval_fn(params, batch_stats, sharding.shard_batch(batch, mesh, batch_size), net_inputs)
    for batch in batches
  ]
  out = {k: float(v) for k, v in monitor.merge_on_host(collected).compute().items()}
  return {
    f"{prefix}_loss": out["loss"],
    f"{prefix}_accuracy": out["accuracy"],
    f"{prefix}_error": 1.0 - out["accuracy"],
  }
