"""`train_and_evaluate` for the search: the loop with all the side effects.

Config → dataset and splits → supernet, ψ parameterisation, optimizers → state
(restored from the workdir's latest Orbax checkpoint when there is one) → jitted steps
→ metrics, checkpoints and artifacts (`genotype.json`, `psi.npy`, `genotype.txt`,
figures) in the workdir. The data order and the step keys depend only on (seed, step),
so a resumed run ends exactly where an uninterrupted one does. Ctrl-C saves a
checkpoint before stopping.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from dnas_jax import arch as arch_lib
from dnas_jax import checkpoints
from dnas_jax import compilation
from dnas_jax import config_validation
from dnas_jax import datasets
from dnas_jax import genotype as genotype_lib
from dnas_jax import init as init_lib
from dnas_jax import input_pipeline
from dnas_jax import loop_monitor
from dnas_jax import metric_writers
from dnas_jax import ops
from dnas_jax import program as program_lib
from dnas_jax import search
from dnas_jax import search_space
from dnas_jax import sharding
from dnas_jax import supernet
from dnas_jax import workdir as workdir_lib


NonFiniteLossError = loop_monitor.NonFiniteLossError


def create_supernet(config: ml_collections.ConfigDict, num_classes: int, train: bool,
                    primitives: Sequence[str], backend: str | None = None
                    ) -> supernet.SearchNetwork:
  m = config.model
  program = program_lib.resolve_program(config, backend)
  return supernet.SearchNetwork(
      num_classes=num_classes, num_layers=m.num_layers, channels=m.channels,
      primitives=tuple(primitives), partial_k=m.partial_k,
      skip_dropout=m.skip_dropout, train=train, dtype=jnp.dtype(m.dtype),
      formulation=ops.Formulation(program["depthwise"], program["pointwise"]),
      remat=program["remat"] == "convs", scan_stages=program["scan"] == "stages")


def psi_summary(psi: np.ndarray, primitives: Sequence[str]) -> dict[str, float]:
  """Per layer: entropy of ψ[k] normalised over (connection, op), and the mean
  skip-connect weight."""
  out = {}
  flat = psi.reshape(psi.shape[0], -1)
  p = flat / flat.sum(-1, keepdims=True)
  entropy = -(p * np.log(np.maximum(p, 1e-30))).sum(-1)
  skip = (psi[:, :, list(primitives).index("skip_connect")].mean(-1)
          if "skip_connect" in primitives else None)
  for k in range(psi.shape[0]):
    out[f"psi_entropy/layer_{k:02d}"] = float(entropy[k])
    if skip is not None:
      out[f"psi_skip/layer_{k:02d}"] = float(skip[k])
  return out


def write_artifacts(workdir: str, psi: np.ndarray, primitives: Sequence[str],
                    meta: dict) -> genotype_lib.GlobalGenotype:
  """psi.npy, genotype.json and genotype.txt (each written atomically)."""
  geno = genotype_lib.derive_genotype(psi, primitives)
  def atomic(name, write):
    tmp = os.path.join(workdir, f".{name}.tmp")
    write(tmp)
    os.replace(tmp, os.path.join(workdir, name))
  def save_npy(p):
    with open(p, "wb") as f:
      np.save(f, psi)
  # psi.npy first: genotype.json's meta then names the step of the psi.npy beside it
  # (what experiments.derive reads while a search runs).
  atomic("psi.npy", save_npy)
  atomic("genotype.json", lambda p: geno.save(p, primitives=primitives, meta=meta))
  atomic("genotype.txt", lambda p: open(p, "w").write(geno.describe() + "\n"))
  return geno


def _plot_figures(workdir, psi, primitives, geno, writer, step):
  try:
    from dnas_jax import plots  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  figs = {"global_architecture": plots.plot_global_architecture(geno),
          "psi_heatmaps": plots.plot_psi_heatmaps(psi, primitives)}
  images = {}
  for name, fig in figs.items():
    images[name] = plots.figure_to_image(fig)
    plots.save_figure(fig, os.path.join(workdir, f"{name}.png"))
  writer.write_images(step, images)


@dataclasses.dataclass
class SearchSetup:
  """What a search needs besides data: the initial (replicated) state and the steps."""
  state: search.SearchState
  spec: arch_lib.ArchSpec
  primitives: tuple[str, ...]
  net_train: supernet.SearchNetwork
  net_eval: supernet.SearchNetwork
  step_fn: Callable
  eval_fn: Callable


def create_search_setup(config: ml_collections.ConfigDict, image_shape, num_classes: int,
                        steps_per_epoch: int, mesh, backend: str | None = None
                        ) -> SearchSetup:
  """Supernet, ψ parameterisation, optimizers, initial state and jitted steps, written
  for `backend` (default: JAX's default backend; see `resolve_program`)."""
  primitives = config_validation.primitives_of(config.model.primitives)
  spec = arch_lib.create_arch_spec(config.arch, config.model.num_layers, len(primitives))
  net_train = create_supernet(config, num_classes, True, primitives, backend)
  net_eval = create_supernet(config, num_classes, False, primitives, backend)
  o = config.optim
  lr_schedule = search.weight_lr_schedule(o.weight_lr, o.weight_min_lr, config.num_epochs,
                                          steps_per_epoch)
  weight_tx = search.create_weight_tx(lr_schedule, o.momentum, o.weight_decay, o.grad_clip)
  arch_tx = search.create_arch_tx(o.arch_lr, o.arch_b1, o.arch_b2, o.arch_weight_decay)
  example = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  psi0 = jnp.zeros((spec.num_layers, search_space.NUM_CONNECTIONS, spec.num_ops))
  variables = init_lib.init_from_shapes(net_train, config.seed, example, psi0)
  arch_params = spec.init(jax.random.key(config.seed + 1))
  state = search.create_search_state(variables["params"], variables["batch_stats"],
                                     arch_params, weight_tx, arch_tx)
  step_fn, eval_fn = search.make_step_fns(
      net_train=net_train, net_eval=net_eval, spec=spec, weight_tx=weight_tx,
      arch_tx=arch_tx, lr_schedule=lr_schedule,
      arch_warmup_steps=o.arch_warmup_epochs * steps_per_epoch,
      zero_one_weight=o.zero_one_weight, second_order=o.second_order,
      weight_decay=o.weight_decay, momentum=o.momentum,
      halves=program_lib.resolve_program(config, backend)["halves"])
  return SearchSetup(sharding.replicate(state, mesh), spec, tuple(primitives), net_train,
                     net_eval, step_fn, eval_fn)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hooks: Sequence[Callable[[int], None]] = (),
                       allow_config_changes: bool = False) -> dict:
  """Runs (or resumes) the search of `config` in `workdir`; returns final metrics.

  A resume with a config of another meaning is refused unless `allow_config_changes`
  (see `dnas_jax.workdir`); every way out waits for pending checkpoint writes.
  """
  config_validation.validate_search_config(config)
  sharding.maybe_initialize_distributed(config.distributed)
  mesh = sharding.create_mesh()
  config_validation.check_devices(config, mesh.devices.size)

  ds = datasets.load_dataset(config.data.dataset, config.data.source,
                             config.data.data_dir or None)
  logging.info("dataset %s from %s: %d training images of shape %s, %d classes",
               ds.name, ds.source, len(ds.train_labels), ds.image_shape, ds.num_classes)
  weight_split, arch_split = input_pipeline.search_splits(ds, config.data.train_portion)
  config_validation.check_batch_fits(config.batch_size,
                                     min(len(weight_split), len(arch_split)),
                                     "images of the smaller search split")
  steps_per_epoch = min(input_pipeline.steps_per_epoch(len(weight_split), config.batch_size),
                        input_pipeline.steps_per_epoch(len(arch_split), config.batch_size))
  with workdir_lib.RunDir(workdir, config.keep_checkpoints, allow_config_changes) as run:
    # "auto" program fields: as stored with the checkpoints when resuming (another
    # backend's choice may have another parameter tree), else this backend's.
    stored = (run.stored_meta or {}).get("config", {}).get("program")
    config = program_lib.with_resolved_program(config, stored=stored)
    run.check_config(config.to_dict())
    return _search(config, run, ds, weight_split, arch_split, steps_per_epoch, mesh,
                   hooks)


