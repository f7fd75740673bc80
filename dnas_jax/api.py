"""Public restore API: a finished (or running) run back from its workdir alone.

Everything is rebuilt from the checkpoint's JSON meta (the config as a dict, candidate
operations, image shape, number of classes, genotype, input normalisation), so another
machine, a notebook or a colleague needs only the workdir, not the config file::

    from dnas_jax import api

    search = api.load_search("workdirs/digits")
    search.psi.shape            # (L, 14, Op): ψ[k, i, j], formula (4)
    search.arch_params          # the parameters ψ is computed from (α, β, γ for DNAS)
    print(search.genotype.describe())

    clf = api.load_classifier("workdirs/digits_retrain")
    clf.predict(images_uint8)   # [N] class ids; uint8 (0..255) or float (0..1) NHWC

`load_search` reads the newest intact checkpoint of a search workdir (or the one at
`step`); `load_classifier` that of a retraining workdir. Both read the newest intact
checkpoint (verified against its SHA-256 digest; damaged newer ones are skipped, not
moved: this module only reads) and raise `WorkdirError` saying what is missing.

This is the one module that reads runs back, and it writes nothing; the entry points
use it too:

* `restore_search_run` / `restore_train_run`: a checkpoint's state and meta, the
  restore target rebuilt from the meta (shapes only: nothing runs or compiles);
* `evaluate_workdir(workdir, split)`: a retraining run's loss, accuracy and error
  (experiments/evaluate.py);
* `search_psi(workdir)`: ψ [L, 14, Op] and the candidate operations of a search
  workdir, from its `psi.npy` or, when that is absent, its newest checkpoint
  (experiments/derive.py, which writes the derived genotype and figures with
  `dnas_jax.search.derivation`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dnas_jax.models import arch as arch_lib
from dnas_jax.models import network
from dnas_jax.retrain import feeds
from dnas_jax.retrain import setup as retrain_setup
from dnas_jax.retrain import steps as retrain_steps
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import ops
from dnas_jax.training import checkpoints
from dnas_jax.training import evaluation
from dnas_jax.training import sharding
from dnas_jax.training import workdir as workdir_lib

# What a workdir lacks (checkpoint, psi.npy, meta) is a `WorkdirError`, the one the
# runs raise; the message says what is missing.
WorkdirError = workdir_lib.WorkdirError


@dataclasses.dataclass(frozen=True)
class RestoredRun:
  config: ml_collections.ConfigDict
  meta: dict
  genotype: genotype_lib.GlobalGenotype
  net_eval: network.NetworkCIFAR
  state: retrain_steps.TrainState
  mesh: Any

  @property
  def step(self) -> int:
    return int(self.state.step)

  @property
  def variables(self) -> dict:
    return {"params": self.state.params, "batch_stats": self.state.batch_stats}


def checkpoint_manager(workdir: str):
  """The Orbax manager of a run's workdir; WorkdirError when it has no checkpoints."""
  path = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
  if not os.path.isdir(path):
    raise WorkdirError(f"no checkpoint folder {path}: is {workdir} a run's workdir?")
  return checkpoints.create_manager(path)


def _meta(manager, workdir: str, step: int | None) -> dict:
  """The meta of checkpoint `step`, or of the newest readable one; the run's own
  operations (its config's model.ops_modules) imported."""
  if step is not None:
    return _with_ops(checkpoints.read_meta(manager, step))
  newest = checkpoints.newest_readable_meta(manager)
  if newest is None:
    raise WorkdirError(
      f"no readable checkpoint in {os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)}"
    )
  return _with_ops(newest[1])


def _with_ops(meta: dict) -> dict:
  """Imports the operations modules a run's stored config names (before anything
  reads its operations), and returns its meta."""
  ops.import_ops_modules(meta.get("config", {}).get("model", {}).get("ops_modules", ""))
  return meta


def _restore_state(manager, target, step: int | None):
  """(state, meta, step): checkpoint `step`, or the newest intact one (verified against
  its digest; damaged newer ones are skipped, not moved: this only reads)."""
  if step is None:
    restored = checkpoints.restore_verified(manager, target, move_damaged=False)
    if restored is None:
      raise WorkdirError(f"no checkpoint in {manager.directory}")
    return restored
  state, meta = checkpoints.restore(manager, target, step)
  return state, meta, step


