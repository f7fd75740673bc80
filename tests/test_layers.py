"""The layers of docs/design.md §2, enforced: a dnas_jax module imports only from its own
layer or the layers above it (lower numbers), and the library never imports the entry
points. And no file refers to a document the repository does not hold."""

import ast
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {
    1: "search_space ops known_genotypes genotype",
    2: "arch supernet network init flops",
    3: "datasets input_pipeline sharding",
    4: "search program config_validation",
    5: "checkpoints workdir loop_monitor metric_writers compilation plots search_loop "
       "train",
    6: "restore api compare benchmarking data_benchmark aot compile_study",
}
LAYER = {m: n for n, names in LAYERS.items() for m in names.split()}


def _imports(path):
  """dnas_jax modules and top-level packages a file imports (at any depth)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "dnas_jax":
        yield from (a.name for a in node.names)
      elif node.module.startswith("dnas_jax."):
        yield node.module.split(".")[1]
      else:
        yield node.module.split(".")[0]
    elif isinstance(node, ast.Import):
      yield from (a.name.split(".")[0] for a in node.names)


def test_every_library_module_has_a_layer_and_imports_only_upwards():
  modules = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "dnas_jax"))
                   if f.endswith(".py") and f != "__init__.py")
  assert [m for m in modules if m not in LAYER] == []
  violations = []
  for m in modules:
    for name in _imports(os.path.join(ROOT, "dnas_jax", f"{m}.py")):
      if name == "experiments":
        violations.append(f"{m} imports the entry points")
      elif name in LAYER and LAYER[name] > LAYER[m]:
        violations.append(f"{m} (layer {LAYER[m]}) imports {name} (layer {LAYER[name]})")
  assert violations == []


def test_the_layer_check_sees_a_violation(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from dnas_jax import search_loop\nimport experiments.cli\n")
  assert set(_imports(str(bad))) == {"search_loop", "experiments"}


def test_no_file_refers_to_a_document_the_repository_does_not_hold():
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
  docs = {os.path.basename(f) for f in files if f.endswith(".md")}
  docs.add("comparison.md")  # not a document: the table experiments.compare writes
  missing = []
  for f in files:
    if not f.endswith((".py", ".md", ".cfg", ".txt", ".sh", ".ipynb")):
      continue
    with open(os.path.join(ROOT, f), errors="replace") as fh:
      for name in set(re.findall(r"\b([A-Za-z_][\w-]*\.md)\b", fh.read())):
        if name not in docs:
          missing.append(f"{f}: {name}")
  assert missing == []
