"""Variables of a Flax module from shapes only: no network is run or compiled.

`jax.jit(module.init)` of the search network compiles the whole network with a random
number generator per parameter, which takes minutes on a CPU (docs/design.md §5). Here the
shapes come from `jax.eval_shape` and each leaf is filled on the host with PyTorch's
default initialisation, the one DARTS and PC-DARTS train with:

* convolution and dense kernels and biases: U(-1/√fan_in, 1/√fan_in)
  (`kaiming_uniform_(a=√5)`), fan_in over the last 3 (conv: kh·kw·cin per group) or
  1 (dense) input dimensions; leading axes (scanned layers, batched edges) are stacks;
* batch-norm scale 1, bias 0, running mean 0, running variance 1.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import numpy as np


def _is_dense(path: tuple[str, ...]) -> bool:
  parent = path[-2] if len(path) > 1 else ""
  return parent.startswith("Dense") or "classifier" in parent


def _fan_in(path: tuple[str, ...], flat: dict) -> int:
  kernel = flat[path[:-1] + ("kernel",)].shape
  fan_dims = 1 if _is_dense(path) else 3
  return int(np.prod(kernel[-1 - fan_dims : -1]))


def init_from_shapes(module: flax.linen.Module, seed: int, *args, **kwargs) -> dict:
  """Initial variables of `module` for inputs like `args`, from shapes only."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes))
  rng = np.random.default_rng(seed)
  out: dict[tuple[str, ...], Any] = {}
  for path in sorted(flat):
    shape, dtype, name = flat[path].shape, flat[path].dtype, path[-1]
    if path[0] == "batch_stats":
      out[path] = np.full(shape, 1.0 if name == "var" else 0.0, dtype)
    elif name == "scale":
      out[path] = np.ones(shape, dtype)
    elif name == "bias" and path[:-1] + ("kernel",) not in flat:  # batch norm
      out[path] = np.zeros(shape, dtype)
    elif name in ("kernel", "bias"):
      bound = 1.0 / np.sqrt(_fan_in(path, flat))
      out[path] = rng.uniform(-bound, bound, shape).astype(dtype)
    else:
      raise ValueError(f"No initialiser for variable {'/'.join(path)}")
  return jax.device_put(flax.traverse_util.unflatten_dict(out))  # one transfer call
