"""Retraining a global genotype from scratch, and its evaluation (docs/design.md §1).

Config → genotype (a published name or a `genotype.json`, mapped to the network's depth
with `genotype.map_to_depth`) → dataset → discrete network (`network.create_network`)
→ state (restored from the workdir's latest Orbax checkpoint when there is one) →
jitted, data-parallel `train_step` → metrics, checkpoints, `final_metrics.json`.

DARTS's `train.py` recipe (quark0/darts `cnn/train.py`): SGD momentum 0.9 with coupled
L2, learning rate cosine over epochs (stepped per epoch) to `weight_min_lr`, gradient
clipping, the auxiliary head's loss added with weight `auxiliary_weight`, drop path
with probability `drop_path_prob · epoch / num_epochs` (an input of the step, so the
ramp never recompiles). The data order, augmentation and step keys depend only on
(seed, step), so a resumed run ends with the parameters of an uninterrupted one. Ctrl-C
saves a checkpoint before stopping.

`evaluate` is the one evaluation function: the loop's per-epoch and final evaluations
and `experiments/evaluate.py` (through `dnas_jax.restore`) all call it, on the same
batches, so a restored checkpoint reproduces the reported accuracy exactly.
"""

import functools
import json
import os
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metrics

from dnas_jax import checkpoints
from dnas_jax import compilation
from dnas_jax import config_validation as cv
from dnas_jax import datasets
from dnas_jax import genotype as genotype_lib
from dnas_jax import init as init_lib
from dnas_jax import input_pipeline
from dnas_jax import loop_monitor
from dnas_jax import known_genotypes
from dnas_jax import metric_writers
from dnas_jax import network
from dnas_jax import search
from dnas_jax import sharding
from dnas_jax import workdir as workdir_lib

# Input shape and number of classes of each dataset, known without loading it (for
# --dry_run); `train_and_evaluate` checks them against the loaded data.
DATASET_SHAPES = {"cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100),
                  "tiny_imagenet": ((64, 64, 3), 200), "digits": ((8, 8, 1), 10),
                  "synthetic": ((8, 8, 3), 10)}
FINAL_METRICS = "final_metrics.json"


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  train_loss: metrics.Average.from_output("train_loss")
  train_accuracy: metrics.Average.from_output("train_accuracy")
  learning_rate: metrics.LastValue.from_output("learning_rate")
  drop_prob: metrics.LastValue.from_output("drop_prob")


def resolve_genotype(spec: str, num_layers: int) -> genotype_lib.GlobalGenotype:
  """The genotype named by `config.genotype` for a `num_layers`-layer network: a known
  name stacked over the layers, or a genotype.json mapped to that depth."""
  if spec in known_genotypes.KNOWN_GENOTYPES:
    return known_genotypes.get_genotype(spec, num_layers)
  if not os.path.isfile(spec):
    raise cv.ConfigError(
        f"config.genotype={spec!r} is neither a known genotype "
        f"{sorted(known_genotypes.KNOWN_GENOTYPES)} nor an existing genotype.json file "
        "(run the search, or experiments.derive, first)")
  try:
    geno = genotype_lib.GlobalGenotype.load(spec)
  except (ValueError, KeyError, TypeError) as e:
    raise cv.ConfigError(f"config.genotype={spec!r} is not a valid genotype.json: "
                         f"{e}") from None
  try:
    if geno.num_layers != num_layers:
      logging.info("mapping the %d-layer genotype %s to %d layers", geno.num_layers,
                   spec, num_layers)
      geno = genotype_lib.map_to_depth(geno, num_layers)
    network.check_genotype(geno)
  except ValueError as e:
    raise cv.ConfigError(f"config.genotype={spec!r}: {e}") from None
  return geno


def create_network(config: ml_collections.ConfigDict, geno: genotype_lib.GlobalGenotype,
                   num_classes: int, train: bool) -> network.NetworkCIFAR:
  m = config.model
  return network.create_network(geno, num_classes, m.channels, m.auxiliary, m.network,
                                train=train, dtype=jnp.dtype(m.dtype))


