"""Tests of the "lower_integer" pass (passes/lower_integer.py): Q/DQ -> standard ONNX
integer ops.

(a) changed flag and stats; (b) structure: which op each pattern became, with which
operands; (c) numerics: the lowered graph against the Q/DQ graph it came from, in the
interpreter and in ONNX Runtime, within the float32 rounding bound of
tests/lower_testing.py (Gather rewrites: bit for bit, they move the same values);
(d) what must not be lowered, with its recorded reason.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from requant.errors import PassError, RequantError
from requant.ir import Builder, Graph, run, tensor_type
from requant.passes import PassResult, get_pass
from requant.passes.calibration import collect_stats

from canonical_testing import run_pass
from lower_testing import check_lowering, ort_run, probe, quantized_linear
from quant_testing import block


def lower(graph: Graph, **options) -> PassResult:
    return run_pass("lower_integer", graph, **options)


# -- (a) + (b) + (c) ---------------------------------------------------------------------------


def test_matmul_add_becomes_matmul_integer_cast_mul_add():
    g, xs = quantized_linear()
    result = check_lowering("lower_integer", g, xs)
    assert result.changed
    assert result.stats["rule:lower_matmul_add"] == 1 and result.stats["op:MatMulInteger"] == 1
    assert result.stats["nodes_removed"] == 2 and result.stats["skipped"] == 0
    # Mul: the scale of the int32 accumulator
    assert g.op_histogram() == {"Add": 1, "Cast": 1, "MatMulInteger": 1, "Mul": 1, "QuantizeLinear": 1, "Relu": 1}
    (mm,) = [n for n in g if n.op == "MatMulInteger"]
    assert mm.meta["created_by"] == "lower_matmul_add" and g.meta["lower_skipped"] == []


def test_int8_activation_requantized_to_u8_plus_128():
    g, xs = quantized_linear(activation_scheme="int8")
    check_lowering("lower_integer", g, xs)
    (q,) = [n for n in g if n.op == "QuantizeLinear"]
    assert q.output.dtype.name == "uint8" and int(q.inputs[2].const) == 128
    (node,) = [n for n in g if n.op == "MatMulInteger"]
    assert node.inputs[0] is q.output and node.inputs[2].const.dtype == np.uint8


def test_gemm_trans_b_transposes_codes():
    g, xs = quantized_linear(rows=(9,), gemm=True, trans_b=True)
    result = check_lowering("lower_integer", g, xs)
    assert result.stats["rule:lower_gemm"] == 1
    (node,) = [n for n in g if n.op == "MatMulInteger"]
    assert node.inputs[1].type.shape == (64, 24)


def test_qlinear_needs_output_quantization():
    g, xs = quantized_linear(bias=False)
    (mm,) = [n for n in g if n.op == "MatMul"]
    b = Builder(g)
    relu = next(n for n in g if n.op == "Relu")
    y_s = b.const(np.float32(0.05))
    y_z = b.const(np.uint8(100))
    q = g.create_node("QuantizeLinear", [mm.output, y_s, y_z], after=mm)
    dq = g.create_node("DequantizeLinear", [q.output, y_s, y_z], after=q.outputs[0].producer)
    relu.set_input(0, dq.output)
    qdq_codes = run(probe(g, q.output.name), [xs])[0]
    result = lower(g, kernel="qlinear")
    assert result.stats["op:QLinearMatMul"] == 1
    (ql,) = [n for n in g if n.op == "QLinearMatMul"]
    codes = run(probe(g, ql.output.name), [xs])[0]
    # a runtime's requantization f32(acc) * f32(f32(a_s * w_s) / y_s) may round a tie the other way
    assert np.abs(codes.astype(np.int32) - qdq_codes.astype(np.int32)).max() <= 1
    ort_codes = ort_run(probe(g, ql.output.name), xs)
    assert np.abs(ort_codes.astype(np.int32) - qdq_codes.astype(np.int32)).max() <= 1


def test_embedding_gather_per_row_and_per_tensor():
    rng = np.random.default_rng(3)
    for scheme in ("int8-channel-axis0", "int8"):
        g = Graph("emb")
        b = Builder(g)
        ids = b.input("ids", tensor_type("int64", [2, 5]))
        g.outputs = [b.Gather(b.const(rng.standard_normal((40, 8)).astype(np.float32), name="t"), ids, axis=0)]
        get_pass("quantize", embedding_scheme=scheme)(g)
        ii = rng.integers(0, 40, (2, 5))
        qdq = run(g, [ii])[0]
        result = lower(g)
        assert result.stats["rule:lower_gather"] == 1
        # per row: Mul(Cast(Gather(codes)), Gather(scales)); per tensor: DequantizeLinear(Gather(codes))
        assert ("DequantizeLinear" in g.op_histogram()) == (scheme == "int8")
        (gather,) = [n for n in g if n.op == "Gather" and n.inputs[0].name == "t_q"]
        assert gather.inputs[0].dtype.name == "int8"
        np.testing.assert_array_equal(run(g, [ii])[0], qdq)
        np.testing.assert_array_equal(ort_run(g, ii), qdq)


def test_block_lowers_every_linear_and_keeps_float_ops():
    g, xs = block()
    stats = collect_stats(g, [{"x": xs}], runner="interpreter")
    get_pass("quantize", stats=stats)(g)
    qdq = run(g, [xs])[0]
    result = lower(g)
    hist = g.op_histogram()
    assert result.stats["op:MatMulInteger"] == 6 and "DequantizeLinear" not in hist
    assert hist["MatMul"] == 2 and hist["Softmax"] == 1 and hist["Gelu"] == 1 and hist["LayerNormalization"] == 3
    # 6 linears of at most 32 terms: the float32 rounding of the reference is far below 1e-5
    np.testing.assert_allclose(run(g, [xs])[0], qdq, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ort_run(g, xs), qdq, rtol=1e-5, atol=1e-5)


# -- (d) what is not lowered -----------------------------------------------------------------


def test_simulated_formats_stay_with_reasons():
    g, xs = quantized_linear(weight_scheme="fp8_e4m3-channel", activation_scheme="fp8_e4m3")
    text = g.to_text()
    result = lower(g)
    assert not result.changed
    assert g.meta["lower_skipped"] == [{"node": "fc", "op": "MatMul", "reason": "format fp8_e4m3 has no integer kernel"}]
    g.meta.pop("lower_skipped")
    assert g.to_text() == text
    g2, _ = quantized_linear(weight_scheme="mxfp4", activation_scheme="mxfp4")
    assert not lower(g2).changed
    assert "FakeQuantize" in g2.meta["lower_skipped"][0]["reason"]


def test_weight_only_layers_stay_with_reasons():
    g, _ = quantized_linear(weight_only=True, weight_scheme="int4-g32")
    result = lower(g)
    assert not result.changed and result.stats["skipped"] == 1
    assert "weight-only layer" in g.meta["lower_skipped"][0]["reason"]


def test_float_graph_is_refused_with_the_way_out():
    # Lowering a graph without Q/DQ is a pipeline that forgot to quantize: the pass's
    # "quantized tensors" requirement says so. (Activation products left float in a
    # quantized graph: test_block_lowers_every_linear_and_keeps_float_ops.)
    g, _ = block()
    text = g.to_text()
    sentence = ("pass 'lower_integer' requires quantized tensors (no QuantizeLinear, DequantizeLinear or "
                "FakeQuantize node in the graph): run 'quantize' (or 'llm_fp4') first")
    with pytest.raises(PassError, match=re.escape(sentence)):
        lower(g)
    assert g.to_text() == text


def test_qlinear_without_output_quantization_records_reason():
    g, _ = quantized_linear()
    result = lower(g, kernel="qlinear")
    assert not result.changed and result.stats["skipped"] == 1
    assert "QLinearMatMul needs a QuantizeLinear on the output" in g.meta["lower_skipped"][0]["reason"]


def test_unknown_kernel_raises():
    g, _ = quantized_linear()
    with pytest.raises(RequantError, match="unknown kernel 'integer_to_float'"):
        get_pass("lower_integer", kernel="integer_to_float")(g)