def restore_search_run(workdir: str, step: int | None = None, mesh=None) -> tuple[Any, dict, int]:
  """(state, meta, step) of a search workdir's checkpoint `step` (default: the newest
  intact one). The restore target is the search state rebuilt from the meta (shapes
  only: nothing runs or compiles)."""
  from dnas_jax.search import setup as search_setup  # pylint: disable=g-import-not-at-top  (heavy)

  manager = checkpoint_manager(workdir)
  meta = _meta(manager, workdir, step)
  if "primitives" not in meta or "genotype" in meta:
    raise WorkdirError(
      f"{workdir} is not a search workdir (its checkpoint meta has no "
      "candidate operations; for a retraining workdir use "
      "restore_train_run or api.load_classifier)"
    )
  config = ml_collections.ConfigDict(meta["config"])
  mesh = sharding.create_mesh() if mesh is None else mesh
  setup = search_setup.create_search_setup(
    config, tuple(meta["image_shape"]), meta["num_classes"], meta["steps_per_epoch"], mesh
  )
  return _restore_state(manager, checkpoints.abstract_like(setup.state), step)


def restore_train_run(workdir: str, step: int | None = None, mesh=None) -> RestoredRun:
  """The retraining run in `workdir` at checkpoint `step` (default: the newest intact
  one)."""
  manager = checkpoint_manager(workdir)
  meta = _meta(manager, workdir, step)
  if "genotype" not in meta:
    raise WorkdirError(
      f"{workdir} is not a retraining workdir (its checkpoint meta has "
      "no genotype; for a search workdir use experiments.derive)"
    )
  config = ml_collections.ConfigDict(meta["config"])
  geno = genotype_lib.GlobalGenotype.from_json(json.dumps(meta["genotype"]))
  mesh = sharding.create_mesh() if mesh is None else mesh
  net_train = retrain_setup.create_network(config, geno, meta["num_classes"], True)
  tx, _ = retrain_setup.create_tx(config, meta["steps_per_epoch"])
  target = retrain_setup.abstract_state(net_train, meta["image_shape"], tx, mesh)
  state, meta, _ = _restore_state(manager, target, step)
  return RestoredRun(config, meta, geno, net_train.clone(train=False), state, mesh)


def evaluate_workdir(workdir: str, split: str = "test", step: int | None = None) -> dict:
  """{split}_loss, _accuracy, _error of the checkpoint, plus 'step'; `split` is 'test'
  or 'train' (without augmentation)."""
  if split not in ("test", "train"):
    raise ValueError(f"split={split!r}; valid values: ['test', 'train']")
  run = restore_train_run(workdir, step)
  feed = feeds.create_feed(run.config)
  batch_size = run.config.eval_batch_size
  eval_fn = jax.jit(
    functools.partial(evaluation.eval_step, net=run.net_eval, normalization=feed.normalization)
  )
  try:
    out = evaluation.evaluate_batches(
      eval_fn,
      run.state.params,
      run.state.batch_stats,
      feed.eval_batches(batch_size, sharding.host_rows(run.mesh, batch_size), split),
      batch_size,
      run.mesh,
      prefix=split,
    )
  finally:
    feed.close()
  return {**out, "step": run.step}


def _search_step_of_psi(workdir: str) -> tuple[np.ndarray, dict]:
  """psi.npy (with edge_weights.npy when there is one) and the step/epoch the search
  recorded for it in genotype.json's meta (it writes the arrays first, then
  genotype.json): read around them until both agree, so a search writing them
  meanwhile is never mixed."""

  def recorded():
    try:
      with open(os.path.join(workdir, "genotype.json")) as f:
        meta = json.load(f).get("meta", {})
      return {k: meta[k] for k in ("step", "epoch") if k in meta}
    except (OSError, ValueError, AttributeError):
      return {}

  edge_path = os.path.join(workdir, "edge_weights.npy")
  for _ in range(5):
    before = recorded()
    psi = np.load(os.path.join(workdir, "psi.npy"))
    edge = np.load(edge_path) if os.path.isfile(edge_path) else None
    if recorded() == before:
      return psi, ({**before, "edge_weights": edge} if edge is not None else before)
  return psi, {}