def _search(config, run: workdir_lib.RunDir, ds, weight_split, arch_split,
            steps_per_epoch, mesh, hooks) -> dict:
  workdir = run.workdir
  total_steps = steps_per_epoch * config.num_epochs
  aug = input_pipeline.AugmentConfig(crop_padding=config.data.crop_padding,
                                     flip=config.data.flip)
  logging.info("program: %s", ", ".join(f"{k}={v}" for k, v in config.program.items()))
  setup = create_search_setup(config, ds.image_shape, ds.num_classes, steps_per_epoch, mesh)
  state, spec, primitives = setup.state, setup.spec, setup.primitives
  logging.info("supernet: %d weight parameters, %d architecture parameters (%s)",
               sum(x.size for x in jax.tree.leaves(state.params)), spec.num_params(),
               spec.kind)

  restored = run.restore(checkpoints.abstract_like(state))
  if restored is not None:
    state = restored[0]
    logging.info("resumed from the checkpoint at step %d", int(state.step))
  meta = {"config": config.to_dict(), "image_shape": list(ds.image_shape),
          "num_classes": ds.num_classes, "primitives": list(primitives),
          "dataset": ds.name, "source": ds.source, "steps_per_epoch": steps_per_epoch}

  weights_fn = jax.jit(spec.weights)
  lead = sharding.is_lead_process()  # writes artifacts and metrics; all checkpoint
  writer = metric_writers.MetricWriter(workdir, events=lead)
  rng = sharding.replicate(jax.random.key(config.seed + 2), mesh)
  batch_spec = sharding.batch_sharding(mesh)
  train_batch_shape = compilation.abstract_batch(config.batch_size, ds.image_shape,
                                                 batch_spec)
  eval_batch_shape = compilation.abstract_batch(config.eval_batch_size, ds.image_shape,
                                                batch_spec, mask=True)
  (step_fn, eval_fn), _ = compilation.compile_all([
      (f"search step ({spec.kind}, L={config.model.num_layers}, batch "
       f"{config.batch_size})", setup.step_fn,
       (state, train_batch_shape, train_batch_shape, rng)),
      ("evaluation step", setup.eval_fn,
       (state.params, state.batch_stats, weights_fn(state.arch_params), eval_batch_shape))])

  def evaluate(state) -> dict[str, float]:
    weights = weights_fn(state.arch_params)
    acc = None
    for batch in input_pipeline.eval_batches(arch_split, config.eval_batch_size, ds.mean,
                                             ds.std):
      m = eval_fn(state.params, state.batch_stats, weights,
                  sharding.shard_batch(batch, mesh))
      acc = m if acc is None else acc.merge(m)
    return {f"val_{k}": float(v) for k, v in acc.compute().items()}

  def checkpoint(state, epoch_done: bool):
    step = int(state.step)
    run.save(step, state, meta)
    if epoch_done or step == total_steps:
      psi = np.asarray(weights_fn(state.arch_params).psi)  # on every process: SPMD
      artifact_meta = {"step": step, "epoch": step // steps_per_epoch,
                       "dataset": ds.name, "arch_kind": spec.kind}
      geno = (write_artifacts(workdir, psi, primitives, artifact_meta) if lead
              else genotype_lib.derive_genotype(psi, primitives))
      writer.write_scalars(step, psi_summary(psi, primitives), console=False)
      writer.write_texts(step, {"genotype": geno.describe()})
      return geno, psi
    return None, None

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
      batches = input_pipeline.search_batches(weight_split, arch_split, config.batch_size,
                                              config.seed, epoch, aug, ds.mean, ds.std,
                                              start_step=offset)
      placed = ((sharding.shard_batch(t, mesh), sharding.shard_batch(v, mesh))
                for t, v in batches)
      for train_batch, val_batch in input_pipeline.prefetch(placed, config.prefetch):
        profiler.before_step(step)
        with jax.profiler.StepTraceAnnotation("search_step", step_num=step):
          state, m = step_fn(state, train_batch, val_batch, rng)
        step += 1
        profiler.after_step(step, state)
        monitor.record(step, m, m.train_loss.total)
        epoch_done = step % steps_per_epoch == 0
        if epoch_done and ((step // steps_per_epoch) % config.eval_every_epochs == 0
                           or step == total_steps):
          last_eval = evaluate(state)
          writer.write_scalars(step, last_eval)
        if epoch_done or step % config.checkpoint_every_steps == 0:
          monitor.check_finite()
          geno, _ = checkpoint(state, epoch_done)
          if geno is not None:
            logging.info("epoch %d genotype:\n%s", step // steps_per_epoch, geno.describe())
        run.check_preemption(step)
    monitor.check_finite()
    geno, psi = checkpoint(state, epoch_done=True)
  except KeyboardInterrupt:
    logging.warning("interrupted at step %d: saving a checkpoint", step)
    checkpoint(state, epoch_done=False)
    writer.close()
    raise
  except (NonFiniteLossError, checkpoints.NonFiniteStateError) as e:
    writer.close()
    raise type(e)(f"{e}; {run.kept_checkpoint()}") from None
  finally:
    profiler.close()
  run.manager.wait_until_finished()
  if not last_eval:
    last_eval = evaluate(state)
  if lead:
    _plot_figures(workdir, psi, primitives, geno, writer, step)
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(last_eval, f, indent=1)
  writer.close()
  logging.info("search done: %s; genotype in %s", last_eval,
               os.path.join(workdir, "genotype.json"))
  return {"state": state, "genotype": geno, "psi": psi, **last_eval}
