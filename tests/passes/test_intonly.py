"""Tests of the "intonly" pass (passes/intonly.py and its helpers intonly_convert /
_forms / _approx / _check).

(a) changed flag and stats; (b) structure: a quantized linear in Before/Expected form, the
ops a transformer block becomes; (c) numerics: the integer graph against the graph it was
given, on seeded inputs, within bounds stated per test from the representation (one
output step) or from the approximations' own error, and the integer graph bit for bit
across the interpreter, ONNX Runtime and TVM; (d) what must not change: an integer graph,
and an op with no integer form, which stays float and is named.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from requant.errors import PassError, RequantError
from requant.ir import Builder, Graph, dtypes, run, tensor_type
from requant.ir.ops.intonly import dyadic
from requant.passes.intonly_check import float_op_report
from requant.passes.intonly_forms import Form, IntRep, requantize

from canonical_testing import run_pass, seeded_inputs
from rewrite_testing import check_rewrite, check_unchanged

# -- (a) + (b) + (c): a quantized linear, Before/Expected -----------------------------------------

LINEAR = """
graph main(%x: f32[2,4]) -> (%y) {
  const %s: f32[] = 0.05
  const %zp: i8[] = 0
  const %w: i8[4,3] = [[1, -2, 3], [4, 5, -6], [-7, 8, 9], [10, -11, 12]]
  const %ws: f32[3] = [0.01, 0.02, 0.04]
  const %b: f32[3] = [0.5, -0.25, 0.125]
  %xq = QuantizeLinear(%x, %s, %zp)
  %xd = DequantizeLinear(%xq, %s, %zp)
  %wd = DequantizeLinear(%w, %ws) {axis=1}
  %m = MatMul(%xd, %wd)
  %y = Add(%m, %b)
}
"""

# the input quantizer writes the int8 codes moved up by 128 (uint8, zero point 128: the
# u8 x s8 product); the accumulator has scale 0.05 * ws per column and the bias; one
# Requantize rescales both into int32 codes of scale max(0.05 * ws) = 2e-3 (factors 1/4,
# 1/2, 1: multiplier 2^30, shifts 32, 31, 30), the bias as an offset before the shift
LINEAR_EXPECTED = """
graph main(%x: f32[2,4]) -> (%y) {
  const %s: f32[] = 0.05
  const %zpx: u8[] = 128
  const %zpm: u8[] = 128
  const %w: i8[4,3] = [[1, -2, 3], [4, 5, -6], [-7, 8, 9], [10, -11, 12]]
  const %off: i64[3] = [1073741832000, -268435458000, 67108864500]
  const %mult: i32[3] = [1073741824, 1073741824, 1073741824]
  const %shift: i32[3] = [32, 31, 30]
  const %t: f32[] = 0.002
  %xq: u8[2,4] = QuantizeLinear(%x, %s, %zpx)
  %acc: i32[2,3] = MatMulInteger(%xq, %w, %zpm)
  %codes: i32[2,3] = Requantize(%acc, %mult, %shift, %off) {to="int32"}
  %y: f32[2,3] = DequantizeLinear(%codes, %t)
}
"""


def test_quantized_linear_becomes_matmul_integer_and_one_dyadic_requantize():
    # y's codes round once (half a step, 1e-3) after an exact accumulation; the Q/DQ
    # graph sums float32 products (< 1e-6 here): the bound is half a step plus that
    result = check_rewrite("intonly", LINEAR, LINEAR_EXPECTED, options={"stats": {"y": (-4.0, 4.0)}},
                           tolerances={"float32": (0.0, 1e-3 + 1e-6)},
                           stats={"family": "shift", "integer_ops": 2, "float_ops": 0, "float_op_names": "none",
                                  "boundary": "x/input_quantizer_u8 (QuantizeLinear); y/output_dequantizer "
                                              "(DequantizeLinear)",
                                  "integer_op_types": "MatMulInteger x1, Requantize x1", "fallbacks": 0})
    codes = [n for n in result.graph if n.op == "Requantize"][0].output
    assert codes.meta["int_scale"] == pytest.approx(2e-3)  # the IR states the codes' scale, no float op does


def test_integer_graph_is_unchanged():
    g = _block()
    run_pass("intonly", g, batches=_batches(g), approx="shift")
    from requant.ir.text import print_graph

    check_unchanged("intonly", print_graph(g), stats={"float_ops": 0, "boundary": "; ".join(float_op_report(g).boundary)})


# -- a transformer block ----------------------------------------------------------------------


def _block(seed: int = 0, heads: int = 4, tokens: int = 6, width: int = 32) -> Graph:
    """x -> LayerNorm -> Q/K/V -> attention (bool mask) -> o-proj -> + x -> LayerNorm -> FFN
    (GELU) -> + : a post-norm encoder layer in canonical form, float weights."""
    rng = np.random.default_rng(seed)
    g = Graph("block")
    b = Builder(g)
    x = b.input("x", tensor_type("float32", [2, tokens, width]))
    mask = b.input("mask", tensor_type("bool", [2, 1, 1, tokens]))

    def w(*shape, s=0.4):
        return b.const(rng.normal(0, s, shape).astype(np.float32))

    def linear(h, n_in, n_out):
        return b.Add(b.MatMul(h, w(n_in, n_out)), w(n_out, s=0.1))

    h = b.LayerNormalization(x, w(width, s=1.0), w(width, s=0.2))
    d = width // heads

    def split_heads(t):
        return b.Transpose(b.Reshape(t, b.const(np.array([2, tokens, heads, d]))), perm=[0, 2, 1, 3])

    q, k, v = (split_heads(linear(h, width, width)) for _ in range(3))
    att = b.ScaledDotProductAttention(q, k, v, mask)
    att = b.Reshape(b.Transpose(att, perm=[0, 2, 1, 3]), b.const(np.array([2, tokens, width])))
    h2 = b.LayerNormalization(b.Add(linear(att, width, width), h), w(width, s=1.0), w(width, s=0.2))
    ffn = linear(b.Gelu(linear(h2, width, 4 * width)), 4 * width, width)
    g.outputs = [b.Add(ffn, h2)]
    return g


def _batches(g: Graph, count: int = 4) -> list[dict[str, np.ndarray]]:
    return [seeded_inputs(g, 100 + i) for i in range(count)]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# The integer block against the float one, on the calibration batches (so no value lies
# outside the calibrated ranges): each 8-bit quantization of a tensor of range R adds noise
# of std R / (127 sqrt 12), about 1% of a tensor whose std is R / 4, i.e. 1 - cosine ~ 5e-5;
# about a dozen quantized tensors lie on the way, and the softmax / GELU approximations add
# less than that (GELU: 2e-2 absolute at worst, I-ViT's and I-BERT's forms): 1 - cosine ~
# 1e-3 expected, bounded here at 1e-2.
_MIN_COSINE = 0.99


@pytest.mark.parametrize("approx", ["shift", "poly", "fine"])
def test_block_becomes_integer_only_and_stays_close_to_float(approx):
    g = _block()
    reference = g.clone()
    batches = _batches(g)
    result = run_pass("intonly", g, batches=batches, approx=approx, strict=True)
    assert result.changed and result.stats["float_ops"] == 0 and result.stats["fallbacks"] == 0
    softmax, gelu = {"shift": ("Shiftmax", "ShiftGELU"), "poly": ("PolySoftmax", "PolyGELU"),
                     "fine": ("PolySoftmax", "TanhGELU")}[approx]
    ops = g.op_histogram()
    assert ops[softmax] == 1 and ops[gelu] == 1 and ops["ILayerNorm"] == 2 and ops["DyadicAdd"] == 2
    assert ops["MatMulInteger"] == 8  # six linears, Q @ K^T, P @ V
    assert not any(n.op in ("MatMul", "LayerNormalization", "Gelu", "ScaledDotProductAttention", "Softmax")
                   for n in g)
    report = float_op_report(g)
    assert report.float_ops == [] and [b.split("/")[1] for b in report.boundary] == [
        "input_quantizer (QuantizeLinear)", "output_dequantizer (DequantizeLinear)"]
    for feed in batches:
        assert _cosine(run(g, feed)[0], run(reference, feed)[0]) >= _MIN_COSINE


def test_block_runs_bit_for_bit_on_onnx_runtime():
    pytest.importorskip("onnxruntime")
    from requant.backends.onnx import OnnxRuntimeSession, to_onnx

    g = _block(seed=3)
    run_pass("intonly", g, batches=_batches(g), approx="poly")
    session = OnnxRuntimeSession(to_onnx(g))
    for seed in (0, 1):
        feed = seeded_inputs(g, seed)
        np.testing.assert_array_equal(session(*[feed[v.name] for v in g.inputs])[0], run(g, feed)[0])


def test_block_runs_bit_for_bit_on_tvm():
    pytest.importorskip("tvm")
    from tvm_testing import compile_graph, run_tvm

    g = _block(seed=4)
    run_pass("intonly", g, batches=_batches(g), approx="fine")
    vm = compile_graph(g)
    feed = seeded_inputs(g, 0)
    np.testing.assert_array_equal(run_tvm(vm, g, feed)[0], run(g, feed)[0])


def test_auto_picks_the_family_closest_to_the_given_graph():
    g = _block(seed=5)
    result = run_pass("intonly", g, batches=_batches(g), approx="auto", runner="interpreter")
    errors = {k.split(":")[1]: v for k, v in result.stats.items() if k.startswith("error:")}
    assert set(errors) == {"shift", "poly", "fine"}
    assert result.stats["family"] == min(errors, key=errors.get)


def test_auto_needs_batches():
    with pytest.raises(PassError, match="approx='auto'"):
        run_pass("intonly", _block(), approx="auto", stats={})


# -- (d) what has no integer form --------------------------------------------------------------

SOFTPLUS = """
graph main(%x: f32[2,4]) -> (%y) {
  const %w: f32[4,4] = [[0.5, -0.25, 0.125, 1.0], [0.25, 0.5, -0.5, 0.0], [1.0, 0.0, 0.25, -0.75], [0.0, 0.5, 0.5, 0.5]]
  %m = MatMul(%x, %w)
  %s = Softplus(%m)
  %y = MatMul(%s, %w)
}
"""


def test_op_without_integer_form_stays_float_and_is_named():
    from requant import ir

    g = ir.parse(SOFTPLUS)
    feeds = [seeded_inputs(g, s) for s in range(3)]
    result = run_pass("intonly", g, batches=feeds)
    assert result.stats["float_ops"] == 3 and result.stats["fallbacks"] == 1
    names = result.stats["float_op_names"]
    assert "(Softplus)" in names and "(DequantizeLinear)" in names and "(QuantizeLinear)" in names
    assert len(g.meta["intonly"]["fallbacks"]) == 1 and "Softplus" in g.meta["intonly"]["fallbacks"][0]


def test_strict_refuses_a_float_op_by_name():
    from requant import ir

    g = ir.parse(SOFTPLUS)
    with pytest.raises(PassError, match="Softplus"):
        run_pass("intonly", g, batches=[seeded_inputs(g, 0)], strict=True)


def test_missing_statistics_name_the_value():
    from requant import ir

    g = ir.parse(SOFTPLUS)
    with pytest.raises(PassError, match="no calibration statistics for %"):
        run_pass("intonly", g, stats={})


def test_bad_options_are_refused():
    with pytest.raises(PassError, match="approx must be one of"):
        run_pass("intonly", _block(), approx="cubic", stats={})


# -- the pieces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1.0, 0.5, 0.731, 3.0e-4, 2.0e-9, 1234.5, -0.02])
def test_dyadic_multiplier_and_shift(factor):
    mult, shift = dyadic(factor)
    assert 2**30 <= abs(int(mult)) < 2**31 and 0 <= int(shift) <= 62
    assert abs(int(mult) * 2.0 ** -int(shift) - factor) <= abs(factor) * 2.0**-31


def test_requantize_keeps_a_large_offset_with_a_tiny_factor_in_int64():
    # a LayerNorm's int32 output (scale ~ gamma sqrt(N) / 2^30) into uint8 of scale 0.2,
    # with beta = 120 and zero point 128: the offset in output units is 728, the factor
    # ~1e-8; at the factor's own shift (58) the offset would need 2^67
    g = Graph("rq")
    b = Builder(g)
    codes = b.input("y", tensor_type("int32", [5]))
    scale = 2.0e-9
    rep = IntRep.make(codes, scale, 120.0)
    g.outputs = [requantize(b, rep, Form(dtypes.uint8, 0.2, 128))]
    y = np.array([-(2**30), -(10**8), 0, 10**8, 2**30], np.int32)
    want = np.clip(np.round(y * scale / 0.2 + 120.0 / 0.2 + 128), 0, 255)
    np.testing.assert_array_equal(run(g, {"y": y})[0], want)


def test_float_op_report_names_boundary_and_float_ops():
    from requant import ir

    g = ir.parse("""
