"""Per-token dynamic activations in the "quantize" pass (activation_scheme "int4-token":
`FakeQuantize {granularity="token", clip}`, scales from each row at run time) and the clip
ratio search (passes/token_clip.py).

(a) changed flag and stats: one activation and one weight quantized, no statistics
needed; (b) Before/Expected structure: the activation's FakeQuantize takes no scale, the
weight keeps its Q/DQ codes; (c) numerics: the interpreter's output equals
FQ_token(x) @ DQ(W) computed with the codec (float32 tolerance), each row's error is
bounded by its own scale, and a row 1000x larger than the others does not coarsen them
(a per-tensor scale does); the clip search picks the grid ratio with the least error,
found by brute force here, and a clip < 1 for Gaussian rows at 4 bits; a Conv's input
takes its tokens (and its clip search) along the channels; (d) what must not
run: per-token weights, a range method other than minmax / mse, dynamic=True, mse
without batches; the scheme's own refusals (unsigned, asymmetric, a group size).
The op itself (FakeQuantize "token" against an independent numpy reference, ONNX and
TVM lowerings): tests/op_cases/quant.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import run_pass
from requant import ir
from requant.errors import RequantError
from requant.ir import assert_structural_equal
from requant.ir.quant_formats import QuantScheme, dequantize_linear, fake_quantize_tokens, parse_scheme
from requant.ir.structural import parse_elided
from requant.passes.token_clip import CLIP_GRID, search_token_clips

RNG = np.random.default_rng(5)
K, N = 16, 4
W = np.round(RNG.standard_normal((K, N)) / 4, 3).astype(np.float32)
TOKEN4 = QuantScheme("int4", "token")

BEFORE = f"""
graph main(%x: f32[3,{K}]) -> (%y) {{
  const %w: f32[{K},{N}] = {W.tolist()}
  %y: f32[3,{N}] = MatMul(%x, %w)
}}"""

EXPECTED = f"""
graph main(%x: f32[3,{K}]) -> (%y) {{
  const %w_q: i8[{K},{N}] = ...
  const %w_scale: f32[{N}] = ...
  %w_dq: f32[{K},{N}] = DequantizeLinear(%w_q, %w_scale, _) {{axis=1}}
  %x_fq: f32[3,{K}] = FakeQuantize(%x) {{axis=-1, clip=1.0, dtype="i4", granularity="token"}}
  %y: f32[3,{N}] = MatMul(%x_fq, %w_dq)
}}"""


def _rows(scale_of_row: list[float], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((len(scale_of_row), K)) * np.float32(scale_of_row)[:, None]).astype(np.float32)


def _weight_dq(graph: ir.Graph) -> np.ndarray:
    consts = {v.name: v.const for v in graph.constants}
    return dequantize_linear(consts["w_q"], consts["w_scale"], None, axis=1)


def test_stats_and_structure_without_statistics():
    graph = ir.parse(BEFORE)
    result = run_pass("quantize", graph, weight_scheme="int8-channel", activation_scheme="int4-token")
    assert result.changed
    assert result.stats["activations_quantized"] == 1 and result.stats["weights_quantized"] == 1
    assert_structural_equal(result.graph, parse_elided(EXPECTED))
    fq = next(n for n in result.graph if n.op == "FakeQuantize")
    assert fq.outputs[0].meta["quant"]["granularity"] == "token"
    assert fq.outputs[0].meta["quant_range"] == {"method": "minmax", "clip": 1.0}


def test_outputs_are_the_codecs_and_each_row_keeps_its_own_scale():
    graph = ir.parse(BEFORE)
    run_pass("quantize", graph, weight_scheme="int8-channel", activation_scheme="int4-token")
    x = _rows([1e-3, 1.0, 1e3])
    got = ir.run(graph, [x])[0]
    want = fake_quantize_tokens(x, TOKEN4) @ _weight_dq(graph)
    # float32: within 1e-5 of each row's output scale (the rows span 1e-3 .. 1e3)
    assert np.all(np.abs(got - want) <= 1e-5 * np.abs(want).max(axis=1, keepdims=True))
    # each row's activation error is at most half its own step amax_row / 7
    err = np.abs(fake_quantize_tokens(x, TOKEN4) - x)
    step = np.abs(x).max(axis=1, keepdims=True) / 7
    assert np.all(err <= step / 2 * (1 + 1e-6))
    # a per-tensor int4 scale would flatten the two small rows to zero; per token they survive
    per_tensor = np.rint(x / (np.abs(x).max() / 7)) * (np.abs(x).max() / 7)
    assert np.all(per_tensor[:2] == 0) and np.all(np.abs(fake_quantize_tokens(x, TOKEN4)[:2]).max(axis=1) > 0)


def test_mse_searches_each_activations_clip_on_the_batches():
    graph = ir.parse(BEFORE)
    batches = [{"x": _rows([1.0, 2.0, 0.5], seed=s)} for s in range(4)]
    result = run_pass("quantize", graph, weight_scheme="int8-channel", activation_scheme="int4-token",
                      method="mse", batches=batches, runner="interpreter")
    fq = next(n for n in result.graph if n.op == "FakeQuantize")
    clip = fq.attrs["clip"]
    errors = [sum(float(np.sum((fake_quantize_tokens(b["x"], TOKEN4, c) - b["x"]).astype(np.float64) ** 2))
                  for b in batches) for c in CLIP_GRID]
    assert clip == CLIP_GRID[int(np.argmin(errors))]
    assert clip < 1.0  # Gaussian rows at 4 bits: their extremes are worth clipping
    x = batches[0]["x"]
    np.testing.assert_allclose(ir.run(result.graph, [x])[0], fake_quantize_tokens(x, TOKEN4, clip) @ _weight_dq(graph),
                               rtol=1e-5, atol=1e-5)


def test_search_token_clips_keeps_one_for_rows_without_extremes():
    # rows of +-1 only: any clip below 1 makes every value worse
    x = np.where(np.random.default_rng(1).random((3, K)) < 0.5, -1.0, 1.0).astype(np.float32)
    graph = ir.parse(BEFORE)
    assert search_token_clips(graph, [{"x": x}], {"x": TOKEN4}, runner="interpreter") == {"x": 1.0}


@pytest.mark.parametrize("options, message", [
    ({"weight_scheme": "int4-token", "weight_only": True}, "per-token scales are for activations"),
    ({"activation_scheme": "int4-token", "method": "percentile"}, "method must be one of minmax, mse"),
    ({"activation_scheme": "int4-token", "dynamic": True}, "with dynamic=True"),
    ({"activation_scheme": "int4-token", "method": "mse"}, "pass batches="),
])
def test_bad_options_raise(options, message):
    with pytest.raises(RequantError, match=message):
        run_pass("quantize", ir.parse(BEFORE), **options)


def test_the_scheme_refuses_what_has_no_per_token_meaning():
    assert parse_scheme("int4-token") == TOKEN4 and TOKEN4.axis == -1
    assert TOKEN4.describe() == "int4 per-token(axis=-1) dynamic"
    for kwargs, message in (({"dtype": "uint4"}, "signed integer formats"), ({"dtype": "fp8_e4m3"}, "signed integer"),
                            ({"dtype": "int4", "symmetric": False}, "symmetric"),
                            ({"dtype": "int4", "group_size": 16}, "takes no group_size")):
        with pytest.raises(ValueError, match=message):
            QuantScheme(granularity="token", **kwargs)
    with pytest.raises(ValueError, match="clip must be in"):
        fake_quantize_tokens(np.ones((2, 4), np.float32), TOKEN4, 1.5)


CONV = """
graph main(%x: f32[2,4,5,5]) -> (%y) {
  const %w: f32[3,4,3,3] = ...
  %y: f32[2,3,3,3] = Conv(%x, %w)
}"""


def test_a_conv_input_takes_its_tokens_along_the_channels():
    graph = ir.parse(CONV.replace("...", str(np.round(RNG.standard_normal((3, 4, 3, 3)), 3).tolist())))
    batches = [{"x": (np.random.default_rng(s).standard_normal((2, 4, 5, 5)) * [[[[1.0]], [[3.0]], [[0.5]], [[2.0]]]])
                .astype(np.float32)} for s in range(3)]
    run_pass("quantize", graph, weight_scheme="int8-channel", activation_scheme="int4-token", method="mse",
             batches=batches, runner="interpreter")
    fq = next(n for n in graph if n.op == "FakeQuantize")
    assert fq.attrs["axis"] == 1  # one scale per pixel, across its channels
    along_channels = QuantScheme("int4", "token", axis=1)
    errors = [sum(float(np.sum((fake_quantize_tokens(b["x"], along_channels, c) - b["x"]).astype(np.float64) ** 2))
                  for b in batches) for c in CLIP_GRID]
    assert fq.attrs["clip"] == CLIP_GRID[int(np.argmin(errors))]
