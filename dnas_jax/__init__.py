"""dnas-jax: DNAS, decoupled global neural architecture search, in JAX/Flax.

The packages are the layers of docs/design.md §2; each imports only from those above
it in this list (tests/test_layers.py checks it):

1. `space`: the search space, the candidate operations, genotypes;
2. `models`: ψ (`arch`), the supernet, the discrete network, initialisation, and how
   the search program is written for XLA (`program`);
3. `data`: datasets and the input pipeline;
4. `training`: what search and retraining share: optimizers and losses, the
   evaluation step, the loop skeleton, run directories and checkpoints, devices,
   metrics, compilation, config validation;
5. `search` and `retrain`: each phase's state, steps, setup and `train_and_evaluate`;
6. `api`: the public restore API (runs read back from their workdirs);
7. `tools`: comparison of methods, benchmarks and their FLOP counter, compile studies;
8. `configs`: the experiment configs (also at experiments/configs).
"""

import importlib

# `from dnas_jax import datasets` (the README's restore snippet) names the data module.
_ALIASES = {"datasets": "dnas_jax.data.datasets"}


def __getattr__(name):
  if name in _ALIASES:
    return importlib.import_module(_ALIASES[name])
  raise AttributeError(f"module 'dnas_jax' has no attribute {name!r}")
