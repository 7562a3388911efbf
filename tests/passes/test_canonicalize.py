"""The composite "canonicalize" pass: every family registered, all of them together to a
fixed point with constant folding, type refinement, CSE and DCE; idempotent; stats
summed per rule. The rule families have their own test_canonicalize_<family>.py.

Tolerance: FUSED_RTOL/FUSED_ATOL: the graph below fuses LayerNorm, GELU and attention,
each exact up to float32 rounding (see the family tests); 1e-5 relative covers the sum.
"""

from __future__ import annotations

import math

import numpy as np

from canonical_testing import assert_same_outputs, build_graph, ops, outputs_before_after, rule_counts, run_pass
from requant.passes import available_passes, get_pass
from requant.passes.canonicalize import CANONICALIZE_PIPELINE

F32 = "float32"
FUSED_RTOL, FUSED_ATOL = 1e-5, 1e-5
RNG = np.random.default_rng(11)
B, S, C, HEADS = 2, 5, 8, 2


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32)


W_QKV = [w(C, C) for _ in range(3)]  # torch layout [out, in]
W_FC = w(2 * C, C)


def encoder_block(b, x):
    """A transformer block the way an exporter might spell it out op by op."""
    # LayerNorm, decomposed
    mean = b.ReduceMean(x, b.const(i64(-1)), keepdims=1)
    d = b.Sub(x, mean)
    var = b.ReduceMean(b.Mul(d, d), b.const(i64(-1)), keepdims=1)
    h = b.Add(b.Mul(b.Div(d, b.Sqrt(b.Add(var, b.const(np.float32(1e-5))))), b.const(np.full(C, 1.5, np.float32))),
              b.const(np.full(C, 0.1, np.float32)))
    # q/k/v linears as flatten -> Gemm(transB) -> unflatten, heads split
    flat = b.Reshape(h, b.const(i64(B * S, C)))

    def heads(weight):
        y = b.Reshape(b.Gemm(flat, b.const(weight), b.const(np.zeros(C, np.float32)), transB=1), b.const(i64(B, S, C)))
        return b.Transpose(b.Reshape(y, b.const(i64(B, S, HEADS, C // HEADS))), perm=[0, 2, 1, 3])

    q, k, v = (heads(wt) for wt in W_QKV)
    scores = b.Div(b.MatMul(q, b.Transpose(k, perm=[0, 1, 3, 2])), b.const(np.float32(math.sqrt(C // HEADS))))
    e = b.Exp(b.Sub(scores, b.ReduceMax(scores, b.const(i64(-1)), keepdims=1)))
    probs = b.Div(e, b.ReduceSum(e, b.const(i64(-1)), keepdims=1))
    att = b.Reshape(b.Transpose(b.MatMul(probs, v), perm=[0, 2, 1, 3]), b.const(i64(B, S, C)))
    # MLP with an erf GELU, an Identity and a Dropout on the way
    u = b.Dropout(b.Identity(b.MatMul(att, b.Transpose(b.const(W_FC), perm=[1, 0]))))
    gelu = b.Mul(b.Mul(u, b.Add(b.Erf(b.Mul(u, b.const(np.float32(1 / math.sqrt(2))))), b.const(np.float32(1)))),
                 b.const(np.float32(0.5)))
    return b.Add(gelu, b.const(np.zeros(2 * C, np.float32)))


def test_every_family_is_a_registered_pass() -> None:
    names = available_passes()
    for name in ("canonicalize", "canonicalize_linear", "canonicalize_noops", "canonicalize_norm",
                 "canonicalize_activation", "canonicalize_attention", "refine_types"):
        assert name in names and names[name]
    assert set(CANONICALIZE_PIPELINE) <= set(names)


def test_a_spelled_out_block_becomes_canonical_in_one_pass() -> None:
    g = build_graph({"x": (F32, [B, S, C])}, encoder_block)
    result, pairs = outputs_before_after("canonicalize", g)
    assert result.changed and result.stats["iterations"] >= 2
    counts = rule_counts(result.stats)
    assert counts["layer_norm[mul_self,div_sqrt]"] == 1
    assert counts["gemm_to_matmul[3]"] == 3 and counts["flattened_linear[bias]"] == 3
    assert counts["softmax[div_sum]"] == 1 and counts["sdpa[div,none,softmax]"] == 1
    assert counts["gelu_erf[mul_rsqrt2,(x*P)*half]"] == 1
    assert result.stats["rewrites"] == sum(counts.values())
    assert g.op_histogram() == {
        "Add": 4, "Gelu": 1, "LayerNormalization": 1, "MatMul": 4, "Reshape": 4,
        "ScaledDotProductAttention": 1, "Transpose": 4,
    }
    for node in g:
        if node.op == "MatMul" and node.inputs[1].is_constant:
            assert node.inputs[1].shape[0] == node.inputs[0].shape[-1]  # weights are [in, out]
    assert_same_outputs(pairs, FUSED_RTOL, FUSED_ATOL)


def test_canonicalize_is_idempotent() -> None:
    g = build_graph({"x": (F32, [B, S, C])}, encoder_block)
    run_pass("canonicalize", g)
    text = g.to_text()
    again = run_pass("canonicalize", g)
    assert not again.changed and again.stats["rewrites"] == 0 and again.stats["iterations"] == 1
    assert g.to_text() == text


def test_graph_without_anything_to_canonicalize_is_unchanged() -> None:
    g = build_graph({"x": (F32, [4, C])}, lambda b, x: b.Relu(b.MatMul(x, b.const(w(C, 3)))))
    text = g.to_text()
    result = run_pass("canonicalize", g)
    assert not result.changed and g.to_text() == text


def computed_expand(b, x):
    """Expand(x, Shape(x) * 1): which size-1 dims grow is unknown until folding."""
    return b.Expand(x, b.Mul(b.Shape(x), b.const(np.array(1, np.int64))))


def test_folded_shapes_refine_types_so_expands_are_seen_as_no_ops() -> None:
    g = build_graph({"x": (F32, [1, 3])}, lambda b, x: b.Relu(computed_expand(b, x)))
    assert g.nodes[2].outputs[0].type.shape == (None, 3)
    result, pairs = outputs_before_after("canonicalize", g)
    assert result.stats["types_refined"] >= 1 and rule_counts(result.stats) == {"expand_to_same_shape": 1}
    assert ops(g) == ["Relu"]
    assert_same_outputs(pairs)


def test_a_chosen_subset_of_the_pipeline() -> None:
    g = build_graph({"x": (F32, [B, S, C])}, encoder_block)
    result = get_pass("canonicalize", passes=["canonicalize_norm", "dce"])(g, verify=True)
    assert set(rule_counts(result.stats)) == {"layer_norm[mul_self,div_sqrt]", "norm_absorb_scale[LayerNormalization]",
                                              "layer_norm_absorb_bias[2]"}
    assert "Gemm" in ops(g) and "Gelu" not in ops(g)
