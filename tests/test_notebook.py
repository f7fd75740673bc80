"""experiments/colab_tpu.ipynb runs top to bottom on a CPU with its tiny parameters.

The parameters cell (tagged `parameters`, the first code cell) is replaced by tiny
values (configs/test.py and configs/test_retrain.py on synthetic data), and the kernel
gets the test session's cheap XLA settings and compilation cache (tests/conftest.py).
"""

import ast
import importlib.util
import os
import re
import subprocess
import sys
import types

import jax
import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "experiments", "colab_tpu.ipynb")


def _tiny_parameters(workdir: str) -> str:
  return "\n".join(
    [
      "TINY = True",
      "SEARCH_EPOCHS = None",
      "RETRAIN_EPOCHS = 1",
      "BATCH_SIZE = None",
      f"WORKDIR = {workdir!r}",
      'DATA_DIR = ""',
      "USE_DRIVE = False",
      'DRIVE_DIR = ""',
      f"PACKAGE = {REPO!r}",
    ]
  )


def _assigned(source: str) -> set[str]:
  return {
    t.id
    for node in ast.parse(source).body
    if isinstance(node, ast.Assign)
    for t in node.targets
    if isinstance(t, ast.Name)
  }


def _code_cell(needle: str) -> str:
  """The source of the one code cell that contains `needle`."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  (source,) = [c.source for c in nb.cells if c.cell_type == "code" and needle in c.source]
  return source


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_notebook_is_valid_with_a_parameters_cell():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  first_code = next(c for c in nb.cells if c.cell_type == "code")
  assert "parameters" in first_code.metadata.get("tags", [])
  assert "TINY = False" in first_code.source
  assert 'PACKAGE = ""' in first_code.source and "USE_DRIVE = False" in first_code.source
  # CI's replacement sets every parameter the notebook has.
  assert _assigned(first_code.source) <= _assigned(_tiny_parameters("/tmp/run"))


def test_notebook_has_no_placeholder_owner_url():
  with open(NOTEBOOK, encoding="utf-8") as f:
    text = f.read()
  assert "OWNER" not in text
  # Any GitHub address is a marked placeholder (<user>/<repo>), not a made-up link.
  for rest in re.findall(r"github(?:\.com)?/([^\s\"'`)]*)", text):
    assert rest.startswith("<"), rest


def _no_pip(*args, **kwargs):
  raise AssertionError(f"a subprocess was started: {args} {kwargs}")


def _without_dnas_jax(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    "find_spec",
    lambda name, *a, **k: None if name == "dnas_jax" else real(name, *a, **k),
  )


def test_install_cell_without_package_says_what_to_set(monkeypatch):
  _without_dnas_jax(monkeypatch)
  monkeypatch.setattr(subprocess, "check_call", _no_pip)
  monkeypatch.setattr(subprocess, "run", _no_pip)
  with pytest.raises(ValueError, match="PACKAGE is empty") as e:
    exec(_code_cell("check_call"), {"PACKAGE": ""})  # pylint: disable=exec-used
  message = str(e.value)
  assert "parameters cell" in message
  for example in ("git+https://", "/content/drive/", ".whl"):
    assert example in message


def test_install_cell_installs_package_or_nothing(monkeypatch):
  calls = []
  monkeypatch.setattr(subprocess, "check_call", lambda args, **k: calls.append(args))
  # dnas_jax importable (this checkout): nothing to install, PACKAGE unset or not.
  exec(_code_cell("check_call"), {"PACKAGE": ""})  # pylint: disable=exec-used
  assert not calls
  _without_dnas_jax(monkeypatch)
  package = "/content/drive/MyDrive/dnas-jax"
  exec(_code_cell("check_call"), {"PACKAGE": package})  # pylint: disable=exec-used
  assert calls == [[sys.executable, "-m", "pip", "install", "-q", package]]


def test_drive_cell_puts_workdir_and_cache_on_drive(monkeypatch):
  mounted = []
  colab = types.ModuleType("google.colab")
  colab.drive = types.SimpleNamespace(mount=mounted.append)
  try:
    import google  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
  monkeypatch.setitem(sys.modules, "google.colab", colab)
  source = _code_cell("drive.mount")
  scope = {"USE_DRIVE": True, "DRIVE_DIR": "/d/dnas", "WORKDIR": "/content/dnas", "PACKAGE": ""}
  exec(source, scope)  # pylint: disable=exec-used
  assert mounted == ["/content/drive"]
  assert scope["WORKDIR"] == "/d/dnas/workdir"
  assert scope["CACHE_DIR"] == "/d/dnas/compile_cache"
  scope = {
    "USE_DRIVE": False,
    "DRIVE_DIR": "/d/dnas",
    "WORKDIR": "/content/dnas",
    "PACKAGE": "git+https://example.invalid/x.git",
  }
  exec(source, scope)  # pylint: disable=exec-used
  assert mounted == ["/content/drive"] and scope["WORKDIR"] == "/content/dnas"
  assert scope["CACHE_DIR"] == ""


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
  client = nbclient.NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": REPO}}
  )
  client.execute()  # raises CellExecutionError on the first failing cell

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(o.output_type != "error" for c in code for o in c.outputs)
  text = "\n".join(_text(c) for c in code)
  assert "devices: [CpuDevice(id=0)]" in text
  assert "compilation cache: " in text  # the library's cache, turned on by the notebook
  assert "synthetic (synthetic): 256 training, 64 test images" in text
  assert "search done: val_accuracy=" in text
  assert "psi: (3, 14, 3)" in text and "layer  2" in text
  assert "retrained: test error" in text
  assert "restored classifier: test accuracy" in text
  pngs = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
  assert len(pngs) == 2  # Fig. 5 and the ψ heatmaps, inline
  for name in ("genotype.json", "psi.npy", "global_architecture.png"):
    assert (tmp_path / "run" / "search" / name).exists()
  assert (tmp_path / "run" / "retrain" / "final_metrics.json").exists()
