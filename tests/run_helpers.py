"""What the tests of runs that fail or resume share: the tiny configs with overrides,
the entry points as subprocesses, and a process holding a workdir's lock.

The finished tiny search of conftest.py (`tiny_search`: configs/test.py, checkpoints at
steps 12, 14 and 16) is copied for a test by conftest.py's `run_copy` fixture.
"""

import os
import subprocess
import sys

from dnas_jax.configs import test as test_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEWEST, PREVIOUS = 16, 14  # the tiny search's last two checkpoints


def config(base=None, **overrides):
  """`base` (default: configs/test.py) with dotted overrides, e.g.
  `config(**{"optim.arch_lr": 1e-3})`."""
  base = base or test_config.get_config()
  base.update_from_flattened_dict(overrides)
  return base


def cli(module, *args, timeout=300):
  """Runs `python -m module args` from the repository root on the CPU."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def last_line(proc) -> str:
  return proc.stderr.strip().splitlines()[-1]


def hold_lock(workdir):
  """A process that takes the workdir's lock and waits."""
  proc = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time\nfrom dnas_jax.training import workdir\n"
      "workdir.acquire_lock(sys.argv[1]); print('locked', flush=True); time.sleep(300)",
      workdir,
    ],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
    stdout=subprocess.PIPE,
    text=True,
  )
  assert proc.stdout.readline().strip() == "locked"
  return proc
