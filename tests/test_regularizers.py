"""The options against skip-connect collapse (docs/design.md §1), each against its
authors' code: the values in tests/reference/regularizers.json were recorded by running
the official P-DARTS and FairDARTS lines (tests/reference/make_regularizer_references.py
says how, and holds the commits). Also: the defaults keep the previous code paths, the
zero-one targets against NumPy, independent architecture batches, the config checks,
experiments.derive's flags, and cells whose nodes may keep no edge."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas_jax import api
from dnas_jax.configs import cifar10
from dnas_jax.configs import digits
from dnas_jax.configs import test as test_config
from dnas_jax.data import datasets
from dnas_jax.data import input_pipeline as ip
from dnas_jax.models import arch
from dnas_jax.models import network
from dnas_jax.models import skip_dropout
from dnas_jax.models import supernet
from dnas_jax.search import derivation as derivation_lib
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import search_space
from dnas_jax.training import validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "tests", "reference", "regularizers.json")) as _f:
  REFERENCE = json.load(_f)
L = 5  # layers 1 and 3 are reduction cells
REDUCTION = search_space.is_reduction(L)


def test_reference_records_its_script_and_the_official_commits():
  assert REFERENCE["made_by"] == "tests/reference/make_regularizer_references.py"
  assert os.path.isfile(os.path.join(REPO, REFERENCE["made_by"]))
  sources = REFERENCE["sources"]
  assert sources["pdarts"]["commit"].startswith("b880e87")
  assert sources["fairdarts"]["commit"].startswith("270cfc9")


# ---------------------------------------------------------------------------------
# Skip dropout schedule.


@pytest.mark.parametrize(
  "case",
  REFERENCE["pdarts_skip_dropout"],
  ids=lambda c: f"E{c['num_epochs']}_W{c['warmup_epochs']}_p{c['base_rate']}",
)
def test_decay_schedule_is_pdarts_per_epoch(case):
  epochs = np.arange(case["num_epochs"])
  ours = skip_dropout.skip_dropout_rate(
    epochs, case["base_rate"], case["num_epochs"], case["warmup_epochs"], "decay"
  )
  np.testing.assert_allclose(np.asarray(ours, np.float64), case["rates"], rtol=0, atol=1e-7)
  # In the step, from the step count: one rate per epoch.
  steps_per_epoch = 3
  schedule = skip_dropout.step_schedule(
    "decay", case["base_rate"], case["num_epochs"], case["warmup_epochs"], steps_per_epoch
  )
  per_step = jax.jit(jax.vmap(schedule))(jnp.arange(case["num_epochs"] * steps_per_epoch))
  np.testing.assert_allclose(
    np.asarray(per_step)[::steps_per_epoch], case["rates"], rtol=0, atol=1e-7
  )


def test_constant_schedule_keeps_the_networks_rate():
  """The default: the rate itself (a Python number, no schedule in the step), so the
  supernet traces the dropout it traced before the option existed."""
  assert skip_dropout.skip_dropout_rate(7, 0.2, 50, 15) == 0.2
  assert skip_dropout.step_schedule("constant", 0.2, 50, 15, 10) is None
  assert skip_dropout.step_schedule("decay", 0.0, 50, 15, 10) is None
  for config in (cifar10.get_config(), digits.get_config()):
    assert config.model.skip_dropout_schedule == "constant"


def _mixed(prims, rate, layout):
  if layout == "vmap":
    return supernet.MixedOp(8, 1, prims, partial_k=1, skip_dropout=rate)
  return supernet.BatchedMixedOps(8, 1, prims, partial_k=1, skip_dropout=rate)


@pytest.mark.parametrize("layout", ["vmap", "channels"])
def test_skip_dropout_at_a_traced_rate(layout):
  """A schedule's rate reaches the skip connection as an array: each element dropped
  with that probability, the rest scaled by 1 / (1 - rate); rate 0 is the identity."""
  prims = ("max_pool_3x3", "skip_connect")
  x = jax.random.normal(jax.random.key(5), (4, 8, 8, 8)) + 5.0  # no exact zeros
  w = jnp.array([0.0, 1.0])
  if layout == "channels":  # one edge beside the channels
    x, w = x[..., None, :], w[None]
  module = _mixed(prims, 0.3, layout)
  variables = module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, w)

  @jax.jit
  def apply(rate, key):
    out, _ = module.clone(skip_dropout=rate).apply(
      variables, x, w, mutable=["batch_stats"], rngs={"dropout": key}
    )
    return out

  x_np = np.asarray(x).reshape(-1)
  for rate in (0.3, 0.6):
    y = np.asarray(apply(jnp.float32(rate), jax.random.key(2))).reshape(-1)
    dropped = y == 0
    np.testing.assert_allclose(y[~dropped], x_np[~dropped] / (1 - rate), rtol=1e-6)
    assert abs(dropped.mean() - rate) < 4.5 * np.sqrt(rate * (1 - rate) / y.size)
  y = np.asarray(apply(jnp.float32(0.0), jax.random.key(2))).reshape(-1)
  np.testing.assert_array_equal(y, x_np)


# ---------------------------------------------------------------------------------
# Zero-one target.


def _decoupled_params(seed=0):
  spec = arch.ArchSpec("decoupled", L, 7)
  params = jax.tree.map(lambda v: v * 800.0, spec.init(jax.random.key(seed)))
  return spec, params


@pytest.mark.parametrize("target", arch.ZERO_ONE_TARGETS)
def test_zero_one_targets_against_numpy(target):
  spec, params = _decoupled_params()
  spec = arch.ArchSpec("decoupled", L, 7, zero_one_target=target)
  sig = lambda v: 1 / (1 + np.exp(-np.asarray(v, np.float64)))
  a, g = sig(params["alpha"]), sig(params["gamma"])
  loss = lambda s: -np.mean((s - 0.5) ** 2)
  expected = {
    "factors": loss(np.concatenate([a.ravel(), g.ravel()])),
    "psi": loss(np.asarray(spec.psi(params), np.float64)),
    "per_factor": loss(a) + loss(g),
  }[target]
  np.testing.assert_allclose(float(spec.zero_one_loss(params)), expected, rtol=1e-5)
  # The targets differ from one another on these parameters.
  others = {
    t: float(arch.ArchSpec("decoupled", L, 7, zero_one_target=t).zero_one_loss(params))
    for t in arch.ZERO_ONE_TARGETS
  }
  assert len({round(v, 6) for v in others.values()}) == 3


def test_zero_one_default_is_the_factors_together():
  spec, params = _decoupled_params(1)
  assert spec.zero_one_target == "factors" == cifar10.get_config().optim.zero_one_target
  assert arch.create_arch_spec(cifar10.get_config().arch, L, 7).zero_one_target == "factors"
  np.testing.assert_array_equal(
    np.asarray(spec.zero_one_loss(params)),
    np.asarray(arch.zero_one_loss(spec.sigmoid_factors(params))),
  )
  # ψ itself is defined for every kind; the factors are not.
  full = arch.ArchSpec("full", L, 7, zero_one_target="psi")
  assert float(full.zero_one_loss(full.init(jax.random.key(0)))) < 0
  with pytest.raises(ValueError, match="zero_one_target='both' is not valid"):
    arch.ArchSpec("decoupled", L, 7, zero_one_target="both")


# ---------------------------------------------------------------------------------
# Architecture batch sampling.


def _splits():
  ds = datasets.load_synthetic(num_train=64, num_test=8, image_size=4)
  return ip.search_splits(ds, 0.5)


def _ids(batch):
  # mean 0, std 1/255: normalising gives back the uint8 values as floats.
  return [np.rint(im).astype(np.uint8).tobytes() for im in batch["image"]]


def test_default_sampling_gives_the_batches_it_gave_before():
  """permutation: the architecture half is `epoch_batches` of its split with seed + 1,
  the code path of the project before the option."""
  weight_split, arch_split = _splits()
  for epoch in range(2):
    pairs = list(ip.search_batches(weight_split, arch_split, 8, 3, epoch, None, 0.0, 1 / 255.0))
    before = list(ip.epoch_batches(arch_split, 8, 4, epoch, None, 0.0, 1 / 255.0))
    assert len(pairs) == len(before) == 4
    for (_, val), old in zip(pairs, before):
      np.testing.assert_array_equal(val["image"], old["image"])
      np.testing.assert_array_equal(val["label"], old["label"])
  assert cifar10.get_config().data.arch_sampling == "permutation"


def test_independent_sampling_draws_each_step_afresh_and_resumes_exactly():
  weight_split, arch_split = _splits()
  arch_ids = {im.tobytes() for im in arch_split.images}
  batches = []
  for epoch in range(3):
    for train, val in ip.search_batches(
      weight_split, arch_split, 8, 3, epoch, None, 0.0, 1 / 255.0, arch_sampling="independent"
    ):
      ids = _ids(val)
      assert len(set(ids)) == 8 and set(ids) <= arch_ids  # distinct, from its half
      batches.append(ids)
  # Not a partition of the split per epoch: some epoch repeats an image.
  assert any(len(set(sum(batches[e * 4 : (e + 1) * 4], []))) < 32 for e in range(3))
  # Deterministic, and a resume from step 2 sees the same batches.
  again = [
    _ids(v)
    for _, v in ip.search_batches(
      weight_split,
      arch_split,
      8,
      3,
      1,
      None,
      0.0,
      1 / 255.0,
      start_step=2,
      arch_sampling="independent",
    )
  ]
  assert again == batches[6:8]
  with pytest.raises(ValueError, match="arch_sampling='shuffle' is not valid"):
    ip.search_batches(weight_split, arch_split, 8, 3, 0, None, 0.0, 1.0, arch_sampling="shuffle")


# ---------------------------------------------------------------------------------
# Derivation: P-DARTS's skip-connect cap and FairDARTS's threshold.


def _pdarts_psi(case):
  """ψ [L, 14, 8]: each layer its cell type's probabilities over the three operations
  left on each edge (zero elsewhere), as P-DARTS's last stage has them."""
  psi = np.zeros((L, 14, 8), np.float32)
  for k in range(L):
    cell = "reduce" if REDUCTION[k] else "normal"
    for i in range(14):
      ops = [j for j, on in enumerate(case["switches"][cell][i]) if on]
      psi[k, i, ops] = np.asarray(case["probs"][cell][i], np.float32)
  return psi