def count_parameters(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(parameters excluding the auxiliary head, all parameters) of the config's network,
  from shapes only: no data is read and nothing is compiled."""
  cv.validate_train_config(config)
  image_shape, num_classes = DATASET_SHAPES[config.data.dataset]
  geno = resolve_genotype(config.genotype, config.model.num_layers)
  shapes = network.variable_shapes(create_network(config, geno, num_classes, True),
                                   image_shape)
  return (network.count_params(shapes),
          network.count_params(shapes, exclude_auxiliary=False))


def parameter_count_lines(config: ml_collections.ConfigDict) -> list[str]:
  """The two lines `experiments.train --dry_run` prints."""
  excluding, total = count_parameters(config)
  return [f"params_excluding_auxiliary: {excluding}", f"params_total: {total}"]


def create_train_state(params, batch_stats, tx: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params))


def create_tx(config: ml_collections.ConfigDict, steps_per_epoch: int
              ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  o = config.optim
  schedule = search.weight_lr_schedule(o.weight_lr, o.weight_min_lr, config.num_epochs,
                                       steps_per_epoch)
  tx = search.create_weight_tx(schedule, o.momentum, o.weight_decay, o.grad_clip)
  return tx, schedule


def drop_path_prob(config: ml_collections.ConfigDict, step: int, steps_per_epoch: int
                   ) -> float:
  """DARTS's ramp: drop_path_prob · epoch / num_epochs, for the epoch of `step`."""
  return config.optim.drop_path_prob * (step // steps_per_epoch) / config.num_epochs


def loss_fn(params, batch_stats, batch, drop_prob, rng, *, net: network.NetworkCIFAR,
            auxiliary_weight: float):
  """Cross-entropy of the logits plus `auxiliary_weight` × that of the auxiliary head."""
  (logits, aux_logits), updates = net.apply(
      {"params": params, "batch_stats": batch_stats}, batch["image"], drop_prob,
      rngs={"dropout": rng}, mutable=["batch_stats"])
  loss = search.cross_entropy(logits, batch["label"])
  if aux_logits is not None:
    loss = loss + auxiliary_weight * search.cross_entropy(aux_logits, batch["label"])
  return loss, (logits, updates["batch_stats"])


def train_step(state: TrainState, batch, rng, drop_prob, *, net: network.NetworkCIFAR,
               tx: optax.GradientTransformation, lr_schedule: optax.Schedule,
               auxiliary_weight: float) -> tuple[TrainState, TrainMetrics]:
  """One SGD step on a (sharded) training batch; `drop_prob` is a traced scalar."""
  rng = jax.random.fold_in(rng, state.step)
  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats, batch, drop_prob, rng, net=net,
      auxiliary_weight=auxiliary_weight)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            batch_stats=new_stats, opt_state=opt_state)
  return new_state, TrainMetrics.single_from_model_output(
      train_loss=loss, train_accuracy=search.accuracy(logits, batch["label"]),
      learning_rate=lr_schedule(state.step), drop_prob=drop_prob)


def eval_step(params, batch_stats, batch, *, net: network.NetworkCIFAR
              ) -> search.EvalMetrics:
  """Evaluation with running batch statistics; `batch['mask']` marks real examples."""
  logits = net.apply({"params": params, "batch_stats": batch_stats}, batch["image"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  return search.EvalMetrics.single_from_model_output(loss=loss, accuracy=correct,
                                                     mask=batch["mask"])


def make_eval_fn(net_eval: network.NetworkCIFAR) -> Callable:
  return jax.jit(functools.partial(eval_step, net=net_eval))


def evaluate(eval_fn: Callable, state: TrainState, split: input_pipeline.Split,
             batch_size: int, ds: datasets.Dataset, mesh, prefix: str = "test"
             ) -> dict[str, float]:
  """{prefix}_loss, _accuracy, _error over every example of `split`, in order."""
  acc = None
  for batch in input_pipeline.eval_batches(split, batch_size, ds.mean, ds.std):
    m = eval_fn(state.params, state.batch_stats, sharding.shard_batch(batch, mesh))
    acc = m if acc is None else acc.merge(m)
  out = {k: float(v) for k, v in acc.compute().items()}
  return {f"{prefix}_loss": out["loss"], f"{prefix}_accuracy": out["accuracy"],
          f"{prefix}_error": 1.0 - out["accuracy"]}


def abstract_state(net: network.NetworkCIFAR, image_shape, tx, mesh) -> TrainState:
  """The state's shapes and (replicated) shardings, a restore target built without
  running or compiling anything."""
  shapes = network.variable_shapes(net, tuple(image_shape))
  state = jax.eval_shape(lambda v: create_train_state(v["params"], v["batch_stats"], tx),
                         shapes)
  rep = sharding.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), state)


