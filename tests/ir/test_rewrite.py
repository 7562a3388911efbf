"""The rewrite engine (ir/pattern.py, ir/rewrite.py): the four-part convention for a
fusion rule, plus escaping inner values, the iteration cap, revisiting, explain()."""

from __future__ import annotations

import numpy as np
import pytest

import requant.ir as ir
from requant.errors import RequantError, RewriteLimitError
from requant.ir.pattern import Const, op
from requant.ir.rewrite import Rule, explain, rewrite

# MatMul+Add and Gemm run the same float32 numpy products, so results agree to rounding
# of the final add only; both are computed in float32.
FP32_RTOL = 1e-6
FP32_ATOL = 1e-6


def _two_d(m) -> str | None:
    if m.a.type.rank != 2 or m.b.type.rank != 2:
        return f"operands are not 2-D ({m.a.type}, {m.b.type})"
    if m.c.type.rank not in (1, 2):
        return f"bias %{m.c.name} has rank {m.c.type.rank}"
    return None


MATMUL_ADD_TO_GEMM = Rule(
    "matmul_add_to_gemm",
    pattern=lambda a, b, c: op.Add(op.MatMul(a, b), c),
    check=_two_d,
    replace=lambda op, m: op.Gemm(m.a, m.b, m.c),
)
MUL_BY_ONE = Rule("mul_by_one", pattern=lambda x: op.Mul(x, Const("one", value=1.0), _commute=True), replace=lambda op, m: m.x)


def _chain(blocks: int, rank: int = 2, seed: int = 0) -> ir.Graph:
    rng = np.random.default_rng(seed)
    g = ir.Graph()
    b = ir.Builder(g)
    shape = ["batch", 8] if rank == 2 else [2, "seq", 8]
    x = b.input("x", ir.tensor_type("f32", shape))
    for i in range(blocks):
        w = b.const(rng.standard_normal((8, 8)).astype(np.float32) * 0.3, f"w{i}")
        bias = b.const(rng.standard_normal(8).astype(np.float32), f"b{i}")
        x = b.Add(b.MatMul(x, w), bias)
    g.rename(x, "y")
    g.outputs.append(x)
    g.verify()
    return g


def _inputs(g: ir.Graph, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for v in g.inputs:
        shape = [d if isinstance(d, int) else 3 for d in v.shape]
        out[v.name] = rng.standard_normal(shape).astype(np.float32)
    return out


# (a) changed flag and stats ---------------------------------------------------------------
def test_fusion_reports_what_it_did():
    g = _chain(3)
    result = rewrite(g, [MATMUL_ADD_TO_GEMM])
    assert result.changed is True
    assert result.rewrites == 3
    assert result.by_rule == {"matmul_add_to_gemm": 3}


# (b) structure --------------------------------------------------------------------------
def test_fusion_structure_and_tags():
    g = _chain(3)
    rewrite(g, [MATMUL_ADD_TO_GEMM])
    g.verify()
    assert g.op_histogram() == {"Gemm": 3}
    assert all(n.meta["created_by"] == "matmul_add_to_gemm" for n in g)
    assert [v.name for v in g.outputs] == ["y"]
    assert str(g.outputs[0].type) == "f32[batch,8]"
    gemms = list(g)
    for prev, nxt in zip(gemms, gemms[1:]):
        assert nxt.inputs[0] is prev.outputs[0]
    assert [n.inputs[1].name for n in gemms] == ["w0", "w1", "w2"]


# (c) numeric agreement with the interpreter -----------------------------------------------
def test_fusion_preserves_outputs():
    g = _chain(4)
    before = g.clone()
    rewrite(g, [MATMUL_ADD_TO_GEMM])
    x = _inputs(g)
    (want,) = ir.run(before, x)
    (got,) = ir.run(g, x)
    np.testing.assert_allclose(got, want, rtol=FP32_RTOL, atol=FP32_ATOL)


# (d) cases that must not match ------------------------------------------------------------
def test_inner_value_that_escapes_blocks_the_rewrite():
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [2, 8]))
    w = b.const(np.ones((8, 8), np.float32), "w")
    bias = b.const(np.ones(8, np.float32), "bias")
    t = b.MatMul(x, w)
    y = b.Add(t, bias)
    g.outputs += [y, b.Relu(t) if ir.is_registered("Relu") else b.Mul(t, t)]
    text_before = [repr(n) for n in g]
    result = rewrite(g, [MATMUL_ADD_TO_GEMM])
    assert result.changed is False and result.rewrites == 0
    assert [repr(n) for n in g] == text_before
    add = y.producer
    why = explain(MATMUL_ADD_TO_GEMM, add)
    assert "escapes" in why and f"%{t.name}" in why


