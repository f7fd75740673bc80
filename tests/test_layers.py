"""The layers of docs/design.md §2, enforced on the import graph: a module of dnas_jax
imports only from its own package or from the packages of lower layers, the library
never imports the entry points, and no file refers to a document the repository does
not hold."""

import ast
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Package (or top-level module) of dnas_jax → layer. Two packages of one layer
# (search, retrain) do not import each other.
LAYERS = {
  "kernels": 0,
  "files": 0,
  "space": 1,
  "models": 2,
  "data": 3,
  "training": 4,
  "search": 5,
  "retrain": 5,
  "api": 6,
  "tools": 7,
  "configs": 8,
}


def _unit(module: str) -> str:
  """The layer unit of a dotted dnas_jax module name ('dnas_jax.search.loop' →
  'search')."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _imports(path, package):
  """Dotted names of the modules a file imports (at any depth; relative imports
  resolved against `package`)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(
          package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
        )
      for a in node.names:
        yield f"{base}.{a.name}" if base in ("dnas_jax",) else base
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names)


def _library_modules():
  for folder, _, files in os.walk(os.path.join(ROOT, "dnas_jax")):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), os.path.join(folder, f)


def _violations(modules):
  out = []
  for name, path in modules:
    unit = _unit(name)
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    for imported in _imports(path, package):
      if imported.split(".")[0] == "experiments":
        out.append(f"{name} imports the entry points ({imported})")
        continue
      if not imported.startswith("dnas_jax."):
        continue
      other = _unit(imported)
      if unit == "" or other == unit:
        continue  # dnas_jax/__init__.py names the layers; a unit imports itself
      if other not in LAYERS:
        out.append(f"{name} imports {imported}, which has no layer")
      elif LAYERS[other] >= LAYERS[unit]:
        out.append(f"{name} (layer {LAYERS[unit]}) imports {imported} (layer {LAYERS[other]})")
  return out


def test_every_package_has_a_layer():
  units = {_unit(name) for name, _ in _library_modules()} - {""}
  assert sorted(units - set(LAYERS)) == []
  assert sorted(set(LAYERS) - units) == []


def test_every_library_module_imports_only_from_lower_layers():
  assert _violations(list(_library_modules())) == []


def test_the_layer_check_sees_violations(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text(
    "from dnas_jax.search import loop\nimport experiments.cli\n"
    "from dnas_jax.retrain import steps\nfrom dnas_jax.models import arch\n"
    "from dnas_jax import api\n"
  )
  found = _violations([("dnas_jax.search.steps", str(bad)), ("dnas_jax.training.loop", str(bad))])
  assert found == [
    "dnas_jax.search.steps imports the entry points (experiments.cli)",
    "dnas_jax.search.steps (layer 5) imports dnas_jax.retrain (layer 5)",
    "dnas_jax.search.steps (layer 5) imports dnas_jax.api (layer 6)",
    "dnas_jax.training.loop (layer 4) imports dnas_jax.search (layer 5)",
    "dnas_jax.training.loop imports the entry points (experiments.cli)",
    "dnas_jax.training.loop (layer 4) imports dnas_jax.retrain (layer 5)",
    "dnas_jax.training.loop (layer 4) imports dnas_jax.api (layer 6)",
  ]


def test_only_dnas_jax_is_installed_and_it_holds_the_configs():
  """What `pip install` installs, as setuptools reads setup.cfg: the dnas_jax packages
  (its configs among them, for the notebook after a pip install), no top-level
  `experiments`."""
  from setuptools.config import setupcfg  # pylint: disable=g-import-not-at-top

  cwd = os.getcwd()
  os.chdir(ROOT)  # find_packages runs relative to the project
  try:
    packages = setupcfg.read_configuration("setup.cfg")["options"]["packages"]
  finally:
    os.chdir(cwd)
  assert {p.split(".")[0] for p in packages} == {"dnas_jax"}
  modules = ("api", "files")  # top-level modules, not packages
  assert {f"dnas_jax.{unit}" for unit in LAYERS if unit not in modules} <= set(packages)
  assert os.path.realpath(os.path.join(ROOT, "experiments", "configs")) == os.path.join(
    ROOT, "dnas_jax", "configs"
  )


def test_no_file_refers_to_a_document_the_repository_does_not_hold():
  files = subprocess.run(
    ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout.split()
  docs = {os.path.basename(f) for f in files if f.endswith(".md")}
  docs.add("comparison.md")  # not a document: the table experiments.compare writes
  missing = []
  for f in files:
    path = os.path.join(ROOT, f)
    if not f.endswith((".py", ".md", ".cfg", ".txt", ".sh", ".ipynb")) or not os.path.isfile(path):
      continue
    with open(path, errors="replace") as fh:
      for name in set(re.findall(r"\b([A-Za-z_][\w-]*\.md)\b", fh.read())):
        if name not in docs:
          missing.append(f"{f}: {name}")
  assert missing == []
