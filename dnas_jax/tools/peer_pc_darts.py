"""Times the official PC-DARTS search step, from a checkout the user points to.

  python -m dnas_jax.tools.peer_pc_darts --peer_dir=DIR [--layers=8 --channels=16
      --batch_size=32 --image_size=32 --num_classes=10 --threads=2 --steps=5
      --warmup=2 --device=auto]

Prints one JSON line. This project holds none of PC-DARTS's code: `DIR` is a checkout
of github.com/yuhuixu1993/PC-DARTS (its `model_search.py`, `operations.py`,
`genotypes.py` and `architect.py` are imported from there, unmodified). What this file
adds is the loop of `train_search.py`'s `train()`, first order, on random data:

1. `Architect.step` on a validation batch (Adam, lr 6e-4, betas (0.5, 0.999), weight
   decay 1e-3; `unrolled=False`);
2. the weight step on a training batch: zero the gradients, forward, cross-entropy,
   backward, `clip_grad_norm_(5)`, SGD (lr 0.1, momentum 0.9, weight decay 3e-4).

The step time is the mean of `--steps` such steps after `--warmup` (CUDA synchronised
around the timed ones on a GPU). On a CPU the checkout's `.cuda()` calls (the
architecture parameters, `Network.new`) are made no-ops for this process, so the code
runs unmodified. It imports torch, never jax: `experiments/benchmark.py --what=peer`
runs it in its own process, one after the other with ours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

PEER_FILES = ("model_search.py", "architect.py", "operations.py", "genotypes.py")


def missing_files(peer_dir: str) -> list[str]:
  """The files of the PC-DARTS checkout this harness imports that `peer_dir` lacks."""
  return [f for f in PEER_FILES if not os.path.isfile(os.path.join(peer_dir, f))]


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--peer_dir", required=True)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--num_classes", type=int, default=10)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def _commit(peer_dir: str) -> str | None:
  import subprocess  # pylint: disable=g-import-not-at-top

  try:
    out = subprocess.run(
      ["git", "-C", peer_dir, "rev-parse", "HEAD"],
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() or None


def main(argv=None) -> dict:
  args = _parse(argv)
  peer_dir = os.path.abspath(args.peer_dir)
  if missing_files(peer_dir):
    sys.exit(
      f"error: --peer_dir={args.peer_dir} is not a PC-DARTS checkout (missing "
      f"{', '.join(missing_files(peer_dir))}); get one with: git clone "
      "https://github.com/yuhuixu1993/PC-DARTS"
    )
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  device = (
    ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
  )
  if args.threads:
    torch.set_num_threads(args.threads)
  if device == "cpu":  # the checkout calls .cuda() on tensors and networks
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
  else:
    torch.backends.cudnn.benchmark = True  # as train_search.py sets it
  sys.path.insert(0, peer_dir)
  import architect  # pylint: disable=g-import-not-at-top,import-error
  import genotypes  # pylint: disable=g-import-not-at-top,import-error
  import model_search  # pylint: disable=g-import-not-at-top,import-error

  torch.manual_seed(args.seed)
  criterion = nn.CrossEntropyLoss().to(device)
  model = model_search.Network(args.channels, args.num_classes, args.layers, criterion).to(device)
  optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=3e-4)
  arch_args = argparse.Namespace(
    momentum=0.9, weight_decay=3e-4, arch_learning_rate=6e-4, arch_weight_decay=1e-3
  )
  arch = architect.Architect(model, arch_args)
  shape = (args.batch_size, 3, args.image_size, args.image_size)
  gen = torch.Generator().manual_seed(args.seed)
  x_train, x_val = (torch.randn(shape, generator=gen).to(device) for _ in range(2))
  y_train, y_val = (
    torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(device)
    for _ in range(2)
  )
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def step():
    model.train()
    arch.step(x_train, y_train, x_val, y_val, 0.1, optimizer, unrolled=False)
    optimizer.zero_grad()
    loss = criterion(model(x_train), y_train)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    return loss

  for _ in range(args.warmup):
    step()
  sync()
  start = time.perf_counter()
  for _ in range(args.steps):
    loss = step()
  sync()
  per_step = (time.perf_counter() - start) / args.steps
  record = {
    "what": "peer_search_step",
    "peer": "PC-DARTS (official, first order)",
    "peer_commit": _commit(peer_dir),
    "num_layers": args.layers,
    "channels": args.channels,
    "partial_k": 4,
    "num_ops": len(genotypes.PRIMITIVES),
    "batch_size": args.batch_size,
    "image_shape": [args.image_size, args.image_size, 3],
    "steps": args.steps,
    "ms_per_step": round(per_step * 1e3, 3),
    "images_per_s": round(args.batch_size / per_step, 1),
    "loss_finite": bool(torch.isfinite(loss).item()),
    "device": device,
    "device_name": (torch.cuda.get_device_name() if device == "cuda" else "cpu"),
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
  }
  print(json.dumps(record), flush=True)
  return record


if __name__ == "__main__":
  main()
