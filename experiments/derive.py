"""Derivation entry point: a search workdir's ψ to a global genotype, plots included.

  python -m experiments.derive --workdir=SEARCH_DIR [--edges_per_node=2] \
      [--rule=top_k|threshold] [--op_threshold=0.85] [--max_skip_connects=2] \
      [--num_layers=L_t] [--out=DIR]

Reads ψ [L, 14, Op] from SEARCH_DIR/psi.npy, or, when that is absent, computes it from
the architecture parameters of the latest checkpoint (`dnas_jax.api.search_psi`).
Derives the global genotype (per layer and node, the `edges_per_node` strongest
incoming connections, each with its arg-max operation; with --rule=threshold only where
that operation's weight reaches --op_threshold; with --max_skip_connects at most that
many skip-connects per normal cell: docs/design.md §1) and writes, into DIR (default
SEARCH_DIR; `dnas_jax.search.derivation.write_derivation`):

* `genotype.json` and `genotype.txt`: the genotype at the search depth L;
* `genotype_L{L_t}.json` and `.txt` when --num_layers differs from L: the genotype mapped
  to L_t layers (`genotype.map_to_depth`: reductions to reductions, normal cells
  proportionally within each stage), for `--config.genotype=` of experiments.train;
* `global_architecture.png` (and `global_architecture_L{L_t}.png`), `psi_heatmaps.png`,
  also written to TensorBoard event files in DIR.

The derivation options left out are the search's own (its config.derive), so one
search can be derived several ways without searching again (with --out=DIR each).
Prints the genotype (the mapped one when --num_layers is given).
"""

from absl import app
from absl import flags

from dnas_jax import api
from dnas_jax.search import derivation
from experiments import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Search run directory.")
_EDGES = flags.DEFINE_integer(
  "edges_per_node", None, "Incoming edges kept per node (default: the search's, 2)."
)
_RULE = flags.DEFINE_string(
  "rule", None, "top_k (DARTS) or threshold (FairDARTS); default: the search's config.derive.rule."
)
_THRESHOLD = flags.DEFINE_float(
  "op_threshold",
  None,
  "threshold rule: the least operation weight kept (default: the search's, 0.85).",
)
_MAX_SKIP = flags.DEFINE_integer(
  "max_skip_connects",
  None,
  "At most this many "
  "skip-connects per normal cell (P-DARTS: 2); -1: no "
  "cap (default: the search's).",
)
_NUM_LAYERS = flags.DEFINE_integer(
  "num_layers", None, "Target depth L_t (default: the search depth)."
)
_OUT = flags.DEFINE_string("out", None, "Output directory (default: --workdir).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  with cli.user_errors():
    try:
      derivation.check_options(_EDGES.value, _NUM_LAYERS.value)
      out = derivation.output_folder(workdir, _OUT.value)
      psi, primitives, info = api.search_psi(workdir)
      result = derivation.write_derivation(
        out,
        psi,
        primitives,
        info,
        _EDGES.value,
        _NUM_LAYERS.value,
        title=f"derived from {workdir}",
        rule=_RULE.value,
        op_threshold=_THRESHOLD.value,
        max_skip_connects=_MAX_SKIP.value,
      )
    except (api.WorkdirError, ValueError) as e:
      raise SystemExit(f"error: {e}") from None
  geno = result["mapped"] or result["genotype"]
  print(geno.describe())
  print("wrote " + ", ".join(result["files"]))


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  cli.run(main)
