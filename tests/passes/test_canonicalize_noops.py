"""canonicalize_noops: no-op removal, Reshape/Transpose chain folding, constant operands
second. Each case checks (a) changed flag and rule counts, (b) the structure (Before/
Expected text where the graph is small: tests/rewrite_testing.py), (c) the interpreter's
outputs before vs after, and (d) a near miss left alone.

Tolerance: bit for bit. Every rule here only drops a node that returns its input,
re-spells data movement, or swaps the operands of an exactly commutative op.
"""

from __future__ import annotations

import numpy as np
import pytest

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

PASS = "canonicalize_noops"
F32 = "float32"


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_identity_cast_and_dropout_are_removed() -> None:
    check_rewrite(PASS, """
    graph main(%x: f32[2,3]) -> (%y) {
      const %ratio: f32[] = 0.1
      const %training: bool[] = false
      %a: f32[2,3] = Identity(%x)
      %b: f32[2,3] = Cast(%a) {to="float32"}
      %c: f32[2,3] = Dropout(%b)
      %d: f32[2,3] = Dropout(%c, %ratio)
      %e: f32[2,3] = Dropout(%d, %ratio, %training)
      %y: f32[2,3] = Relu(%e)
    }""", """
    graph main(%x: f32[2,3]) -> (%y) {
      const %ratio: f32[] = 0.1             // left for dce
      const %training: bool[] = false
      %y: f32[2,3] = Relu(%x)
    }""", rules={"identity": 1, "cast_to_same_dtype": 1, "dropout[1]": 1, "dropout[2]": 1, "dropout[3]": 1})


def test_near_misses_keep_casts_dropouts_and_output_identities() -> None:
    check_unchanged(PASS, """
    graph main(%x: f32[4], %train: bool[]) -> (%y0, %y1, %y2) {
      const %ratio: f32[] = 0.1
      %y0: f32[4] = Identity(%x)                          // only names a graph output
      %y1: f16[4] = Cast(%x) {to="float16"}               // changes the dtype
      %y2: f32[4] = Dropout(%x, %ratio, %train)           // training_mode not a constant
    }""", stats={"rewrites": 0}, rules={})


def test_dropout_with_a_used_mask_is_kept() -> None:
    def body(b, x):
        node = b.node("Dropout", x, _outputs=2)
        return node.outputs[0], node.outputs[1]

    g = build_graph({"x": (F32, [4])}, body)
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and ops(g) == ["Dropout"]


def test_transpose_chains_compose_and_cancel() -> None:
    check_rewrite(PASS, """
    graph main(%x: f32[2,3,4,5]) -> (%y) {
      %t1: f32[2,4,3,5] = Transpose(%x) {perm=[0, 2, 1, 3]}
      %a: f32[2,4,5,3] = Transpose(%t1) {perm=[0, 1, 3, 2]}     // composes to [0, 2, 3, 1]
      %t2: f32[3,2,4,5] = Transpose(%x) {perm=[1, 0, 2, 3]}
      %c: f32[2,3,4,5] = Transpose(%t2) {perm=[1, 0, 2, 3]}     // cancels
      %d: f32[2,3,4,5] = Transpose(%x) {perm=[0, 1, 2, 3]}      // identity
      %cd: f32[2,3,4,5] = Add(%c, %d)
      %cdt: f32[2,4,5,3] = Transpose(%cd) {perm=[0, 2, 3, 1]}
      %y: f32[2,4,5,3] = Add(%a, %cdt)
    }""", """
    graph main(%x: f32[2,3,4,5]) -> (%y) {
      %a: f32[2,4,5,3] = Transpose(%x) {perm=[0, 2, 3, 1]}
      %cd: f32[2,3,4,5] = Add(%x, %x)
      %cdt: f32[2,4,5,3] = Transpose(%cd) {perm=[0, 2, 3, 1]}
      %y: f32[2,4,5,3] = Add(%a, %cdt)
    }""", rules={"transpose_of_transpose": 2, "transpose_identity": 1})