def _pdarts_nodes(gene):
  return tuple(tuple((op, i) for op, i in gene[2 * n : 2 * n + 2]) for n in range(4))


@pytest.mark.parametrize("cap", [-1] + list(range(9)))
def test_skip_cap_is_pdarts_end_of_search(cap):
  cap_data = REFERENCE["pdarts_skip_cap"]
  assert tuple(cap_data["primitives"]) == search_space.DARTS_PRIMITIVES
  for case in cap_data["cases"]:
    official = case["uncapped"] if cap < 0 else case["capped"][str(cap)]
    geno = genotype_lib.derive_genotype(
      _pdarts_psi(case),
      search_space.DARTS_PRIMITIVES,
      derivation=genotype_lib.Derivation(max_skip_connects=cap),
    )
    for k, cell in enumerate(geno.cells):
      assert cell.nodes == _pdarts_nodes(official["reduce" if REDUCTION[k] else "normal"]), (cap, k)
      if cap >= 0 and not REDUCTION[k]:
        assert sum(op == "skip_connect" for n in cell.nodes for op, _ in n) <= cap


def test_the_references_exercise_the_cap():
  counts = [
    sum(op == "skip_connect" for op, _ in c["uncapped"]["normal"])
    for c in REFERENCE["pdarts_skip_cap"]["cases"]
  ]
  assert min(counts) > 2  # P-DARTS's cap of 2 removes skip-connects in every case


