"""Records reference values of the DARTS family's defences against skip-connect collapse
from the official code, for tests/test_regularizers.py: the values are computed by
running the authors' own lines on fixed, seeded inputs, never by code written here.

  python tests/reference/make_regularizer_references.py \
      --pdarts=PATH_TO_chenxin061/pdarts --fairdarts=PATH_TO_xiaomi-automl/FairDARTS \
      [--out=tests/reference/regularizers.json]

Needs NumPy and PyTorch (CPU is enough). The official scripts cannot be imported (they
parse arguments, create folders and need CUDA and torchvision at import), so the lines
needed are taken out of their source text at run time, by the AST, and executed with
stand-ins for what they touch but do not compute (the model holds the architecture
logits; training, logging and timing do nothing):

* P-DARTS (`train_search.py`): the epoch loop of `main` that sets the skip-connect
  dropout `model.module.p` before each epoch (its `scale_factor` from `main` as well),
  recorded per epoch for several (epochs, warm-up epochs, initial rate); and the end of
  the last stage, from keeping one operation per edge to "Restricting skipconnect", with
  its helpers (`get_min_k_no_zero`, `keep_1_on`, `keep_2_branches`,
  `delete_min_sk_prob`, `check_sk_number`, `parse_network`), on seeded architecture
  logits over three remaining operations per edge; the genotype it logs for each number
  of skip-connects (8 down to 0) and before the restriction.
* FairDARTS (`fairdarts/utils.py`): `parse` on seeded sigmoid weights [14, 7], as
  `Network.genotype()` calls it (`threshold_sparse`, op_threshold 0.85, and 0.6), and
  with `darts`.

The output JSON holds the inputs, the outputs, this script's path and each checkout's
commit.
"""

import argparse
import ast
import copy
import importlib.util
import json
import os
import re
import subprocess
import types

import numpy as np
import torch
import torch.nn.functional as F

SEED = 2025
SCHEDULE_CASES = [  # (epochs, warm-up epochs (P-DARTS's eps_no_arch), initial rate)
  (25, 10, 0.1),
  (25, 10, 0.4),
  (25, 10, 0.7),  # P-DARTS's three CIFAR-10 stages
  (50, 15, 0.2),  # configs/cifar10.py
  (10, 2, 0.2),  # configs/digits.py
  (2, 1, 0.2),  # configs/test.py
  (6, 0, 0.3),
  (4, 6, 0.3),
]  # no warm-up; a warm-up longer than the search
NUM_SKIP_CASES = 6
NUM_THRESHOLD_CASES = 8


def _float32_list(array):
  """A float32 array as nested lists of the shortest decimals that read back as the
  same float32 values (9 significant digits)."""
  return np.vectorize(lambda v: float(f"{v:.9g}"), otypes=[object])(
    np.asarray(array, np.float32)
  ).tolist()


def _compact(text):
  """JSON with every innermost list on one line."""
  return re.sub(
    r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text
  )


def _commit(path):
  return subprocess.run(
    ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
  ).stdout.strip()


def _load_module(path, name):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _source(path):
  with open(path) as f:
    text = f.read()
  return text, ast.parse(text)


def _function(tree, name):
  for node in tree.body:
    if isinstance(node, ast.FunctionDef) and node.name == name:
      return node
  raise LookupError(f"no function {name}")


def _exec(text, nodes, namespace):
  """Executes the statements `nodes` of a source `text` as they are written there."""
  module = ast.Module(body=list(nodes), type_ignores=[])
  exec(compile(module, "<official source>", "exec"), namespace)  # pylint: disable=exec-used


def _walk_find(node, predicate):
  for child in ast.walk(node):
    if predicate(child):
      return child
  raise LookupError("statement not found")


class _Logger:
  """Stands in for `logging`: keeps what the official code logs."""

  def __init__(self):
    self.records = []

  def info(self, message, *args):
    self.records.append((message, args))


def _stub_model(arch_logits=None):
  module = types.SimpleNamespace(p=None, history=[])
  module.update_p = lambda: module.history.append(float(module.p))
  module.arch_parameters = lambda: arch_logits
  return types.SimpleNamespace(module=module)


# ----------------------------------------------------------------------------------
# P-DARTS.


