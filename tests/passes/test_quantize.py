"""Tests of the "quantize" pass (passes/quantize.py, passes/quantize_insert.py).

(a) changed flag and stats; (b) structure: op histogram, which values carry
meta["quant"], LayerNorm / Softmax / Gelu / residual Add untouched; (c) numerics against
the float graph in the interpreter, within bounds computed from the scales the pass
chose (for y = x @ W with per-tensor activation scale s_a and per-column weight scales
s_w[n]: |y_q - y| <= s_a/2 sum_k |W_kn| + s_w[n]/2 sum_k |x_mk| + K s_a s_w[n] / 4, plus
float32 rounding); (d) what must stay float, with its recorded reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from requant.errors import RequantError
from requant.ir import Builder, Graph, run, tensor_type
from requant.ir.graph import Value
from requant.ir.quant_formats import QuantScheme, fake_quantize, parse_scheme
from requant.passes import PassResult, get_pass
from requant.passes.calibration import collect_stats
from canonical_testing import run_pass as run_named_pass
from quant_testing import block

F32 = "float32"
U = 2.0**-24  # float32 unit roundoff


def run_pass(graph: Graph, **options) -> PassResult:
    """Run "quantize" through a verifying PassManager."""
    return run_named_pass("quantize", graph, **options)


def linear(k: int = 32, n: int = 16, rows: tuple[int, ...] = (3, 5), seed: int = 0, bias: bool = True,
           outlier: float = 0.0) -> tuple[Graph, np.ndarray]:
    """y = x @ W (+ b), x float32 [*rows, k]; returns the graph and a seeded input."""
    rng = np.random.default_rng(seed)
    g = Graph("linear")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [*rows, k]))
    w = b.const((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), name="w")
    y = b.MatMul(x, w, _name="fc")
    if bias:
        y = b.Add(y, b.const((0.1 * rng.standard_normal(n)).astype(np.float32), name="b"))
    g.outputs = [y]
    xs = rng.standard_normal((*rows, k)).astype(np.float32)
    if outlier:
        xs[..., 3] *= outlier
    return g, xs


def calibrate(graph: Graph, *batches: np.ndarray) -> dict:
    return collect_stats(graph, [{"x": x} for x in batches], runner="interpreter")


def producer_op(v: Value | None) -> str | None:
    return None if v is None or v.producer is None else v.producer.op


def const_named(graph: Graph, name: str) -> np.ndarray:
    for v in graph.constants:
        if v.name == name:
            return np.asarray(v.const)
    raise KeyError(name)


def linear_bound(xs: np.ndarray, w: np.ndarray, s_a: float, s_w: np.ndarray) -> np.ndarray:
    """Elementwise bound on |x_q @ W_q - x @ W| (module docstring), plus rounding slack."""
    k = w.shape[0]
    ax, aw = np.abs(xs.astype(np.float64)), np.abs(w.astype(np.float64))
    bound = s_a / 2 * aw.sum(axis=0) + (s_w / 2) * ax.sum(axis=-1, keepdims=True) + k * s_a * s_w / 4
    return bound + 4 * k * U * (ax @ aw) + 1e-6


# -- (a) changed flag and stats ---------------------------------------------------------------


def test_linear_layer_stats_and_bytes():
    g, xs = linear(k=32, n=16)
    result = run_pass(g, stats=calibrate(g, xs))
    assert result.changed
    s = result.stats
    assert (s["ops_quantized"], s["weights_quantized"], s["activations_quantized"]) == (1, 1, 1)
    assert s["tensors_quantized"] == 2 and s["embeddings_quantized"] == 0 and s["skipped"] == 0
    # before: W f32 [32, 16] + b f32 [16]; after: W i8 + its scales f32 [16] + b + x's scale f32 and zero point u8
    assert s["bytes_before"] == 32 * 16 * 4 + 16 * 4
    assert s["bytes_after"] == 32 * 16 + 16 * 4 + 16 * 4 + 4 + 1
    assert result.graph.meta["quant_skipped"] == []


def test_int4_weight_only_counts_half_bytes():
    g, _ = linear(k=64, n=8, bias=False)
    s = run_pass(g, weight_only=True, weight_scheme="int4-g32").stats
    assert s["weights_quantized"] == 1 and s["activations_quantized"] == 0
    # 64 x 8 int4 codes = 256 bytes, scales [2, 8] f32
    assert s["bytes_after"] == 64 * 8 // 2 + 2 * 8 * 4


def test_block_stats_and_skips():
    g, xs = block()
    s = run_pass(g, stats=calibrate(g, xs)).stats
    assert s["ops_quantized"] == 6 and s["weights_quantized"] == 6
    # Q/K/V share one activation: one QuantizeLinear, three DequantizeLinear
    assert s["activations_quantized"] == 6
    assert s["skipped"] == 2
    skipped = {e["node"]: e for e in g.meta["quant_skipped"]}
    assert set(skipped) == {"attn.scores", "attn.context"}
    assert all(e["op"] == "MatMul" and e["reason"].startswith("weight not constant") for e in skipped.values())


# -- (b) structure ------------------------------------------------------------------------------


def test_block_structure_keeps_float_ops_untouched():
    g, xs = block()
    before = g.op_histogram()
    float_inputs = {n.name: list(n.inputs) for n in g if n.op in ("LayerNormalization", "Softmax", "Gelu")
                    or (n.name or "").startswith("residual")}
    run_pass(g, stats=calibrate(g, xs))
    after = g.op_histogram()
    # 4 distinct quantized activations (ln0 out, context, ln1 out, gelu out)
    assert after["QuantizeLinear"] == 4
    assert after["DequantizeLinear"] == 12  # 6 weights + one per activation reader
    for op in ("LayerNormalization", "Softmax", "Gelu", "Add", "Transpose", "Mul"):
        assert after[op] == before[op]
    for node in g:
        if node.name in float_inputs:
            assert list(node.inputs) == float_inputs[node.name], f"{node.name} was rewired"
            assert all(producer_op(v) not in ("DequantizeLinear", "QuantizeLinear") for v in node.inputs)
    for node in g:
        if node.name in ("attn.scores", "attn.context"):
            assert all(producer_op(v) != "DequantizeLinear" for v in node.inputs)
        elif node.op == "MatMul":
            assert [producer_op(v) for v in node.inputs] == ["DequantizeLinear", "DequantizeLinear"]


def test_meta_quant_on_codes_and_dequantized_values():
    g, xs = linear()
    run_pass(g, stats=calibrate(g, xs))
    tagged = {v.name: v.meta["quant"] for v in g.values() if "quant" in v.meta}
    assert tagged == {
        "w_q": QuantScheme("int8", "channel", axis=1).to_attrs(),
        "w_dq": QuantScheme("int8", "channel", axis=1).to_attrs(),
        "x_q": QuantScheme("uint8", "tensor", symmetric=False).to_attrs(),
        "x_dq": QuantScheme("uint8", "tensor", symmetric=False).to_attrs(),
    }
    assert "w" not in {v.name for v in g.constants}  # the float weight is gone
    (fc,) = [n for n in g if n.op == "MatMul"]
    assert [v.name for v in fc.inputs] == ["x_dq", "w_dq"]
    assert all(n.meta.get("created_by") == "quantize" for n in g if n.op.endswith("QuantizeLinear"))


def test_gemm_trans_b_weight_axis_and_conv_axis():
    rng = np.random.default_rng(2)
    g = Graph("gc")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [4, 8]))
    y = b.Gemm(x, b.const(rng.standard_normal((6, 8)).astype(np.float32), name="wt"), transB=1)
    img = b.input("img", tensor_type(F32, [1, 3, 5, 5]))
    z = b.Conv(img, b.const(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), name="k"))
    g.outputs = [y, z]
    stats = collect_stats(g, [{"x": rng.standard_normal((4, 8)).astype(np.float32),
                               "img": rng.standard_normal((1, 3, 5, 5)).astype(np.float32)}], runner="interpreter")
    run_pass(g, stats=stats)
    dq = {n.outputs[0].name: n for n in g if n.op == "DequantizeLinear"}
    assert dq["wt_dq"].attrs["axis"] == 0 and const_named(g, "wt_scale").shape == (6,)
    assert dq["k_dq"].attrs["axis"] == 0 and const_named(g, "k_scale").shape == (4,)


def test_embedding_table_per_row():
    rng = np.random.default_rng(3)
    g = Graph("emb")
    b = Builder(g)
    ids = b.input("ids", tensor_type("int64", [2, 5]))
    table = (rng.standard_normal((50, 8)) * rng.uniform(0.1, 3.0, (50, 1))).astype(np.float32)
    g.outputs = [b.Gather(b.const(table, name="table"), ids, axis=0)]
    s = run_pass(g).stats  # weight-only tables need no statistics
    assert s["embeddings_quantized"] == 1 and s["bytes_after"] == 50 * 8 + 50 * 4
    (dq,) = [n for n in g if n.op == "DequantizeLinear"]
    assert dq.attrs["axis"] == 0 and dq.output.meta["quant"]["granularity"] == "channel"
    ii = rng.integers(0, 50, (2, 5))
    out = run(g, [ii])[0]
    scale = const_named(g, "table_scale")
    assert np.all(np.abs(out - table[ii]) <= scale[ii][..., None] / 2 * (1 + 1e-6))


def test_simulated_formats_use_fakequantize_and_fp8_uses_qdq():
    g, xs = linear(k=64, n=8, bias=False)
    run_pass(g, stats=calibrate(g, xs), weight_scheme="nvfp4", activation_scheme="mxfp4")
    assert g.op_histogram() == {"FakeQuantize": 2, "MatMul": 1}
    g2, _ = linear(k=64, n=8, bias=False)
    run_pass(g2, stats=calibrate(g2, xs), weight_scheme="fp8_e4m3-channel", activation_scheme="fp8_e4m3")
    assert g2.op_histogram() == {"DequantizeLinear": 2, "MatMul": 1, "QuantizeLinear": 1}
    assert const_named(g2, "w_q").dtype.name == "float8_e4m3fn"


# -- (c) numerics -------------------------------------------------------------------------------


def test_w8a8_linear_within_scale_bound():
    g, xs = linear(k=64, n=24, bias=False)
    w = np.asarray([v for v in g.constants if v.name == "w"][0].const)
    ref = run(g, [xs])[0]
    run_pass(g, stats=calibrate(g, xs))
    out = run(g, [xs])[0]
    bound = linear_bound(xs, w, float(const_named(g, "x_scale")), const_named(g, "w_scale"))
    err = np.abs(out.astype(np.float64) - ref)
    assert np.all(err <= bound), f"max excess {np.max(err - bound)}"
    assert err.max() > 0  # it did quantize


def test_int8_symmetric_activations_within_scale_bound():
    g, xs = linear(k=48, n=8, bias=False, seed=4)
    w = np.asarray([v for v in g.constants if v.name == "w"][0].const)
    ref = run(g, [xs])[0]
    run_pass(g, stats=calibrate(g, xs), activation_scheme="int8")
    assert const_named(g, "x_zero_point").dtype == np.int8 and int(const_named(g, "x_zero_point")) == 0
    out = run(g, [xs])[0]
    bound = linear_bound(xs, w, float(const_named(g, "x_scale")), const_named(g, "w_scale"))
    assert np.all(np.abs(out.astype(np.float64) - ref) <= bound)


def test_int4_weight_only_within_group_bound():
    g, xs = linear(k=64, n=8, bias=False, seed=6)
    w = np.asarray([v for v in g.constants if v.name == "w"][0].const)
    ref = run(g, [xs])[0]
    run_pass(g, weight_only=True, weight_scheme="int4-g32")
    scale = const_named(g, "w_scale")  # [2, 8]: one per group of 32 rows and column
    per_row = np.repeat(scale, 32, axis=0).astype(np.float64)
    bound = np.abs(xs.astype(np.float64)) @ (per_row / 2) + 4 * 64 * U * (np.abs(xs) @ np.abs(w)) + 1e-6
    assert np.all(np.abs(run(g, [xs])[0] - ref) <= bound)


def test_dynamic_activation_bound():
    g, xs = linear(k=32, n=8, bias=False, seed=7)
    w = np.asarray([v for v in g.constants if v.name == "w"][0].const)
    ref = run(g, [xs])[0]
    s = run_pass(g, dynamic=True).stats
    assert s["activations_quantized"] == 1 and g.op_histogram()["DynamicQuantizeLinear"] == 1
    lo, hi = min(float(xs.min()), 0.0), max(float(xs.max()), 0.0)
    bound = linear_bound(xs, w, (hi - lo) / 255, const_named(g, "w_scale"))
    assert np.all(np.abs(run(g, [xs])[0] - ref) <= bound * (1 + 1e-5))


def test_fakequantize_matches_format_reference():
    g, xs = linear(k=64, n=8, bias=False, seed=8)
    w = np.asarray([v for v in g.constants if v.name == "w"][0].const)
    run_pass(g, stats=calibrate(g, xs), weight_scheme="mxfp4", activation_scheme="mxfp4")
    expect = fake_quantize(xs, parse_scheme("mxfp4")) @ fake_quantize(w, QuantScheme("fp4_e2m1", "mx", axis=0))
    np.testing.assert_allclose(run(g, [xs])[0], expect, rtol=1e-5, atol=1e-5)


def test_block_quantized_close_to_float():
    g, xs = block()
    ref = run(g, [xs])[0]
    run_pass(g, stats=calibrate(g, xs))
    out = run(g, [xs])[0]
    cos = np.sum(out * ref, -1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.995


# -- (d) what stays float ----------------------------------------------------------------------


def test_non_constant_weight_stays_float_with_reason():
    g = Graph("nc")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [4, 8]))
    w = b.input("w", tensor_type(F32, [8, 3]))
    g.outputs = [b.MatMul(x, w, _name="mm")]
    stats = collect_stats(g, [{"x": np.ones((4, 8), np.float32), "w": np.ones((8, 3), np.float32)}],
                          runner="interpreter")
    result = run_pass(g, stats=stats)
    assert not result.changed and result.stats["tensors_quantized"] == 0
    assert g.meta["quant_skipped"] == [
        {"node": "mm", "op": "MatMul", "reason": "weight not constant: %w is an activation "
                                                 "(activation x activation products stay float)"}]
    assert g.op_histogram() == {"MatMul": 1}


def test_no_quantizable_op_is_unchanged():
    g = Graph("relu")
    b = Builder(g)
    g.outputs = [b.Relu(b.input("x", tensor_type(F32, [4])))]
    text = g.to_text()
    result = run_pass(g, stats={})
    assert not result.changed and result.stats["tensors_quantized"] == 0 and result.stats["skipped"] == 0
    assert result.stats["bytes_before"] == result.stats["bytes_after"] == 0
    g.meta.pop("quant_skipped")
    assert g.to_text() == text


def test_exclusions_by_name_and_source_glob():
    g, xs = block()
    for node in g:
        if node.name == "ffn.down":
            node.meta["source"] = "encoder.layer.0.output.dense"
    run_pass(g, stats=calibrate(g, xs), exclude=("attn.q*", "*.output.dense"))
    reasons = {e["node"]: e["reason"] for e in g.meta["quant_skipped"]}
    assert reasons["attn.query"] == "excluded by pattern 'attn.q*' (matches 'attn.query')"
    assert reasons["ffn.down"].startswith("excluded by pattern '*.output.dense'")
    mm = {n.name: n for n in g if n.op == "MatMul"}
    assert producer_op(mm["attn.query"].inputs[1]) is None and producer_op(mm["attn.key"].inputs[1]) == "DequantizeLinear"


def test_missing_statistics_recorded():
    g, xs = linear()
    result = run_pass(g, stats={"unrelated": None})
    assert not result.changed
    assert g.meta["quant_skipped"][0]["reason"] == "no calibration statistics for activation %x"


def test_second_run_changes_nothing():
    g, xs = linear()
    stats = calibrate(g, xs)
    run_pass(g, stats=stats)
    text = g.to_text()
    result = run_pass(g, stats=stats)
    assert not result.changed
    assert "already quantized" in g.meta["quant_skipped"][0]["reason"]
    g.meta.pop("quant_skipped")
    assert text.split("\n", 1)[1] == g.to_text().split("\n", 1)[1]


@pytest.mark.parametrize("options, message", [
    ({}, "needs calibration statistics"),
    ({"stats": {}, "ops": ("Relu",)}, "cannot quantize op(s) Relu"),
    ({"stats": {}, "activation_scheme": "int8-channel"}, "one scale per tensor"),
    ({"dynamic": True, "activation_scheme": "int8"}, "uint8 asymmetric"),
    ({"weight_only": True, "dynamic": True}, "exclude each other"),
    ({"stats": {}, "weight_scheme": "int9"}, "weight_scheme"),
])
def test_bad_options_raise(options, message):
    g, _ = linear()
    with pytest.raises(RequantError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_pass("quantize", **options)(g)
