"""dnas_jax/files.py: atomic writes leave the old file or the new one, never a part."""

import os

import ml_collections
import numpy as np
import pytest

from dnas_jax import files
from dnas_jax.space import genotype as genotype_lib
from dnas_jax.space import known_genotypes


def test_atomic_write_text_bytes_and_callable(tmp_path):
  files.atomic_write(str(tmp_path / "a.txt"), "text")
  files.atomic_write(str(tmp_path / "b.bin"), b"\x00\x01")
  files.atomic_write(str(tmp_path / "sub" / "c.npy"), lambda f: np.save(f, np.arange(4)))
  assert (tmp_path / "a.txt").read_text() == "text"
  assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
  np.testing.assert_array_equal(np.load(tmp_path / "sub" / "c.npy"), np.arange(4))


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "m.json")
  files.atomic_write(path, "old")
  with pytest.raises(OSError):
    with files.atomic_open(path) as f:
      f.write("half of the new")
      raise OSError(28, "No space left on device")
  assert open(path).read() == "old"
  assert os.listdir(tmp_path) == ["m.json"]


def test_genotype_save_is_atomic(tmp_path, monkeypatch):
  """GlobalGenotype.save, a writer users call, goes through the atomic write: a save that
  fails before its rename leaves the old file whole and no temporary beside it."""
  geno = known_genotypes.get_genotype("DARTS_V2", 3)
  path = str(tmp_path / "g.json")
  geno.save(path)
  before = open(path).read()
  assert genotype_lib.GlobalGenotype.load(path) == geno

  def failing_replace(src, dst):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "replace", failing_replace)
  with pytest.raises(OSError):
    known_genotypes.get_genotype("PC_DARTS", 3).save(path)
  assert open(path).read() == before
  assert os.listdir(tmp_path) == ["g.json"]


def test_flatten_walks_nested_dicts():
  assert files.flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": None}) == {
    "a.b": 1,
    "a.c.d": [2],
    "e": None,
  }


def test_flatten_walks_config_dicts_and_drops_empty_sections():
  config = ml_collections.ConfigDict(
    {"optim": {"lr": 0.1, "adam": {"b1": 0.5}}, "empty": {}, "seed": 0}
  )
  assert files.flatten(config) == {"optim.lr": 0.1, "optim.adam.b1": 0.5, "seed": 0}
  assert files.flatten({"a": ml_collections.ConfigDict({"b": 1})}) == {"a.b": 1}


def test_every_writer_of_results_writes_atomically(tmp_path, monkeypatch):
  """What the library writes for people and for later runs (artifacts, figures,
  final metrics, the comparison's files, kept executables) goes through
  `files.atomic_open`, and no temporary file is left beside it."""
  import jax  # pylint: disable=g-import-not-at-top
  from dnas_jax.search import artifacts  # pylint: disable=g-import-not-at-top
  from dnas_jax.search import figures  # pylint: disable=g-import-not-at-top
  from dnas_jax.tools import compare  # pylint: disable=g-import-not-at-top
  from dnas_jax.training import executable_cache  # pylint: disable=g-import-not-at-top
  from dnas_jax.training import loop  # pylint: disable=g-import-not-at-top

  opened = []
  real = files.atomic_open

  def spy(path, mode="w"):
    opened.append(os.path.relpath(path, tmp_path))
    return real(path, mode)

  monkeypatch.setattr(files, "atomic_open", spy)
  psi = np.random.default_rng(0).dirichlet(np.ones(3), size=(5, 14)).astype(np.float32)
  prims = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  geno = artifacts.write_artifacts(str(tmp_path), psi, prims, {"step": 1})
  figures.save_figure(figures.plot_global_architecture(geno), str(tmp_path / "a.png"))
  loop.write_final_metrics(str(tmp_path), {"test_error": 0.5})
  compare.write_report([], str(tmp_path / "comparison"))
  compare._write_json(str(tmp_path / "result.json"), {"row": "dnas"})  # pylint: disable=protected-access
  compiled = jax.jit(lambda x: x + 1).lower(np.float32(1)).compile()
  assert executable_cache.save(str(tmp_path / "exe" / "f.jaxexe"), compiled)
  assert sorted(opened) == sorted(
    [
      "psi.npy",
      "genotype.json",
      "genotype.txt",
      "a.png",
      "final_metrics.json",
      os.path.join("comparison", "results.json"),
      os.path.join("comparison", "comparison.md"),
      os.path.join("comparison", "comparison.png"),
      "result.json",
      os.path.join("exe", "f.jaxexe"),
    ]
  )
  leftovers = [
    os.path.join(r, n) for r, _, names in os.walk(tmp_path) for n in names if n.endswith(".tmp")
  ]
  assert leftovers == []
