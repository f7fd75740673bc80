"""Where a CPU search step's time goes: XLA's own per-instruction trace, summed by
operation kind, by half of the step and by direction (forward or backward).

  python -m experiments.benchmark --config=experiments/configs/pc_darts_cifar10.py \
      --what=profile --depths=8 --batch_sizes=32 [--steps=2]

The step is compiled with XLA:CPU's per-instruction trace events on
(`--xla_cpu_enable_xprof_traceme=true`, set by `enable_instruction_events` before the
backend starts), run under `jax.profiler`, and every event is matched to its
instruction in the compiled HLO. An instruction's kind is its opcode, or for a fusion
what it fuses (a convolution, a matrix product, a reduction, element-wise work); the
compiled kernels of `dnas_jax.kernels` appear as custom calls by target. The half is
read from the named scopes of `search.steps` (`architecture_half`, `weight_half`), the
direction from the instruction's source path (a `transpose(...)` of JAX's autodiff is
the backward pass). Instructions that only hold others (while loops, calls,
conditionals) are left out of the sums, so nothing is counted twice; `covered` is the
share of the step's wall time the counted instructions account for (below 1: time
between instructions, above 1: instructions running in parallel on several cores).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Any

FLAG = "--xla_cpu_enable_xprof_traceme=true"
CONTAINERS = frozenset({"while", "call", "conditional", "async-start", "async-done"})
HALVES = ("architecture_half", "weight_half")


def enable_instruction_events() -> None:
  """Adds XLA:CPU's per-instruction trace events to XLA_FLAGS; call before JAX starts
  its CPU backend (the flag is read once)."""
  flags = os.environ.get("XLA_FLAGS", "")
  if FLAG not in flags:
    os.environ["XLA_FLAGS"] = (flags + " " + FLAG).strip()


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
  """Instruction name → {opcode, op_name (source path), fused (opcodes of the fused
  computation), target (custom call target)} from compiled HLO text."""
  computations: dict[str, list[str]] = {}
  instructions: dict[str, dict[str, Any]] = {}
  current = None
  for line in text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and "=" not in line.split("{")[0]:
      current = header.group(1)
      computations[current] = []
      continue
    m = re.match(r"^\s+(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(", line)
    if not m:
      continue
    name, opcode = m.group(1), m.group(2)
    meta = re.search(r'op_name="([^"]*)"', line)
    calls = re.search(r"calls=%?([\w.\-]+)", line)
    target = re.search(r'custom_call_target="([^"]*)"', line)
    instructions[name] = {
      "opcode": opcode,
      "op_name": meta.group(1) if meta else "",
      "calls": calls.group(1) if calls else None,
      "target": target.group(1) if target else None,
    }
    if current is not None:
      computations[current].append(opcode)
  for info in instructions.values():
    info["fused"] = collections.Counter(computations.get(info.pop("calls") or "", []))
  return instructions


def kind(info: dict[str, Any]) -> str:
  """The operation kind of one instruction (see the module docstring)."""
  opcode, fused = info["opcode"], info["fused"]
  if opcode == "custom-call":
    return f"compiled kernel {info['target']}" if info["target"] else "custom call"
  if opcode == "fusion":
    for inner, label in (
      ("convolution", "convolution"),
      ("dot", "matrix product"),
      ("reduce-window", "pooling window"),
      ("select-and-scatter", "max-pool gradient"),
      ("scatter", "scatter"),
      ("reduce", "reduction"),
      ("dynamic-update-slice", "loop slice update"),
      ("transpose", "transpose/copy"),
    ):
      if fused.get(inner):
        return f"{label} (fused)" if label in ("convolution", "matrix product") else label
    if set(fused) <= {
      "parameter",
      "copy",
      "bitcast",
      "reshape",
      "transpose",
      "slice",
      "concatenate",
      "pad",
      "broadcast",
      "constant",
      "tuple",
      "get-tuple-element",
    }:
      return "transpose/copy"
    return "element-wise"
  if opcode == "dot":
    return "matrix product"
  if opcode in ("copy", "transpose"):
    return "transpose/copy"
  if opcode in ("dynamic-update-slice", "dynamic-slice"):
    return "loop slice update"
  return opcode


def half(op_name: str) -> str:
  for name in HALVES:
    if name in op_name:
      return name.replace("_", " ")
  return "other"


def direction(op_name: str) -> str:
  return "backward" if "transpose(" in op_name else "forward"


def summarize(
  events: list[dict[str, Any]], instructions: dict[str, dict[str, Any]], steps: int
) -> dict[str, Any]:
  """Per-step microseconds by kind, by (half, direction) and by (half, kind), from
  complete trace events ("ph" == "X") named after HLO instructions."""
  by_kind, by_half, by_half_kind = (
    collections.Counter(),
    collections.Counter(),
    collections.Counter(),
  )
  counts = collections.Counter()
  for event in events:
    info = instructions.get(event.get("name"))
    if info is None or info["opcode"] in CONTAINERS:
      continue
    k, h = kind(info), half(info["op_name"])
    us = float(event["dur"]) / steps
    by_kind[k] += us
    counts[k] += 1
    by_half[(h, direction(info["op_name"]))] += us
    by_half_kind[(h, k)] += us
  return {
    "by_kind": by_kind,
    "by_half": by_half,
    "by_half_kind": by_half_kind,
    "instructions": {k: v // steps for k, v in counts.items()},
    "total_us": sum(by_kind.values()),
  }


def _trace_events(folder: str) -> list[dict[str, Any]]:
  files = sorted(glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True))
  if not files:
    raise RuntimeError(f"jax.profiler wrote no trace under {folder}")
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  return [e for e in events if e.get("ph") == "X" and "dur" in e]


def profile_search_step(
  config, image_shape=(32, 32, 3), num_classes: int = 10, steps: int = 2, warmup: int = 1
) -> dict[str, Any]:
  """Compiles the search step of `config` (architecture update on), times it, then
  profiles `steps` steps; the record holds trace + lower and compile seconds, ms/step
  with and without the profiler, and the sums of `summarize` in ms/step."""
  import jax  # pylint: disable=g-import-not-at-top
  from dnas_jax.models import program as program_lib  # pylint: disable=g-import-not-at-top
  from dnas_jax.tools import benchmarking  # pylint: disable=g-import-not-at-top

  if jax.default_backend() != "cpu":
    raise RuntimeError(
      "--what=profile reads XLA:CPU's instruction events; on a GPU use "
      "jax.profiler with TensorBoard's profile plugin"
    )
  if FLAG not in os.environ.get("XLA_FLAGS", ""):
    raise RuntimeError(
      "XLA's instruction events are off: call "
      "step_profile.enable_instruction_events() before JAX starts"
    )
  _, record, time_fn = benchmarking.search_step_runner(config, image_shape, num_classes)
  ms_step = time_fn(steps, warmup) * 1e3
  hlo = time_fn.compiled.as_text()
  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder)
    t0 = time.perf_counter()
    time_fn(steps, 0)
    profiled_ms = (time.perf_counter() - t0) / steps * 1e3
    jax.profiler.stop_trace()
    events = _trace_events(folder)
  sums = summarize(events, parse_hlo(hlo), steps)
  ms = lambda us: round(us / 1e3, 1)  # pylint: disable=unnecessary-lambda-assignment
  return {
    "what": "search_step_profile",
    "num_layers": config.model.num_layers,
    "batch_size": config.batch_size,
    "image_shape": list(image_shape),
    "program": program_lib.resolve_program(config),
    "trace_lower_s": record["trace_lower_s"],
    "compile_s": record["compile_s"],
    "ms_per_step": round(ms_step, 1),
    "ms_per_step_profiled": round(profiled_ms, 1),
    "covered": round(sums["total_us"] / 1e3 / profiled_ms, 3),
    "by_kind_ms": {k: ms(v) for k, v in sums["by_kind"].most_common()},
    "instructions_per_step": sums["instructions"],
    "by_half_ms": {f"{h}, {d}": ms(v) for (h, d), v in sorted(sums["by_half"].items())},
    "by_half_kind_ms": {f"{h}: {k}": ms(v) for (h, k), v in sums["by_half_kind"].most_common()},
  }


def markdown(record: dict[str, Any]) -> str:
  """The record's sums as two Markdown tables (kinds; halves and directions)."""
  step = record["ms_per_step_profiled"]
  lines = ["| operation kind | ms/step | of the step | instructions |", "|---|---|---|---|"]
  for k, v in record["by_kind_ms"].items():
    lines.append(
      f"| {k} | {v:,.1f} | {100 * v / step:.1f} % | {record['instructions_per_step'][k]:,} |"
    )
  lines += ["", "| half, direction | ms/step | of the step |", "|---|---|---|"]
  for k, v in record["by_half_ms"].items():
    lines.append(f"| {k} | {v:,.1f} | {100 * v / step:.1f} % |")
  return "\n".join(lines)
