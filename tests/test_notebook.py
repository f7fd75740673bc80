"""experiments/colab_tpu.ipynb runs top to bottom on a CPU with its tiny parameters.

The parameters cell (tagged `parameters`, the first code cell) is replaced by tiny
values (configs/test.py and configs/test_retrain.py on synthetic data), and the kernel
gets the test session's cheap XLA settings and compilation cache (tests/conftest.py).
"""

import os
import sys

import jax
import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "colab_tpu.ipynb")


def _tiny_parameters(workdir: str) -> str:
  return "\n".join([
      "TINY = True", "SEARCH_EPOCHS = None", "RETRAIN_EPOCHS = 1", "BATCH_SIZE = None",
      f"WORKDIR = {workdir!r}", 'DATA_DIR = ""', f"PACKAGE = {REPO!r}"])


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_notebook_is_valid_with_a_parameters_cell():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  first_code = next(c for c in nb.cells if c.cell_type == "code")
  assert "parameters" in first_code.metadata.get("tags", [])
  assert "TINY = False" in first_code.source


def test_notebook_runs_tiny(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = next(c for c in nb.cells if c.cell_type == "code")
  params.source = _tiny_parameters(str(tmp_path / "run"))
  # The kernel inherits this environment: CPU, cheap compiles, the shared cache.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
  cache = jax.config.jax_compilation_cache_dir
  if cache:
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", cache)
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([REPO, *sys.path]))
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": REPO}})
  client.execute()  # raises CellExecutionError on the first failing cell

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(o.output_type != "error" for c in code for o in c.outputs)
  text = "\n".join(_text(c) for c in code)
  assert "devices: [CpuDevice(id=0)]" in text
  assert "synthetic (synthetic): 256 training, 64 test images" in text
  assert "search done: val_accuracy=" in text
  assert "psi: (5, 14, 3)" in text and "layer  4" in text
  assert "retrained: test error" in text
  assert "restored classifier: test accuracy" in text
  pngs = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
  assert len(pngs) == 2  # Fig. 5 and the ψ heatmaps, inline
  for name in ("genotype.json", "psi.npy", "global_architecture.png"):
    assert (tmp_path / "run" / "search" / name).exists()
  assert (tmp_path / "run" / "retrain" / "final_metrics.json").exists()
