"""Two JAX processes of 4 fake CPU devices each (jax.distributed, coordinator on
127.0.0.1, gloo collectives), as on a TPU pod slice or several GPU hosts, against one
process of 8 devices under the same runtime: the same global batches, the same result,
bitwise. The search is also killed (both processes, SIGKILL) and resumed, and preempted
(SIGTERM to one process: both save at the same step) and resumed. The retraining reads
its batches with the streaming pipeline from a folder of JPEGs. Each process reads and
augments only its half of every global batch.

The reference process joins a jax.distributed runtime of its own (one process) so that
its collectives are gloo's too, which sum the 8 devices' gradients in the same order
however the devices are spread over processes. Without jax.distributed, one process sums
them in-process, in another order: measured on the search below, 3e-6 of an array's
largest value after 8 steps with XLA's full optimisation, but 7.7e-4 under the tests'
cheap XLA settings, where a near-tie in max pooling flips by step 4.

Each command runs under a time limit; on failure or timeout every process is killed
(tests/jax_processes.py).
"""

import json
import os
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

import jax_processes as mp  # tests/jax_processes.py
import jpeg_data  # tests/jpeg_data.py

# The test config with two cheap operations and 3 layers (a normal cell and the two
# reduction cells: the runtime, not the network, is under test, and this keeps each
# process's compile short), one epoch of 8 steps with architecture updates from the
# first.
SEARCH = [
  "--config=experiments/configs/test.py",
  "--config.num_epochs=1",
  "--config.optim.arch_warmup_epochs=0",
  "--config.eval_batch_size=16",
  "--config.model.primitives=max_pool_3x3,skip_connect",
  "--config.model.num_layers=3",
]
# One retraining step of the whole training set (256 images).
RETRAIN = [
  "--config=experiments/configs/test_retrain.py",
  "--config.num_epochs=1",
  "--config.batch_size=256",
]
# The retraining from 256 + 64 JPEGs of several sizes (tests/jpeg_data.py), streamed:
# ImageNet's network on 32×32 crops, without worker processes.
STREAMED = [
  "--config.data.streaming=True",
  "--config.data.dataset=tiny_jpegs",
  "--config.data.source=folder",
  "--config.data.test_split=val",
  "--config.data.image_size=32",
  "--config.data.crop_padding=0",
  "--config.data.cutout=0",
  "--config.model.network=imagenet",
  "--config.eval_batch_size=32",
]
LIMIT = 420  # seconds per command


def _one_process(module, args, workdir, logdir):
  """`module` in one process of 8 devices, in a jax.distributed runtime of its own."""
  os.makedirs(logdir)
  with mp.Processes(module, [*args, f"--workdir={workdir}"], 1, 8, logdir) as procs:
    assert procs.wait(LIMIT) == [0], procs.output()


def _state(workdir):
  """The newest checkpoint's state as nested dicts of arrays, and its step."""
  manager = ocp.CheckpointManager(
    os.path.join(workdir, "checkpoints"),
    item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
  )
  step = manager.latest_step()
  # Saved over 8 devices; restored here onto this process's one device.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
    manager.item_metadata(step)["state"],
  )
  state = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
  ).state
  manager.close()
  return state, step


def _assert_same_state(a, b, relative: float | None = None):
  """Bitwise equal, or with a `relative` tolerance equal to float32 rounding: each float
  array within `relative` of its largest value, the others equal."""
  flat_a = ocp.tree.to_flat_dict(a)
  flat_b = ocp.tree.to_flat_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    x, y = np.asarray(flat_a[key]), np.asarray(flat_b[key])
    if relative is None or x.dtype.kind != "f":
      np.testing.assert_array_equal(x, y, err_msg=str(key))
    else:
      assert np.abs(x - y).max() <= relative * np.abs(x).max() + 1e-7, key


def _assert_each_reads_its_rows(logdir, batch_size, num=2):
  """Process p read and augmented only rows p·B/P : (p + 1)·B/P of each global batch
  (the loops log them; `sharding.shard_batch` raises on a host batch of other size)."""
  n = batch_size // num
  for p in range(num):
    with open(os.path.join(logdir, f"process_{p}.log")) as f:
      log = f.read()
    line = f"process {p} of {num} reads and augments rows {p * n}:{(p + 1) * n} of each global"
    assert f"{line} batch of {batch_size}" in log, log[-3000:]


def _finished_steps(workdir):
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(
    int(s)
    for s in os.listdir(folder)
    if s.isdigit() and os.path.isfile(os.path.join(folder, s, "_CHECKPOINT_METADATA"))
  )