def test_inner_value_that_is_a_graph_output_blocks_the_rewrite():
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [2, 8]))
    t = b.MatMul(x, b.const(np.ones((8, 8), np.float32)))
    y = b.Add(t, b.const(np.ones(8, np.float32)))
    g.outputs += [y, t]
    assert rewrite(g, [MATMUL_ADD_TO_GEMM]).changed is False
    assert "graph output" in explain(MATMUL_ADD_TO_GEMM, y.producer)


def test_check_refusal_is_explained_and_respected():
    g = _chain(1, rank=3)
    assert rewrite(g, [MATMUL_ADD_TO_GEMM]).changed is False
    add = next(n for n in g if n.op == "Add")
    assert "check refused: operands are not 2-D" in explain(MATMUL_ADD_TO_GEMM, add)


def test_explain_names_the_op_that_differs():
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [2, 8]))
    y = b.Add(b.Mul(x, x), x)
    g.outputs.append(y)
    why = explain(MATMUL_ADD_TO_GEMM, y.producer)
    assert "Add[0] > MatMul: found Mul" in why
    assert "root op is Add" in explain(MATMUL_ADD_TO_GEMM, y.producer.inputs[0].producer)
    assert "matches" in explain(MATMUL_ADD_TO_GEMM, _chain(1).nodes[-1])


# the driver -------------------------------------------------------------------------------
def test_iteration_cap_stops_a_rule_that_never_converges():
    swap = Rule("swap_add", pattern=lambda a, b: op.Add(a, b), replace=lambda op, m: op.Add(m.b, m.a))
    g = _chain(2)
    with pytest.raises(RewriteLimitError, match=r"did not converge after 50 rewrites.*swap_add"):
        rewrite(g, [swap], max_rewrites=50)


def test_default_cap_also_stops_it():
    swap = Rule("swap_add", pattern=lambda a, b: op.Add(a, b), replace=lambda op, m: op.Add(m.b, m.a))
    with pytest.raises(RewriteLimitError):
        rewrite(_chain(2), [swap])


def test_chained_matches_reach_a_fixed_point():
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [4]))
    one = b.const(np.float32(1.0), "one")
    y = b.Mul(one, b.Mul(b.Mul(x, one), one))
    t = b.Add(y, x)
    g.outputs.append(t)
    result = rewrite(g, [MUL_BY_ONE])
    assert result.rewrites == 3
    assert g.op_histogram() == {"Add": 1}
    assert t.producer.inputs == (x, x)


def test_replacing_a_graph_output_by_an_input_keeps_the_output_name():
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [4]))
    y = b.Mul(x, b.const(np.ones(4, np.float32)))
    g.rename(y, "y")
    g.outputs.append(y)
    rewrite(g, [MUL_BY_ONE])
    g.verify()
    assert [v.name for v in g.outputs] == ["y"]
    assert g.op_histogram() == {"Identity": 1} if ir.is_registered("Identity") else True
    (out,) = ir.run(g, {"x": np.arange(4, dtype=np.float32)})
    np.testing.assert_array_equal(out, np.arange(4, dtype=np.float32))


