"""Tests of lower_quant's "lower_qattention" rule (backends/onnx/lower_quant.py): Q/K/V linears of one
static activation, split into heads, into ScaledDotProductAttention, merged back ->
one com.microsoft QAttention.

(a) changed flag and stats; (b) structure: one QAttention replaces the three
MatMulIntegerToFloat, the head reshapes/transposes and the SDPA, the mask becomes
Squeeze(Cast(mask, int32)); (c) numerics: the lowered graph in the interpreter and in
ONNX Runtime against the interpreter's result of the Q/DQ graph, |lowered - qdq| <=
ATTN_TOL * max(1, max|qdq|) (the projections are exact integer sums where the Q/DQ
graph sums float32 products; the attention is float32 in both, summed in another
order), except query rows whose keys are all masked: SDPA gives 0 there, QAttention
attention over every key (the pass docstring); (d) near misses that must not fuse.
"""

from __future__ import annotations

import numpy as np
import pytest

from requant.ir import Builder, Graph, Value, run, tensor_type
from requant.ir.rewrite import explain
from requant.passes import PassResult, get_pass
from requant.passes.calibration import collect_stats
from requant.backends.onnx.lower_quant import _qattention_rules

from canonical_testing import run_pass

F32 = "float32"
ATTN_TOL = 1e-5  # measured: ~2e-7
B, S, D_MODEL, HEADS = 2, 6, 16, 4
HEAD = D_MODEL // HEADS


def lower(graph: Graph, **options) -> PassResult:
    return run_pass("lower_quant", graph, **options)


def attention_graph(mask: str = "bool2", causal: int = 0, scale: float = 0.0, k_from_other: bool = False,
                    k_layout: str = "heads", sdpa_output_used: bool = False, mask_batch: int | None = None,
                    seed: int = 0) -> tuple[Graph, dict[str, np.ndarray]]:
    """A self-attention block on x [B, S, 16] after "quantize" (Q/DQ form), and seeded
    inputs. mask: "none", "bool2" ([B,1,1,S]), "bool3" ([B,1,S,S]), "additive"
    (Where(mask, 0, -inf)), "float" (an arbitrary float bias input)."""
    rng = np.random.default_rng(seed)
    g = Graph("attention")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, ["batch", S, D_MODEL]))
    other = b.input("y", tensor_type(F32, ["batch", S, D_MODEL])) if k_from_other else x
    mb = "batch" if mask_batch is None else mask_batch
    feeds: dict[str, np.ndarray] = {"x": rng.standard_normal((B, S, D_MODEL)).astype(np.float32)}
    if k_from_other:
        feeds["y"] = rng.standard_normal((B, S, D_MODEL)).astype(np.float32)
    m: Value | None = None
    keep = np.ones((B, S), bool)
    keep[1, 4:] = False  # padding of the second sequence
    if mask in ("bool2", "additive"):
        m = b.input("mask", tensor_type("bool", [mb, 1, 1, S]))
        feeds["mask"] = keep[:, None, None, :] if mask_batch is None else keep[:1, None, None, :]
        if mask == "additive":
            m = b.Where(m, b.const(np.float32(0.0)), b.const(np.float32(-np.inf)))
    elif mask == "bool3":
        m = b.input("mask", tensor_type("bool", [mb, 1, S, S]))
        full = np.broadcast_to(keep[:, None, :], (B, S, S)) & np.tril(np.ones((S, S), bool))[None]
        feeds["mask"] = full[:, None].copy()
    elif mask == "float":
        m = b.input("mask", tensor_type(F32, [mb, 1, 1, S]))
        feeds["mask"] = (0.5 * rng.standard_normal((B, 1, 1, S))).astype(np.float32)

    def linear(v: Value, name: str) -> Value:
        w = (rng.standard_normal((D_MODEL, D_MODEL)) / np.sqrt(D_MODEL)).astype(np.float32)
        c = (0.1 * rng.standard_normal(D_MODEL)).astype(np.float32)
        return b.Add(b.MatMul(v, b.const(w), _name=name), b.const(c))

    def heads(v: Value, layout: str = "heads") -> Value:
        if layout == "heads":
            return b.Transpose(b.Reshape(v, b.const(np.array([0, S, HEADS, HEAD], np.int64))), perm=[0, 2, 1, 3])
        # [B, S, D, H] read as [B, H, S, D]: the right shapes, another layout
        return b.Transpose(b.Reshape(v, b.const(np.array([0, S, HEAD, HEADS], np.int64))), perm=[0, 3, 1, 2])

    q = heads(linear(x, "query"))
    k = heads(linear(other, "key"), k_layout)
    v = heads(linear(x, "value"))
    attrs = {"is_causal": causal} | ({"scale": scale} if scale else {})
    o = b.ScaledDotProductAttention(q, k, v, *([m] if m is not None else []), **attrs)
    merged = b.Reshape(b.Transpose(o, perm=[0, 2, 1, 3]), b.const(np.array([0, S, D_MODEL], np.int64)))
    g.outputs = [merged] + ([o] if sdpa_output_used else [])
    calib = [feeds]
    stats = collect_stats(g, calib, runner="interpreter")
    get_pass("quantize", stats=stats)(g)
    return g, feeds


