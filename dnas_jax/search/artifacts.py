"""What a search writes for people, apart from its checkpoints: `psi.npy`,
`edge_weights.npy`, `genotype.json`, `genotype.txt` (each replaced atomically), the
figures, and ψ's per-layer summary for TensorBoard and the console. The derivation after
a search (`dnas_jax.search.derivation`) writes its genotypes and figures with the same
functions."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from dnas_jax import files
from dnas_jax.search import psi_stats
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.training import metric_writers


def psi_summary(
  psi: np.ndarray, primitives: Sequence[str], genotype: genotype_lib.GlobalGenotype | None = None
) -> dict[str, float]:
  """Per layer: entropy of ψ[k] normalised over (connection, op), the mean
  skip-connect weight, and with `genotype` (derived from ψ) the share of its edges
  without parameters (`psi_stats.parameter_free_share`)."""
  out = {}
  if genotype is not None:
    for k, share in enumerate(psi_stats.parameter_free_share(genotype)):
      out[f"parameter_free/layer_{k:02d}"] = float(share)
  entropy = psi_stats.psi_entropy(psi)
  skip = psi_stats.psi_skip(psi, primitives) if "skip_connect" in primitives else None
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
  tail = (
    f" (* above half: layer{'s' if len(over) > 1 else ''} {', '.join(map(str, over))})"
    if over
    else ""
  )
  return f"parameter-free share of the derived cells per layer: {cells}{tail}"


def write_genotype(
  folder: str, stem: str, geno: genotype_lib.GlobalGenotype, primitives: Sequence[str], meta: dict
) -> str:
  """`{stem}.json` (the genotype with its primitives and meta) and `{stem}.txt` (its
  description), each written atomically; returns the path of the JSON file."""
  path = os.path.join(folder, f"{stem}.json")
  files.atomic_write(path, geno.to_json(primitives=primitives, meta=meta))
  files.atomic_write(os.path.join(folder, f"{stem}.txt"), geno.describe() + "\n")
  return path


def write_artifacts(
  workdir: str,
  psi: np.ndarray,
  primitives: Sequence[str],
  meta: dict,
  derivation: genotype_lib.Derivation | None = None,
  edge: np.ndarray | None = None,
) -> genotype_lib.GlobalGenotype:
  """psi.npy, genotype.json and genotype.txt (each written atomically), derived as
  `derivation` says (default: DARTS's top-k); with `edge` (the edge weights [L, C],
  which the threshold rule divides out) also edge_weights.npy."""
  geno = genotype_lib.derive_genotype(psi, primitives, derivation=derivation, edge_weights=edge)
  # The arrays first: genotype.json's meta then names the step of the psi.npy and
  # edge_weights.npy beside it (what experiments.derive reads while a search runs).
  if edge is not None:
    edge = np.asarray(edge, np.float32)
    files.atomic_write(os.path.join(workdir, "edge_weights.npy"), lambda f: np.save(f, edge))
  files.atomic_write(os.path.join(workdir, "psi.npy"), lambda f: np.save(f, psi))
  write_genotype(workdir, "genotype", geno, primitives, meta)
  return geno


def save_figures(
  folder: str, figures: Mapping[str, Any], writer: metric_writers.MetricWriter, step: int
) -> list[str]:
  """Each figure as `{folder}/{name}.png` and as a TensorBoard image of that name;
  returns the paths written."""
  from dnas_jax.search import figures as plots  # pylint: disable=g-import-not-at-top  (matplotlib)

  images, paths = {}, []
  for name, fig in figures.items():
    images[name] = plots.figure_to_image(fig)
    path = os.path.join(folder, f"{name}.png")
    plots.save_figure(fig, path)
    paths.append(path)
  writer.write_images(step, images)
  return paths


def write_figures(
  workdir: str,
  psi: np.ndarray,
  primitives: Sequence[str],
  geno: genotype_lib.GlobalGenotype,
  writer: metric_writers.MetricWriter,
  step: int,
) -> None:
  """global_architecture.png and psi_heatmaps.png, also as TensorBoard images; nothing
  without matplotlib."""
  try:
    from dnas_jax.search import figures  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  save_figures(
    workdir,
    {
      "global_architecture": figures.plot_global_architecture(geno),
      "psi_heatmaps": figures.plot_psi_heatmaps(psi, primitives),
    },
    writer,
    step,
  )