def test_rewrite_revisits_a_match_once_an_escaping_use_is_gone():
    # Mul(t, 0) reads t, so the MatMul+Add fusion must wait until that use is rewritten away.
    zero_rule = Rule(
        "mul_by_zero",
        pattern=lambda x: op.Mul(x, Const("zero", value=0.0)),
        check=lambda m: m.x.type.is_static or "shape not static",
        replace=lambda op, m: op.const(np.zeros(m.x.shape, m.x.dtype.np)),
    )
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [2, 8]))
    t = b.MatMul(x, b.const(np.eye(8, dtype=np.float32)))
    y = b.Add(t, b.const(np.ones(8, np.float32)))
    z = b.Mul(t, b.const(np.float32(0.0)))
    g.rename(z, "z")
    g.outputs += [y, z]
    result = rewrite(g, [MATMUL_ADD_TO_GEMM, zero_rule])
    assert result.by_rule == {"mul_by_zero": 1, "matmul_add_to_gemm": 1}
    g.verify()
    assert [v.name for v in g.outputs][1] == "z"
    got_y, got_z = ir.run(g, {"x": np.ones((2, 8), np.float32)})
    np.testing.assert_array_equal(got_z, np.zeros((2, 8), np.float32))
    np.testing.assert_array_equal(got_y, np.full((2, 8), 2.0, np.float32))


def test_variable_bound_twice_must_be_the_same_value():
    square_rule = Rule("square", pattern=lambda x: op.Mul(x, x), replace=lambda op, m: op.Pow(m.x, op.const(np.float32(2))))
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [3]))
    w = b.input("w", ir.tensor_type("f32", [3]))
    g.outputs += [b.Mul(x, x), b.Mul(x, w)]
    result = rewrite(g, [square_rule])
    assert result.rewrites == 1
    assert g.op_histogram() == {"Mul": 1, "Pow": 1}
    assert "x is bound to %x and to %w" in explain(square_rule, next(n for n in g if n.op == "Mul"))


def test_commuted_operands_match_both_orders():
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [3]))
    one = b.const(np.ones(3, np.float32), "one")
    g.outputs += [b.Add(b.Mul(one, x), b.Mul(x, one))]
    assert rewrite(g, [MUL_BY_ONE]).rewrites == 2
    assert g.op_histogram() == {"Add": 1}


def test_attribute_constraints_use_defaults():
    transposed = Rule(
        "gemm_transb",
        pattern=lambda a, b: op.Gemm(a, b, transB=1),
        replace=lambda op, m: op.Gemm(m.a, m.b),
    )
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [2, 3]))
    w = b.const(np.ones((3, 3), np.float32))
    g.outputs += [b.Gemm(x, w), b.Gemm(x, w, transB=1)]
    assert rewrite(g, [transposed]).rewrites == 1
    assert "attribute transB=0" in explain(transposed, g.nodes[0])


def test_replacement_with_wrong_type_is_an_error():
    bad = Rule("bad", pattern=lambda a, b: op.MatMul(a, b), replace=lambda op, m: m.a)
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [2, 3]))
    g.outputs.append(b.MatMul(x, b.const(np.ones((3, 5), np.float32))))
    with pytest.raises(RequantError, match="rule bad: replacement %x has type f32\\[2,3\\]"):
        rewrite(g, [bad])


@pytest.mark.skipif(not ir.is_registered("Split"), reason="needs Split")
def test_root_with_two_outputs_is_replaced_output_by_output():
    # Split(x) into two halves, then Concat back -> x; and Split whose halves are swapped.
    swap_halves = Rule(
        "split_to_slices",
        pattern=lambda x: op.Split(x, None, _output=0),
        check=lambda m: m.x.type.is_static or "dynamic",
        replace=lambda op, m: tuple(
            op.Slice(m.x, op.const(np.array([s], np.int64)), op.const(np.array([e], np.int64)), op.const(np.array([0], np.int64)))
            for s, e in ((0, m.x.shape[0] // 2), (m.x.shape[0] // 2, m.x.shape[0]))
        ),
    )
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [4, 2]))
    lo, hi = b.Split(x, None, axis=0, num_outputs=2, _outputs=2)
    g.outputs += [b.Sub(hi, lo), lo]
    before = g.clone()
    assert rewrite(g, [swap_halves]).rewrites == 1
    g.verify()
    assert g.op_histogram() == {"Identity": 1, "Slice": 2, "Sub": 1} or g.op_histogram() == {"Slice": 2, "Sub": 1}
    xs = {"x": np.arange(8, dtype=np.float32).reshape(4, 2)}
    for got, want in zip(ir.run(g, xs), ir.run(before, xs)):
        np.testing.assert_array_equal(got, want)
