"""The README and docs/ stay true: what they cite exists, their commands parse and run.

Checked without running anything long: every repository path, `dnas_jax` module and
file name a document cites exists; every `python -m ...` command in the README, in
docs/ and in the configs' docstrings names an existing module, config file, flag and
config field; the README stays a short user's guide; each shared table lives in one
place. The README's restore example is executed by tests/test_api.py, its cheap
commands as written by `test_cheap_readme_commands_run`, and its search → derive →
train → evaluate commands one after another, at a small size, by
`test_readme_pipeline_runs_as_written` (conftest.py's `readme_pipeline`).
"""

import ast
import glob
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tokenize

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DOCS = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "dnas_jax", "configs", "*.py")))
# Files of the official DARTS / PC-DARTS code that the documents name as sources.
PEER_FILES = {"train_search.py", "model_search.py", "architect.py", "train_imagenet.py"}


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


def _tracked_files() -> set[str]:
  out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
  if out.returncode == 0 and out.stdout.strip():
    return set(out.stdout.split())
  found = set()
  for root, _, names in os.walk(REPO):
    found.update(os.path.relpath(os.path.join(root, n), REPO) for n in names)
  return found


def _documents() -> list[str]:
  return [README] + DOCS


def readme_python_blocks() -> list[str]:
  """The ```python blocks of the README, as printed."""
  return re.findall(r"```python\n(.*?)```", _read(README), flags=re.S)


def _commands(text: str) -> list[str]:
  """`python -m ...` command lines (continuations joined) in a text."""
  text = re.sub(r"\\\n\s*", " ", text)
  out = []
  for line in text.splitlines():
    for part in line.split("&&"):
      m = re.search(r"\bpython3? -m ([\w.]+)(.*)", part)
      if m and not m.group(1).startswith(("pip", "pytest")) and m.group(1).islower():
        out.append(f"{m.group(1)}{m.group(2).split('`')[0]}".strip())
  return out


def _config_docstrings() -> list[tuple[str, str]]:
  return [(p, ast.get_docstring(ast.parse(_read(p))) or "") for p in CONFIGS]


def _all_commands() -> list[tuple[str, str]]:
  out = [(os.path.relpath(p, REPO), c) for p in _documents() for c in _commands(_read(p))]
  out += [(os.path.relpath(p, REPO), c) for p, d in _config_docstrings() for c in _commands(d)]
  return out


def test_readme_is_a_short_users_guide():
  text = _read(README)
  assert len(text.splitlines()) <= 250
  assert not re.search(r"\b\d{1,2}:\d\d\b", text), "a clock time in the README"
  assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "a date in the README"
  assert not re.search(r"\bissue \d", text, flags=re.I)
  assert not re.search(r"\blent\b", text)
  assert "../" not in text and "shared/" not in text


@pytest.mark.parametrize("doc", [README] + DOCS, ids=os.path.basename)
def test_cited_paths_modules_and_files_exist(doc):
  text = _read(doc)
  tracked = _tracked_files()
  basenames = {os.path.basename(p) for p in tracked}
  missing = _missing_citations(text)
  for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
    if not re.match(r"\w+://", target):
      if not os.path.exists(os.path.join(os.path.dirname(doc), target)):
        missing.append(target)
  for name in re.findall(r"`(\w+\.(?:py|sh|ipynb))`", text):
    if name not in basenames and name not in PEER_FILES:
      missing.append(name)
  assert not missing, f"{os.path.basename(doc)} cites what does not exist: {missing}"


def test_config_docstrings_cite_existing_files_and_modules():
  basenames = {os.path.basename(p) for p in _tracked_files()}
  for path, doc in _config_docstrings():
    assert not _missing_citations(doc), (path, _missing_citations(doc))
    for name in re.findall(r"\b(\w+\.py)\b", doc):
      assert name in basenames or name in PEER_FILES, (path, name)


def _defined_flags(module: str) -> set[str]:
  source = _read(os.path.join(REPO, *module.split(".")) + ".py")
  if module.startswith("experiments."):
    source += _read(os.path.join(REPO, "experiments", "cli.py"))
  names = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
  names.update(re.findall(r"DEFINE_\w+\(\s*\n?\s*\"(\w+)\"", source))
  names.update(re.findall(r"add_argument\(\s*\"--(\w+)\"", source))  # argparse tools
  return names | {"helpfull", "help"}


