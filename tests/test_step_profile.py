"""The CPU step profile (`--what=profile`, dnas_jax/tools/step_profile.py): HLO
instructions parsed from text, kinds, halves and directions, and sums that count each
event once (containers left out). The command itself runs in test_benchmarking.py's
profile test."""

import pytest

from dnas_jax.tools import step_profile

HLO = """HloModule jit_step

%fused_conv (p0: f32[2,4], p1: f32[4,4]) -> f32[2,4] {
  %p0 = f32[2,4]{1,0} parameter(0)
  %p1 = f32[4,4]{1,0} parameter(1)
  ROOT %convolution.1 = f32[2,4]{1,0} convolution(%p0, %p1), dim_labels=bf_io->bf
}

%fused_add (p0: f32[2,4]) -> f32[2,4] {
  %p0 = f32[2,4]{1,0} parameter(0)
  ROOT %add.3 = f32[2,4]{1,0} add(%p0, %p0)
}

%fused_copy (p0: f32[2,4]) -> f32[4,2] {
  %p0 = f32[2,4]{1,0} parameter(0)
  ROOT %transpose.2 = f32[4,2]{1,0} transpose(%p0), dimensions={1,0}
}

%body (arg: (s32[], f32[2,4])) -> (s32[], f32[2,4]) {
  %arg = (s32[], f32[2,4]) parameter(0)
  %fusion.2 = f32[2,4]{1,0} fusion(%x), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/weight_half/transpose(jvp(net))/add"}
}

ENTRY %main (a: f32[2,4], w: f32[4,4]) -> f32[2,4] {
  %a = f32[2,4]{1,0} parameter(0)
  %fusion.1 = f32[2,4]{1,0} fusion(%a, %w), kind=kOutput, calls=%fused_conv, metadata={op_name="jit(step)/architecture_half/jvp(net)/conv_general_dilated"}
  %custom-call.7 = f32[2,4]{1,0} custom-call(%a), custom_call_target="dnas_jax_depthwise_forward", metadata={op_name="jit(step)/architecture_half/jvp(net)/ffi_call"}
  %fusion.3 = f32[4,2]{1,0} fusion(%a), kind=kLoop, calls=%fused_copy, metadata={op_name="jit(step)/weight_half/jvp(net)/transpose"}
  %while.4 = (s32[], f32[2,4]) while(%t), condition=%cond, body=%body
  ROOT %dot.5 = f32[2,2]{1,0} dot(%a, %a), lhs_contracting_dims={1}, rhs_contracting_dims={1}
}
"""


def test_instructions_and_their_kinds_from_hlo_text():
  instructions = step_profile.parse_hlo(HLO)
  kinds = {
    name: step_profile.kind(info)
    for name, info in instructions.items()
    if name in ("fusion.1", "fusion.2", "fusion.3", "custom-call.7", "dot.5", "while.4")
  }
  assert kinds == {
    "fusion.1": "convolution (fused)",
    "fusion.2": "element-wise",
    "fusion.3": "transpose/copy",
    "custom-call.7": "compiled kernel dnas_jax_depthwise_forward",
    "dot.5": "matrix product",
    "while.4": "while",
  }
  assert step_profile.half(instructions["fusion.1"]["op_name"]) == "architecture half"
  assert step_profile.half(instructions["fusion.2"]["op_name"]) == "weight half"
  assert step_profile.half(instructions["dot.5"]["op_name"]) == "other"
  assert step_profile.direction(instructions["fusion.2"]["op_name"]) == "backward"
  assert step_profile.direction(instructions["fusion.1"]["op_name"]) == "forward"


def test_sums_count_every_event_once_per_step():
  instructions = step_profile.parse_hlo(HLO)
  # Two profiled steps; the loop body ran 3 times per step inside the while event.
  events = (
    [{"name": "fusion.1", "ph": "X", "dur": 100.0}] * 2
    + [{"name": "fusion.2", "ph": "X", "dur": 10.0}] * 6
    + [{"name": "while.4", "ph": "X", "dur": 35.0}] * 2
    + [{"name": "custom-call.7", "ph": "X", "dur": 40.0}] * 2
    + [{"name": "ThunkExecutor::Execute", "ph": "X", "dur": 999.0}] * 2
  )
  sums = step_profile.summarize(events, instructions, steps=2)
  assert sums["by_kind"] == {
    "convolution (fused)": 100.0,
    "element-wise": 30.0,
    "compiled kernel dnas_jax_depthwise_forward": 40.0,
  }
  assert sums["total_us"] == pytest.approx(170.0)
  assert sums["instructions"]["element-wise"] == 3
  assert sums["by_half"] == {
    ("architecture half", "forward"): 140.0,
    ("weight half", "backward"): 30.0,
  }


def test_markdown_tables_hold_every_kind_and_half():
  record = {
    "ms_per_step_profiled": 200.0,
    "by_kind_ms": {"convolution (fused)": 150.0, "element-wise": 50.0},
    "instructions_per_step": {"convolution (fused)": 3, "element-wise": 1200},
    "by_half_ms": {"architecture half, forward": 120.0},
  }
  text = step_profile.markdown(record)
  assert "| convolution (fused) | 150.0 | 75.0 % | 3 |" in text
  assert "| element-wise | 50.0 | 25.0 % | 1,200 |" in text
  assert "| architecture half, forward | 120.0 | 60.0 % |" in text
