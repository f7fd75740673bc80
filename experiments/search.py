"""Search entry point.

  python -m experiments.search --config=experiments/configs/cifar10.py --workdir=DIR \
      [--config.FIELD=value ...]

Searches (resuming from DIR's checkpoint when there is one) and writes DIR/genotype.json,
DIR/psi.npy, figures and TensorBoard event files. See dnas_jax/search/loop.py.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dnas_jax.search import loop as search_loop
from dnas_jax.search import methods
from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Search config file.", lock_config=True)
_RESUME_WITH_CHANGES = cli.define_resume_flag()
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Run directory (default: workdirs/<dataset>_<method>, e.g. cifar10_dnas)."
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = cli.config_value(_CONFIG)
  with cli.user_errors():
    workdir = _WORKDIR.value or methods.default_workdir(config)
    logging.info("workdir: %s", os.path.abspath(workdir))
    search_loop.train_and_evaluate(config, workdir, allow_config_changes=_RESUME_WITH_CHANGES.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
