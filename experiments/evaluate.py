"""Evaluation entry point: a retraining workdir's latest checkpoint, without its config.

  python -m experiments.evaluate --workdir=RETRAIN_DIR [--split=test] [--step=N]

Rebuilds the network, the state and the dataset from the checkpoint's meta (config,
image shape, number of classes, genotype), restores the state and evaluates it with the
evaluation function and batches of training (`dnas_jax.training.evaluation`, through
`dnas_jax.api.evaluate_workdir`), so the test accuracy of the last checkpoint
equals the one in RETRAIN_DIR/final_metrics.json exactly. Prints loss, accuracy and
error; `--split=train` evaluates the training set (no augmentation).
"""

import json

from absl import app
from absl import flags
from absl import logging

from dnas_jax import api
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Retraining run directory.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "train"], "Split to evaluate.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  with cli.user_errors():
    try:
      result = api.evaluate_workdir(_WORKDIR.value, _SPLIT.value, _STEP.value)
    except api.WorkdirError as e:
      logging.error("%s", e)
      raise SystemExit(f"error: {e}") from None
  split = _SPLIT.value
  print(json.dumps(result, indent=1))
  print(
    f"{split} loss: {result[f'{split}_loss']:.4f}  {split} accuracy: "
    f"{result[f'{split}_accuracy']:.4f}  {split} error: "
    f"{100 * result[f'{split}_error']:.2f} %  (step {result['step']})"
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
