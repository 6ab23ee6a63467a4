"""bench/profile_summary.py: op classes read from HLO text, and a trace's time per class and
step, against hand-written HLO lines and a hand-written trace."""

import gzip
import json

import pytest

from deep_image.bench import profile_summary as ps

HLO = """HloModule jit_train_step

%fused_dot (p0: f32[8,4], p1: f32[4,2]) -> f32[8,2] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[4,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/jvp()/dot_general"}
}

%fused_update (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  ROOT %mul.3 = f32[8]{0} multiply(%p0, %p0), metadata={op_name="jit(train_step)/optimizer_update/mul"}
}

%fused_relu (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  ROOT %max.1 = f32[8]{0} maximum(%p0, %p0), metadata={op_name="jit(train_step)/jvp()/max"}
}

ENTRY %main (a: f32[8,4]) -> f32[8] {
  %a = f32[8,4]{1,0} parameter(0)
  %convolution.1 = f32[8,4]{1,0} convolution(%a, %a), dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/jvp()/conv_general_dilated"}
  %convolution.2 = f32[8,4]{1,0} convolution(%a, %a), dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/transpose(jvp())/conv_general_dilated"}
  %custom-call.7 = (f32[8,4]{1,0}, u8[0]{0}) custom-call(%a, %a), custom_call_target="__cudnn$convBackwardFilter"
  %select-and-scatter.1 = f32[8,4]{1,0} select-and-scatter(%a, %a, %a), window={size=2x2}
  %reduce-window.2 = f32[4,2]{1,0} reduce-window(%a, %a), window={size=2x2}
  %reduce-window.3 = pred[8]{0} reduce-window(%a, %a), window={size=8}
  %all-gather-start.4 = (f32[1,4]{1,0}, f32[1,32]{1,0}) all-gather-start(%a), replica_groups={{0,1}}
  %fusion.5 = f32[8,2]{1,0} fusion(%a, %a), kind=kOutput, calls=%fused_dot
  %fusion.6 = f32[8]{0} fusion(%a), kind=kLoop, calls=%fused_update
  %fusion.7 = f32[8]{0} fusion(%a), kind=kLoop, calls=%fused_relu
  %copy.8 = f32[4,8]{0,1} copy(%a)
  ROOT %tuple.9 = (f32[8]) tuple(%fusion.7)
}
"""

WANT = {"convolution.1": "conv_forward", "convolution.2": "conv_backward",
        "custom-call.7": "conv_backward", "select-and-scatter.1": "pooling_backward",
        "reduce-window.2": "pooling_forward", "reduce-window.3": "other",
        "all-gather-start.4": "collectives", "fusion.5": "matmul", "fusion.6": "optimizer",
        "fusion.7": "elementwise_fusion", "copy.8": "copies_transposes", "tuple.9": "other"}


def test_each_instruction_gets_its_class():
    lines, bodies = ps.hlo_index(HLO)
    assert set(WANT) <= set(lines) and {"fused_dot", "fused_update", "fused_relu"} <= set(bodies)
    for op, want in WANT.items():
        text = lines[op]
        called = ps._CALLS.search(text)
        if called:
            text += "\n" + bodies[called.group(1)]
        assert ps.classify(text) == want, op


def test_trace_time_per_class_and_step(tmp_path):
    # 2 steps: each instruction ran twice, for (index + 1) x 100 us; one event of another
    # program and one host event without an instruction
    events = [{"ph": "X", "name": op, "dur": (i + 1) * 100.0, "args": {"hlo_op": op}}
              for i, op in enumerate(WANT) for _ in range(2)]
    events += [{"ph": "X", "name": "x", "dur": 5000.0, "args": {"hlo_op": "not_in_module"}},
               {"ph": "X", "name": "host", "dur": 9000.0, "args": {}}]
    (tmp_path / "run").mkdir()
    with gzip.open(tmp_path / "run" / "vm.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    got = ps.summarize(str(tmp_path), HLO, steps=2)
    want = {c: 0.0 for c in ps.CLASSES}
    for i, (op, cls) in enumerate(WANT.items()):
        want[cls] += (i + 1) * 100.0 / 1e3          # ms per step
    for cls in ps.CLASSES:
        assert got[cls] == pytest.approx(want[cls]), cls
    assert got["unmatched_ms"] == pytest.approx(2.5)
    assert got["total_ms"] == pytest.approx(sum(want.values()))


def test_no_trace_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="create_perfetto_trace=True"):
        ps.summarize(str(tmp_path), HLO, steps=1)