def test_reshape_chains_fold_and_targets_become_static() -> None:
    def body(b, x):
        r = b.Reshape(b.Reshape(x, b.const(i64(6, 4))), b.const(i64(3, 8)))  # chain
        s = b.Reshape(x, b.const(i64(2, -1, 4)), allowzero=1)  # -> [2, 3, 4]: the same shape
        t = b.Reshape(x, b.const(i64(0, -1)))  # -> static target [2, 12]
        return r, b.Relu(s), t  # (an output that is x itself would need an Identity)

    g = build_graph({"x": (F32, [2, 3, 4])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"reshape_of_reshape": 1, "reshape_to_same_shape": 1, "reshape_explicit_target": 1}
    targets = sorted(n.inputs[1].const.tolist() for n in g if n.op == "Reshape")
    assert targets == [[2, 12], [3, 8]]
    assert all(n.inputs[0] is g.inputs[0] and n.attrs.get("allowzero", 0) == 0 for n in g if n.op == "Reshape")
    assert only_node(g, "Relu").inputs[0] is g.inputs[0]
    assert_same_outputs(pairs)


def test_reshape_target_with_one_symbolic_dim_is_spelled_with_minus_one() -> None:
    def body(b, x):
        heads = b.Reshape(x, b.const(i64(0, 3, -1, 2)))  # torch's spelling of [batch, 3, 2, 2]
        return b.Relu(heads), b.Relu(b.Reshape(x, b.const(i64(0, 0, 0))))

    g = build_graph({"x": (F32, ["batch", 3, 4])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"reshape_explicit_target": 1, "reshape_to_same_shape": 1}
    reshape = only_node(g, "Reshape")
    assert reshape.inputs[1].const.tolist() == [-1, 3, 2, 2] and reshape.outputs[0].type.shape == ("batch", 3, 2, 2)
    assert_same_outputs(pairs)


def test_reshape_copying_dims_of_an_unknown_intermediate_is_kept() -> None:
    # The outer 0 copies a dim of the intermediate [batch, 12]; folding would copy x's dim 1.
    def body(b, x, shape):
        return b.Reshape(b.Reshape(x, shape), b.const(i64(0, 3, 4)))

    g = build_graph({"x": (F32, ["batch", 3, 4]), "shape": ("int64", [2])}, body)
    result, _ = outputs_before_after(PASS, g, seeds=())
    assert not result.changed and ops(g) == ["Reshape", "Reshape"]


@pytest.mark.parametrize("shape,flat,back", [
    ([2, 3, 4, 5], [6, 4, 5], [2, 3, 5, 4]),  # the ONNX exporter's K^T of [B, H, T, D]
    ([2, 2, 2, 4, 5], [8, 4, 5], [2, 4, 5, 4]),  # after Llama's repeat_kv: heads merged as well
])
def test_transpose_of_last_two_through_a_flattening_becomes_one_transpose(shape, flat, back) -> None:
    def body(b, x):
        t = b.Transpose(b.Reshape(x, b.const(i64(*flat))), perm=[0, 2, 1])
        return b.Reshape(t, b.const(i64(*back)))

    g = build_graph({"x": (F32, shape)}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"transpose_last_two_via_flatten": 1}
    perm = only_node(g, "Transpose").attrs["perm"]
    assert perm == list(range(len(back) - 2)) + [len(back) - 1, len(back) - 2]
    assert ops(g) == (["Transpose"] if len(shape) == len(back) else ["Reshape", "Transpose"])
    assert_same_outputs(pairs)


def dynamic_transpose_last_two(b, x, lead_start=-(2**63)):
    """The exporter's batched transpose with a symbolic batch: shapes sliced from Shape(x)."""
    shape = b.Shape(x)
    last = b.Slice(shape, b.const(i64(-1)), b.const(i64(2**63 - 1)))
    second = b.Slice(shape, b.const(i64(-2)), b.const(i64(-1)))
    lead = b.Slice(shape, b.const(i64(lead_start)), b.const(i64(-2)))
    flat = b.Reshape(x, b.Concat(b.const(i64(-1)), second, last, axis=0))
    return b.Reshape(b.Transpose(flat, perm=[0, 2, 1]), b.Concat(lead, last, second, axis=0))


def test_transpose_of_last_two_through_a_run_time_flattening() -> None:
    g = build_graph({"x": (F32, ["batch", 3, 4, 5])}, dynamic_transpose_last_two)
    result, pairs = outputs_before_after(PASS, g)
    assert rule_counts(result.stats) == {"transpose_last_two_via_dynamic_flatten": 1}
    assert live_ops(g) == ["Transpose"] and only_node(g, "Transpose").attrs["perm"] == [0, 1, 3, 2]
    assert g.outputs[0].type.shape == (None, None, None, None)  # a graph output keeps its declared type
    assert_same_outputs(pairs)


def test_run_time_flattening_that_does_not_restore_the_leading_dims_is_kept() -> None:
    # x.shape[1:-2] is not every leading dim (a graph that only runs for batch 1)
    g = build_graph({"x": (F32, ["batch", 3, 4, 5])}, lambda b, x: dynamic_transpose_last_two(b, x, lead_start=1))
    result, _ = outputs_before_after(PASS, g, seeds=())
    assert not result.changed


def test_flattened_transpose_of_other_axes_is_kept() -> None:
    def body(b, x):
        t = b.Transpose(b.Reshape(x, b.const(i64(6, 4, 5))), perm=[1, 0, 2])  # not the last two
        return b.Reshape(t, b.const(i64(4, 2, 3, 5)))

    g = build_graph({"x": (F32, [2, 3, 4, 5])}, body)
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and ops(g) == ["Reshape", "Transpose", "Reshape"]


def test_expand_and_mul_div_by_one_without_broadcast_are_removed() -> None:
    check_rewrite(PASS, """
    graph main(%x: f32[2,3]) -> (%y) {
      const %shape: i64[2] = [2, 3]
      const %one: f32[] = 1.0
      const %ones: f32[3] = [1.0, 1.0, 1.0]
      %e: f32[2,3] = Expand(%x, %shape)
      %m: f32[2,3] = Mul(%one, %e)
      %d: f32[2,3] = Div(%m, %ones)
      %y: f32[2,3] = Relu(%d)
    }""", """
    graph main(%x: f32[2,3]) -> (%y) {
      const %shape: i64[2] = [2, 3]         // left for dce
      const %one: f32[] = 1.0
      const %ones: f32[3] = [1.0, 1.0, 1.0]
      %y: f32[2,3] = Relu(%x)
    }""", rules={"expand_to_same_shape": 1, "mul_by_one": 1, "div_by_one": 1})


def test_broadcasting_expand_and_mul_by_one_are_kept() -> None:
    def body(b, x):
        return b.Expand(x, b.const(i64(4, 3))), b.Mul(x, b.const(np.ones((2, 3), np.float32)))

    g = build_graph({"x": (F32, [1, 3])}, body)
    result, _ = outputs_before_after(PASS, g)
    assert not result.changed and ops(g) == ["Expand", "Mul"]


def test_one_over_becomes_reciprocal_for_floats_only() -> None:
    check_rewrite(PASS, """
    graph main(%x: f32[5], %n: i32[5]) -> (%y0, %y1) {
      const %one: f32[] = 1.0
      const %int_one: i32[] = 1
      %y0: f32[5] = Div(%one, %x)
      %y1: i32[5] = Div(%int_one, %n)
    }""", """
    graph main(%x: f32[5], %n: i32[5]) -> (%y0, %y1) {
      const %one: f32[] = 1.0
      const %int_one: i32[] = 1
      %y0: f32[5] = Reciprocal(%x)
      %y1: i32[5] = Div(%int_one, %n)        // integer 1 / n truncates: no Reciprocal for it
    }""", rules={"one_over_to_reciprocal": 1})


def test_constants_go_second_in_add_and_mul() -> None:
    check_rewrite(PASS, """
    graph main(%x: f32[2,3]) -> (%y0, %y1) {
      const %c: f32[3] = [0.0, 1.0, 2.0]
      %s: f32[2,3] = Add(%c, %x)
      %y0: f32[2,3] = Mul(%c, %s)
      %y1: f32[3] = Add(%c, %c)
    }""", """
    graph main(%x: f32[2,3]) -> (%y0, %y1) {
      const %c: f32[3] = [0.0, 1.0, 2.0]
      %s: f32[2,3] = Add(%x, %c)
      %y0: f32[2,3] = Mul(%s, %c)
      %y1: f32[3] = Add(%c, %c)              // all constant: nothing to put second
    }""", rules={"constant_second[Add]": 1, "constant_second[Mul]": 1})


