"""Retraining entry point.

  python -m experiments.train --config=experiments/configs/cifar10_retrain.py \
      --workdir=DIR [--config.genotype=DARTS_V2] [--config.FIELD=value ...]
  python -m experiments.train --config=experiments/configs/cifar10_retrain.py --dry_run

Retrains `config.genotype` from scratch (resuming from DIR's checkpoint when there is
one) and writes DIR/final_metrics.json with the test error; see dnas_jax/retrain/loop.py.
`--dry_run` builds the network from shapes only (no data is read, nothing is compiled)
and prints exactly two lines: `params_excluding_auxiliary: N` (as DARTS counts) and
`params_total: N`.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dnas_jax.retrain import loop as retrain_loop
from dnas_jax.retrain import setup as retrain_setup
from experiments import cli

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Retraining config file.", lock_config=True
)
_RESUME_WITH_CHANGES = cli.define_resume_flag()
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory (default: workdirs/<dataset>_retrain)."
)
_DRY_RUN = flags.DEFINE_bool(
  "dry_run", False, "Print the parameter and multiply-add counts and exit."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = cli.config_value(_CONFIG)
  with cli.user_errors():
    if _DRY_RUN.value:
      print("\n".join(retrain_setup.parameter_count_lines(config)))
      return
    workdir = _WORKDIR.value or os.path.join("workdirs", f"{config.data.dataset}_retrain")
    logging.info("workdir: %s", os.path.abspath(workdir))
    result = retrain_loop.train_and_evaluate(
      config, workdir, allow_config_changes=_RESUME_WITH_CHANGES.value
    )
  print(
    f"test accuracy: {result['test_accuracy']:.4f}  test error: "
    f"{100 * result['test_error']:.2f} %  ({result['num_params']} parameters)"
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
