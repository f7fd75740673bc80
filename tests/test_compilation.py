"""`compilation.compile_all` with `executable_cache`'s executables kept without tracing:
written on the first compile, loaded by a later call without tracing, the same results,
and a miss (compile again) for another key, other argument shapes, or a damaged file;
the key follows `runtime.environment`."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from dnas_jax.training import compilation
from dnas_jax.training import evaluation
from dnas_jax.training import executable_cache
from dnas_jax.training import runtime


def _toy():
  """A jitted (state, batch) → (state, EvalMetrics) step with the state donated, as the
  loops' steps, and the count of its traces."""
  traces = []

  def step(state, batch):
    traces.append(1)
    logits = batch["image"] @ state["w"]
    loss = jnp.mean((logits - batch["label"][:, None]) ** 2, axis=-1)
    metrics = evaluation.EvalMetrics.single_from_model_output(
      loss=loss, accuracy=(loss < 1.0).astype(jnp.float32), mask=batch["mask"]
    )
    return {"w": state["w"] - 0.1 * jnp.mean(logits), "n": state["n"] + 1}, metrics

  return jax.jit(step, donate_argnums=(0,)), traces


def _inputs(rows=4):
  rng = np.random.default_rng(0)
  state = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "n": jnp.zeros((), jnp.int32)}
  batch = {
    "image": jnp.asarray(rng.normal(size=(rows, 3)), jnp.float32),
    "label": jnp.asarray(rng.normal(size=(rows,)), jnp.float32),
    "mask": jnp.asarray([True] * (rows - 1) + [False]),
  }
  return state, batch


def _files(folder):
  sub = folder / executable_cache.EXECUTABLES
  return sorted(os.listdir(sub)) if sub.exists() else []


def _forget_jax_cache(folder):
  """Removes JAX's own entries, so that the next compile is XLA's."""
  for name in os.listdir(folder):
    if name != executable_cache.EXECUTABLES:
      os.remove(folder / name)


def _run(compiled, rows=4):
  state, batch = _inputs(rows)
  new_state, metrics = compiled(state, batch)
  return jax.tree.map(np.asarray, (new_state, metrics.compute()))


def test_second_call_loads_the_executable_without_tracing(fresh_compile_cache):
  step, traces = _toy()
  (first,), timings = compilation.compile_all([("toy", step, _inputs())], cache_key={"run": 1})
  assert len(traces) == 1 and "trace_lower_s" in timings
  assert len(_files(fresh_compile_cache)) == 1

  step2, traces2 = _toy()  # a new process would have a new jitted function
  (loaded,), timings = compilation.compile_all([("toy", step2, _inputs())], cache_key={"run": 1})
  assert not traces2 and "trace_lower_s" not in timings
  assert isinstance(loaded, jax.stages.Compiled)
  jax.tree.map(np.testing.assert_array_equal, _run(first), _run(loaded))
  # The donated state is consumed as by the compiled step.
  state, batch = _inputs()
  loaded(state, batch)
  assert state["w"].is_deleted()
  # Independent check of the step's arithmetic, in NumPy.
  s, b = jax.tree.map(np.asarray, _inputs())
  loss = np.mean((b["image"] @ s["w"] - b["label"][:, None]) ** 2, axis=-1)[:3]
  new_state, metrics = _run(loaded)
  np.testing.assert_allclose(metrics["loss"], loss.mean(), rtol=1e-5)
  np.testing.assert_allclose(new_state["w"], s["w"] - 0.1 * np.mean(b["image"] @ s["w"]), rtol=1e-5)
  assert new_state["n"] == 1


def test_another_key_or_shape_compiles_again(fresh_compile_cache):
  def compile_toy(key, rows):  # as a new run would: a new jitted function, and XLA
    step, traces = _toy()  # compiles (not JAX's cache: test_a_program_from_jax_...)
    _forget_jax_cache(fresh_compile_cache)
    compilation.compile_all([("toy", step, _inputs(rows))], cache_key=key)
    return len(traces)

  assert compile_toy({"run": 1}, 4) == 1
  assert compile_toy({"run": 2}, 4) == 1
  assert compile_toy({"run": 1}, 5) == 1
  assert len(_files(fresh_compile_cache)) == 3
  assert compile_toy({"run": 1}, 5) == 0
  assert compile_toy({"run": 2}, 4) == 0
  assert compile_toy({"run": 1}, 4) == 0