def search_psi(workdir: str) -> tuple[np.ndarray, tuple[str, ...], dict]:
  """(ψ, primitives, info) of a search workdir; info has 'source', the step of ψ when
  known ('step', 'epoch'), the edge weights [L, 14] when known ('edge_weights': from
  edge_weights.npy or the checkpoint) and, when a checkpoint is there, its 'meta'."""
  info: dict[str, Any] = {}
  ckpt = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
  manager = checkpoints.create_manager(ckpt) if os.path.isdir(ckpt) else None
  newest = checkpoints.newest_readable_meta(manager) if manager is not None else None
  if newest is not None:
    info["meta"] = _with_ops(newest[1])
    if "genotype" in info["meta"]:
      raise WorkdirError(
        f"{workdir} is a retraining workdir (its checkpoints hold a "
        "genotype, not architecture parameters); derive reads a "
        "search's workdir"
      )
  primitives = _primitives(workdir, info.get("meta"))
  psi_path = os.path.join(workdir, "psi.npy")
  if os.path.isfile(psi_path):
    psi, recorded = _search_step_of_psi(workdir)
    info.update(source=psi_path, **recorded)
    return psi, primitives, info
  if newest is None:
    raise WorkdirError(f"{workdir} has neither psi.npy nor a checkpoint: is it a search workdir?")
  state, meta, step = restore_search_run(workdir)
  psi, edge = search_arch_weights_of(meta, state.arch_params)
  info.update(
    meta=meta,
    step=step,
    source=f"{ckpt} (step {step})",
    epoch=step // meta["steps_per_epoch"],
    edge_weights=edge,
  )
  return psi, primitives, info


def search_arch_weights_of(meta: dict, arch_params) -> tuple[np.ndarray, np.ndarray]:
  """ψ [L, 14, Op] and the edge weights [L, 14] (float32) of a search checkpoint's
  architecture parameters."""
  config = meta["config"]
  spec = arch_lib.create_arch_spec(
    config["arch"], config["model"]["num_layers"], len(meta["primitives"])
  )
  psi, edge = jax.jit(spec.arch_weights)(arch_params)
  return np.asarray(psi, np.float32), np.asarray(edge, np.float32)


def search_psi_of(meta: dict, arch_params) -> np.ndarray:
  """ψ [L, 14, Op] (float32) of a search checkpoint's architecture parameters."""
  return search_arch_weights_of(meta, arch_params)[0]


def _primitives(workdir: str, meta: dict | None) -> tuple[str, ...]:
  if meta is not None and "primitives" in meta:
    return tuple(meta["primitives"])
  path = os.path.join(workdir, "genotype.json")
  if os.path.isfile(path):
    with open(path) as f:
      primitives = json.load(f).get("primitives")
    if primitives:
      return tuple(primitives)
  raise WorkdirError(
    f"cannot tell the candidate operations of {workdir}: no "
    "checkpoint meta and no genotype.json with 'primitives'"
  )


@dataclasses.dataclass(frozen=True)
class SearchResult:
  """What a search found, at checkpoint `step`.

  psi: ψ [L, 14, Op] (float32 NumPy), computed from `arch_params`.
  arch_params: the architecture parameters (NumPy pytree; for `decoupled`: α, β, γ).
  genotype: the global genotype derived from `psi` (one cell per layer).
  primitives: the candidate operations, the last axis of `psi`.
  config: the search config (rebuilt from the checkpoint's meta).
  meta: the checkpoint's meta as saved (dataset, image shape, steps per epoch, ...).
  """

  psi: np.ndarray
  arch_params: Any
  genotype: genotype_lib.GlobalGenotype
  primitives: tuple[str, ...]
  config: ml_collections.ConfigDict
  step: int
  meta: dict

  @property
  def epoch(self) -> int:
    return self.step // self.meta.get("steps_per_epoch", 1)


