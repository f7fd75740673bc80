"""Starting an experiments command as N JAX processes on this machine (CPU, gloo).

Each process gets `devices` fake CPU devices and the coordinator on 127.0.0.1 at a free
port, as the README's "several hosts" section does by hand. Every process is started in
its own process group and killed with it on any failure or timeout, so no process is
left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env_for(
  devices: int, process_id: int | None = None, num_processes: int = 1, port: int | None = None
) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  flags = " ".join(
    f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f
  )
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  if process_id is not None:
    env.update(
      JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
      JAX_NUM_PROCESSES=str(num_processes),
      JAX_PROCESS_ID=str(process_id),
    )
  return env


class Processes:
  """`python -m module args` as `num` processes of one JAX runtime."""

  def __init__(self, module: str, args: list[str], num: int, devices: int, logdir: str):
    port = free_port()
    self.procs, self.logs = [], []
    for i in range(num):
      log = open(os.path.join(logdir, f"process_{i}.log"), "w")
      self.logs.append(log)
      self.procs.append(
        subprocess.Popen(
          [sys.executable, "-m", module, *args, "--config.distributed=True"],
          cwd=ROOT,
          env=env_for(devices, i, num, port),
          stdout=log,
          stderr=subprocess.STDOUT,
          start_new_session=True,
        )
      )

  def signal(self, sig: int, which: int | None = None) -> None:
    for i, p in enumerate(self.procs):
      if (which is None or i == which) and p.poll() is None:
        os.killpg(p.pid, sig)

  def wait(self, timeout: float) -> list[int]:
    """Exit codes; on timeout every process is killed and TimeoutError raised."""
    deadline = time.time() + timeout
    try:
      for p in self.procs:
        p.wait(timeout=max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
      self.kill()
      raise TimeoutError(f"processes still running after {timeout} s:\n{self.output()}")
    return [p.returncode for p in self.procs]

  def kill(self) -> None:
    self.signal(signal.SIGKILL)
    for p in self.procs:
      p.wait(timeout=30)

  def output(self, tail: int = 3000) -> str:
    out = []
    for log in self.logs:
      log.flush()
      with open(log.name) as f:
        out.append(f"--- {log.name}\n{f.read()[-tail:]}")
    return "\n".join(out)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if any(p.poll() is None for p in self.procs):
      self.kill()
    for log in self.logs:
      log.close()