def _fairdarts_runnable(gene):
  """FairDARTS's parse as its `DCOCell` runs it: an edge from a node that kept no edge
  is skipped (`if from_i not in states: continue`); a node all of whose edges are
  skipped is left out as well (where `DCOCell` would fail)."""
  live, kept = {0, 1}, set()
  for node in range(2, 6):
    edges = {(op, to, fr) for op, to, fr in gene if to == node and fr in live}
    if edges:
      live.add(node)
      kept |= edges
  return kept


@pytest.mark.parametrize(
  "key,rule,threshold",
  [
    ("threshold_sparse_0.85", "threshold", 0.85),
    ("threshold_sparse_0.6", "threshold", 0.6),
    ("darts", "top_k", 0.85),
  ],
)
def test_threshold_rule_is_fairdarts_parse(key, rule, threshold):
  data = REFERENCE["fairdarts_parse"]
  assert tuple(data["primitives"]) == search_space.PRIMITIVES
  derivation = genotype_lib.Derivation(rule, op_threshold=threshold)
  empty_nodes = 0
  for case in data["cases"]:
    for cell in ("normal", "reduce"):
      weights = np.asarray(case["weights"][cell], np.float32)
      gene = case[key][cell]
      if rule == "top_k":  # DARTS's (op, input) pairs, two per node
        gene = [(op, 2 + n, i) for n in range(4) for op, i in gene[2 * n : 2 * n + 2]]
      expected = _fairdarts_runnable(gene)
      if not expected:
        with pytest.raises(ValueError, match="keeps no node"):
          genotype_lib.derive_cell(
            weights, search_space.PRIMITIVES, cell == "reduce", derivation=derivation
          )
        continue
      derived = genotype_lib.derive_cell(
        weights, search_space.PRIMITIVES, cell == "reduce", derivation=derivation
      )
      assert {
        (op, 2 + n, i) for n, edges in enumerate(derived.nodes) for op, i in edges
      } == expected
      assert derived.concat == tuple(sorted({to for _, to, _ in expected}))
      empty_nodes += sum(not edges for edges in derived.nodes)
  assert (empty_nodes > 0) == (rule == "threshold")


