"""training/files.py: atomic writes leave the old file or the new one, never a part."""

import os

import numpy as np
import pytest

from dnas_jax.training import files


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


def test_flatten_walks_nested_dicts():
  assert files.flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": None}) == {
      "a.b": 1, "a.c.d": [2], "e": None}