graph main(%x: f32[3]) -> (%y) {
  const %s: f32[] = 0.1
  const %z: i8[] = 0
  %q = QuantizeLinear(%x, %s, %z) @"xq"
  %r = Relu(%q)
  %d = DequantizeLinear(%r, %s) @"d1"
  %e = Exp(%d) @"exp"
  %q2 = QuantizeLinear(%e, %s, %z) @"q2"
  %y = DequantizeLinear(%q2, %s) @"yd"
}
""")
    report = float_op_report(g)
    assert report.boundary == ["xq (QuantizeLinear)", "yd (DequantizeLinear)"]
    assert report.float_ops == ["d1 (DequantizeLinear)", "exp (Exp)", "q2 (QuantizeLinear)"]
    assert report.integer_ops == {"Relu": 1} and not report.integer_only


def test_patch_embedding_conv_becomes_patches_and_matmul_integer():
    rng = np.random.default_rng(7)
    g = Graph("patches")
    b = Builder(g)
    x = b.input("x", tensor_type("float32", [2, 3, 8, 8]))
    y = b.Conv(x, b.const(rng.normal(0, 0.3, (16, 3, 4, 4)).astype(np.float32)),
               b.const(rng.normal(0, 0.1, 16).astype(np.float32)), kernel_shape=[4, 4], strides=[4, 4])
    g.outputs = [y]
    reference = g.clone()
    result = run_pass("intonly", g, batches=_batches(g))
    assert result.stats["float_ops"] == 0 and g.op_histogram()["MatMulInteger"] == 1
    assert "Conv" not in g.op_histogram()
    feed = seeded_inputs(g, 0)
    # 8-bit input and weights over 48 products: a cosine of 0.999 is 5x the expected loss
    assert _cosine(run(g, feed)[0], run(reference, feed)[0]) >= 0.999


def test_causal_attention_masks_with_a_constant():
    rng = np.random.default_rng(8)
    g = Graph("causal")
    b = Builder(g)
    q, k, v = (b.input(n, tensor_type("float32", [1, 2, 5, 4])) for n in "qkv")
    g.outputs = [b.ScaledDotProductAttention(q, k, v, is_causal=1)]
    reference = g.clone()
    run_pass("intonly", g, batches=_batches(g), approx="fine")
    (softmax,) = [n for n in g if n.op == "PolySoftmax"]
    mask = softmax.inputs[1]
    assert mask.const is not None and np.array_equal(mask.const, np.tril(np.ones((5, 5), bool)))
    feed = {n: rng.normal(0, 1, (1, 2, 5, 4)).astype(np.float32) for n in "qkv"}
    # int8 Q, K, V and probabilities to 2^-8: the first query attends to one key exactly
    out, want = run(g, feed)[0], run(reference, feed)[0]
    assert _cosine(out, want) >= 0.995
    np.testing.assert_allclose(out[:, :, 0], want[:, :, 0], atol=2 * np.abs(feed["v"]).max() / 127)


def _biased_attention(bias: np.ndarray | None) -> Graph:
    """Swin-style window attention: a constant float mask (a relative position bias and a
    shifted window's -100s) added to the scores; None: the mask is a graph input."""
    g = Graph("biased")
    b = Builder(g)
    q, k, v = (b.input(n, tensor_type("float32", [2, 2, 6, 4])) for n in "qkv")
    mask = b.input("mask", tensor_type("float32", [1, 2, 6, 6])) if bias is None else b.const(bias)
    g.outputs = [b.ScaledDotProductAttention(q, k, v, mask)]
    return g


def _window_bias(seed: int = 9) -> np.ndarray:
    bias = np.random.default_rng(seed).normal(0, 0.5, (1, 2, 6, 6))
    bias[:, 1, :3, 3:] = bias[:, 1, 3:, :3] = -100.0  # head 1: two regions that must not attend to each other
    return bias.astype(np.float32)


def test_attention_with_a_constant_float_mask_adds_it_to_the_integer_scores():
    bias = _window_bias()
    g = _biased_attention(bias)
    reference = g.clone()
    batches = _batches(g)
    result = run_pass("intonly", g, batches=batches, approx="poly", strict=True)
    assert result.changed and result.stats["float_ops"] == 0 and result.stats["fallbacks"] == 0
    (add,) = [n for n in g if n.op == "Add"]
    scores = add.inputs[0]
    assert scores.producer.op == "MatMulInteger" and add.inputs[1].dtype == dtypes.int32
    assert [n.op for n in add.outputs[0].users] == ["Requantize"]
    codes = add.inputs[1].const  # the bias in units of the scores' scale: the -100s the most negative
    unit = 100.0 / -float(codes.min())
    assert np.abs(codes - np.round(bias.astype(np.float64) / unit)).max() <= 1
    for feed in batches:
        out, want = run(g, feed)[0], run(reference, feed)[0]
        assert _cosine(out, want) >= _MIN_COSINE
        # head 1: the first region's queries read only the first region's values, as in float
        assert np.abs(out[:, 1, :3] - want[:, 1, :3]).max() <= 4 * np.abs(feed["v"]).max() / 127


def test_attention_with_a_computed_float_mask_stays_float():
    g = _biased_attention(None)
    result = run_pass("intonly", g, batches=_batches(g))
    assert result.stats["fallbacks"] == 1 and "(ScaledDotProductAttention)" in result.stats["float_op_names"]


POOL = """
graph main(%x: f32[2,3,4,8]) -> (%y) {
  const %axes: i64[2] = [1, 2]
  %y = ReduceMean(%x, %axes) {keepdims=0}
}
"""


def test_global_average_pool_becomes_an_int32_sum_with_the_scale_over_the_count():
    from requant.ir import parse

    g = parse(POOL)
    reference = g.clone()
    batches = _batches(g)
    result = run_pass("intonly", g, batches=batches, strict=True)
    assert result.changed and result.stats["float_ops"] == 0
    (total,) = [n for n in g if n.op == "ReduceSum"]
    assert total.outputs[0].dtype == dtypes.int32 and total.inputs[0].producer.op == "Cast"
    assert not any(n.op == "ReduceMean" for n in g)
    for feed in batches:
        out, want = run(g, feed)[0], run(reference, feed)[0]
        # int8 input codes (the input quantizer's scale: amax / 127), the mean of 12 exact
        np.testing.assert_allclose(out, want, atol=np.abs(feed["x"]).max() / 127)


def test_mean_over_a_symbolic_axis_stays_float():
    from requant.ir import parse

    g = parse(POOL.replace("f32[2,3,4,8]", "f32[2,n,4,8]"))
    result = run_pass("intonly", g, batches=[{"x": np.ones((2, 3, 4, 8), np.float32)}])
    assert result.stats["fallbacks"] == 1 and "(ReduceMean)" in result.stats["float_op_names"]


def test_grouped_query_attention_stays_float():
    g = Graph("gqa")
    b = Builder(g)
    q = b.input("q", tensor_type("float32", [1, 4, 3, 4]))
    k, v = (b.input(n, tensor_type("float32", [1, 2, 3, 4])) for n in "kv")
    g.outputs = [b.ScaledDotProductAttention(q, k, v)]
    result = run_pass("intonly", g, batches=_batches(g))
    assert result.stats["fallbacks"] == 1 and "(ScaledDotProductAttention)" in result.stats["float_op_names"]
    assert math.isfinite(float(run(g, seeded_inputs(g, 0))[0].sum()))


def test_strict_declares_integer_only():
    from requant.passes import get_pass

    assert [c.name for c in get_pass("intonly", strict=True).ensures] == ["integer-only"]
    assert get_pass("intonly").ensures == ()


def test_options_errors_are_requant_errors():
    with pytest.raises(RequantError):
        from requant.passes.intonly import intonly

        intonly.fn(_block(), residual_bits=12, stats={})
