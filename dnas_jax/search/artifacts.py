"""What a search writes for people, apart from its checkpoints: `psi.npy`,
`edge_weights.npy`, `genotype.json`, `genotype.txt` (each replaced atomically), the
figures, and ψ's per-layer summary for TensorBoard and the console."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from dnas_jax.search import psi_stats
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.training import metric_writers


def psi_summary(psi: np.ndarray, primitives: Sequence[str],
                genotype: genotype_lib.GlobalGenotype | None = None) -> dict[str, float]:
  """Per layer: entropy of ψ[k] normalised over (connection, op), the mean
  skip-connect weight, and with `genotype` (derived from ψ) the share of its edges
  without parameters (`psi_stats.parameter_free_share`)."""
  out = {}
  if genotype is not None:
    for k, share in enumerate(psi_stats.parameter_free_share(genotype)):
      out[f"parameter_free/layer_{k:02d}"] = float(share)
  entropy = psi_stats.psi_entropy(psi)
  skip = (psi_stats.psi_skip(psi, primitives)
          if "skip_connect" in primitives else None)
  for k in range(psi.shape[0]):
    out[f"psi_entropy/layer_{k:02d}"] = float(entropy[k])
    if skip is not None:
      out[f"psi_skip/layer_{k:02d}"] = float(skip[k])
  return out


def collapse_line(genotype: genotype_lib.GlobalGenotype) -> str:
  """One console line: each layer's share of parameter-free edges in the derived
  cells, the layers above one half starred and named."""
  shares = psi_stats.parameter_free_share(genotype)
  over = [k for k, v in enumerate(shares) if v > 0.5]
  cells = " ".join(f"{v:.2f}{'*' if v > 0.5 else ''}" for v in shares)
  tail = (f" (* above half: layer{'s' if len(over) > 1 else ''} "
          f"{', '.join(map(str, over))})" if over else "")
  return f"parameter-free share of the derived cells per layer: {cells}{tail}"


def write_artifacts(workdir: str, psi: np.ndarray, primitives: Sequence[str],
                    meta: dict, derivation: genotype_lib.Derivation | None = None,
                    edge: np.ndarray | None = None) -> genotype_lib.GlobalGenotype:
  """psi.npy, genotype.json and genotype.txt (each written atomically), derived as
  `derivation` says (default: DARTS's top-k); with `edge` (the edge weights [L, C],
  which the threshold rule divides out) also edge_weights.npy."""
  geno = genotype_lib.derive_genotype(psi, primitives, derivation=derivation,
                                      edge_weights=edge)
  def atomic(name, write):
    tmp = os.path.join(workdir, f".{name}.tmp")
    write(tmp)
    os.replace(tmp, os.path.join(workdir, name))
  def save_npy(array):
    def save(p):
      with open(p, "wb") as f:
        np.save(f, array)
    return save
  # The arrays first: genotype.json's meta then names the step of the psi.npy and
  # edge_weights.npy beside it (what experiments.derive reads while a search runs).
  if edge is not None:
    atomic("edge_weights.npy", save_npy(np.asarray(edge, np.float32)))
  atomic("psi.npy", save_npy(psi))
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
