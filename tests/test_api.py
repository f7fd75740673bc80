"""The public restore API (dnas_jax/api.py), and the README's example run verbatim.

The workdirs read are the ones the README's own search → derive → train → evaluate
commands wrote (conftest.py's `readme_pipeline`: digits, a 3-layer search over three
operations, its genotype retrained for one epoch), at the paths the example names.
"""

import json
import os
import re
import shutil

import numpy as np
import pytest

from dnas_jax import api
from dnas_jax.training import workdir as workdir_lib

# The README's "Restore in your own code" example, executed exactly as printed there.
README_EXAMPLE = next(
  block
  for block in re.findall(
    r"```python\n(.*?)```",
    open(
      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
      encoding="utf-8",
    ).read(),
    flags=re.S,
  )
  if "api.load_search" in block
)


@pytest.fixture(scope="module")
def runs(readme_pipeline):
  root = readme_pipeline[0]
  search_dir = os.path.join(root, "workdirs", "digits")
  retrain_dir = os.path.join(root, "workdirs", "digits_retrain")
  with open(os.path.join(retrain_dir, "final_metrics.json")) as f:
    final = json.load(f)
  return root, search_dir, retrain_dir, final


def test_readme_example_runs(runs, monkeypatch, capsys):
  root, _, _, final = runs
  monkeypatch.chdir(root)
  namespace = {}
  exec(compile(README_EXAMPLE, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  out = capsys.readouterr().out
  assert "(3, 14, 3)" in out
  assert "['alpha', 'beta', 'gamma']" in out
  assert "layer  0" in out
  # The classifier reproduces the loop's own evaluation of the checkpoint.
  accuracy = float((namespace["pred"] == namespace["ds"].test_labels).mean())
  # (at most one image of the test split classified otherwise, by float rounding)
  assert accuracy == pytest.approx(final["test_accuracy"], abs=1.5 / len(namespace["pred"]))


def test_load_search_matches_artifacts(runs):
  _, search_dir, _, _ = runs
  result = api.load_search(search_dir)
  np.testing.assert_allclose(
    result.psi, np.load(os.path.join(search_dir, "psi.npy")), rtol=1e-6, atol=1e-7
  )
  with open(os.path.join(search_dir, "genotype.json")) as f:
    cells = json.load(f)["cells"]
  assert [c.to_dict() for c in result.genotype.cells] == cells
  assert result.primitives == ("max_pool_3x3", "skip_connect", "sep_conv_3x3")
  assert result.config.arch.kind == "decoupled"
  assert result.step == 750 // 64 and result.epoch == 1  # 1 epoch: the weights' half of 1,500


def test_classifier_inputs(runs):
  _, _, retrain_dir, _ = runs
  clf = api.load_classifier(retrain_dir)
  assert clf.image_shape == (8, 8, 1) and clf.num_classes == 10
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
  logits = clf.logits(images)
  assert logits.shape == (5, 10) and np.isfinite(logits).all()
  np.testing.assert_array_equal(clf.predict(images), logits.argmax(-1))
  np.testing.assert_allclose(clf.logits(images / 255.0), logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(clf.logits(images[0])[0], logits[0], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="this network takes"):
    clf.predict(np.zeros((2, 16, 16, 3), np.uint8))


def test_classifier_normalisation_comes_from_the_meta_only(runs, tmp_path, monkeypatch):
  """The input normalisation is read from the checkpoint's meta, never from the
  dataset; a meta without it is refused in one line."""
  from dnas_jax.retrain import setup as retrain_setup  # pylint: disable=g-import-not-at-top

  _, _, retrain_dir, _ = runs

  def no_data(config):
    raise AssertionError("the dataset was loaded")

  monkeypatch.setattr(retrain_setup, "load_data", no_data)
  clf = api.load_classifier(retrain_dir)
  assert len(clf.mean) == len(clf.std) == clf.image_shape[-1] == 1  # digits: grey
  copy = str(tmp_path / "retrain")
  shutil.copytree(retrain_dir, copy)
  ckpt = os.path.join(copy, workdir_lib.CHECKPOINT_DIR)
  for step in os.listdir(ckpt):
    path = os.path.join(ckpt, step, "meta", "metadata")
    with open(path) as f:
      meta = json.load(f)
    del meta["mean"]
    with open(path, "w") as f:
      json.dump(meta, f)
  with pytest.raises(api.WorkdirError, match=r"no input normalisation \(mean\)"):
    api.load_classifier(copy)


def test_wrong_workdir_kind(runs, tmp_path):
  _, search_dir, retrain_dir, _ = runs
  with pytest.raises(api.WorkdirError, match="not a search workdir"):
    api.load_search(retrain_dir)
  with pytest.raises(api.WorkdirError, match="not a retraining workdir"):
    api.load_classifier(search_dir)
  with pytest.raises(api.WorkdirError, match="no checkpoint folder"):
    api.load_search(str(tmp_path))


def test_one_workdir_error_and_one_checkpoint_folder(tmp_path, monkeypatch):
  """The readers raise the runs' own WorkdirError (what the entry points report in one
  line), and look for checkpoints in the folder the runs write them to."""
  assert api.WorkdirError is workdir_lib.WorkdirError
  monkeypatch.setattr(workdir_lib, "CHECKPOINT_DIR", "elsewhere")
  with pytest.raises(
    workdir_lib.WorkdirError, match=f"no checkpoint folder {tmp_path / 'elsewhere'}:"
  ):
    api.checkpoint_manager(str(tmp_path))
  with pytest.raises(workdir_lib.WorkdirError, match="cannot tell the candidate operations"):
    api.search_psi(str(tmp_path))