def _pdarts_main_parts(pdarts):
  text, tree = _source(os.path.join(pdarts, "train_search.py"))
  main = _function(tree, "main")
  stage_loop = _walk_find(
    main,
    lambda n: (
      isinstance(n, ast.For) and ast.get_source_segment(text, n.iter) == "range(len(num_to_keep))"
    ),
  )
  settings = [
    n
    for n in main.body
    if isinstance(n, ast.Assign)
    and isinstance(n.targets[0], ast.Name)
    and n.targets[0].id in ("num_to_keep", "num_to_drop", "eps_no_archs")
  ]
  return text, tree, stage_loop, settings


def pdarts_schedules(pdarts):
  """model.module.p per epoch, as P-DARTS's epoch loop sets it."""
  text, _, stage_loop, _ = _pdarts_main_parts(pdarts)
  scale = [
    n
    for n in stage_loop.body
    if isinstance(n, ast.Assign) and ast.get_source_segment(text, n.targets[0]) == "scale_factor"
  ]
  epoch_loop = _walk_find(
    stage_loop,
    lambda n: isinstance(n, ast.For) and ast.get_source_segment(text, n.iter) == "range(epochs)",
  )
  out = []
  for epochs, warmup, rate in SCHEDULE_CASES:
    model = _stub_model()
    scheduler = types.SimpleNamespace(step=lambda: None, get_lr=lambda: [0.0])
    namespace = {
      "np": np,
      "model": model,
      "scheduler": scheduler,
      "logging": _Logger(),
      "time": types.SimpleNamespace(time=lambda: 0.0),
      "train": lambda *a, **k: (0.0, 0.0),
      "infer": lambda *a, **k: (0.0, 0.0),
      "epochs": epochs,
      "eps_no_arch": warmup,
      "drop_rate": [rate] * 3,
      "sp": 0,
    }
    for name in (
      "train_queue",
      "valid_queue",
      "network_params",
      "criterion",
      "optimizer",
      "optimizer_a",
    ):
      namespace[name] = None
    _exec(text, scale + [epoch_loop], namespace)
    out.append(
      {
        "num_epochs": epochs,
        "warmup_epochs": warmup,
        "base_rate": rate,
        "rates": model.module.history,
      }
    )
  return out


def _genotype_json(genotype):
  return {
    "normal": [list(x) for x in genotype.normal],
    "reduce": [list(x) for x in genotype.reduce],
  }


def pdarts_skip_caps(pdarts):
  """P-DARTS's end of search on seeded inputs: three operations per edge (the last
  stage's), architecture logits over them, and the genotypes it logs."""
  genotypes = _load_module(os.path.join(pdarts, "genotypes.py"), "pdarts_genotypes")
  primitives = genotypes.PRIMITIVES
  text, tree, stage_loop, settings = _pdarts_main_parts(pdarts)
  helpers = [
    _function(tree, name)
    for name in (
      "parse_network",
      "get_min_k",
      "get_min_k_no_zero",
      "logging_switches",
      "check_sk_number",
      "delete_min_sk_prob",
      "keep_1_on",
      "keep_2_branches",
    )
  ]
  body = stage_loop.body
  first = next(
    i
    for i, n in enumerate(body)
    if "switches_normal_2 = copy.deepcopy" in ast.get_source_segment(text, n)
  )
  end_of_stage = body[first:]
  assert "Restricting skipconnect" in ast.get_source_segment(text, end_of_stage[-1])
  rng = np.random.default_rng(SEED)
  skip = primitives.index("skip_connect")
  cases = []
  for _ in range(NUM_SKIP_CASES):
    switches, logits = {}, {}
    for cell in ("normal", "reduce"):
      rows, cell_logits = [], []
      for _ in range(14):
        # Three operations per edge, as P-DARTS's last stage keeps; skip-connect on
        # most edges and favoured, 'none' on some, so that the cap has work to do.
        others = [j for j in range(len(primitives)) if j != skip]
        chosen = set(rng.choice(others, 2, replace=False).tolist())
        chosen.add(
          skip if rng.random() < 0.8 else int(rng.choice([j for j in others if j not in chosen]))
        )
        rows.append([j in chosen for j in range(len(primitives))])
        z = rng.normal(0.0, 1.0, 3)
        if skip in chosen:
          z[sorted(chosen).index(skip)] += 1.0
        cell_logits.append(z)
      switches[cell] = rows
      logits[cell] = np.asarray(cell_logits, np.float32)
    arch = [torch.tensor(logits["normal"]), torch.tensor(logits["reduce"])]
    log = _Logger()
    namespace = {
      "np": np,
      "copy": copy,
      "F": F,
      "PRIMITIVES": primitives,
      "Genotype": genotypes.Genotype,
      "logging": log,
      "model": _stub_model(arch),
      "switches_normal": copy.deepcopy(switches["normal"]),
      "switches_reduce": copy.deepcopy(switches["reduce"]),
    }
    _exec(text, helpers + settings, namespace)
    namespace["sp"] = len(namespace["num_to_keep"]) - 1  # the last stage
    namespace["sm_dim"] = -1
    namespace["print"] = lambda *a, **k: None
    _exec(text, end_of_stage, namespace)
    messages = [m for m, _ in log.records]
    start = messages.index("Restricting skipconnect...")
    uncapped = log.records[start - 1][0]
    by_cap, current = {}, uncapped
    records = log.records[start + 1 :]
    logged = {}
    for i, (message, args) in enumerate(records):
      if message == "Number of skip-connect: %d":
        logged[args[0]] = records[i + 1][0]
    for cap in range(8, -1, -1):  # the official loop's order
      current = logged.get(cap, current)
      by_cap[str(cap)] = _genotype_json(current)
    probs = {
      cell: F.softmax(torch.tensor(logits[cell]), dim=-1).numpy() for cell in ("normal", "reduce")
    }
    cases.append(
      {
        "switches": switches,
        "logits": {c: _float32_list(logits[c]) for c in logits},
        "probs": {c: _float32_list(probs[c]) for c in probs},
        "uncapped": _genotype_json(uncapped),
        "capped": by_cap,
      }
    )
  return {"primitives": list(primitives), "cases": cases}


