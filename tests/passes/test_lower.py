"""Tests of the "lower_quant" pass (passes/lower.py).

(a) changed flag and stats; (b) structure: which kernel each pattern became, with
which operands; (c) numerics: the lowered graph against the Q/DQ graph it came from,
in the interpreter and in ONNX Runtime (after to_onnx), within float32 rounding: for
y = A @ W (+ b) with K terms, |lowered - qdq| <= (K + 3) u (|DQ(a)| @ |DQ(W)|) + 2 u |y|
(+ 1e-7 absolute), u = 2^-24 (the pass docstring derives it); Gather rewrites and
MatMulNBits in the interpreter are bitwise equal; (d) what must not be lowered, with
its recorded reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from requant.errors import RequantError
from requant.ir import Builder, Graph, dtypes, run, tensor_type
from requant.ir.quant_formats import dequantize_linear
from requant.passes import PassResult, get_pass
from requant.passes.calibration import collect_stats
from requant.passes.lower import pack_nbits
from requant.passes.quantize import smoothing_axes
from canonical_testing import run_pass
from quant_testing import block

F32 = "float32"
U = 2.0**-24


def lower(graph: Graph, **options) -> PassResult:
    return run_pass("lower_quant", graph, **options)


def quantized_linear(k: int = 64, n: int = 24, rows: tuple[int, ...] = (2, 7), seed: int = 0, bias: bool = True,
                     gemm: bool = False, trans_b: bool = False, **qopts) -> tuple[Graph, np.ndarray]:
    """A linear layer after "quantize" (Q/DQ form); returns it and a seeded input."""
    rng = np.random.default_rng(seed)
    g = Graph("linear")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [*rows, k]))
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    c = b.const((0.1 * rng.standard_normal(n)).astype(np.float32), name="b")
    if gemm:
        y = b.Gemm(x, b.const(w.T.copy() if trans_b else w, name="w"), c if bias else None, transB=int(trans_b))
    else:
        y = b.MatMul(x, b.const(w, name="w"), _name="fc")
        if bias:
            y = b.Add(y, c)
    g.outputs = [b.Relu(y)]
    xs = rng.standard_normal((*rows, k)).astype(np.float32)
    xs[..., 5] *= 8.0  # an outlier channel, as in transformers
    stats = None
    if not qopts.get("weight_only") and not qopts.get("dynamic"):
        stats = collect_stats(g, [{"x": xs}], runner="interpreter", per_channel_axis=smoothing_axes(g))
    get_pass("quantize", stats=stats, **qopts)(g)
    return g, xs


def dq_operands(g: Graph, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|DQ(a)| and |DQ(W)| of the Q/DQ graph's (single) quantized MatMul/Gemm, in float64."""
    (mm,) = [n for n in g if n.op in ("MatMul", "Gemm")]
    a_node, w_node = mm.inputs[0].producer, mm.inputs[1].producer
    w = dequantize_linear(*[v.const for v in w_node.inputs if v is not None], axis=w_node.attrs.get("axis", 1),
                          block_size=w_node.attrs.get("block_size", 0))
    if mm.op == "Gemm" and mm.attrs.get("transB", 0):
        w = w.T
    # run the Q/DQ graph up to the activation's DequantizeLinear output
    probe = g.clone()
    probe.outputs = [next(v for v in probe.values() if v.name == mm.inputs[0].name)]
    a = run(probe, [xs])[0] if a_node is not None else xs
    return np.abs(a.astype(np.float64)), np.abs(w.astype(np.float64))


def assert_within_rounding(actual: np.ndarray, qdq: np.ndarray, a: np.ndarray, w: np.ndarray) -> None:
    k = w.shape[0]
    bound = (k + 3) * U * (a @ w) + 2 * U * np.abs(qdq.astype(np.float64)) + 1e-7
    err = np.abs(actual.astype(np.float64) - qdq)
    assert np.all(err <= bound), f"max error {err.max():.3g}, max excess {np.max(err - bound):.3g}"