def _wait_for_checkpoint(procs, workdir, after: int):
  deadline = time.time() + LIMIT
  while time.time() < deadline:
    steps = _finished_steps(workdir)
    if steps and steps[-1] > after:
      return steps[-1]
    if any(p.poll() is not None for p in procs.procs):
      raise AssertionError(f"a process ended early:\n{procs.output()}")
    time.sleep(0.05)
  procs.kill()
  raise TimeoutError(f"no checkpoint after step {after} in {LIMIT} s:\n{procs.output()}")


def test_two_processes_search_like_one_and_resume_after_kill_and_preemption(tmp_path):
  ref, run = tmp_path / "one_process", tmp_path / "two_processes"
  logs = tmp_path / "logs"
  args = SEARCH + [f"--workdir={run}"]
  for attempt in ("killed", "preempted", "finished"):
    (logs / attempt).mkdir(parents=True)
    with mp.Processes("experiments.search", args, 2, 4, str(logs / attempt)) as procs:
      if attempt == "killed":  # both processes, kill -9, after their first checkpoint
        killed_after = _wait_for_checkpoint(procs, str(run), 0)
        procs.kill()
        assert not os.path.exists(run / "final_metrics.json")
      elif attempt == "preempted":  # SIGTERM to process 1 only
        _wait_for_checkpoint(procs, str(run), killed_after)
        procs.signal(signal.SIGTERM, which=1)
        codes = procs.wait(LIMIT)
        assert codes == [143, 143], procs.output()
        steps = _finished_steps(str(run))
        assert f"preempted at step {steps[-1]}" in procs.output()
        assert steps[-1] < 8, steps
      else:
        assert procs.wait(LIMIT) == [0, 0], procs.output()
        _assert_each_reads_its_rows(logs / attempt, 16)  # the test config's batch
      if attempt != "killed":  # each process loads the executables it compiled first ...
        first = (logs / "killed" / "process_0.log").read_text()
        for p in range(2):
          log = (logs / attempt / f"process_{p}.log").read_text()
          # ... except process 0's when JAX's cache (shared by the tests, and kept
          # between runs where /tmp is) answered its first compile: such an executable
          # cannot be kept, and the first run says so. Only process 0 writes JAX's cache.
          if p == 0 and "search step (decoupled, L=3, batch 16): not kept" in first:
            assert "from JAX's cache" in log, log[-3000:]
          else:
            assert "as compiled by an earlier run (no tracing)" in log, log[-3000:]
  # The reference after the runs (its programs may answer process 0's compile from JAX's
  # cache, not the other way round: the test sees process 0 keep its executables).
  _one_process("experiments.search", SEARCH, ref, str(logs / "one_process"))
  ref_state, ref_step = _state(str(ref))
  state, step = _state(str(run))
  assert step == ref_step == 8
  _assert_same_state(state, ref_state)
  np.testing.assert_array_equal(np.load(run / "psi.npy"), np.load(ref / "psi.npy"))
  assert (
    json.loads((run / "genotype.json").read_text())["cells"]
    == json.loads((ref / "genotype.json").read_text())["cells"]
  )
  # Only process 0 wrote the artifacts and event files: one set, no temporaries.
  events = [n for n in os.listdir(run) if n.startswith("events.out.tfevents")]
  assert len(events) == 3  # one per launch
  assert not [n for n in os.listdir(run) if n.endswith(".tmp")]


def test_two_processes_stream_their_rows_and_retrain_like_one(tmp_path):
  """The retraining fed by the streaming pipeline (config.data.streaming) from a
  folder of JPEGs: each process decodes and augments only its rows of the batch."""
  root, _ = jpeg_data.write_tiny_imagenet(tmp_path, ("ant", "bee", "cat", "dog"), 256, 64)
  args = RETRAIN + STREAMED + [f"--config.data.path={root}"]
  ref, run = tmp_path / "one_process", tmp_path / "two_processes"
  _one_process("experiments.train", args, ref, str(tmp_path / "one_process_logs"))
  with mp.Processes("experiments.train", args + [f"--workdir={run}"], 2, 4, str(tmp_path)) as procs:
    assert procs.wait(LIMIT) == [0, 0], procs.output()
  _assert_each_reads_its_rows(tmp_path, 256)
  ref_state, ref_step = _state(str(ref))
  state, step = _state(str(run))
  assert step == ref_step == 1
  # Not bitwise, unlike the search: measured, every array agrees to 3e-6 of its largest
  # value after the step (5.1e-6 on another machine), as the gradients of one step with
  # other rounding would; a wrong row, batch or key would differ by the whole value.
  _assert_same_state(state, ref_state, relative=1e-4)
  ref_final = json.loads((ref / "final_metrics.json").read_text())
  final = json.loads((run / "final_metrics.json").read_text())
  assert abs(final["test_accuracy"] - ref_final["test_accuracy"]) <= 1 / 64
  assert [n for n in os.listdir(run) if n.startswith("events.out")]
