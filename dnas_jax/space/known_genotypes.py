"""Published block genotypes (one normal and one reduction cell), as plain data.

Copied from the official repositories' `genotypes.py`:

* `DARTS_V1`, `DARTS_V2`: quark0/darts `cnn/genotypes.py` (first- and second-order
  DARTS, CIFAR-10; `DARTS = DARTS_V2` there).
* `PC_DARTS`: yuhuixu1993/PC-DARTS `genotypes.py`, `PC_DARTS_cifar` (`PCDARTS` there).

Each cell lists 8 (operation, input) pairs, two per node in node order; inputs are
numbered as in DARTS (0 = s0, 1 = s1, 2 + n = node n). `get_genotype(name, L)` stacks a
block genotype over L layers as a `GlobalGenotype` (reduction cells at L//3 and 2L//3).
"""

from __future__ import annotations

from typing import NamedTuple

from dnas_jax.space import genotype as genotype_lib


class BlockGenotype(NamedTuple):
  """DARTS's `Genotype`: one normal and one reduction cell for all layers."""

  normal: tuple[tuple[str, int], ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[tuple[str, int], ...]
  reduce_concat: tuple[int, ...]


DARTS_V1 = BlockGenotype(
  normal=(
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0),
    ("skip_connect", 0),
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0),
    ("skip_connect", 2),
  ),
  normal_concat=(2, 3, 4, 5),
  reduce=(
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 1),
    ("skip_connect", 2),
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 0),
    ("skip_connect", 2),
    ("skip_connect", 2),
    ("avg_pool_3x3", 0),
  ),
  reduce_concat=(2, 3, 4, 5),
)

DARTS_V2 = BlockGenotype(
  normal=(
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("skip_connect", 0),
    ("dil_conv_3x3", 2),
  ),
  normal_concat=(2, 3, 4, 5),
  reduce=(
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 1),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
    ("max_pool_3x3", 0),
    ("skip_connect", 2),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
  ),
  reduce_concat=(2, 3, 4, 5),
)

PC_DARTS = BlockGenotype(
  normal=(
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("sep_conv_3x3", 0),
    ("dil_conv_3x3", 1),
    ("sep_conv_5x5", 0),
    ("sep_conv_3x3", 1),
    ("avg_pool_3x3", 0),
    ("dil_conv_3x3", 1),
  ),
  normal_concat=(2, 3, 4, 5),
  reduce=(
    ("sep_conv_5x5", 1),
    ("max_pool_3x3", 0),
    ("sep_conv_5x5", 1),
    ("sep_conv_5x5", 2),
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 3),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 2),
  ),
  reduce_concat=(2, 3, 4, 5),
)

KNOWN_GENOTYPES: dict[str, BlockGenotype] = {
  "DARTS_V1": DARTS_V1,
  "DARTS_V2": DARTS_V2,
  "PC_DARTS": PC_DARTS,
}


def get_block_genotype(name: str) -> BlockGenotype:
  """The named published block genotype; unknown names list the valid ones."""
  try:
    return KNOWN_GENOTYPES[name]
  except KeyError:
    raise ValueError(f"Unknown genotype {name!r}; valid names: {sorted(KNOWN_GENOTYPES)}") from None


def get_genotype(name: str, num_layers: int = 20) -> genotype_lib.GlobalGenotype:
  """The named published genotype stacked over `num_layers` layers."""
  block = get_block_genotype(name)
  return genotype_lib.stack_block_genotype(
    block.normal, block.reduce, num_layers, block.normal_concat, block.reduce_concat
  )
