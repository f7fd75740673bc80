"""What a search writes for people, apart from its checkpoints: `psi.npy`,
`genotype.json`, `genotype.txt` (each replaced atomically), the figures, and ψ's
per-layer summary for TensorBoard."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from dnas_jax.search import psi_stats
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.training import metric_writers


def psi_summary(psi: np.ndarray, primitives: Sequence[str]) -> dict[str, float]:
  """Per layer: entropy of ψ[k] normalised over (connection, op), and the mean
  skip-connect weight."""
  out = {}
  entropy = psi_stats.psi_entropy(psi)
  skip = (psi_stats.psi_skip(psi, primitives)
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


def write_figures(workdir: str, psi: np.ndarray, primitives: Sequence[str],
                  geno: genotype_lib.GlobalGenotype, writer: metric_writers.MetricWriter,
                  step: int) -> None:
  """global_architecture.png and psi_heatmaps.png, also as TensorBoard images; nothing
  without matplotlib."""
  try:
    from dnas_jax.search import figures  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  figs = {"global_architecture": figures.plot_global_architecture(geno),
          "psi_heatmaps": figures.plot_psi_heatmaps(psi, primitives)}
  images = {}
  for name, fig in figs.items():
    images[name] = figures.figure_to_image(fig)
    figures.save_figure(fig, os.path.join(workdir, f"{name}.png"))
  writer.write_images(step, images)