def test_threshold_divides_the_edge_weight_out():
  """ψ = op weight × edge weight: the threshold reads the op weight, the ranking ψ."""
  rng = np.random.default_rng(0)
  op_weight = rng.uniform(0.5, 1.0, (L, 14, 7))
  edge = rng.uniform(0.01, 0.2, (L, 14))
  psi = op_weight * edge[:, :, None]
  derivation = genotype_lib.Derivation("threshold", op_threshold=0.9)
  with_edges = genotype_lib.derive_genotype(
    psi, search_space.PRIMITIVES, derivation=derivation, edge_weights=edge
  )
  for k, cell in enumerate(with_edges.cells):
    top = genotype_lib.derive_cell(psi[k], search_space.PRIMITIVES, REDUCTION[k])
    for n, edges in enumerate(cell.nodes):
      assert set(edges) <= set(top.nodes[n])
      for op, i in edges:
        row = search_space.node_edges(n).start + i
        assert op_weight[k, row, search_space.PRIMITIVES.index(op)] >= 0.9
  with pytest.raises(ValueError, match="layer 0: no operation reaches"):
    genotype_lib.derive_genotype(psi, search_space.PRIMITIVES, derivation=derivation)


def test_default_derivation_is_dartss_parse():
  psi = np.random.default_rng(1).random((L, 14, 7))
  config = cifar10.get_config()
  assert genotype_lib.Derivation.from_config(config.derive) == genotype_lib.Derivation()
  assert genotype_lib.derive_genotype(
    psi, search_space.PRIMITIVES, derivation=genotype_lib.Derivation.from_config(config.derive)
  ) == genotype_lib.derive_genotype(psi, search_space.PRIMITIVES)


# ---------------------------------------------------------------------------------
# Cells whose nodes keep no edge.


def _sparse_cell(reduction=False):
  return genotype_lib.CellGenotype(
    ((("sep_conv_3x3", 0),), (), (("skip_connect", 1), ("max_pool_3x3", 2)), ()), reduction, (2, 4)
  )


def test_a_node_without_edges_is_left_out_and_never_read():
  cell = _sparse_cell()
  assert "n1=(no edge)" in cell.describe()
  assert genotype_lib.CellGenotype.from_dict(cell.to_dict()) == cell
  with pytest.raises(ValueError, match="node 2 reads node 1, which has no incoming"):
    genotype_lib.CellGenotype(
      ((("sep_conv_3x3", 0),), (), (("skip_connect", 3),), ()), False, (2, 4)
    )
  with pytest.raises(ValueError, match="concat .* names a node without incoming edges"):
    genotype_lib.CellGenotype(cell.nodes, False)  # the default concat names n1 and n3


def test_network_of_a_sparse_genotype_runs():
  cells = tuple(_sparse_cell(bool(r)) for r in search_space.is_reduction(3))
  geno = genotype_lib.GlobalGenotype(cells)
  network.check_genotype(geno)
  net = network.create_network(geno, 10, 4, auxiliary=False, train=False)
  x = jnp.ones((2, 8, 8, 3))
  variables = net.init(jax.random.key(0), x)
  assert net.apply(variables, x).shape == (2, 10)


