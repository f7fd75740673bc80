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
`step`); `load_classifier` that of a retraining workdir. The reading itself, verified
against each checkpoint's digest, is `dnas_jax.restore`'s. Both raise
`restore.WorkdirError` with a message saying what is missing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dnas_jax import genotype as genotype_lib
from dnas_jax import network
from dnas_jax import restore

WorkdirError = restore.WorkdirError


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


def load_search(workdir: str, step: int | None = None,
                edges_per_node: int = 2) -> SearchResult:
  """ψ, the architecture parameters and the derived global genotype of a search
  workdir's checkpoint `step` (default: the newest intact one)."""
  state, meta, step = restore.restore_search_run(workdir, step)
  arch_params = jax.tree.map(np.asarray, jax.device_get(state.arch_params))
  psi = restore.search_psi_of(meta, arch_params)
  primitives = tuple(meta["primitives"])
  geno = genotype_lib.derive_genotype(psi, primitives, edges_per_node)
  return SearchResult(psi, arch_params, geno, primitives,
                      ml_collections.ConfigDict(meta["config"]), int(step), meta)


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
      raise ValueError(f"images of shape {np.shape(images)}; this network takes "
                       f"[N, {', '.join(map(str, self.image_shape))}]")
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
      chunk = x[i:i + b]
      size = b if n > b else n
      pad = np.zeros((size - len(chunk),) + x.shape[1:], np.float32)
      out.append(np.asarray(self._apply(self.variables, np.concatenate([chunk, pad])))
                 [:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

  def predict(self, images) -> np.ndarray:
    return np.argmax(self.logits(images), axis=-1)


def load_classifier(workdir: str, step: int | None = None) -> Classifier:
  """The retrained network of a retraining workdir's checkpoint `step` (default: the
  latest), ready to classify images."""
  run = restore.restore_train_run(workdir, step)
  meta = run.meta
  if "mean" in meta and "std" in meta:
    mean, std = tuple(meta["mean"]), tuple(meta["std"])
  else:  # checkpoints written before the normalisation was saved in meta
    from dnas_jax import train  # pylint: disable=g-import-not-at-top
    ds = train.load_data(run.config)
    mean, std = ds.mean, ds.std
  variables = jax.device_get(run.variables)
  variables = jax.tree.map(jnp.asarray, variables)  # on the default device, unsharded
  return Classifier(net=run.net_eval, variables=variables, mean=mean, std=std,
                    image_shape=tuple(meta["image_shape"]),
                    num_classes=int(meta["num_classes"]), genotype=run.genotype,
                    config=run.config, step=run.step, meta=meta)
