"""The tree is formatted and linted as ruff.toml says (`ruff format`, `ruff check`), and
the test files named for scheduling (conftest.SLOWEST_FILES) exist."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff(*args: str) -> subprocess.CompletedProcess:
  exe = shutil.which("ruff")
  cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
  return subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_is_installed():
  out = _ruff("--version")
  assert out.returncode == 0, "ruff is part of the test extra: pip install -e '.[test]'"


@pytest.mark.parametrize(
  "args", [("format", "--check", "."), ("check", ".")], ids=["format", "lint"]
)
def test_the_tree_is_formatted_and_lint_free(args):
  out = _ruff(*args)
  assert out.returncode == 0, (
    f"`ruff {' '.join(args)}` found problems (fix: ruff format . && ruff check --fix .):\n"
    + (out.stdout + out.stderr)[-4000:]
  )


def test_the_slowest_files_listed_for_scheduling_exist():
  import conftest  # tests/conftest.py  # pylint: disable=g-import-not-at-top

  tests = os.listdir(os.path.join(REPO, "tests"))
  assert [n for n in conftest.SLOWEST_FILES if n not in tests] == []
  assert len(set(conftest.SLOWEST_FILES)) == len(conftest.SLOWEST_FILES)