# ---------------------------------------------------------------------------------
# Config checks and experiments.derive's flags.


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("model.skip_dropout_schedule", "linear", "config.model.skip_dropout_schedule="),
    ("optim.zero_one_target", "alpha", "config.optim.zero_one_target="),
    ("data.arch_sampling", "random", "config.data.arch_sampling="),
    ("derive.rule", "greedy", "config.derive.rule='greedy' is not valid"),
    ("derive.op_threshold", 1.5, r"config.derive.op_threshold=1.5 must be in \(0, 1\]"),
    ("derive.op_threshold", float("nan"), "config.derive.op_threshold=nan"),
    ("derive.max_skip_connects", -2, "config.derive.max_skip_connects=-2 must be"),
    ("derive.edges_per_node", 0, "config.derive.edges_per_node=0 must be at least 1"),
  ],
)
def test_bad_option_values_are_one_line(field, value, message):
  config = test_config.get_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(validation.ConfigError, match=message) as e:
    validation.validate_search_config(config)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize(
  "section,name",
  [
    ("model", "skip_dropout_schedule"),
    ("optim", "zero_one_target"),
    ("data", "arch_sampling"),
    ("derive", "max_skip_connects"),
  ],
)
def test_a_config_without_an_option_names_it(section, name):
  config = test_config.get_config()
  del config[section][name]
  with pytest.raises(validation.ConfigError, match=f"config.{section}.{name} is missing"):
    validation.validate_search_config(config)


def _fake_search(path, derive=None, with_edges=True):
  """A search workdir as the search leaves it between epochs, without checkpoints."""
  path.mkdir()
  rng = np.random.default_rng(3)
  edge = rng.uniform(0.05, 0.2, (L, 14)).astype(np.float32)
  psi = (rng.uniform(0.3, 1.0, (L, 14, 7)) * edge[:, :, None]).astype(np.float32)
  np.save(path / "psi.npy", psi)
  if with_edges:
    np.save(path / "edge_weights.npy", edge)
  meta = {"step": 30, "epoch": 3, "num_epochs": 10, "derive": derive or {}}
  genotype_lib.derive_genotype(psi, search_space.PRIMITIVES).save(
    str(path / "genotype.json"), primitives=search_space.PRIMITIVES, meta=meta
  )
  return psi, edge


def _derive(search, out, **options):
  psi, primitives, info = api.search_psi(str(search))
  return derivation_lib.write_derivation(str(out), psi, primitives, info, **options)


def test_derive_takes_the_searchs_options_and_the_flags_replace_them(tmp_path):
  recorded = {"rule": "threshold", "edges_per_node": 2, "op_threshold": 0.6, "max_skip_connects": 1}
  psi, edge = _fake_search(tmp_path / "search", recorded)
  result = _derive(tmp_path / "search", tmp_path / "a")
  expected = genotype_lib.Derivation(**recorded)
  assert result["genotype"] == genotype_lib.derive_genotype(
    psi, search_space.PRIMITIVES, derivation=expected, edge_weights=edge
  )
  meta = json.loads((tmp_path / "a" / "genotype.json").read_text())["meta"]
  assert meta["derive"] == recorded and (meta["epoch"], meta["num_epochs"]) == (3, 10)
  result = _derive(tmp_path / "search", tmp_path / "b", rule="top_k", max_skip_connects=-1)
  assert result["genotype"] == genotype_lib.derive_genotype(psi, search_space.PRIMITIVES)
  with pytest.raises(ValueError, match="--op_threshold=2.0 must be in"):
    _derive(tmp_path / "search", tmp_path / "c", op_threshold=2.0)
  assert not (tmp_path / "c").exists()


def test_threshold_without_edge_weights_says_so(tmp_path):
  _fake_search(tmp_path / "search", with_edges=False)
  with pytest.raises(api.WorkdirError, match="no edge_weights.npy"):
    _derive(tmp_path / "search", tmp_path / "out", rule="threshold")


def test_derive_command_line_flags(tmp_path):
  psi, edge = _fake_search(tmp_path / "search")
  out = tmp_path / "out"
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.derive",
      f"--workdir={tmp_path / 'search'}",
      "--rule=threshold",
      "--op_threshold=0.7",
      "--max_skip_connects=0",
      f"--out={out}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  expected = genotype_lib.derive_genotype(
    psi,
    search_space.PRIMITIVES,
    edge_weights=edge,
    derivation=genotype_lib.Derivation("threshold", 2, 0.7, 0),
  )
  assert expected.describe() in proc.stdout
  assert genotype_lib.GlobalGenotype.load(str(out / "genotype.json")) == expected


def test_each_row_draws_architecture_batches_as_its_authors_code_does():
  """DARTS's and PC-DARTS's train_search.py take next(iter(valid_queue)) from a shuffling
  loader each step (independent draws); DNAS keeps the project's per-epoch permutation."""
  from dnas_jax.configs import darts_cifar10, global_cifar10, pc_darts_cifar10  # pylint: disable=g-import-not-at-top

  for module in (darts_cifar10, pc_darts_cifar10, global_cifar10):
    assert module.get_config().data.arch_sampling == "independent"
  assert cifar10.get_config().data.arch_sampling == "permutation"
