"""The paper's comparison under one budget: search → derive → retrain → evaluate.

Each row is a search method run as its authors defined it (`methods.ROWS`, in
dnas_jax/search/methods.py; the rows and their settings are tabulated in
docs/comparison.md), over several seeds; every derived genotype is retrained with the
same retraining config.

What a comparison config (experiments/configs/compare_*.py) holds, the folder layout it
writes and how cost is counted are described once, in docs/comparison.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from dnas_jax import files
from dnas_jax.search import methods
from dnas_jax.training import validation

RESULT = "result.json"


def parse_list(spec: str, field: str, cast=str) -> list:
  items = [s.strip() for s in str(spec).split(",") if s.strip()]
  if not items:
    raise validation.ConfigError(f"config.{field} is empty")
  try:
    return [cast(s) for s in items]
  except ValueError:
    raise validation.ConfigError(
      f"config.{field}={spec!r} is not a comma-separated list of {cast.__name__}"
    ) from None


def parse_rows(spec: str) -> list[str]:
  rows = parse_list(spec, "rows")
  for r in rows:
    if r not in methods.ROWS:
      raise validation.ConfigError(
        f"config.rows: unknown row {r!r}; valid rows: {list(methods.ROWS)}"
      )
  return rows


def search_config(
  config: ml_collections.ConfigDict, row: str, seed: int
) -> ml_collections.ConfigDict:
  """The search config of (row, seed): the base search config, the row's settings,
  the comparison's `budget` (warm-up rescaled to keep its fraction of the epochs),
  then the row's `row_overrides`."""
  cfg = methods.apply_method(ml_collections.ConfigDict(config.search.to_dict()), row)
  settings = methods.ROWS[row][1]
  budget = files.flatten(config.get("budget", {}))
  for path, value in budget.items():
    if path == "optim.arch_warmup_epochs":
      raise validation.ConfigError(
        "config.budget.optim.arch_warmup_epochs: the warm-up is the "
        "row's (rescaled with num_epochs); set it per row in "
        "config.row_overrides"
      )
    methods.set_path(cfg, path, value)
  cfg.optim.arch_warmup_epochs = int(
    round(settings["optim.arch_warmup_epochs"] * cfg.num_epochs / methods.PAPER_EPOCHS)
  )
  for path, value in files.flatten(config.get("row_overrides", {}).get(row, {})).items():
    methods.set_path(cfg, path, value)
  cfg.seed = seed
  return cfg


def retrain_config(
  config: ml_collections.ConfigDict, genotype_path: str, seed: int
) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(config.retrain.to_dict())
  cfg.genotype = genotype_path
  cfg.seed = seed
  return cfg


def device_info() -> dict[str, Any]:
  """The device kind and count the runs use; for CPUs the host's model and cores."""
  devices = jax.devices()
  info = {
    "platform": devices[0].platform,
    "device_kind": devices[0].device_kind,
    "device_count": len(devices),
  }
  if info["platform"] == "cpu":
    info["cpu_model"] = _cpu_model()
    info["nproc"] = os.cpu_count()
  return info


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def _read_json(path: str) -> dict | None:
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, obj) -> None:
  files.atomic_write(path, json.dumps(obj, indent=1))


def run_one(config: ml_collections.ConfigDict, row: str, seed: int, run_dir: str) -> dict[str, Any]:
  """Search, derive, retrain and evaluate (row, seed) in `run_dir`, resuming; returns
  (and writes) its result."""
  from dnas_jax.retrain import loop as retrain_loop  # pylint: disable=g-import-not-at-top
  from dnas_jax.search import loop as search_loop  # pylint: disable=g-import-not-at-top

  done = _read_json(os.path.join(run_dir, RESULT))
  if done is not None:
    logging.info("%s seed %d: finished earlier, skipped", row, seed)
    return done
  search_dir = os.path.join(run_dir, "search")
  retrain_dir = os.path.join(run_dir, "retrain")
  timing_path = os.path.join(run_dir, "search_time.json")
  timing = _read_json(timing_path) or {"wall_s": 0.0, "finished": False}
  os.makedirs(run_dir, exist_ok=True)
  if not timing["finished"]:
    logging.info("%s seed %d: searching in %s", row, seed, search_dir)
    start = time.time()
    try:
      out = search_loop.train_and_evaluate(search_config(config, row, seed), search_dir)
      timing["finished"] = True
      timing["val_accuracy"] = out.get("val_accuracy")
    finally:  # an interrupted search's time still counts when it resumes
      timing["wall_s"] += time.time() - start
      timing.update(device_info())
      _write_json(timing_path, timing)
  genotype_path = os.path.join(search_dir, "genotype.json")
  logging.info("%s seed %d: retraining %s in %s", row, seed, genotype_path, retrain_dir)
  start = time.time()
  final = retrain_loop.train_and_evaluate(retrain_config(config, genotype_path, seed), retrain_dir)
  result = {
    "row": row,
    "label": methods.ROWS[row][0],
    "seed": seed,
    "test_error": final["test_error"],
    "num_params": final["num_params"],
    "search_wall_s": timing["wall_s"],
    "search_device_hours": timing["wall_s"] * timing["device_count"] / 3600,
    "search_val_accuracy": timing.get("val_accuracy"),
    "retrain_wall_s": time.time() - start,
    "device": {
      k: timing[k]
      for k in ("platform", "device_kind", "device_count", "cpu_model", "nproc")
      if k in timing
    },
  }
  _write_json(os.path.join(run_dir, RESULT), result)
  return result


