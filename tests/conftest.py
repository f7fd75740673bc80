"""Test-session settings, applied before JAX is imported anywhere.

Compile time dominates this suite on a CPU (docs/design.md §5), so tests compile with XLA's
cheap settings (the numbers are the same programs, less optimised) and share a
persistent compilation cache within a run.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
  os.environ["XLA_FLAGS"] = (
    _flags + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  ).strip()

import jax  # noqa: E402  # pylint: disable=g-import-not-at-top,wrong-import-position

_CACHE = os.environ.get(
  "DNAS_TEST_JAX_CACHE", os.path.join(tempfile.gettempdir(), "dnas_jax_test_cache")
)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)  # for subprocesses too
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # noqa: E402  # pylint: disable=g-import-not-at-top,wrong-import-position


# The test files that take longest, longest first (measured with a warm compilation
# cache: docs/performance.md §5). pytest-xdist hands whole files to its two workers in
# collection order (setup.cfg: --dist loadfile --no-loadscope-reorder), so starting with
# these leaves no long file alone at the end; the other files follow in name order.
SLOWEST_FILES = (
  "test_search_loop.py",
  "test_formulations.py",
  "test_multiprocess.py",
  "test_supernet.py",
  "test_benchmarking.py",
  "test_checkpoint_recovery.py",
  "test_run_stops.py",
  "test_streamed_retraining.py",
  "test_search.py",
  "test_train.py",
  "test_docs.py",
  "test_compare.py",
  "test_notebook.py",
  "test_dataset_registry.py",
  "test_ops_registry.py",
  "test_sharding.py",
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory):
  """One uninterrupted search with configs/test.py, shared by the tests that only read
  it (each search costs tens of seconds of tracing here): (workdir, result)."""
  from dnas_jax.configs import test as test_config  # pylint: disable=g-import-not-at-top
  from dnas_jax.search import loop as search_loop  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path_factory.mktemp("tiny_search") / "run")
  return workdir, search_loop.train_and_evaluate(test_config.get_config(), workdir)


@pytest.fixture
def fresh_compile_cache(tmp_path):
  """JAX's persistent cache in a new folder for this test (and
  `compilation.compile_all` keeping its executables there)."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  before = {
    k: jax.config.values[k]
    for k in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  }
  jax.config.update("jax_compilation_cache_dir", str(tmp_path))
  compilation_cache.reset_cache()  # JAX reads the folder once
  try:
    yield tmp_path
  finally:
    for k, v in before.items():
      jax.config.update(k, v)
    compilation_cache.reset_cache()


@pytest.fixture
def nan_images_from(monkeypatch):
  """`nan_images_from(n)`: from the n-th host batch normalised on (training and
  validation batches alike, in the loop's order), the images are NaN."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dnas_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

  def install(first: int):
    calls = {"n": 0}
    normalize = input_pipeline.normalize

    def poisoned(images, mean, std):
      calls["n"] += 1
      out = normalize(images, mean, std)
      return out * np.nan if calls["n"] >= first else out

    monkeypatch.setattr(input_pipeline, "normalize", poisoned)

  return install


@pytest.fixture
def run_copy(tiny_search, tmp_path):
  """A copy of the finished tiny search's workdir, and its final state."""
  import shutil  # pylint: disable=g-import-not-at-top

  src, result = tiny_search
  dst = str(tmp_path / "run")
  shutil.copytree(src, dst)
  return dst, result["state"]


# Appended to the README's search and train commands by `readme_pipeline`: the same
# entry points, configs, workdirs and data at a size that compiles and runs in seconds
# (one epoch of a 3-layer, 8-channel search over three operations; the retraining at
# the searched depth, 4 channels, one epoch). With DNAS_JAX_README_AS_PRINTED=1 nothing
# is appended: the four commands run exactly as printed (about 5 minutes on a 2-core
# CPU with the tests' XLA settings, against about one at the small size, which is why
# the default suite appends them).
README_PIPELINE_SMALL = {
  "experiments.search": [
    "--config.model.num_layers=3",
    "--config.model.channels=8",
    "--config.model.primitives=max_pool_3x3,skip_connect,sep_conv_3x3",
    "--config.num_epochs=1",
    "--config.optim.arch_warmup_epochs=0",
    "--config.eval_every_epochs=1",
  ],
  "experiments.train": [
    "--config.model.num_layers=3",
    "--config.model.channels=4",
    "--config.num_epochs=1",
    "--config.eval_every_epochs=1",
  ],
}


@pytest.fixture(scope="session")
def readme_pipeline(tmp_path_factory):
  """The README's search → derive → train → evaluate commands, run one after another
  as written from a new working directory (their `workdirs/...` relative to it, as a
  user runs them), with `README_PIPELINE_SMALL`'s flags appended unless
  DNAS_JAX_README_AS_PRINTED=1: (that directory, the
  commands as written, each one's stdout). Run once per test session: the first of
  pytest-xdist's workers to ask runs it under a file lock, the others read its record.
  A failing command fails every test that uses the fixture, with its stderr."""
  import fcntl  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import shlex  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  small = {} if os.environ.get("DNAS_JAX_README_AS_PRINTED") == "1" else README_PIPELINE_SMALL
  with open(os.path.join(repo, "README.md"), encoding="utf-8") as f:
    text = f.read()
  section = text.split("## Search, derive, retrain, evaluate", 1)[1].split("\n1. ", 1)[0]
  commands = re.findall(r"^ +python -m (experiments\.\w+.*)$", section, flags=re.M)
  # The folder every xdist worker of this test run shares (each has its own below it).
  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  root, record = shared / "readme_pipeline", shared / "readme_pipeline.json"
  with open(shared / "readme_pipeline.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not record.exists():
      root.mkdir()
      os.symlink(os.path.join(repo, "experiments"), root / "experiments")
      path = os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])
      outs = []
      for command in commands:
        args = shlex.split(command)
        out = subprocess.run(
          [sys.executable, "-m", *args, *small.get(args[0], [])],
          cwd=root,
          env=dict(os.environ, PYTHONPATH=path),
          capture_output=True,
          text=True,
          timeout=600,
          check=False,
        )
        outs.append(
          {
            "command": command,
            "rc": out.returncode,
            "stdout": out.stdout,
            "stderr": out.stderr[-3000:],
          }
        )
        if out.returncode:
          break
      record.write_text(json.dumps(outs))
  outs = json.loads(record.read_text())
  for out in outs:
    assert out["rc"] == 0, f"{out['command']}\n{out['stderr']}"
  return pathlib.Path(root), commands, [out["stdout"] for out in outs]
