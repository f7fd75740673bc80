"""Data parallelism (dnas_jax.training.sharding): one search step and one retraining
step sharded over 8 fake CPU devices give the state one device gives (each in a
subprocess, since the device count is fixed when JAX starts)."""

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_script(code, devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
  ).strip()
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    env=env,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


SEARCH_STEP_ON_MESHES = """
import jax, numpy as np, json
from dnas_jax.configs import test
from dnas_jax.search import setup as search_setup
from dnas_jax.tools import benchmarking
from dnas_jax.training import sharding
config = test.get_config()
config.model.num_layers = 3  # a normal and two reduction cells: every kind of cell
assert jax.device_count() == 8
out = {}
batch = benchmarking.random_batch(16, (8, 8, 3), 10, 0)
val = benchmarking.random_batch(16, (8, 8, 3), 10, 1)
for n in (1, 8):
  mesh = sharding.create_mesh(jax.devices()[:n])
  # The test config's program (8 steps per epoch, 1 warm-up epoch), from step 8 on so
  # that both the architecture and the weight update run.
  setup = search_setup.create_search_setup(config, (8, 8, 3), 10, 8, mesh)
  start = setup.state.replace(step=jax.device_put(jax.numpy.int32(8),
                                                  sharding.replicated(mesh)))
  state, m = setup.step_fn(start, sharding.shard_batch(batch, mesh),
                           sharding.shard_batch(val, mesh), jax.random.key(0))
  state, m = setup.step_fn(state, sharding.shard_batch(val, mesh),
                           sharding.shard_batch(batch, mesh), jax.random.key(0))
  assert float(m.arch_updates.compute()) == 1.0
  leaves = jax.tree.leaves(state)
  assert all(len(x.sharding.device_set) == n for x in leaves)
  out[n] = [np.asarray(x).tolist() for x in leaves]
diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
           for a, b in zip(out[1], out[8]))
scale = max(float(np.max(np.abs(np.asarray(a, np.float64)))) for a in out[1])
print(json.dumps({"max_abs_diff": diff, "scale": scale}))
"""


def test_search_step_on_8_devices_equals_1_device():
  result = _run_script(SEARCH_STEP_ON_MESHES, 8)
  assert result["max_abs_diff"] <= 1e-4 * max(1.0, result["scale"]), result


TRAIN_STEP_ON_MESHES = """
import functools, jax, jax.numpy as jnp, numpy as np, json
from dnas_jax.configs import test_retrain
from dnas_jax.models import init as init_lib
from dnas_jax.retrain import setup as retrain_setup
from dnas_jax.retrain import steps as retrain_steps
from dnas_jax.tools import benchmarking
from dnas_jax.training import sharding
config = test_retrain.get_config()
geno = retrain_setup.resolve_genotype(config.genotype, config.model.num_layers)
net = retrain_setup.create_network(config, geno, 10, True)
tx, schedule = retrain_setup.create_tx(config, 16)
variables = init_lib.init_from_shapes(net, 0, jnp.zeros((1, 8, 8, 3)))
step = jax.jit(functools.partial(retrain_steps.train_step, net=net, tx=tx, lr_schedule=schedule,
                                 auxiliary_weight=0.4))
batch = benchmarking.random_batch(16, (8, 8, 3), 10, 0)
out = {}
for n in (1, 8):
  mesh = sharding.create_mesh(jax.devices()[:n])
  state = sharding.replicate(
      retrain_steps.create_train_state(variables["params"], variables["batch_stats"], tx), mesh)
  for _ in range(2):
    state, m = step(state, sharding.shard_batch(batch, mesh), jax.random.key(0),
                    jnp.float32(0.0))
  out[n] = [np.asarray(x) for x in jax.tree.leaves(state)]
diff = max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
           for a, b in zip(out[1], out[8]))
print(json.dumps({"max_abs_diff": diff}))
"""


def test_train_step_on_8_devices_equals_1_device():
  result = _run_script(TRAIN_STEP_ON_MESHES, 8)
  assert result["max_abs_diff"] <= 1e-4, result


SAVE_REPLICATED = """
import json, sys, jax, jax.numpy as jnp, numpy as np
from jax import monitoring
from dnas_jax.training import checkpoints, sharding
mesh = sharding.create_mesh()
shapes = [(3,), (16, 5), (4, 4, 8, 8), (7, 3, 3), (2, 9)]  # as many shapes, as many slices
state = {f"w{i}": jax.device_put(jnp.arange(np.prod(s), dtype=jnp.float32).reshape(s),
                                 sharding.replicated(mesh)) for i, s in enumerate(shapes)}
compiles = []
monitoring.register_event_duration_secs_listener(
  lambda event, secs, **kw: compiles.append(event)
  if event == "/jax/core/compile/backend_compile_duration" else None)
manager = checkpoints.create_manager(sys.argv[1])
checkpoints.save(manager, 1, state, {"note": "replicated over 8 devices"})
manager.wait_until_finished()
restored, meta = checkpoints.restore(manager, checkpoints.abstract_like(state))
same = all(np.array_equal(np.asarray(restored[k]), np.asarray(v)) for k, v in state.items())
print(json.dumps({"compiles": len(compiles), "same": same}))
"""


def test_a_replicated_state_is_saved_without_compiling(tmp_path):
  """Orbax's default splits every replicated array over its replicas for saving and
  compiles one small program per shape to cut the slices (seconds at a run's first
  save); the checkpoints' array handler writes each array from one replica instead."""
  result = _run_script(SAVE_REPLICATED.replace("sys.argv[1]", repr(str(tmp_path / "c"))), 8)
  assert result == {"compiles": 0, "same": True}