def run_comparison(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every (row, seed) not finished in `workdir`, then writes the table and plot."""
  rows = parse_rows(config.rows)
  seeds = parse_list(config.seeds, "seeds", int)
  os.makedirs(workdir, exist_ok=True)
  row_seeds = {
    row: parse_list(spec, f"row_seeds.{row}", int)
    for row, spec in config.get("row_seeds", {}).items()
  }
  results = []
  for seed in seeds:  # seed-major: an early stop still has every row
    for row in rows:
      if seed not in row_seeds.get(row, seeds):
        continue
      results.append(run_one(config, row, seed, os.path.join(workdir, row, f"seed_{seed}")))
      write_report(results, workdir, config)
  return results


def summarize(results: Sequence[dict]) -> list[dict]:
  """Per row (in the order of `methods.ROWS`): mean/std of test error (%), params (M),
  search device-hours, and the number of seeds."""
  by_row: dict[str, list[dict]] = {}
  for r in sorted(results, key=lambda r: list(methods.ROWS).index(r["row"])):
    by_row.setdefault(r["row"], []).append(r)
  out = []
  for row, rs in by_row.items():
    err = np.array([100 * r["test_error"] for r in rs])
    params = np.array([r["num_params"] / 1e6 for r in rs])
    hours = np.array([r["search_device_hours"] for r in rs])
    out.append(
      {
        "row": row,
        "label": rs[0]["label"],
        "seeds": [r["seed"] for r in rs],
        "error_mean": float(err.mean()),
        "error_std": float(err.std()),
        "params_mean": float(params.mean()),
        "params_std": float(params.std()),
        "device_hours": float(hours.mean()),
        "device": rs[0]["device"],
      }
    )
  return out


def _device_words(device: dict) -> str:
  if device.get("platform") == "cpu":
    return (
      f"{device.get('device_count', 1)} CPU device ({device.get('cpu_model')}, "
      f"{device.get('nproc')} cores)"
    )
  return f"{device['device_count']} × {device['device_kind']}"


def markdown_table(summary: Sequence[dict], title: str = "") -> str:
  lines = [f"### {title}", ""] if title else []
  lines += [
    "| method | test error (%) | params (M) | search cost (device-hours) | seeds |",
    "|---|---|---|---|---|",
  ]
  for s in summary:
    error = (
      f"{s['error_mean']:.2f} ± {s['error_std']:.2f}"
      if len(s["seeds"]) > 1
      else f"{s['error_mean']:.2f}"
    )
    lines.append(
      f"| {s['label']} | {error} | "
      f"{s['params_mean']:.3f} | {s['device_hours']:.4f} | "
      f"{len(s['seeds'])} |"
    )
  if summary:
    lines += [
      "",
      f"Device: {_device_words(summary[0]['device'])}. Error: mean ± std "
      "(population) over seeds; params as DARTS counts them (auxiliary head "
      "excluded), mean over seeds; search cost: measured search wall time "
      "(compilation included) × device count, mean over seeds.",
    ]
  return "\n".join(lines) + "\n"


def plot_comparison(summary: Sequence[dict], path: str, title: str = "") -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(summary), 3.6))
  x = np.arange(len(summary))
  ax.bar(
    x,
    [s["error_mean"] for s in summary],
    yerr=[s["error_std"] for s in summary],
    capsize=4,
    color=["#d62728" if s["row"].startswith("dnas") else "#7f7f7f" for s in summary],
  )
  ax.set_xticks(
    x, [s["label"].replace(" (", "\n(").replace(", ", ",\n") for s in summary], fontsize=7
  )
  ax.set_ylabel("test error (%)")
  ax.set_title(title or "test error after retraining (mean ± std over seeds)", fontsize=9)
  fig.tight_layout()
  files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
  plt.close(fig)


def write_report(
  results: Sequence[dict], workdir: str, config: ml_collections.ConfigDict | None = None
) -> str:
  """Writes results.json, comparison.md and comparison.png; returns the table."""
  title = config.get("title", "") if config is not None else ""
  summary = summarize(results)
  _write_json(os.path.join(workdir, "results.json"), {"runs": list(results), "summary": summary})
  table = markdown_table(summary, title)
  files.atomic_write(os.path.join(workdir, "comparison.md"), table)
  plot_comparison(summary, os.path.join(workdir, "comparison.png"), title)
  return table
