"""The process's JAX and XLA setup, before and around compiling: XLA flags, the TPU
probe, the persistent compilation cache, and the record of what decides a compiled
program.

The entry points (`experiments/cli.py`) call `avoid_slow_cache_loads` before JAX starts
a backend, then `skip_absent_tpu` and `enable_persistent_cache(folder)`: JAX's
persistent compilation cache, so that a second run of the same command (or a resume)
reads the compiled programs from disk instead of compiling them again (on by default,
`--compile_cache`). `environment()` records what else decides a compiled program
(versions, backend, devices, flags, this package's code): the executables kept without
tracing (`dnas_jax.training.executable_cache`) are keyed by it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from typing import Any

import jax


# XLA:CPU hands convolutions, matrix products and some element-wise work to YNNPACK
# ("YNN fusions"). Reading an executable with many of them back from the persistent
# cache is slow in jaxlib 0.10 (perf: 96 % of the load in YnnFusionThunkFromProto →
# HloInstruction::unique_id). Without them the digits quick start's search step loads
# in 9 s instead of 31 s, and its 110 steps take 88 s instead of 91 s (README, Quick
# start). The entry points set this flag on the jaxlib versions it was measured with;
# passed per program (`compile(compiler_options=...)`) it did not take effect, so it
# goes in XLA_FLAGS.
NO_YNN_FLAG = (
  "--xla_cpu_experimental_ynn_fusion_type="
  "-dot,-eltwise,-reduce,-individual_dot,-individual_convolution"
)
NO_YNN_JAXLIB = ("0.10.",)  # the versions whose XLA knows the flag (an unknown flag
# in XLA_FLAGS aborts the process)


def avoid_slow_cache_loads() -> bool:
  """Adds `NO_YNN_FLAG` to XLA_FLAGS for this process, before JAX starts its backends,
  unless XLA_FLAGS already sets that flag or the jaxlib is not one it was measured
  with. Returns whether it did."""
  import jaxlib  # pylint: disable=g-import-not-at-top

  current = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" in current or not jaxlib.__version__.startswith(
    NO_YNN_JAXLIB
  ):
    return False
  os.environ["XLA_FLAGS"] = f"{current} {NO_YNN_FLAG}".strip()
  return True


def skip_absent_tpu() -> None:
  """With libtpu installed (the `tpu-aot` extra) on a machine without a TPU, JAX tries
  the TPU first and prints warnings about it. When no TPU device file exists, no GPU
  plugin is installed and JAX_PLATFORMS is unset, run on the CPU quietly."""
  import glob  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top

  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return
  if glob.glob("/dev/accel*") or os.path.exists("/dev/vfio"):
    return
  if any(
    importlib.util.find_spec(p)
    for p in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_plugins")
  ):
    return
  jax.config.update("jax_platforms", "cpu")


def default_cache_dir() -> str:
  """$JAX_COMPILATION_CACHE_DIR, else the user's cache folder: ~/.cache/dnas_jax/xla."""
  explicit = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if explicit:
    return explicit
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "dnas_jax", "xla")


def enable_persistent_cache(folder: str | None) -> None:
  """Caches compiled programs that took at least a second to compile in `folder`
  (None or "": no cache)."""
  if not folder:
    return
  folder = os.path.abspath(os.path.expanduser(folder))
  os.makedirs(folder, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def sources_digest(root: str) -> str:
  """SHA-256 of the sources under `root` (*.py and the kernels' *.cc, with their
  relative paths)."""
  digest = hashlib.sha256()
  for folder, dirs, files in os.walk(root):
    dirs.sort()
    for name in sorted(f for f in files if f.endswith((".py", ".cc"))):
      path = os.path.join(folder, name)
      digest.update(os.path.relpath(path, root).encode() + b"\0")
      with open(path, "rb") as f:
        digest.update(f.read() + b"\0")
  return digest.hexdigest()


@functools.cache
def _code_digest() -> str:
  """`sources_digest` of this package (dnas_jax/), once per process."""
  return sources_digest(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def environment() -> dict[str, Any]:
  """What else decides a compiled program: versions, backend, devices, flags."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  client = jax.devices()[0].client
  return {
    "code": _code_digest(),
    "python": sys.version,
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "platform": client.platform,
    "platform_version": client.platform_version,
    "devices": [(d.id, d.device_kind, d.process_index) for d in jax.devices()],
    # Each process of a multi-process run compiles its own executable.
    "process": [jax.process_index(), jax.process_count()],
    "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "LIBTPU_INIT_ARGS")},
    "jax_config": {
      k: repr(v)
      for k, v in sorted(jax.config.values.items())
      if "cache" not in k and "log" not in k
    },
  }
