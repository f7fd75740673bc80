"""Small file helpers every writer of the library shares.

`atomic_write` is how the library writes anything a reader (a user, a resumed run, the
derive command while a search runs) may open: the bytes go to a temporary file in the
same folder, which then replaces the target in one `os.replace`, so a reader sees the
old file or the new one, never half of one. `flatten` turns nested dicts (or
ConfigDicts) into dotted keys.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Callable, IO, Iterator


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
  """Opens a temporary file beside `path` for writing; on a clean exit it replaces
  `path`, on an exception it is removed and `path` is left as it was."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open writes only ('w' or 'wb'), not {mode!r}")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def atomic_write(path: str, content: str | bytes | Callable[[IO], Any]) -> None:
  """Writes `content` (text, bytes, or a function given the open file) to `path`
  atomically (see `atomic_open`)."""
  if callable(content):
    mode = "wb"
    with atomic_open(path, mode) as f:
      content(f)
    return
  with atomic_open(path, "wb" if isinstance(content, bytes) else "w") as f:
    f.write(content)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; dicts and ConfigDicts are walked, anything else is
  a leaf."""
  if not hasattr(tree, "items") or not hasattr(tree, "keys"):
    return {prefix.rstrip("."): tree} if prefix else {"": tree}
  out: dict[str, Any] = {}
  for key, value in dict(tree).items():
    if hasattr(value, "items") and hasattr(value, "keys"):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out
