"""What the entry points share: logging to stderr and user errors without tracebacks."""

import contextlib
import sys

from absl import app
from absl import logging

from dnas_jax import config_validation
from dnas_jax import datasets
from dnas_jax import search_loop

USER_ERRORS = (config_validation.ConfigError, datasets.DatasetNotFoundError,
               datasets.DatasetFormatError, search_loop.NonFiniteLossError)


@contextlib.contextmanager
def user_errors():
  """Prints a known user error as one clear message and exits with status 1."""
  try:
    yield
  except USER_ERRORS as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt:
    print("interrupted; run the same command again to resume", file=sys.stderr)
    sys.exit(130)


class _QuietLibraries:
  """Drops INFO records of chatty libraries (orbax logs every file it writes)."""

  def filter(self, record) -> bool:
    return record.levelno > 20 or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "jax", "flax"))


def run(main):
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_QuietLibraries())
  app.run(main)