def _load_config(path: str):
  """The config of `path`, or of `path:argument` (ml_collections' config string)."""
  path, _, argument = path.partition(":")
  spec = importlib.util.spec_from_file_location("doc_config", os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(argument) if argument else mod.get_config()


@pytest.mark.parametrize("where,command", _all_commands())
def test_documented_commands_name_real_modules_flags_and_fields(where, command):
  module, *args = shlex.split(command.replace("[", " ").replace("]", " "))
  assert importlib.util.find_spec(module) is not None, (where, module)
  flags_defined = _defined_flags(module)
  configs = {}
  for arg in args:
    if arg in ("...",) or not arg.startswith("--"):
      continue
    name, _, value = arg[2:].partition("=")
    root, *field = name.split(".")
    assert root in flags_defined or f"no{root}" in {f"no{f}" for f in flags_defined}, (
      where,
      command,
      root,
    )
    if root.endswith("config") and not field and value and value.islower():
      assert os.path.isfile(os.path.join(REPO, value.partition(":")[0])), (where, value)
      configs[root] = value
    if field and not any(k.isupper() for k in field) and root in configs:
      node = _load_config(configs[root])
      for key in field:
        assert key in node, (where, command, name)
        node = node[key]


def test_each_shared_table_lives_in_one_place():
  """The ψ/edge-weight table, the method rows and the data sources are written once."""
  texts = {
    os.path.relpath(p, REPO): _read(p)
    for p in _documents() + glob.glob(os.path.join(REPO, "dnas_jax", "**", "*.py"), recursive=True)
  }

  def where(pattern):
    return sorted(k for k, t in texts.items() if re.search(pattern, t))

  assert where(r"softmax_j\(α_type\(k\)\)") == ["docs/design.md"]
  assert where(r"\|\s*`pc_darts_global`\s*\|") == ["docs/comparison.md"]
  assert where(r"0\.025\s*→\s*0\.001") == ["docs/comparison.md"]
  assert where(r"`tiny-imagenet-200/`") == ["README.md"]


def test_readme_has_the_restore_example_that_test_api_runs():
  assert any("api.load_search" in b and "api.load_classifier" in b for b in readme_python_blocks())


def test_cheap_readme_commands_run():
  """The README's commands that finish in seconds run as written."""
  cheap = [c for c in _commands(_read(README)) if "--dry_run" in c]
  assert cheap, "the README shows a --dry_run command"
  for command in cheap:
    out = subprocess.run(
      [sys.executable, "-m", *shlex.split(command)],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "params_excluding_auxiliary: 3349342" in out.stdout


def test_readme_pipeline_runs_as_written(readme_pipeline):
  """The README's search → derive → train → evaluate commands run one after another as
  written, at a small size (conftest.py's `readme_pipeline`): each step finds what the
  one before wrote, and evaluate prints the test accuracy the retraining wrote in
  final_metrics.json."""
  root, commands, outs = readme_pipeline
  assert [c.split()[0] for c in commands] == [
    "experiments.search",
    "experiments.derive",
    "experiments.train",
    "experiments.evaluate",
  ], commands
  assert (root / "workdirs" / "digits" / "genotype.json").exists()
  with open(root / "workdirs" / "digits_retrain" / "final_metrics.json") as f:
    final = json.load(f)
  m = re.search(r'"test_accuracy": ([0-9.]+)', outs[-1])
  assert m, outs[-1][-2000:]
  assert float(m.group(1)) == pytest.approx(final["test_accuracy"], abs=1e-4)


def _importable_prefix(dotted: str) -> bool:
  """Whether `dotted` names a module, or an attribute of its longest importable prefix
  (dnas_jax.training.loop.run_loop)."""
  parts = dotted.split(".")
  for n in range(len(parts), 1, -1):
    try:
      found = importlib.util.find_spec(".".join(parts[:n])) is not None
    except ModuleNotFoundError:  # a prefix is a module, not a package
      continue
    if found:
      if n == len(parts):
        return True
      try:
        return hasattr(importlib.import_module(".".join(parts[:n])), parts[n])
      except ImportError:  # an optional dependency: the module exists
        return True
  return False


def _missing_citations(text: str) -> list[str]:
  """The repository paths (dnas_jax/…, experiments/…, tests/…, docs/…, .ci/…) and
  dnas_jax modules `text` cites that do not exist; a path followed by *, < or { is a
  pattern, not a path."""
  missing = []
  for m in re.finditer(
    r"(?<![\w/.~$-])((?:dnas_jax|experiments|tests|docs|\.ci)/[\w./-]*[\w/])", text
  ):
    if text[m.end() : m.end() + 1] in ("*", "<", "{"):
      continue
    if not os.path.exists(os.path.join(REPO, m.group(1).rstrip("/"))):
      missing.append(m.group(1))
  missing += [m for m in re.findall(r"\bdnas_jax(?:\.\w+)+", text) if not _importable_prefix(m)]
  return missing


def _comments_and_docstrings(path: str) -> str:
  """The comments and docstrings of a Python file: where code cites documents and
  modules in prose."""
  source = _read(path)
  parts = [
    t.string
    for t in tokenize.generate_tokens(io.StringIO(source).readline)
    if t.type == tokenize.COMMENT
  ]
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      parts.append(ast.get_docstring(node) or "")
  return "\n".join(parts)


def test_code_comments_and_docstrings_cite_existing_paths_and_modules():
  """What the code's prose cites (repository paths, dnas_jax modules) exists."""
  missing = []
  for rel in _tracked_files():
    if not rel.endswith(".py") or not rel.startswith(("dnas_jax/", "experiments/", "tests/")):
      continue
    text = _comments_and_docstrings(os.path.join(REPO, rel))
    missing += [(rel, cited) for cited in _missing_citations(text)]
  assert not missing, f"comments or docstrings cite what does not exist: {missing}"
