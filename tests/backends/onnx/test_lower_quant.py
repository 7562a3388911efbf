"""Tests of the ONNX backend's "lower_quant" pass (backends/onnx/lower_quant.py): Q/DQ ->
ONNX Runtime's com.microsoft kernels (QAttention: test_lower_quant_attention.py).

(a) changed flag and stats; (b) structure: which kernel each pattern became, with which
operands; (c) numerics: the lowered graph against the Q/DQ graph it came from, in the
interpreter and in ONNX Runtime, within the float32 rounding bound of
tests/lower_testing.py; (d) what must not be lowered, with its recorded reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from requant.backends.onnx.lower_quant import pack_nbits
from requant.errors import RequantError
from requant.ir import dtypes, run
from requant.passes import PassResult, get_pass
from requant.passes.calibration import collect_stats

from canonical_testing import run_pass
from lower_testing import assert_within_rounding, check_lowering, dq_operands, ort_run, quantized_linear
from quant_testing import block

MS = "com.microsoft."


def lower(graph, **options) -> PassResult:
    return run_pass("lower_quant", graph, **options)


# -- (a) + (b) + (c) per kernel ----------------------------------------------------------------


def test_static_u8_matmul_add_becomes_integer_to_float():
    g, xs = quantized_linear()
    result = check_lowering("lower_quant", g, xs)
    assert result.changed
    assert result.stats["rule:lower_matmul_add"] == 1 and result.stats[f"op:{MS}MatMulIntegerToFloat"] == 1
    assert result.stats["nodes_removed"] == 2 and result.stats["skipped"] == 0
    assert g.op_histogram() == {f"{MS}MatMulIntegerToFloat": 1, "QuantizeLinear": 1, "Relu": 1}
    (node,) = [n for n in g if n.op == f"{MS}MatMulIntegerToFloat"]
    names = [v.name if v is not None else None for v in node.inputs]
    assert names == ["x_q", "w_q", "x_scale", "w_scale", "x_zero_point", None, "b"]
    assert node.meta["created_by"] == "lower_matmul_add" and g.meta["lower_skipped"] == []


def test_int8_activation_requantized_to_u8_plus_128():
    g, xs = quantized_linear(activation_scheme="int8")
    check_lowering("lower_quant", g, xs)
    (q,) = [n for n in g if n.op == "QuantizeLinear"]
    assert q.output.dtype.name == "uint8" and int(q.inputs[2].const) == 128
    (node,) = [n for n in g if n.op == f"{MS}MatMulIntegerToFloat"]
    assert node.inputs[0] is q.output and node.inputs[4].const.dtype == np.uint8


def test_gemm_trans_b_transposes_codes():
    g, xs = quantized_linear(rows=(9,), gemm=True, trans_b=True)
    result = check_lowering("lower_quant", g, xs)
    assert result.stats["rule:lower_gemm"] == 1
    (node,) = [n for n in g if n.op == f"{MS}MatMulIntegerToFloat"]
    assert node.inputs[1].type.shape == (64, 24) and node.inputs[6] is not None


def test_dynamic_becomes_dynamic_quantize_matmul():
    g, xs = quantized_linear(dynamic=True)
    result = check_lowering("lower_quant", g, xs)
    assert result.stats[f"op:{MS}DynamicQuantizeMatMul"] == 1
    assert g.op_histogram() == {f"{MS}DynamicQuantizeMatMul": 1, "Relu": 1}
    (node,) = [n for n in g if n.op == f"{MS}DynamicQuantizeMatMul"]
    assert node.inputs[0] is g.inputs[0]


@pytest.mark.parametrize("scheme", ["int4-g32", "uint4-g16", "int8-channel"])
def test_weight_only_becomes_matmul_nbits(scheme):
    g, xs = quantized_linear(k=80, weight_only=True, weight_scheme=scheme)  # K not a multiple of 32 / 128
    qdq = run(g, [xs])[0]
    a, w = dq_operands(g, xs)
    result = check_lowering("lower_quant", g, xs)
    assert result.stats[f"op:{MS}MatMulNBits"] == 1
    (node,) = [n for n in g if n.op == f"{MS}MatMulNBits"]
    bits = 8 if scheme.startswith("int8") else 4
    assert (node.attrs["bits"], node.attrs["K"], node.attrs["N"], node.attrs["accuracy_level"]) == (bits, 80, 24, 0)
    assert (node.inputs[3] is None) == (not scheme.startswith("uint4"))
    # both forms dequantize the same float32 weights, then multiply in float32: equal up
    # to the summation order of whichever matmul kernel runs (AVX2 and AVX-512 differ)
    assert_within_rounding(run(g, [xs])[0], qdq, a, w)


def test_pack_nbits_layout():
    codes = np.arange(-8, 8, dtype=np.int8).repeat(2).reshape(32, 1)  # K=32, N=1
    packed, scales, zps = pack_nbits(codes, dtypes.int4, np.array([[0.5]], np.float32), None, 4, 32)
    assert packed.shape == (1, 1, 16) and zps is None and scales.tolist() == [0.5]
    # element 2j in the low nibble, 2j + 1 in the high nibble, codes stored + 8
    assert packed[0, 0, 0] == 0x00 and packed[0, 0, 1] == 0x11 and packed[0, 0, 15] == 0xFF


def test_integer_kernel_is_the_standard_form():
    g, xs = quantized_linear()
    result = check_lowering("lower_quant", g, xs, kernel="integer")
    assert result.stats["op:MatMulInteger"] == 1
    assert g.op_histogram() == {"Add": 1, "Cast": 1, "MatMulInteger": 1, "Mul": 1, "QuantizeLinear": 1, "Relu": 1}


def test_block_lowers_every_linear_and_keeps_float_ops():
    g, xs = block()
    stats = collect_stats(g, [{"x": xs}], runner="interpreter")
    get_pass("quantize", stats=stats)(g)
    qdq = run(g, [xs])[0]
    result = lower(g, kernel="integer_to_float")
    hist = g.op_histogram()
    assert result.stats[f"op:{MS}MatMulIntegerToFloat"] == 6 and "DequantizeLinear" not in hist
    assert hist["MatMul"] == 2 and hist["Softmax"] == 1 and hist["Gelu"] == 1 and hist["LayerNormalization"] == 3
    # 6 linears of at most 32 terms: the float32 rounding of the reference is far below 1e-5
    np.testing.assert_allclose(run(g, [xs])[0], qdq, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ort_run(g, xs), qdq, rtol=1e-5, atol=1e-5)


# -- (d) what is not lowered -----------------------------------------------------------------


def test_simulated_formats_stay_with_reasons():
    g, xs = quantized_linear(weight_scheme="fp8_e4m3-channel", activation_scheme="fp8_e4m3")
    result = lower(g)
    assert not result.changed
    assert g.meta["lower_skipped"] == [{"node": "fc", "op": "MatMul", "reason": "format fp8_e4m3 has no integer kernel"}]


@pytest.mark.parametrize("kernel, reason", [
    ("dynamic", "kernel 'dynamic' needs DynamicQuantizeLinear activations"),
    ("qlinear", "QLinearMatMul needs a QuantizeLinear on the output"),
    ("nbits", "kernel 'nbits' does not apply"),
    ("qdq", "kernel 'qdq' keeps Q/DQ"),
])
def test_kernel_that_does_not_apply_records_reason(kernel, reason):
    g, _ = quantized_linear()
    result = lower(g, kernel=kernel)
    assert not result.changed and result.stats["skipped"] == 1
    assert reason in g.meta["lower_skipped"][0]["reason"]


def test_unknown_kernel_raises():
    g, _ = quantized_linear()
    with pytest.raises(RequantError, match="unknown kernel 'vnni'"):
        get_pass("lower_quant", kernel="vnni")(g)
