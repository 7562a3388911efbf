"""Tests of the "cse" pass. Identical constants and identical nodes are merged into the first of them.

Each case checks (a) the changed flag and stats, (b) the resulting structure (Before/
Expected text with the surviving names where the graph is small: tests/rewrite_testing.py), (c)
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

from cleanup_testing import F32, I32, check_same_outputs, f32, needs, run_pass, seeded_inputs, snapshot, unchanged
from rewrite_testing import check_rewrite, check_unchanged


# -- common-subexpression elimination ----------------------------------------------------


CSE_BEFORE = """
graph main(%x: f32[2,3], %y: f32[2,3]) -> (%out) {
  const %c: f32[3] = [1.0, 2.0, 3.0]
  const %c_twin: f32[3] = [1.0, 2.0, 3.0]
  %a1: f32[2,3] = Add(%x, %c)
  %m1: f32[2,3] = Mul(%a1, %y)
  %a2: f32[2,3] = Add(%x, %c_twin)       // the same as a1 once c_twin is c
  %m2: f32[2,3] = Mul(%a2, %y)           // then the same as m1
  %s: f32[2,3] = Sub(%m1, %m2)
  %out: f32[2,3] = Add(%s, %m2)
}
"""
CSE_AFTER = """
graph main(%x: f32[2,3], %y: f32[2,3]) -> (%out) {
  const %c: f32[3] = [1.0, 2.0, 3.0]
  %a1: f32[2,3] = Add(%x, %c)
  %m1: f32[2,3] = Mul(%a1, %y)
  %s: f32[2,3] = Sub(%m1, %m1)
  %out: f32[2,3] = Add(%s, %m1)
}
"""


def test_cse_merges_constants_then_nodes_in_one_sweep():
    # merged into the first of each: the names say which survived
    check_rewrite("cse", CSE_BEFORE, CSE_AFTER, stats={"nodes_merged": 2, "constants_merged": 1}, same_names=True,
                  feeds=seeded_inputs)


def test_cse_leaves_distinct_nodes_alone():
    check_unchanged("cse", CSE_AFTER, stats={"nodes_merged": 0, "constants_merged": 0})


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
    # the kept node's value takes over the output's name (check_rewrite also checks the
    # output names; the output types are in the Expected text)
    check_rewrite("cse", """
    graph main(%x: f32[batch,3]) -> (%sum, %second) {
      const %c: f32[3] = [1.0, 2.0, 3.0]
      %first: f32[batch,3] = Mul(%x, %c)
      %second: f32[batch,3] = Mul(%x, %c)
      %sum: f32[batch,3] = Add(%first, %first)
    }""", """
    graph main(%x: f32[batch,3]) -> (%sum, %second) {
      const %c: f32[3] = [1.0, 2.0, 3.0]
      %second: f32[batch,3] = Mul(%x, %c)
      %sum: f32[batch,3] = Add(%second, %second)
    }""", stats={"nodes_merged": 1, "constants_merged": 0}, same_names=True, feeds=seeded_inputs)


@needs["Identity"]
def test_cse_graph_outputs_merge_through_identity_once():
    after = """
    graph main(%x: f32[3]) -> (%y1, %y2, %y3) {
      %y1: f32[3] = Mul(%x, %x)
      %y3: f32[3] = Identity(%y1)
      %y2: f32[3] = Identity(%y1)
    }"""
    check_rewrite("cse", """
    graph main(%x: f32[3]) -> (%y1, %y2, %y3) {
      %y1: f32[3] = Mul(%x, %x)
      %y2: f32[3] = Mul(%x, %x)
      %y3: f32[3] = Mul(%x, %x)
    }""", after, stats={"nodes_merged": 2, "constants_merged": 0}, same_names=True, feeds=seeded_inputs)
    check_unchanged("cse", after)  # the two Identity carriers are not merged with each other


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