def assert_close(actual: np.ndarray, qdq: np.ndarray, rows: np.ndarray | None = None) -> None:
    """|actual - qdq| <= ATTN_TOL * max(1, max|qdq|) over the rows kept ([B, S] bool)."""
    a, r = actual.astype(np.float64), qdq.astype(np.float64)
    if rows is not None:
        a, r = a[rows], r[rows]
    bound = ATTN_TOL * max(1.0, float(np.abs(r).max()))
    err = float(np.abs(a - r).max())
    assert err <= bound, f"max |lowered - qdq| = {err:.3g} > {bound:.3g}"


def ort_run(g: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    pytest.importorskip("onnxruntime")
    from requant.backends.onnx import OnnxRuntimeSession, to_onnx

    return OnnxRuntimeSession(to_onnx(g))(**feeds)


def fuse_and_check(mask: str, **kw) -> tuple[Graph, PassResult, dict[str, np.ndarray]]:
    g, feeds = attention_graph(mask, **kw)
    qdq = run(g, feeds)[0]
    result = lower(g)
    assert_close(run(g, feeds)[0], qdq)
    assert_close(ort_run(g, feeds)[0], qdq)
    return g, result, feeds


# -- (a) + (b) + (c) -------------------------------------------------------------------------


@pytest.mark.parametrize("mask, index_shape", [("bool2", ("batch", S)), ("bool3", ("batch", S, S)),
                                               ("additive", ("batch", S)), ("none", None)])
def test_attention_becomes_qattention(mask, index_shape):
    g, result, _ = fuse_and_check(mask)
    assert result.changed
    assert result.stats["rule:lower_qattention"] == 1 and result.stats["op:com.microsoft.QAttention"] == 1
    assert result.stats["rule:lower_matmul_add"] == 3 and "op:com.microsoft.MatMulIntegerToFloat" not in result.stats
    hist = g.op_histogram()
    for gone in ("com.microsoft.MatMulIntegerToFloat", "ScaledDotProductAttention", "Transpose", "DequantizeLinear"):
        assert gone not in hist
    (node,) = [n for n in g if n.op == "com.microsoft.QAttention"]
    assert node.meta["created_by"] == "lower_qattention" and node.attrs == {"num_heads": HEADS}
    a, w, bias, a_scale, w_scale, mask_index, a_zp, w_zp = node.inputs
    assert a.producer.op == "QuantizeLinear" and a.dtype.name == "uint8" and a_zp is not None
    assert w.type.shape == (D_MODEL, 3 * D_MODEL) and w.dtype.name == "int8" and w_zp is None
    assert bias.type.shape == (3 * D_MODEL,) and w_scale.type.shape == (3 * D_MODEL,)  # per column
    if index_shape is None:
        assert mask_index is None and "Squeeze" not in hist
    else:
        assert mask_index.type.shape == index_shape and mask_index.dtype.name == "int32"
        assert mask_index.producer.op == "Squeeze" and mask_index.producer.inputs[0].producer.op == "Cast"
    if mask == "additive":
        (where,) = [n for n in g if n.op == "Where"]  # its condition became the mask_index
        assert not where.output.uses  # left to "dce"
    assert hist["QuantizeLinear"] == 1 and g.meta["lower_skipped"] == []


def test_explicit_scale_is_passed_and_default_scale_left_out():
    g, _, _ = fuse_and_check("bool2", scale=0.3)
    (node,) = [n for n in g if n.op == "com.microsoft.QAttention"]
    assert node.attrs == {"num_heads": HEADS, "scale": 0.3}
    g, _, _ = fuse_and_check("bool2", scale=1.0 / np.sqrt(HEAD))
    (node,) = [n for n in g if n.op == "com.microsoft.QAttention"]
    assert node.attrs == {"num_heads": HEADS}


def test_fully_masked_rows_attend_to_every_key():
    """The documented difference: a query row with every key masked is 0 in SDPA and
    attention over all keys (mask_filter_value cancels in softmax) in QAttention; ORT
    and the interpreter agree on it, every other row matches the Q/DQ graph."""
    g, feeds = attention_graph("bool3")
    feeds["mask"][1, 0, 2, :] = False
    qdq = run(g, feeds)[0]
    lower(g)
    got, ort = run(g, feeds)[0], ort_run(g, feeds)[0]
    rows = np.ones((B, S), bool)
    rows[1, 2] = False
    assert_close(got, qdq, rows)
    assert np.all(qdq[1, 2] == 0) and np.abs(got[1, 2]).max() > 1e-2
    assert_close(ort, got)
    unmasked = dict(feeds, mask=np.ones_like(feeds["mask"]))
    # ~ attention over every key: s - 10000 keeps s to float32's 2^-10 steps near 10000
    np.testing.assert_allclose(got[1, 2], run(g, unmasked)[0][1, 2], rtol=0, atol=2e-3)


# -- (d) what must not fuse ------------------------------------------------------------------


@pytest.mark.parametrize("kw, reason", [
    ({"k_from_other": True}, None),  # K's linear reads another activation: the pattern's `a` differs
    ({"causal": 1}, "causal attention is not mapped"),
    ({"sdpa_output_used": True}, "escapes the match"),
    ({"k_layout": "other"}, "perm"),
    ({"mask": "float"}, "additive float mask is not Where(bool, 0, c <= -10000)"),
    ({"mask_batch": 1}, "is not [B, 1, 1, S] or [B, 1, S, S]"),
])
def test_near_misses_do_not_fuse(kw, reason):
    g, feeds = attention_graph(**({"mask": "bool2"} | kw))
    qdq = run(g, feeds)
    result = lower(g)
    assert "rule:lower_qattention" not in result.stats and "com.microsoft.QAttention" not in g.op_histogram()
    assert g.op_histogram()["ScaledDotProductAttention"] == 1 and result.stats["op:com.microsoft.MatMulIntegerToFloat"] == 3
    if reason is not None:
        (sdpa,) = [n for n in g if n.op == "ScaledDotProductAttention"]
        root = sdpa.outputs[0].uses[0][0].outputs[0].uses[0][0]  # Transpose -> Reshape
        why = [explain(rule, root) for rule in _qattention_rules()]
        assert any(reason in w for w in why), why
    for got, want in zip(run(g, feeds), qdq):
        assert_close(got, want)


def test_integer_kernel_never_makes_qattention():
    g, feeds = attention_graph("bool2")
    result = lower(g, kernel="integer")
    assert "com.microsoft.QAttention" not in g.op_histogram() and "rule:lower_qattention" not in result.stats
    assert g.op_histogram()["MatMulInteger"] == 3 and g.op_histogram()["ScaledDotProductAttention"] == 1