def ort_run(g: Graph, *inputs: np.ndarray) -> np.ndarray:
    pytest.importorskip("onnxruntime")
    from requant.backends.onnx import OnnxRuntimeSession, to_onnx

    return OnnxRuntimeSession(to_onnx(g))(*inputs)[0]


def check_lowering(g: Graph, xs: np.ndarray, **options) -> PassResult:
    """Lower `g`; assert the interpreter and ONNX Runtime agree with the Q/DQ graph."""
    qdq = run(g, [xs])[0]
    a, w = dq_operands(g, xs)
    result = lower(g, **options)
    assert_within_rounding(run(g, [xs])[0], qdq, a, w)
    assert_within_rounding(ort_run(g, xs), qdq, a, w)
    return result


# -- (a) + (b) + (c) per kernel ----------------------------------------------------------------


def test_static_u8_matmul_add_becomes_integer_to_float():
    g, xs = quantized_linear()
    result = check_lowering(g, xs)
    assert result.changed
    assert result.stats["rule:lower_matmul_add"] == 1 and result.stats["op:MatMulIntegerToFloat"] == 1
    assert result.stats["nodes_removed"] == 2 and result.stats["skipped"] == 0
    assert g.op_histogram() == {"MatMulIntegerToFloat": 1, "Mul": 1, "QuantizeLinear": 1, "Relu": 1}
    (node,) = [n for n in g if n.op == "MatMulIntegerToFloat"]
    names = [v.name if v is not None else None for v in node.inputs]
    # x is smoothed (x_scaled = x / s) and W's rows scaled before quantization
    assert names == ["x_scaled_q", "w_quantize_smooth_q", "x_scaled_scale", "w_quantize_smooth_scale",
                     "x_scaled_zero_point", None, "b"]
    assert node.meta["created_by"] == "lower_matmul_add" and g.meta["lower_skipped"] == []


def test_int8_activation_requantized_to_u8_plus_128():
    g, xs = quantized_linear(activation_scheme="int8", smooth_alpha=None)
    check_lowering(g, xs)
    (q,) = [n for n in g if n.op == "QuantizeLinear"]
    assert q.output.dtype.name == "uint8" and int(q.inputs[2].const) == 128
    (node,) = [n for n in g if n.op == "MatMulIntegerToFloat"]
    assert node.inputs[0] is q.output and node.inputs[4].const.dtype == np.uint8


def test_gemm_trans_b_transposes_codes():
    g, xs = quantized_linear(rows=(9,), gemm=True, trans_b=True)
    result = check_lowering(g, xs)
    assert result.stats["rule:lower_gemm"] == 1
    (node,) = [n for n in g if n.op == "MatMulIntegerToFloat"]
    assert node.inputs[1].type.shape == (64, 24) and node.inputs[6] is not None


def test_dynamic_becomes_dynamic_quantize_matmul():
    g, xs = quantized_linear(dynamic=True)
    result = check_lowering(g, xs)
    assert result.stats["op:DynamicQuantizeMatMul"] == 1
    assert g.op_histogram() == {"DynamicQuantizeMatMul": 1, "Relu": 1}
    (node,) = [n for n in g if n.op == "DynamicQuantizeMatMul"]
    assert node.inputs[0] is g.inputs[0]


@pytest.mark.parametrize("scheme", ["int4-g32", "uint4-g16", "int8-channel"])
def test_weight_only_becomes_matmul_nbits(scheme):
    g, xs = quantized_linear(k=80, weight_only=True, weight_scheme=scheme)  # K not a multiple of 32 / 128
    qdq = run(g, [xs])[0]
    result = check_lowering(g, xs)
    assert result.stats["op:MatMulNBits"] == 1
    (node,) = [n for n in g if n.op == "MatMulNBits"]
    bits = 8 if scheme.startswith("int8") else 4
    assert (node.attrs["bits"], node.attrs["K"], node.attrs["N"], node.attrs["accuracy_level"]) == (bits, 80, 24, 0)
    assert (node.inputs[3] is None) == (not scheme.startswith("uint4"))
    np.testing.assert_array_equal(run(g, [xs])[0], qdq)  # both dequantize then float32 matmul