def test_no_key_or_no_cache_keeps_nothing(fresh_compile_cache):
  step, traces = _toy()
  compilation.compile_all([("toy", step, _inputs())])
  assert not _files(fresh_compile_cache)
  jax.config.update("jax_compilation_cache_dir", None)
  step, traces = _toy()
  (compiled,), _ = compilation.compile_all([("toy", step, _inputs())], cache_key={"a": 1})
  assert len(traces) == 1 and not _files(fresh_compile_cache)
  assert _run(compiled)[0]["n"] == 1


def test_a_program_from_jax_cache_is_not_kept(fresh_compile_cache, caplog):
  """JAX's cache answers the second compile of the same program (another key): that
  executable cannot be serialized again, so nothing is written, and the next call
  with that key traces again; the program runs right all along."""
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # keep the toy
  step, _ = _toy()
  (first,), _ = compilation.compile_all([("toy", step, _inputs())], cache_key={"run": 1})
  assert len(_files(fresh_compile_cache)) == 1
  step2, traces2 = _toy()
  with caplog.at_level(logging.INFO):
    (from_jax,), _ = compilation.compile_all([("toy", step2, _inputs())], cache_key={"run": 2})
  assert len(traces2) == 1
  assert len(_files(fresh_compile_cache)) == 1
  assert "not kept for tracing-free loads" in caplog.text
  jax.tree.map(np.testing.assert_array_equal, _run(first), _run(from_jax))
  step3, traces3 = _toy()
  compilation.compile_all([("toy", step3, _inputs())], cache_key={"run": 2})
  assert len(traces3) == 1


def test_a_damaged_file_is_compiled_again_and_replaced(fresh_compile_cache, caplog):
  step, _ = _toy()
  (first,), _ = compilation.compile_all([("toy", step, _inputs())], cache_key={"run": 1})
  (name,) = _files(fresh_compile_cache)
  path = fresh_compile_cache / executable_cache.EXECUTABLES / name
  path.write_bytes(path.read_bytes()[:100])
  _forget_jax_cache(fresh_compile_cache)
  step2, traces2 = _toy()
  with caplog.at_level(logging.WARNING):
    (again,), _ = compilation.compile_all([("toy", step2, _inputs())], cache_key={"run": 1})
  assert len(traces2) == 1
  assert "cannot use the cached executable" in caplog.text
  jax.tree.map(np.testing.assert_array_equal, _run(first), _run(again))
  step3, traces3 = _toy()
  compilation.compile_all([("toy", step3, _inputs())], cache_key={"run": 1})
  assert not traces3  # the file was written again


def test_the_key_follows_the_code_versions_and_flags(monkeypatch, tmp_path):
  step, _ = _toy()
  args = _inputs()
  base = executable_cache.executable_path(str(tmp_path), {"run": 1}, "toy", step, args)
  assert base == executable_cache.executable_path(str(tmp_path), {"run": 1}, "toy", step, args)
  assert base != executable_cache.executable_path(str(tmp_path), {"run": 1}, "other", step, args)
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_dump_to=/x")
  assert base != executable_cache.executable_path(str(tmp_path), {"run": 1}, "toy", step, args)
  monkeypatch.undo()
  monkeypatch.setattr(runtime, "_code_digest", lambda: "edited")
  assert base != executable_cache.executable_path(str(tmp_path), {"run": 1}, "toy", step, args)
  monkeypatch.undo()
  monkeypatch.setattr(jax, "__version__", "0.0.1")
  assert base != executable_cache.executable_path(str(tmp_path), {"run": 1}, "toy", step, args)