def load_search(
  workdir: str, step: int | None = None, edges_per_node: int | None = None
) -> SearchResult:
  """ψ, the architecture parameters and the derived global genotype of a search
  workdir's checkpoint `step` (default: the newest intact one), derived as the
  search's config.derive says (`edges_per_node` replacing its)."""
  state, meta, step = restore_search_run(workdir, step)
  arch_params = jax.tree.map(np.asarray, jax.device_get(state.arch_params))
  psi, edge = search_arch_weights_of(meta, arch_params)
  primitives = tuple(meta["primitives"])
  derivation = genotype_lib.Derivation.from_config(meta["config"]["derive"])
  if edges_per_node is not None:
    derivation = dataclasses.replace(derivation, edges_per_node=edges_per_node)
  geno = genotype_lib.derive_genotype(psi, primitives, derivation=derivation, edge_weights=edge)
  return SearchResult(
    psi, arch_params, geno, primitives, ml_collections.ConfigDict(meta["config"]), int(step), meta
  )


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A retrained network with its variables and its input normalisation.

  `predict(images)` → [N] int class ids; `logits(images)` → [N, classes] float32.
  Images are NHWC (or HWC for one image; NHW when there is one channel), uint8 in
  0..255 or float in 0..1, of the shape the network was trained on (`image_shape`).
  """

  net: network.NetworkCIFAR
  variables: Any
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_shape: tuple[int, int, int]
  num_classes: int
  genotype: genotype_lib.GlobalGenotype
  config: ml_collections.ConfigDict
  step: int
  meta: dict
  batch_size: int = 256

  def preprocess(self, images) -> np.ndarray:
    """NHWC float32, standardised as in training: (x / 255 − mean) / std."""
    x = np.asarray(images)
    if x.ndim == len(self.image_shape) - 1 + 1 and x.shape == self.image_shape:
      x = x[None]
    elif x.ndim == 3 and self.image_shape[-1] == 1 and x.shape[1:] == self.image_shape[:2]:
      x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != self.image_shape:
      raise ValueError(
        f"images of shape {np.shape(images)}; this network takes "
        f"[N, {', '.join(map(str, self.image_shape))}]"
      )
    if x.dtype == np.uint8:
      x = x.astype(np.float32) / 255.0
    else:
      x = x.astype(np.float32)
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  @functools.cached_property
  def _apply(self):
    return jax.jit(lambda v, x: self.net.apply(v, x))

  def logits(self, images) -> np.ndarray:
    x = self.preprocess(images)
    n, b = len(x), self.batch_size
    out = []
    for i in range(0, n, b):  # fixed-size (padded) batches: one compilation
      chunk = x[i : i + b]
      size = b if n > b else n
      pad = np.zeros((size - len(chunk),) + x.shape[1:], np.float32)
      out.append(
        np.asarray(self._apply(self.variables, np.concatenate([chunk, pad])))[: len(chunk)]
      )
    return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

  def predict(self, images) -> np.ndarray:
    return np.argmax(self.logits(images), axis=-1)


def load_classifier(workdir: str, step: int | None = None) -> Classifier:
  """The retrained network of a retraining workdir's checkpoint `step` (default: the
  latest), ready to classify images."""
  run = restore_train_run(workdir, step)
  meta = run.meta
  missing = [k for k in ("mean", "std") if k not in meta]
  if missing:
    raise WorkdirError(
      f"the checkpoint of {workdir} at step {run.step} has no input "
      f"normalisation ({', '.join(missing)}) in its meta"
    )
  mean, std = tuple(meta["mean"]), tuple(meta["std"])
  variables = jax.device_get(run.variables)
  variables = jax.tree.map(jnp.asarray, variables)  # on the default device, unsharded
  return Classifier(
    net=run.net_eval,
    variables=variables,
    mean=mean,
    std=std,
    image_shape=tuple(meta["image_shape"]),
    num_classes=int(meta["num_classes"]),
    genotype=run.genotype,
    config=run.config,
    step=run.step,
    meta=meta,
  )
