"""canonicalize_linear: Gemm, MatMul by a transposed constant and flatten-linear-unflatten
groups become MatMul(x, W[in, out]) (+ Add(b)). Each case checks (a) changed flag and
rule counts, (b) the structure and the rewritten weights (Before/Expected text where the
graph is small: tests/rewrite_testing.py), (c) the interpreter's outputs before vs after,
(d) a near miss left alone.

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
from rewrite_testing import check_rewrite, check_unchanged

PASS = "canonicalize_linear"
F32 = "float32"
LINEAR_RTOL, LINEAR_ATOL = 1e-6, 1e-6

RNG = np.random.default_rng(7)
W_OUT_IN = RNG.standard_normal((5, 4)).astype(np.float32)  # torch layout [out, in]
BIAS = RNG.standard_normal(5).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# torch's linear weight is [out, in]; the canonical weight is [in, out]
W_OUT_IN_TEXT = "[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]"
W_IN_OUT_TEXT = "[[1.0, 5.0], [2.0, 6.0], [3.0, 7.0], [4.0, 8.0]]"
TOLERANCES = {"float32": (LINEAR_RTOL, LINEAR_ATOL)}


def test_gemm_with_transposed_constant_weight_becomes_matmul_add() -> None:
    result = check_rewrite(PASS, f"""
    graph main(%x: f32[3,4]) -> (%y) {{
      const %w: f32[2,4] = {W_OUT_IN_TEXT}
      #meta %w {{"torch_fqn": "fc.weight"}}
      const %b: f32[1,2] = [[0.5, -1.5]]
      %y: f32[3,2] = Gemm(%x, %w, %b) {{transB=1}}
    }}""", f"""
    graph main(%x: f32[3,4]) -> (%y) {{
      const %w: f32[2,4] = {W_OUT_IN_TEXT}           // left for dce
      const %b: f32[1,2] = [[0.5, -1.5]]             // left for dce
      const %w_t: f32[4,2] = {W_IN_OUT_TEXT}         // transposed at compile time: [in, out]
      const %b_1d: f32[2] = [0.5, -1.5]              // a [1, N] bias becomes [N]
      %t: f32[3,2] = MatMul(%x, %w_t)
      %y: f32[3,2] = Add(%t, %b_1d)
    }}""", rules={"gemm_to_matmul[3]": 1}, tolerances=TOLERANCES)
    assert only_node(result.graph, "MatMul").inputs[1].meta["torch_fqn"] == "fc.weight"  # provenance kept


def test_gemm_alpha_beta_trans_a_and_a_variable_weight() -> None:
    check_rewrite(PASS, """
    graph main(%a: f32[4,3], %w: f32[2,4]) -> (%y) {
      const %bias: f32[2] = [1.0, -2.0]
      %y: f32[3,2] = Gemm(%a, %w, %bias) {alpha=2.0, beta=0.5, transA=1, transB=1}
    }""", """
    graph main(%a: f32[4,3], %w: f32[2,4]) -> (%y) {
      const %bias: f32[2] = [1.0, -2.0]
      const %alpha: f32[] = 2.0
      const %bias_times_beta: f32[2] = [0.5, -1.0]   // beta folded into the constant
      %at: f32[3,4] = Transpose(%a) {perm=[1, 0]}
      %wt: f32[4,2] = Transpose(%w) {perm=[1, 0]}
      %t: f32[3,2] = MatMul(%at, %wt)
      %scaled: f32[3,2] = Mul(%t, %alpha)            // alpha on the product: the weight is not constant
      %y: f32[3,2] = Add(%scaled, %bias_times_beta)
    }""", rules={"gemm_to_matmul[3]": 1}, tolerances=TOLERANCES)


def test_gemm_without_bias_stays_a_lone_matmul() -> None:
    check_rewrite(PASS, f"""
    graph main(%x: f32[3,4]) -> (%y) {{
      const %w: f32[4,2] = {W_IN_OUT_TEXT}
      %y: f32[3,2] = Gemm(%x, %w)
    }}""", f"""
    graph main(%x: f32[3,4]) -> (%y) {{
      const %w: f32[4,2] = {W_IN_OUT_TEXT}
      %y: f32[3,2] = MatMul(%x, %w)
    }}""", rules={"gemm_to_matmul[2]": 1}, tolerances=TOLERANCES)


def test_matmul_by_transposed_constant_weight_is_folded() -> None:
    check_rewrite(PASS, f"""
    graph main(%x: f32[2,3,4]) -> (%y) {{
      const %w: f32[2,4] = {W_OUT_IN_TEXT}
      const %b: f32[2] = [0.5, -1.5]
      %wt: f32[4,2] = Transpose(%w) {{perm=[1, 0]}}
      %t: f32[2,3,2] = MatMul(%x, %wt)
      %y: f32[2,3,2] = Add(%t, %b)
    }}""", f"""
    graph main(%x: f32[2,3,4]) -> (%y) {{
      const %w: f32[2,4] = {W_OUT_IN_TEXT}           // left for dce
      const %b: f32[2] = [0.5, -1.5]
      const %w_t: f32[4,2] = {W_IN_OUT_TEXT}
      %t: f32[2,3,2] = MatMul(%x, %w_t)
      %y: f32[2,3,2] = Add(%t, %b)
    }}""", rules={"matmul_transposed_weight": 1}, tolerances=TOLERANCES)


def test_matmul_by_transposed_variable_weight_is_left_alone() -> None:
    check_unchanged(PASS, """
    graph main(%x: f32[2,3,4], %w: f32[2,4]) -> (%y) {
      %wt: f32[4,2] = Transpose(%w) {perm=[1, 0]}
      %y: f32[2,3,2] = MatMul(%x, %wt)
    }""", stats={"rewrites": 0}, rules={})


def test_flattened_3d_linear_becomes_an_nd_matmul() -> None:
    # GPT-2's Conv1D through torch.export: view -> addmm -> view
    check_rewrite(PASS, f"""
    graph main(%x: f32[2,3,4]) -> (%y) {{
      const %flat_shape: i64[2] = [6, 4]
      const %w: f32[4,2] = {W_IN_OUT_TEXT}
      const %b: f32[2] = [0.5, -1.5]
      const %out_shape: i64[3] = [2, 3, 2]
      %flat: f32[6,4] = Reshape(%x, %flat_shape)
      %t: f32[6,2] = Gemm(%flat, %w, %b)
      %y: f32[2,3,2] = Reshape(%t, %out_shape)
    }}""", f"""
    graph main(%x: f32[2,3,4]) -> (%y) {{
      const %flat_shape: i64[2] = [6, 4]
      const %w: f32[4,2] = {W_IN_OUT_TEXT}
      const %b: f32[2] = [0.5, -1.5]
      const %out_shape: i64[3] = [2, 3, 2]
      %flat: f32[6,4] = Reshape(%x, %flat_shape)     // the flattening is left to dce
      %t: f32[2,3,2] = MatMul(%x, %w)
      %y: f32[2,3,2] = Add(%t, %b)
    }}""", rules={"gemm_to_matmul[3]": 1, "flattened_linear[bias]": 1}, tolerances=TOLERANCES)


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
