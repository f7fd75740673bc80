"""What the entry points share: logging to stderr and user errors without tracebacks."""

import contextlib
import signal
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections.config_flags import config_flags as ml_config_flags

from dnas_jax.data import datasets
from dnas_jax.search import loop as search_loop
from dnas_jax.space import genotype
from dnas_jax.space import ops
from dnas_jax.tools import aot
from dnas_jax.training import checkpoints
from dnas_jax.training import runtime
from dnas_jax.training import validation
from dnas_jax.training import workdir

_COMPILE_CACHE = flags.DEFINE_string(
  "compile_cache",
  None,
  "Folder of the persistent compilation cache: a second run of "
  "the same command, or a resume, reads its compiled programs from there (default: "
  "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/dnas_jax/xla; empty: no cache).",
)

USER_ERRORS = (
  validation.ConfigError,
  aot.AotUnavailableError,
  datasets.DatasetNotFoundError,
  datasets.DatasetFormatError,
  search_loop.NonFiniteLossError,
  checkpoints.NonFiniteStateError,
  checkpoints.CheckpointError,
  workdir.WorkdirError,
  genotype.GenotypeFormatError,
  genotype.NonFinitePsiError,
  ops.OperationError,
)


def define_resume_flag():
  return flags.DEFINE_bool(
    "resume_with_changes",
    False,
    "Resume the run in --workdir although the config "
    "differs from the one it was started with (the differences are listed; a change "
    "of shape cannot resume).",
  )


def config_value(flag):
  """The value of a config-file flag; a file that cannot be loaded is one line."""
  try:
    value = flag.value
    value.keys()  # a file that failed to load raises here, not above
    return value
  except OSError as e:
    cause = e.__cause__ or e
    last = str(cause).strip().splitlines()[-1].strip()
    print(f"error: --config: cannot load the config file ({last})", file=sys.stderr)
    sys.exit(2)


@contextlib.contextmanager
def user_errors():
  """Prints a known user error as one clear message and exits with status 1."""
  try:
    yield
  except USER_ERRORS as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except workdir.Preempted as e:
    print(f"{e}", file=sys.stderr)
    sys.exit(143)
  except KeyboardInterrupt:
    print("interrupted; run the same command again to resume", file=sys.stderr)
    sys.exit(130)


class _QuietLibraries:
  """Drops INFO records of chatty libraries (orbax logs every file it writes), and the
  errors Orbax and asyncio log, with tracebacks, for a checkpoint write the file
  system refused (a full disk): that failure reaches the run, which stops with one
  line (workdir.WriteError). Also the warning Orbax logs when the checkpoints register
  their array handler (`checkpoints.create_manager`): it is by design."""

  def filter(self, record) -> bool:
    if "type_handler_registry" in record.pathname and "overriding" in record.getMessage():
      return False
    if record.levelno <= 20:
      return not any(f"/{lib}/" in record.pathname for lib in ("orbax", "jax", "flax"))
    if record.exc_info and any(f"/{lib}/" in record.pathname for lib in ("orbax", "asyncio")):
      return checkpoints.write_failure(record.exc_info[1]) is None
    return True


def _remember_loaded_configs() -> dict:
  """{flag name: the ConfigDict its file gave}, filled as the config flags load their
  files (each file runs once, as ml_collections runs it): what an error about an
  override is checked against."""
  loaded = {}
  for name, flag in flags.FLAGS._flags().items():  # pylint: disable=protected-access
    if isinstance(flag.parser, ml_config_flags.ConfigFileFlagParser) and not hasattr(
      flag.parser, "dnas_loaded"
    ):

      def parse(argument, inner=flag.parser.parse, name=name):
        loaded[name] = inner(argument)
        return loaded[name]

      flag.parser.parse, flag.parser.dnas_loaded = parse, loaded
  return loaded


def _unknown_override(argv, loaded: dict) -> str | None:
  """For `--config.a.b=v` overrides naming no field: which one, and the valid names."""
  for arg in argv:
    name = arg.split("=", 1)[0][2:] if arg.startswith("--") else ""
    root, _, path = name.partition(".")
    if not path or loaded.get(root) is None:
      continue
    node, parts = loaded[root], path.split(".")
    for i, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        where = root + "".join(f".{p}" for p in parts[:i])
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        return f"--{name}: {where} has no field {part!r}; valid fields: {valid}"
      node = node[part]
  return None


def _parse_flags(argv):
  loaded = _remember_loaded_configs()
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    text = _unknown_override(argv, loaded) or str(e).strip().splitlines()[0]
    print(f"error: {text}", file=sys.stderr)
    sys.exit(2)


def _quiet_closed_loops(hook):
  """`sys.unraisablehook` without the "Event loop is closed" errors TensorStore reports
  from its threads when a write finishes whose asyncio loop Orbax has closed: the other
  writes of a checkpoint after one of them failed (a full disk), which the run reports
  in one line."""

  def unraisablehook(unraisable):
    if (
      isinstance(unraisable.exc_value, RuntimeError)
      and str(unraisable.exc_value) == "Event loop is closed"
    ):
      return
    hook(unraisable)

  return unraisablehook


def _sigterm_as_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def run(main):
  """absl's app.run with quiet library logs, clear flag errors, and SIGTERM handled as
  Ctrl-C (the loops save a checkpoint before stopping)."""
  runtime.avoid_slow_cache_loads()  # before JAX starts a backend
  signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
  sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_QuietLibraries())

  def with_cache(argv):
    runtime.skip_absent_tpu()
    folder = _COMPILE_CACHE.value
    runtime.enable_persistent_cache(runtime.default_cache_dir() if folder is None else folder)
    return main(argv)

  app.run(with_cache, flags_parser=_parse_flags)
