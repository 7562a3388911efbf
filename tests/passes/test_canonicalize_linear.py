"""canonicalize_linear: Gemm, MatMul by a transposed constant and flatten-linear-unflatten
groups become MatMul(x, W[in, out]) (+ Add(b)). Each case checks (a) changed flag and
rule counts, (b) the structure and the rewritten weights, (c) the interpreter's outputs
before vs after, (d) a near miss left alone.

Tolerance: LINEAR_RTOL. The rewrites move no arithmetic, but a matrix product of a
transposed view and of a contiguous transposed copy may be summed in a different order
by numpy's BLAS; alpha folded into a constant weight rounds once more (here alpha = 2,
a power of two, so only the summation order remains).
"""

from __future__ import annotations

import numpy as np

from canonical_testing import (
    assert_same_outputs,
    build_graph,
    live_ops,
    only_node,
    ops,
    outputs_before_after,
    rule_counts,
)

PASS = "canonicalize_linear"
F32 = "float32"
LINEAR_RTOL, LINEAR_ATOL = 1e-6, 1e-6

RNG = np.random.default_rng(7)
W_OUT_IN = RNG.standard_normal((5, 4)).astype(np.float32)  # torch layout [out, in]
BIAS = RNG.standard_normal(5).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_gemm_with_transposed_constant_weight_becomes_matmul_add() -> None:
    def body(b, x):
        w = b.const(W_OUT_IN, name="fc.weight")
        w.meta["torch_fqn"] = "fc.weight"
        return b.Gemm(x, w, b.const(BIAS.reshape(1, 5)), transB=1)

    g = build_graph({"x": (F32, [3, 4])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert result.changed and rule_counts(result.stats) == {"gemm_to_matmul[3]": 1}
    assert ops(g) == ["MatMul", "Add"]
    w = only_node(g, "MatMul").inputs[1]
    np.testing.assert_array_equal(w.const, W_OUT_IN.T)  # transposed at compile time: [in, out]
    assert w.meta["torch_fqn"] == "fc.weight"  # provenance kept
    assert only_node(g, "Add").inputs[1].const.shape == (5,)  # a [1, N] bias becomes [N]
    assert_same_outputs(pairs, LINEAR_RTOL, LINEAR_ATOL)


def test_gemm_alpha_beta_trans_a_and_a_variable_weight() -> None:
    def body(b, a, w):
        return b.Gemm(a, w, b.const(BIAS), alpha=2.0, beta=0.5, transA=1, transB=1)

    g = build_graph({"a": (F32, [4, 3]), "w": (F32, [5, 4])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"gemm_to_matmul[3]": 1}
    assert sorted(ops(g)) == ["Add", "MatMul", "Mul", "Transpose", "Transpose"]
    add = only_node(g, "Add")
    np.testing.assert_array_equal(add.inputs[1].const, BIAS * np.float32(0.5))  # beta folded into the constant
    assert_same_outputs(pairs, LINEAR_RTOL, LINEAR_ATOL)


def test_gemm_without_bias_stays_a_lone_matmul() -> None:
    g = build_graph({"x": (F32, [3, 4])}, lambda b, x: b.Gemm(x, b.const(W_OUT_IN.T.copy())))
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"gemm_to_matmul[2]": 1}
    assert ops(g) == ["MatMul"]
    assert_same_outputs(pairs, LINEAR_RTOL, LINEAR_ATOL)


def test_matmul_by_transposed_constant_weight_is_folded() -> None:
    def body(b, x):
        return b.Add(b.MatMul(x, b.Transpose(b.const(W_OUT_IN), perm=[1, 0])), b.const(BIAS))

    g = build_graph({"x": (F32, [2, 3, 4])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"matmul_transposed_weight": 1}
    assert ops(g) == ["MatMul", "Add"]
    np.testing.assert_array_equal(only_node(g, "MatMul").inputs[1].const, W_OUT_IN.T)
    assert_same_outputs(pairs, LINEAR_RTOL, LINEAR_ATOL)


def test_matmul_by_transposed_variable_weight_is_left_alone() -> None:
    def body(b, x, w):
        return b.MatMul(x, b.Transpose(w, perm=[1, 0]))

    g = build_graph({"x": (F32, [2, 3, 4]), "w": (F32, [5, 4])}, body)
    before = g.to_text()
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and g.to_text() == before


def test_flattened_3d_linear_becomes_an_nd_matmul() -> None:
    # GPT-2's Conv1D through torch.export: view -> addmm -> view
    def body(b, x):
        flat = b.Reshape(x, b.const(i64(6, 4)))
        y = b.Gemm(flat, b.const(W_OUT_IN.T.copy()), b.const(BIAS))
        return b.Reshape(y, b.const(i64(2, 3, 5)))

    g = build_graph({"x": (F32, [2, 3, 4])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"gemm_to_matmul[3]": 1, "flattened_linear[bias]": 1}
    assert live_ops(g) == ["MatMul", "Add"]  # the flattening Reshape is left to dce
    assert only_node(g, "MatMul").inputs[0] is g.inputs[0]
    assert_same_outputs(pairs, LINEAR_RTOL, LINEAR_ATOL)


def test_flattened_linear_from_a_differently_shaped_input_keeps_one_reshape() -> None:
    # the input's own reshape was merged into the flattening (heads merged back)
    def body(b, x):
        flat = b.Reshape(x, b.const(i64(6, 4)))
        return b.Reshape(b.MatMul(flat, b.const(W_OUT_IN.T.copy())), b.const(i64(2, 3, 5)))

    g = build_graph({"x": (F32, [2, 3, 2, 2])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"flattened_linear[no_bias]": 1}
    reshape, matmul = [n for n in g if n.op in ("Reshape", "MatMul") and n.outputs[0].uses or n.op == "MatMul"]
    assert live_ops(g) == ["Reshape", "MatMul"] and matmul.inputs[0] is reshape.outputs[0]
    assert reshape.inputs[1].const.tolist() == [2, 3, 4]
    assert_same_outputs(pairs, LINEAR_RTOL, LINEAR_ATOL)


def test_flattened_linears_sharing_one_flattening_and_splitting_heads() -> None:
    # q and k projections read one flattened input; the unflatten also splits heads
    def body(b, x):
        flat = b.Reshape(x, b.const(i64(6, 4)))
        q = b.Reshape(b.Add(b.MatMul(flat, b.const(W_OUT_IN.T.copy())), b.const(BIAS)), b.const(i64(2, 3, 5)))
        k = b.Reshape(b.MatMul(flat, b.const(W_OUT_IN.T.copy())), b.const(i64(2, 3, 5, 1)))
        return q, k

    g = build_graph({"x": (F32, [2, 3, 4])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"flattened_linear[bias]": 1, "flattened_linear[no_bias]": 1}
    assert sorted(live_ops(g)) == ["Add", "MatMul", "MatMul", "Reshape"]
    assert all(n.inputs[0] is g.inputs[0] for n in g if n.op == "MatMul")
    assert_same_outputs(pairs, LINEAR_RTOL, LINEAR_ATOL)


def test_flattened_linear_with_unknown_unflatten_shape_is_left_alone() -> None:
    def body(b, x, shape_out):
        flat = b.Reshape(x, b.const(i64(-1, 4)))
        return b.Reshape(b.Add(b.MatMul(flat, b.const(W_OUT_IN.T.copy())), b.const(BIAS)), shape_out)

    g = build_graph({"x": (F32, ["batch", "seq", 4]), "shape_out": ("int64", [3])}, body)
    # the unflatten target is computed at run time: its type cannot show that the rows
    # are split back into [batch, seq], so nothing is rewritten
    result, _ = outputs_before_after(PASS, g, seeds=())
    assert not result.changed


def test_unflatten_to_another_static_shape_keeps_a_reshape_of_the_nd_result() -> None:
    def body(b, x):
        flat = b.Reshape(x, b.const(i64(6, 4)))
        return b.Reshape(b.MatMul(flat, b.const(W_OUT_IN.T.copy())), b.const(i64(2, 15)))

    g = build_graph({"x": (F32, [2, 3, 4])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"flattened_linear[no_bias]": 1}
    assert live_ops(g) == ["MatMul", "Reshape"] and only_node(g, "MatMul").inputs[0] is g.inputs[0]
    assert_same_outputs(pairs, LINEAR_RTOL, LINEAR_ATOL)


def test_a_2d_product_of_something_else_than_a_flattening_is_left_alone() -> None:
    def body(b, x):
        rows = b.Transpose(x, perm=[1, 0])  # [6, 4], not a Reshape of an N-D input
        return b.Reshape(b.MatMul(rows, b.const(W_OUT_IN.T.copy())), b.const(i64(2, 3, 5)))

    g = build_graph({"x": (F32, [4, 6])}, body)
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and ops(g) == ["Transpose", "MatMul", "Reshape"]


def test_integer_gemm_is_left_alone() -> None:
    g = build_graph({"a": ("int32", [2, 3]), "b": ("int32", [3, 4])}, lambda b, x, w: b.Gemm(x, w))
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and ops(g) == ["Gemm"]