def load_data(config: ml_collections.ConfigDict) -> datasets.Dataset:
  ds = datasets.load_dataset(config.data.dataset, config.data.source,
                             config.data.data_dir or None)
  expected = DATASET_SHAPES.get(ds.name)
  if expected and (ds.image_shape, ds.num_classes) != expected:
    logging.warning("%s has images %s and %d classes, not %s and %d", ds.name,
                    ds.image_shape, ds.num_classes, *expected)
  return ds


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: Sequence[Callable[[int], None]] = (),
                       allow_config_changes: bool = False) -> dict:
  """Retrains (or resumes) `config.genotype` in `workdir`; returns the final metrics.

  A resume with a config of another meaning is refused unless `allow_config_changes`
  (see `dnas_jax.workdir`); every way out waits for pending checkpoint writes.
  """
  cv.validate_train_config(config)
  sharding.maybe_initialize_distributed(config.distributed)
  mesh = sharding.create_mesh()
  cv.check_devices(config, mesh.devices.size)
  geno = resolve_genotype(config.genotype, config.model.num_layers)
  ds = load_data(config)
  train_split = input_pipeline.Split(ds.train_images, ds.train_labels)
  test_split = input_pipeline.Split(ds.test_images, ds.test_labels)
  cv.check_batch_fits(config.batch_size, len(train_split), "training images")
  with workdir_lib.RunDir(workdir, config.keep_checkpoints, allow_config_changes) as run:
    run.check_config(config.to_dict())
    return _retrain(config, run, geno, ds, train_split, test_split, mesh, hooks)