def test_sources_digest_follows_every_python_file(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "a.py").write_text("x = 1\n")
  (tmp_path / "sub" / "b.py").write_text("y = 2\n")
  (tmp_path / "notes.txt").write_text("not code")
  first = runtime.sources_digest(str(tmp_path))
  (tmp_path / "notes.txt").write_text("still not code")
  assert runtime.sources_digest(str(tmp_path)) == first
  (tmp_path / "sub" / "b.py").write_text("y = 3\n")
  second = runtime.sources_digest(str(tmp_path))
  assert second != first
  (tmp_path / "sub" / "c.py").write_text("")
  assert runtime.sources_digest(str(tmp_path)) not in (first, second)


def test_the_steps_output_structures_can_be_kept():
  """What `compile_all` pickles with an executable: the tree structures of every
  step's inputs and outputs, clu metric collections included."""
  import pickle  # pylint: disable=g-import-not-at-top
  from dnas_jax.retrain import steps as retrain_steps  # pylint: disable=g-import-not-at-top
  from dnas_jax.search import steps as search_steps  # pylint: disable=g-import-not-at-top

  for collection in (
    search_steps.SearchMetrics,
    retrain_steps.TrainMetrics,
    evaluation.EvalMetrics,
  ):
    tree = jax.tree.structure(collection.empty())
    assert pickle.loads(pickle.dumps(tree)) == tree, collection
  assert evaluation.output_metric(evaluation.metrics.Average, "loss") is (
    evaluation.output_metric(evaluation.metrics.Average, "loss")
  )


def test_the_key_follows_the_users_operation_files(tmp_path, monkeypatch):
  """An operation file named in config.model.ops_modules is part of the program: edit
  it and the next run compiles afresh instead of loading the stale executable."""
  from dnas_jax.space import ops  # pylint: disable=g-import-not-at-top

  step, _ = _toy()
  args = _inputs()
  before = executable_cache.executable_path(str(tmp_path), {"run": 1}, "toy", step, args)
  user_file = tmp_path / "key_ops.py"
  source = (
    "from dnas_jax.space import ops\n"
    "def key_op(channels, stride, affine, train, dtype, formulation):\n"
    "  return ops.create_op('skip_connect', channels, stride, affine=affine,\n"
    "                       train=train, dtype=dtype, formulation=formulation)\n"
    "ops.register_op('key_test_op', key_op, replace=True)\n"
  )
  user_file.write_text(source)
  monkeypatch.chdir(tmp_path)
  # The registry and the imported files as they were, restored below.
  monkeypatch.setattr(ops, "OPS", dict(ops.OPS))
  monkeypatch.setattr(ops, "_USER_FILES", dict(ops._USER_FILES))  # pylint: disable=protected-access
  ops.import_ops_modules("key_ops.py")
  first = executable_cache.executable_path(str(tmp_path), {"run": 1}, "toy", step, args)
  assert first != before
  assert first == executable_cache.executable_path(str(tmp_path), {"run": 1}, "toy", step, args)
  user_file.write_text(source + "# edited\n")
  ops.import_ops_modules("key_ops.py")
  assert first != executable_cache.executable_path(str(tmp_path), {"run": 1}, "toy", step, args)


def test_fields_outside_the_program_keep_the_executables_key(tmp_path):
  """A run's executables are found again when only logging, checkpointing, prefetch,
  profiling or input workers change; a field the step depends on changes the key."""
  step, _ = _toy()

  def path(**fields):
    config = {
      "num_epochs": 2,
      "prefetch": 2,
      "profile": {"first_step": 0, "num_steps": 0},
      "data": {"dataset": "x", "workers": 0, "data_dir": ""},
      **fields,
    }
    key = {"config": config, "num_classes": 10}
    return executable_cache.executable_path(str(tmp_path), key, "toy", step, _inputs())

  base = path()
  assert path(prefetch=0, profile={"first_step": 3, "num_steps": 2}) == base
  assert path(data={"dataset": "x", "workers": 8, "data_dir": "/elsewhere"}) == base
  assert path(log_every_steps=7, checkpoint_every_steps=3) == base
  assert path(num_epochs=3) != base
  assert path(data={"dataset": "y", "workers": 0, "data_dir": ""}) != base
