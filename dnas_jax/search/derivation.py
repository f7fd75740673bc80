"""Deriving a search's global genotype after the search (experiments/derive.py).

The command reads ψ with `dnas_jax.api.search_psi` (from `psi.npy`, or from the newest
intact checkpoint) and hands it here: `write_derivation` derives the global genotype
(per layer and node, the `edges_per_node` strongest incoming connections, each with
its arg-max operation; the threshold rule and the skip-connect cap of docs/design.md
§1 as the search's config.derive says, each option given replacing the search's:
`derivation_of`), maps it to another depth when asked, and writes it the way the
search writes its own artifacts (`dnas_jax.search.artifacts`: every file replaced
atomically):

* `genotype.json` and `genotype.txt`: the genotype at the search depth L;
* `genotype_L{L_t}.json` and `.txt` when `num_layers` differs from L: the genotype
  mapped to L_t layers (`genotype.map_to_depth`);
* `global_architecture.png` (and `global_architecture_L{L_t}.png`), `psi_heatmaps.png`,
  also as images in TensorBoard event files, with the derived genotype as text.

`output_folder` says where that goes, refusing the own workdir of a search that still
runs (its genotype.json is the search's). A ψ holding NaN or inf is refused in one line
naming its source, before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from dnas_jax.models import network
from dnas_jax.search import artifacts
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.training import metric_writers
from dnas_jax.training import workdir as workdir_lib


def check_options(edges_per_node: int | None, num_layers: int | None) -> None:
  """ValueError unless every node can keep `edges_per_node` edges (None: the
  search's) and a network of `num_layers` has its two reductions."""
  if edges_per_node is not None and edges_per_node < 1:
    raise ValueError(f"--edges_per_node={edges_per_node} must be at least 1")
  if num_layers is not None and num_layers < 3:
    raise ValueError(f"--num_layers={num_layers} must be at least 3 (two reductions)")


def derivation_of(info: dict[str, Any], **options) -> genotype_lib.Derivation:
  """The derivation of a search (`api.search_psi`'s `info`): its config's `derive`
  section (the checkpoint's; without one, what its genotype.json's meta recorded),
  each of `options` that is not None replacing the search's; ValueError naming the
  flag of a bad value."""
  recorded = (
    info.get("meta", {}).get("config", {}).get("derive")
    or info.get("genotype_meta", {}).get("derive")
    or {}
  )
  derivation = dataclasses.replace(
    genotype_lib.Derivation.from_config(recorded),
    **{k: v for k, v in options.items() if v is not None},
  )
  derivation.check("--")
  return derivation


def output_folder(workdir: str, out: str | None = None) -> str:
  """Where a derivation from `workdir` writes: `out`, else `workdir` itself.
  WorkdirError when `workdir` does not exist, or when it is the folder written and a
  search still runs there."""
  if not os.path.isdir(workdir):
    raise workdir_lib.WorkdirError(f"no workdir {workdir}")
  out = out or workdir
  holder = workdir_lib.lock_holder(workdir)
  if holder is not None and os.path.abspath(out) == os.path.abspath(workdir):
    raise workdir_lib.WorkdirError(
      f"the search in {workdir} is still running (pid {holder.get('pid')} on "
      f"{holder.get('host')}): its genotype.json is its own; derive into another folder "
      "with --out=DIR, or wait for it to end"
    )
  return out


def _genotype_meta(info: dict[str, Any]) -> dict:
  """The meta of the genotype.json beside a psi.npy `info` names ({} without one)."""
  path = os.path.join(os.path.dirname(info["source"]), "genotype.json")
  if not info["source"].endswith(".npy") or not os.path.isfile(path):
    return {}
  try:
    return genotype_lib.read_meta(path)
  except (OSError, ValueError):
    return {}


def write_derivation(
  out: str,
  psi: np.ndarray,
  primitives: Sequence[str],
  info: dict[str, Any],
  edges_per_node: int | None = None,
  num_layers: int | None = None,
  title: str = "",
  *,
  rule: str | None = None,
  op_threshold: float | None = None,
  max_skip_connects: int | None = None,
) -> dict:
  """Derives the global genotype of ψ and writes it, with its figures and TensorBoard
  images, into `out` (the module docstring lists the files). `info` is what
  `api.search_psi` says of ψ ('source', and when known 'step', 'epoch', the edge
  weights and the checkpoint's 'meta'); the derivation options left None are the
  search's (`derivation_of`); `title` heads the architecture figure. Returns
  {'genotype', 'mapped' (None unless `num_layers` differs from the search depth),
  'files'}."""
  check_options(edges_per_node, num_layers)
  genotype_lib.check_finite_psi(psi, info["source"])  # before anything is written
  info = {**info, "genotype_meta": _genotype_meta(info)}
  derivation = derivation_of(
    info,
    rule=rule,
    edges_per_node=edges_per_node,
    op_threshold=op_threshold,
    max_skip_connects=max_skip_connects,
  )
  if derivation.rule == "threshold" and info.get("edge_weights") is None:
    raise workdir_lib.WorkdirError(
      f"{info['source']} has no edge_weights.npy beside it (a search writes both): "
      "the threshold rule divides the edge weights out of ψ; derive with --rule=top_k"
    )
  from dnas_jax.search import figures as plots  # pylint: disable=g-import-not-at-top  (matplotlib)

  os.makedirs(out, exist_ok=True)
  geno = genotype_lib.derive_genotype(
    psi, primitives, derivation=derivation, edge_weights=info.get("edge_weights")
  )
  meta = {
    "source": info["source"],
    "edges_per_node": derivation.edges_per_node,
    "derive": dataclasses.asdict(derivation),
    "search_layers": geno.num_layers,
  }
  meta.update({k: info[k] for k in ("step", "epoch") if k in info})
  # For train's warning on a genotype from an unfinished search.
  num_epochs = (
    info.get("meta", {})
    .get("config", {})
    .get("num_epochs", info["genotype_meta"].get("num_epochs"))
  )
  if num_epochs is not None:
    meta["num_epochs"] = num_epochs
  if "meta" in info:  # what the search's own genotype.json records
    search_meta = info["meta"]
    meta.update(
      dataset=search_meta.get("dataset"),
      arch_kind=search_meta.get("config", {}).get("arch", {}).get("kind"),
    )
  files = [artifacts.write_genotype(out, "genotype", geno, primitives, meta)]
  figures = {
    "global_architecture": plots.plot_global_architecture(
      geno, title=title or None, primitives=primitives
    ),
    "psi_heatmaps": plots.plot_psi_heatmaps(psi, primitives),
  }
  mapped = None
  if num_layers is not None and num_layers != geno.num_layers:
    mapped = genotype_lib.map_to_depth(geno, num_layers)
    network.check_genotype(mapped)
    files.append(
      artifacts.write_genotype(
        out, f"genotype_L{num_layers}", mapped, primitives, {**meta, "mapped_to_layers": num_layers}
      )
    )
    figures[f"global_architecture_L{num_layers}"] = plots.plot_global_architecture(
      mapped, title=f"mapped to {num_layers} layers", primitives=primitives
    )
  writer = metric_writers.MetricWriter(out, console=False)
  step = int(info.get("step", 0))
  try:
    files += artifacts.save_figures(out, figures, writer, step)
    writer.write_texts(step, {"derived_genotype": (mapped or geno).describe()})
  finally:
    writer.close()
  return {"genotype": geno, "mapped": mapped, "files": files}
