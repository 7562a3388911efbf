"""Tests of the "cse" pass. Identical constants and identical nodes are merged into the first of them.

Each case checks (a) the changed flag and stats, (b) the resulting structure, (c)
agreement with the interpreter before vs after on seeded inputs, bit for bit for every
dtype (`assert_bitwise_equal`: the pass runs the same kernels on the same values), and
(d) a graph it must leave alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from requant.ir import Builder, Graph, tensor_type
from requant.passes import cse

from cleanup_testing import F32, I32, check_same_outputs, f32, needs, run_pass, snapshot, structure, unchanged


# -- common-subexpression elimination ----------------------------------------------------


def cse_graph() -> Graph:
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, (2, 3)))
    y = b.input("y", tensor_type(F32, (2, 3)))
    c = b.const(f32(1, 2, 3), "c")
    c_twin = b.const(f32(1, 2, 3), "c_twin")
    a1 = b.Add(x, c, _out_names=["a1"])
    m1 = b.Mul(a1, y, _out_names=["m1"])
    a2 = b.Add(x, c_twin, _out_names=["a2"])  # same as a1 once c_twin is c
    m2 = b.Mul(a2, y, _out_names=["m2"])  # then same as m1
    s = b.Sub(m1, m2, _out_names=["s"])
    g.outputs = [b.Add(s, m2, _out_names=["out"])]
    return g


def test_cse_merges_constants_then_nodes_in_one_sweep():
    g = cse_graph()
    before = g.clone()
    result = run_pass("cse", g)
    assert result.changed is True
    assert result.stats == {"nodes_merged": 2, "constants_merged": 1}
    assert structure(g) == [
        "%a1 = Add(%x, %c)",
        "%m1 = Mul(%a1, %y)",
        "%s = Sub(%m1, %m1)",
        "%out = Add(%s, %m1)",
    ]
    assert [c.name for c in g.constants] == ["c"]
    check_same_outputs(before, g)


def test_cse_leaves_distinct_nodes_alone():
    g = cse_graph()
    run_pass("cse", g)
    unchanged("cse", g)


def test_cse_merges_commutative_operands_in_either_order_only():
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, (3,)))
    y = b.input("y", tensor_type(F32, (3,)))
    add_xy, add_yx = b.Add(x, y), b.Add(y, x)
    sub_xy, sub_yx = b.Sub(x, y), b.Sub(y, x)
    div_xy, div_yx = b.Div(x, y), b.Div(y, x)
    g.outputs = [b.Sum(add_xy, add_yx, sub_xy, sub_yx, div_xy, div_yx)]
    before = g.clone()
    result = run_pass("cse", g)
    assert result.stats["nodes_merged"] == 1
    assert g.op_histogram() == {"Add": 1, "Div": 2, "Sub": 2, "Sum": 1}
    check_same_outputs(before, g)


def test_cse_never_reorders_variadic_commutative_inputs():
    g = Graph()
    b = Builder(g)
    x, y, z = (b.input(n, tensor_type(F32, (3,))) for n in "xyz")
    g.outputs = [b.Sub(b.Sum(x, y, z), b.Sum(x, z, y))]  # rounding differs in general
    unchanged("cse", g)


def gemm_graph(attrs_a: dict, attrs_b: dict) -> Graph:
    g = Graph()
    b = Builder(g)
    a = b.input("a", tensor_type(F32, (2, 3)))
    w = b.const(np.arange(12, dtype=np.float32).reshape(3, 4) / 7, "w")
    g.outputs = [b.Add(b.Gemm(a, w, **attrs_a), b.Gemm(a, w, **attrs_b))]
    return g


@pytest.mark.parametrize(
    "attrs_a, attrs_b, merged",
    [
        ({"alpha": 0.5}, {"alpha": 0.5}, 1),
        ({"alpha": 0.5}, {"alpha": 2.0}, 0),  # different attrs
        ({}, {"alpha": 1.0, "transA": 0}, 1),  # defaults filled in before comparing
        ({"alpha": 0.0}, {"alpha": -0.0}, 0),  # equal as floats, different bits
        ({"alpha": float("nan")}, {"alpha": float("nan")}, 1),  # nan attrs by bits
    ],
)
def test_cse_compares_attributes_exactly(attrs_a, attrs_b, merged):
    g = gemm_graph(attrs_a, attrs_b)
    before = g.clone()
    text = snapshot(g)
    result = run_pass("cse", g)
    assert result.changed is bool(merged)
    assert result.stats == {"nodes_merged": merged, "constants_merged": 0}
    assert g.op_histogram() == {"Add": 1, "Gemm": 2 - merged}
    if not merged:
        assert snapshot(g) == text
    check_same_outputs(before, g)


def test_cse_attr_key_handles_arrays_and_nested_values():
    key = cse.attr_key
    assert key(np.array([1, 2], np.int64)) == key(np.array([1, 2], np.int64))
    assert key(np.array([1, 2], np.int64)) != key(np.array([1, 2], np.int32))
    assert key(np.array([1, 2], np.int64)) != key(np.array([[1, 2]], np.int64))
    assert key(np.array([np.nan], np.float32)) == key(np.array([np.nan], np.float32))
    assert key([1, 2.0, "a"]) == key((1, 2.0, "a"))
    assert key(True) != key(1) and key(1) != key(1.0)
    assert key({"k": [1]}) == key({"k": [1]})


def test_cse_constants_merge_by_dtype_shape_and_bits():
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, (2,)))
    consts = [
        b.const(f32(np.nan, 1), "nan_a"),
        b.const(f32(np.nan, 1), "nan_b"),  # same bits as nan_a: merged
        b.const(f32(0.0, 1), "zero"),
        b.const(f32(-0.0, 1), "neg_zero"),  # equal as floats, not as bits: kept
        b.const(np.asarray([[0.0, 1.0]], np.float32), "zero_2d"),  # other shape: kept
    ]
    ints = [b.const(np.asarray([0, 1], np.int32), "i32"), b.const(np.asarray([0, 1], np.int32), "i32_twin")]
    xi = b.input("xi", tensor_type(I32, (2,)))
    g.outputs = [b.Sum(*(b.Mul(x, c) for c in consts)), b.Add(*(b.Add(xi, c) for c in ints))]
    before = g.clone()
    result = run_pass("cse", g)
    assert result.stats == {"nodes_merged": 2, "constants_merged": 2}
    assert [c.name for c in g.constants] == ["nan_a", "zero", "neg_zero", "zero_2d", "i32"]
    assert g.op_histogram() == {"Add": 2, "Mul": 4, "Sum": 1}
    check_same_outputs(before, g)


def test_cse_keeps_graph_output_names_and_types():
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, ("batch", 3)))
    c = b.const(f32(1, 2, 3), "c")
    first = b.Mul(x, c, _out_names=["first"])
    b.Mul(x, c, _out_names=["second"])
    g.outputs = [b.Add(first, first, _out_names=["sum"]), g.nodes[1].output]
    before = g.clone()
    result = run_pass("cse", g)
    assert result.stats["nodes_merged"] == 1
    # the kept node's value takes over the output's name
    assert structure(g) == ["%second = Mul(%x, %c)", "%sum = Add(%second, %second)"]
    assert [(v.name, v.type) for v in g.outputs] == [(v.name, v.type) for v in before.outputs]
    check_same_outputs(before, g)


@needs["Identity"]
def test_cse_graph_outputs_merge_through_identity_once():
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, (3,)))
    g.outputs = [b.Mul(x, x, _out_names=[name]) for name in ("y1", "y2", "y3")]
    before = g.clone()
    result = run_pass("cse", g)
    assert result.stats["nodes_merged"] == 2
    assert structure(g) == ["%y1 = Mul(%x, %x)", "%y3 = Identity(%y1)", "%y2 = Identity(%y1)"]
    assert [(v.name, v.type) for v in g.outputs] == [(v.name, v.type) for v in before.outputs]
    check_same_outputs(before, g)
    unchanged("cse", g)  # the two Identity carriers are not merged with each other


def test_cse_never_merges_non_deterministic_ops(monkeypatch):
    real_get_schema = cse.get_schema

    def flaky_add(op):
        schema = real_get_schema(op)
        return dataclasses.replace(schema, extra={"deterministic": False}) if op == "Add" else schema

    monkeypatch.setattr(cse, "get_schema", flaky_add)
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, (3,)))
    g.outputs = [b.Mul(b.Add(x, x), b.Add(x, x)), b.Sub(b.Mul(x, x), b.Mul(x, x))]
    result = run_pass("cse", g)
    assert result.stats["nodes_merged"] == 1  # the Muls only
    assert g.op_histogram() == {"Add": 2, "Mul": 2, "Sub": 1}