def test_pack_nbits_layout():
    codes = np.arange(-8, 8, dtype=np.int8).repeat(2).reshape(32, 1)  # K=32, N=1
    packed, scales, zps = pack_nbits(codes, dtypes.int4, np.array([[0.5]], np.float32), None, 4, 32)
    assert packed.shape == (1, 1, 16) and zps is None and scales.tolist() == [0.5]
    # element 2j in the low nibble, 2j + 1 in the high nibble, codes stored + 8
    assert packed[0, 0, 0] == 0x00 and packed[0, 0, 1] == 0x11 and packed[0, 0, 15] == 0xFF


def test_integer_kernel_form():
    g, xs = quantized_linear()
    result = check_lowering(g, xs, kernel="integer")
    assert result.stats["op:MatMulInteger"] == 1
    # Mul: the smoothing of x, and the scale of the int32 accumulator
    assert g.op_histogram() == {"Add": 1, "Cast": 1, "MatMulInteger": 1, "Mul": 2, "QuantizeLinear": 1, "Relu": 1}


def test_qlinear_needs_output_quantization():
    g, xs = quantized_linear(bias=False, smooth_alpha=None)
    (mm,) = [n for n in g if n.op == "MatMul"]
    b = Builder(g)
    relu = next(n for n in g if n.op == "Relu")
    y_s = b.const(np.float32(0.05))
    y_z = b.const(np.uint8(100))
    q = g.create_node("QuantizeLinear", [mm.output, y_s, y_z], after=mm)
    dq = g.create_node("DequantizeLinear", [q.output, y_s, y_z], after=q.outputs[0].producer)
    relu.set_input(0, dq.output)
    qdq_codes = run(_probe(g, q.output.name), [xs])[0]
    result = lower(g, kernel="qlinear")
    assert result.stats["op:QLinearMatMul"] == 1
    (ql,) = [n for n in g if n.op == "QLinearMatMul"]
    codes = run(_probe(g, ql.output.name), [xs])[0]
    # ORT's requantization f32(acc) * f32(f32(a_s * w_s) / y_s) may round a tie the other way
    assert np.abs(codes.astype(np.int32) - qdq_codes.astype(np.int32)).max() <= 1
    ort_codes = ort_run(_probe(g, ql.output.name), xs)
    assert np.abs(ort_codes.astype(np.int32) - qdq_codes.astype(np.int32)).max() <= 1


def _probe(g: Graph, name: str) -> Graph:
    c = g.clone()
    c.outputs = [next(v for v in c.values() if v.name == name)]
    get_pass("dce")(c)
    return c


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
    stats = collect_stats(g, [{"x": xs}], runner="interpreter", per_channel_axis=smoothing_axes(g))
    get_pass("quantize", stats=stats)(g)
    qdq = run(g, [xs])[0]
    result = lower(g)
    hist = g.op_histogram()
    assert result.stats["op:MatMulIntegerToFloat"] == 6 and "DequantizeLinear" not in hist
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
    assert g.meta["lower_skipped"] == [{"node": "fc", "op": "MatMul",
                                        "reason": "format fp8_e4m3 has no integer kernel in ONNX Runtime"}]
    g.meta.pop("lower_skipped")
    assert g.to_text() == text
    g2, _ = quantized_linear(weight_scheme="mxfp4", activation_scheme="mxfp4")
    assert not lower(g2).changed
    assert "FakeQuantize" in g2.meta["lower_skipped"][0]["reason"]


def test_float_graph_and_activation_products_untouched():
    g, _ = block()
    text = g.to_text()
    result = lower(g)
    assert not result.changed and result.stats["skipped"] == 0
    g.meta.pop("lower_skipped")
    assert g.to_text() == text


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
