"""Tests of derivation from a search workdir (experiments/derive.py, api.search_psi and
dnas_jax.search.derivation)."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from dnas_jax import api
from dnas_jax.models import arch as arch_lib
from dnas_jax.models import network
from dnas_jax.search import derivation
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import search_space

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIMS = search_space.PRIMITIVES
L_SEARCH = 8  # reductions at layers 2 and 5


def _intended_cells(num_layers):
  """A different cell per layer: node n reads inputs k mod (n+2) (0 if that is n+1)
  and n+1, with
  operations chosen by k; the result must be what derivation recovers."""
  red = search_space.is_reduction(num_layers)
  cells = []
  for k in range(num_layers):
    nodes = []
    for n in range(search_space.NUM_NODES):
      a, b = k % (n + 2), n + 1
      if a == b:
        a = 0
      nodes.append(((PRIMS[(k + n) % len(PRIMS)], a), (PRIMS[(k + 2 * n + 1) % len(PRIMS)], b)))
    cells.append(genotype_lib.CellGenotype(tuple(nodes), red[k]))
  return genotype_lib.GlobalGenotype(tuple(cells))


def _psi_for(geno, seed=0):
  """Hand-written ψ whose derivation is `geno`: small noise, and on each kept edge a
  weight of 0.9 (first kept edge of a node) or 0.8 (second) on its operation."""
  psi = np.random.default_rng(seed).uniform(0.0, 0.1, (geno.num_layers, 14, len(PRIMS)))
  for k, cell in enumerate(geno.cells):
    for n, edges in enumerate(cell.nodes):
      start = search_space.node_edges(n).start
      for rank, (op, inp) in enumerate(edges):
        psi[k, start + inp, PRIMS.index(op)] = 0.9 - 0.1 * rank
  return psi


def test_hand_written_psi_derives_the_intended_global_genotype():
  intended = _intended_cells(L_SEARCH)
  assert len(set(intended.cells)) == L_SEARCH  # every layer distinguishable
  derived = genotype_lib.derive_genotype(_psi_for(intended), PRIMS)
  assert derived == intended
  network.check_genotype(derived)


@pytest.mark.parametrize(
  "target,source_layers",
  [
    # L=5: reductions at 1, 3; one normal cell per stage.
    (5, [0, 2, 3, 5, 6]),
    # L=14: reductions at 4, 9; four normal cells per stage take the source's two
    # normals of the same stage (0, 1 | 3, 4 | 6, 7) proportionally.
    (14, [0, 0, 1, 1, 2, 3, 3, 4, 4, 5, 6, 6, 7, 7]),
  ],
)
def test_target_depth_maps_reductions_to_reductions(target, source_layers):
  source = genotype_lib.derive_genotype(_psi_for(_intended_cells(L_SEARCH)), PRIMS)
  mapped = genotype_lib.map_to_depth(source, target)
  assert mapped.cells == tuple(source.cells[k] for k in source_layers)
  assert [c.reduction for c in mapped.cells] == list(search_space.is_reduction(target))
  network.check_genotype(mapped)  # every cell valid for a target-depth network


def test_more_edges_per_node_keeps_cells_valid():
  psi = np.random.default_rng(3).dirichlet(np.ones(len(PRIMS)), size=(L_SEARCH, 14))
  geno = genotype_lib.derive_genotype(psi, PRIMS, edges_per_node=3)
  assert [len(e) for e in geno.cells[0].nodes] == [2, 3, 3, 3]
  network.check_genotype(genotype_lib.map_to_depth(geno, 20))


def _fake_search_workdir(path, with_psi=True):
  """psi.npy and a genotype.json, as a search writes them (no checkpoint)."""
  os.makedirs(path, exist_ok=True)
  psi = _psi_for(_intended_cells(L_SEARCH))
  if with_psi:
    np.save(os.path.join(path, "psi.npy"), psi)
  genotype_lib.derive_genotype(psi, PRIMS).save(
    os.path.join(path, "genotype.json"), primitives=PRIMS
  )
  return psi


def test_derive_command_writes_genotypes_and_pngs(tmp_path):
  search_dir, out = str(tmp_path / "search"), str(tmp_path / "out")
  psi = _fake_search_workdir(search_dir)
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.derive",
      f"--workdir={search_dir}",
      "--num_layers=5",
      f"--out={out}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  mapped = genotype_lib.map_to_depth(genotype_lib.derive_genotype(psi, PRIMS), 5)
  assert mapped.describe() in proc.stdout
  assert genotype_lib.GlobalGenotype.load(os.path.join(out, "genotype_L5.json")) == mapped
  with open(os.path.join(out, "genotype.json")) as f:
    saved = json.load(f)
  assert saved["primitives"] == list(PRIMS)
  assert saved["meta"]["edges_per_node"] == 2 and saved["meta"]["search_layers"] == 8
  for name in ("global_architecture.png", "global_architecture_L5.png", "psi_heatmaps.png"):
    with open(os.path.join(out, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
  assert any(n.startswith("events.out.tfevents") for n in os.listdir(out))


def test_psi_from_the_checkpoint_when_psi_npy_is_absent(tmp_path, tiny_search):
  """Without psi.npy, ψ comes from the newest intact checkpoint's architecture
  parameters (the search state restored and verified): the ψ the search wrote."""
  src, _ = tiny_search
  search_dir = str(tmp_path / "search")
  shutil.copytree(src, search_dir)
  written = np.load(os.path.join(search_dir, "psi.npy"))
  os.remove(os.path.join(search_dir, "psi.npy"))
  psi, primitives, info = api.search_psi(search_dir)
  assert primitives == ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  assert (info["step"], info["epoch"]) == (16, 2)
  np.testing.assert_allclose(psi, written, rtol=1e-6, atol=1e-7)
  result = derivation.write_derivation(search_dir, psi, primitives, info, edges_per_node=2)
  assert result["genotype"] == genotype_lib.derive_genotype(psi, primitives)
  assert result["mapped"] is None
  assert os.path.isfile(os.path.join(search_dir, "psi_heatmaps.png"))


def test_derivation_replaces_every_file_atomically(tmp_path, monkeypatch):
  """Every file a derivation writes goes to a temporary file first, which then
  replaces it (a reader never sees half of one), and no temporary file is left."""
  search_dir, out = str(tmp_path / "search"), str(tmp_path / "out")
  _fake_search_workdir(search_dir)
  replaced = []
  real_replace = os.replace

  def replace(src, dst):
    replaced.append(os.path.abspath(dst))
    real_replace(src, dst)

  monkeypatch.setattr(os, "replace", replace)
  result = derivation.write_derivation(out, *api.search_psi(search_dir), num_layers=5)
  written = sorted(n for n in os.listdir(out) if not n.startswith("events.out"))
  assert written == [
    "genotype.json",
    "genotype.txt",
    "genotype_L5.json",
    "genotype_L5.txt",
    "global_architecture.png",
    "global_architecture_L5.png",
    "psi_heatmaps.png",
  ]
  for name in written:
    assert os.path.join(out, name) in replaced, name
  assert sorted(result["files"]) == sorted(
    os.path.join(out, n) for n in written if not n.endswith(".txt")
  )


def test_non_finite_psi_is_refused_by_the_library():
  psi = _psi_for(_intended_cells(L_SEARCH))
  psi[0, 0, 0], psi[3, 5, 1], psi[7, 13, 2] = np.nan, np.inf, -np.inf
  with pytest.raises(
    genotype_lib.NonFinitePsiError, match=f"ψ holds 3 of {psi.size} values that are not finite"
  ):
    genotype_lib.derive_genotype(psi, PRIMS)


def test_derive_command_refuses_a_non_finite_psi_in_one_line(tmp_path):
  search_dir, out = str(tmp_path / "search"), str(tmp_path / "out")
  psi = _fake_search_workdir(search_dir)
  psi[2, :2, 0] = np.nan
  np.save(os.path.join(search_dir, "psi.npy"), psi)
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.derive", f"--workdir={search_dir}", f"--out={out}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
    f"error: {os.path.join(search_dir, 'psi.npy')} holds 2 of {psi.size} values that "
    "are not finite (NaN or inf): no genotype can be derived from it"
  )
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(out)  # nothing written


def _pc_darts_parse(weights, weights2, primitives):
  """PC-DARTS's `Network.genotype()._parse` (yuhuixu1993/PC-DARTS model_search.py),
  written out: W = softmax(α) rows times the edge weights; per node, the two edges with
  the largest non-`none` weight, each with its arg-max non-`none` operation."""
  gene, start, n = [], 0, 2
  none = primitives.index("none") if "none" in primitives else -1
  for i in range(4):
    end = start + n
    W = weights[start:end].copy()
    for j in range(n):
      W[j, :] = W[j, :] * weights2[start + j]
    edges = sorted(
      range(i + 2), key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none)
    )[:2]
    for j in edges:
      k_best = None
      for k in range(len(W[j])):
        if k != none and (k_best is None or W[j][k] > W[j][k_best]):
          k_best = k
      gene.append((primitives[k_best], j))
    start, n = end, n + 1
  return gene


def test_pc_darts_derivation_uses_the_edge_weights():
  """Deriving from ψ of the block search with edge normalisation is PC-DARTS's parse of
  (softmax(α), node-softmax(β)); without the edge weights it can differ."""
  dprims = search_space.DARTS_PRIMITIVES
  spec = arch_lib.ArchSpec("iam", 8, len(dprims), edge_normalization=True)
  rng = np.random.default_rng(0)
  differs = 0
  for trial in range(5):
    params = {k: rng.normal(size=v.shape) for k, v in spec.init(jax.random.key(trial)).items()}
    psi = np.asarray(spec.psi(params))
    geno = genotype_lib.derive_genotype(psi, dprims)
    for k, cell in enumerate(geno.cells):
      kind = "reduce" if cell.reduction else "normal"
      soft = np.exp(params[f"alpha_{kind}"])
      soft /= soft.sum(-1, keepdims=True)
      edge = np.concatenate(
        [
          np.exp(params[f"beta_{kind}"][r.start : r.stop])
          / np.exp(params[f"beta_{kind}"][r.start : r.stop]).sum()
          for r in map(search_space.node_edges, range(4))
        ]
      )
      want = _pc_darts_parse(soft, edge, list(dprims))
      assert [sorted(node) for node in cell.nodes] == [
        sorted(want[2 * n : 2 * n + 2]) for n in range(4)
      ], (trial, k)
      without = _pc_darts_parse(soft, np.ones(14), list(dprims))
      differs += sorted(without) != sorted(want)
  assert differs > 0  # the edge weights change the choice somewhere


def test_derivation_on_hand_written_psi():
  prims = search_space.PRIMITIVES
  op = {p: j for j, p in enumerate(prims)}
  psi = np.full((3, 14, len(prims)), 0.01)
  # Layer 0, node 0 (edges 0, 1): sep_conv_3x3 on s0 and skip on s1.
  psi[0, 0, op["sep_conv_3x3"]] = 0.9
  psi[0, 1, op["skip_connect"]] = 0.5
  # Node 1 (edges 2, 3, 4 from s0, s1, n0): strongest on edges 4 and 2.
  psi[0, 2, op["dil_conv_5x5"]] = 0.6
  psi[0, 3, op["max_pool_3x3"]] = 0.2
  psi[0, 3, op["avg_pool_3x3"]] = 0.3
  psi[0, 4, op["sep_conv_5x5"]] = 0.8
  # Node 3 (edges 9..13: s0, s1, n0, n1, n2): edges 12 and 13.
  psi[0, 12, op["avg_pool_3x3"]] = 0.7
  psi[0, 13, op["dil_conv_3x3"]] = 0.75
  geno = genotype_lib.derive_genotype(psi, prims)
  cell = geno.cells[0]
  assert cell.nodes[0] == (("sep_conv_3x3", 0), ("skip_connect", 1))
  assert cell.nodes[1] == (("dil_conv_5x5", 0), ("sep_conv_5x5", 2))
  assert cell.nodes[3] == (("avg_pool_3x3", 3), ("dil_conv_3x3", 4))
  assert [c.reduction for c in geno.cells] == [False, True, True]
  # `none` is never chosen, even with the largest weight.
  dprims = search_space.DARTS_PRIMITIVES
  psi_d = np.full((3, 14, len(dprims)), 0.01)
  psi_d[:, :, 0] = 0.99
  psi_d[1, 5, dprims.index("sep_conv_3x3")] = 0.5
  g = genotype_lib.derive_genotype(psi_d, dprims)
  assert all(o != "none" for c in g.cells for edges in c.nodes for o, _ in edges)
  assert ("sep_conv_3x3", 0) in g.cells[1].nodes[2]
  # JSON round trip.
  assert genotype_lib.GlobalGenotype.from_json(geno.to_json()) == geno