# ----------------------------------------------------------------------------------
# FairDARTS.


def fairdarts_thresholds(fairdarts):
  code = os.path.join(fairdarts, "fairdarts")
  genotypes = _load_module(os.path.join(code, "genotypes.py"), "fairdarts_genotypes")
  text, tree = _source(os.path.join(code, "utils.py"))
  namespace = {}
  _exec(text, [_function(tree, "parse")], namespace)
  parse = namespace["parse"]
  rng = np.random.default_rng(SEED + 1)
  cases = []
  for mean in np.linspace(1.0, -1.5, NUM_THRESHOLD_CASES):
    # From most operations above 0.85 to few: nodes that keep no edge, and nodes
    # reading them.
    logits = {
      c: rng.normal(mean, 1.5, (14, len(genotypes.PRIMITIVES))).astype(np.float32)
      for c in ("normal", "reduce")
    }
    # As `Network.genotype()`: F.sigmoid(alphas).data.cpu().numpy().
    weights = {c: torch.sigmoid(torch.tensor(v)).numpy() for c, v in logits.items()}
    case = {"weights": {c: _float32_list(w) for c, w in weights.items()}}
    for method, threshold in (
      ("threshold_sparse", 0.85),
      ("threshold_sparse", 0.6),
      ("darts", None),
    ):
      key = method if threshold is None else f"{method}_{threshold}"
      case[key] = {
        c: [list(g) for g in parse(weights[c], genotypes.PRIMITIVES, threshold, method, 4)]
        for c in ("normal", "reduce")
      }
    cases.append(case)
  return {"primitives": list(genotypes.PRIMITIVES), "cases": cases}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pdarts", required=True, help="a chenxin061/pdarts checkout")
  parser.add_argument("--fairdarts", required=True, help="a xiaomi-automl/FairDARTS checkout")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "regularizers.json"))
  args = parser.parse_args()
  record = {
    "made_by": "tests/reference/make_regularizer_references.py",
    "sources": {
      "pdarts": {
        "repository": "chenxin061/pdarts",
        "commit": _commit(args.pdarts),
        "file": "train_search.py",
      },
      "fairdarts": {
        "repository": "xiaomi-automl/FairDARTS",
        "commit": _commit(args.fairdarts),
        "file": "fairdarts/utils.py",
      },
    },
    "versions": {"numpy": np.__version__, "torch": torch.__version__},
    "seed": SEED,
    "pdarts_skip_dropout": pdarts_schedules(args.pdarts),
    "pdarts_skip_cap": pdarts_skip_caps(args.pdarts),
    "fairdarts_parse": fairdarts_thresholds(args.fairdarts),
  }
  with open(args.out, "w") as f:
    f.write(_compact(json.dumps(record, indent=1)) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
