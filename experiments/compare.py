"""Comparison entry point: the paper's table under one budget.

  python -m experiments.compare --config=experiments/configs/compare_digits.py \
      --workdir=DIR [--fast_compile] [--config.seeds=0,1] [--config.rows=global,dnas] \
      [--config.search.FIELD=value] [--config.retrain.FIELD=value]

For each row (search method) and seed: search → derive → retrain → evaluate, in
DIR/<row>/seed_<s>/; finished runs are skipped and unfinished ones resume, so the same
command continues an interrupted comparison. Writes DIR/comparison.md (test error
mean ± std, params in M as DARTS counts them, search cost in device-hours),
DIR/comparison.png and DIR/results.json. The rows: docs/comparison.md.

Runs reuse compiled programs through JAX's persistent compilation cache
(`--compile_cache`, as every entry point); `--fast_compile` compiles with XLA's cheap
settings (what the digits comparison on a 2-core CPU uses).
"""

import os
import signal

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Comparison config file.", lock_config=False
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Comparison directory.")
_FAST_COMPILE = flags.DEFINE_bool(
  "fast_compile",
  False,
  "Compile with XLA's cheap settings (as tests/conftest.py "
  "does): much faster compiles, somewhat slower steps; for small CPU runs where "
  "compiling each row's steps dominates.",
)


def _interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # `kill` (SIGTERM) and Ctrl-C, also under nohup (which ignores SIGINT), stop like
  # Ctrl-C does: a checkpoint is saved and the search time so far recorded.
  previous = {
    sig: signal.signal(sig, handler)
    for sig, handler in ((signal.SIGTERM, _interrupt), (signal.SIGINT, signal.default_int_handler))
  }
  try:
    _compare(cli.config_value(_CONFIG), _WORKDIR.value)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def _compare(config, workdir):
  if _FAST_COMPILE.value:  # before the first computation initialises the backend
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
      " --xla_llvm_disable_expensive_passes=true"
    ).strip()
  import jax  # pylint: disable=g-import-not-at-top

  if _FAST_COMPILE.value:
    jax.config.update("jax_disable_most_optimizations", True)
  from dnas_jax.tools import compare  # pylint: disable=g-import-not-at-top

  logging.info("comparison in %s on %s", os.path.abspath(workdir), compare.device_info())
  with cli.user_errors():
    results = compare.run_comparison(config, workdir)
  print(compare.write_report(results, workdir, config))
  print(
    f"table: {os.path.join(workdir, 'comparison.md')}, plot: "
    f"{os.path.join(workdir, 'comparison.png')}"
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