def _retrain(config, run: workdir_lib.RunDir, geno, ds, train_split, test_split, mesh,
             hooks) -> dict:
  workdir = run.workdir
  steps_per_epoch = input_pipeline.steps_per_epoch(len(train_split), config.batch_size)
  total_steps = steps_per_epoch * config.num_epochs
  aug = input_pipeline.AugmentConfig(
      crop_padding=config.data.crop_padding, flip=config.data.flip,
      cutout=config.data.cutout, rotate_degrees=config.data.rotate_degrees)

  net_train = create_network(config, geno, ds.num_classes, True)
  net_eval = create_network(config, geno, ds.num_classes, False)
  tx, lr_schedule = create_tx(config, steps_per_epoch)
  example = jnp.zeros((1,) + ds.image_shape, jnp.float32)
  variables = init_lib.init_from_shapes(net_train, config.seed, example)
  state = sharding.replicate(
      create_train_state(variables["params"], variables["batch_stats"], tx), mesh)
  num_params = network.count_params(variables)
  num_params_total = network.count_params(variables, exclude_auxiliary=False)
  logging.info("network: %d parameters (%d with the auxiliary head), %d layers, C=%d",
               num_params, num_params_total, geno.num_layers, config.model.channels)

  restored = run.restore(checkpoints.abstract_like(state))
  if restored is not None:
    state = restored[0]
    logging.info("resumed from the checkpoint at step %d", int(state.step))
  meta = {"config": config.to_dict(), "image_shape": list(ds.image_shape),
          "num_classes": ds.num_classes, "genotype": json.loads(geno.to_json()),
          "dataset": ds.name, "source": ds.source, "steps_per_epoch": steps_per_epoch,
          "num_params": num_params, "num_params_total": num_params_total,
          "mean": list(ds.mean), "std": list(ds.std)}  # input normalisation (api.py)

  step_fn = jax.jit(functools.partial(
      train_step, net=net_train, tx=tx, lr_schedule=lr_schedule,
      auxiliary_weight=config.optim.auxiliary_weight), donate_argnums=(0,))
  lead = sharding.is_lead_process()  # writes metrics and final_metrics.json
  writer = metric_writers.MetricWriter(workdir, events=lead)
  writer.write_texts(0, {"genotype": geno.describe()})
  rng = sharding.replicate(jax.random.key(config.seed + 2), mesh)
  batch_spec = sharding.batch_sharding(mesh)
  (step_fn, eval_fn), _ = compilation.compile_all([
      (f"retraining step (L={geno.num_layers}, C={config.model.channels}, batch "
       f"{config.batch_size})", step_fn,
       (state, compilation.abstract_batch(config.batch_size, ds.image_shape, batch_spec),
        rng, jnp.float32(0.0))),
      ("evaluation step", make_eval_fn(net_eval),
       (state.params, state.batch_stats,
        compilation.abstract_batch(config.eval_batch_size, ds.image_shape, batch_spec,
                                   mask=True)))])

  monitor = loop_monitor.LoopMonitor(writer, total_steps=total_steps,
                                     steps_per_epoch=steps_per_epoch,
                                     num_epochs=config.num_epochs,
                                     log_every=config.log_every_steps, hooks=hooks)
  profiler = loop_monitor.StepProfiler(workdir, config.profile.first_step,
                                       config.profile.num_steps)
  step = int(state.step)
  last_eval = {}
  try:
    while step < total_steps:
      epoch, offset = divmod(step, steps_per_epoch)
      drop_prob = jnp.float32(drop_path_prob(config, step, steps_per_epoch))
      batches = input_pipeline.epoch_batches(train_split, config.batch_size, config.seed,
                                             epoch, aug, ds.mean, ds.std,
                                             start_step=offset)
      placed = (sharding.shard_batch(b, mesh) for b in batches)
      for batch in input_pipeline.prefetch(placed, config.prefetch):
        profiler.before_step(step)
        with jax.profiler.StepTraceAnnotation("train_step", step_num=step):
          state, m = step_fn(state, batch, rng, drop_prob)
        step += 1
        profiler.after_step(step, state)
        monitor.record(step, m, m.train_loss.total)
        epoch_done = step % steps_per_epoch == 0
        if epoch_done and ((step // steps_per_epoch) % config.eval_every_epochs == 0
                           or step == total_steps):
          last_eval = evaluate(eval_fn, state, test_split, config.eval_batch_size, ds,
                               mesh)
          writer.write_scalars(step, last_eval)
        if epoch_done or step % config.checkpoint_every_steps == 0:
          monitor.check_finite()
          run.save(step, state, meta)
        run.check_preemption(step)
    monitor.check_finite()
    run.save(step, state, meta)
  except KeyboardInterrupt:
    logging.warning("interrupted at step %d: saving a checkpoint", step)
    run.save(step, state, meta)
    writer.close()
    raise
  except (loop_monitor.NonFiniteLossError, checkpoints.NonFiniteStateError) as e:
    writer.close()
    raise type(e)(f"{e}; {run.kept_checkpoint()}") from None
  finally:
    profiler.close()
  run.manager.wait_until_finished()
  if not last_eval:
    last_eval = evaluate(eval_fn, state, test_split, config.eval_batch_size, ds, mesh)
    writer.write_scalars(step, last_eval)
  writer.close()
  final = {**last_eval, "step": step, "epochs": config.num_epochs,
           "num_params": num_params, "num_params_total": num_params_total}
  if lead:
    with open(os.path.join(workdir, FINAL_METRICS), "w") as f:
      json.dump(final, f, indent=1)
  logging.info("retraining done: test accuracy %.4f, test error %.2f %% (%s)",
               final["test_accuracy"], 100 * final["test_error"],
               os.path.join(workdir, FINAL_METRICS))
  return {"state": state, "genotype": geno, **final}
