"""Tests of the "dce" pass. A node none of whose outputs reaches a graph output goes, and so does a
constant nothing reads.

Each case checks (a) the changed flag and stats, (b) the resulting structure, (c)
agreement with the interpreter before vs after on seeded inputs, bit for bit for every
dtype (`assert_bitwise_equal`: the pass runs the same kernels on the same values), and
(d) a graph it must leave alone.
"""

from __future__ import annotations

import time

import numpy as np

from requant.ir import Builder, Graph, tensor_type
from requant.passes import dce

from cleanup_testing import F32, check_same_outputs, f32, needs, run_pass, structure, unchanged


# -- dead-code elimination -----------------------------------------------------------------


def dce_graph() -> Graph:
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, (2, 3)))
    b.input("unused_input", tensor_type(F32, (3,)))
    c1 = b.const(np.full((2, 3), 0.5, np.float32), "c1")
    c2 = b.const(f32(1, 2, 3), "c2")
    c3 = b.const(f32(4), "c3")
    b.const(f32(9), "never_read")
    y = b.Add(x, c1, _out_names=["y"])
    d1 = b.Mul(x, c2, _out_names=["d1"])  # dead chain: d1 -> d2 -> d3
    d2 = b.Sub(d1, c3, _out_names=["d2"])
    b.Add(d2, d1, _out_names=["d3"])
    z = b.Mul(y, y, _out_names=["z"])
    g.outputs = [z, y]
    return g


def test_dce_removes_dead_nodes_and_unused_constants():
    g = dce_graph()
    before = g.clone()
    result = run_pass("dce", g)
    assert result.changed is True
    assert result.stats == {"nodes_removed": 3, "constants_removed": 3}
    assert structure(g) == ["%y = Add(%x, %c1)", "%z = Mul(%y, %y)"]
    assert [c.name for c in g.constants] == ["c1"]
    assert [v.name for v in g.inputs] == ["x", "unused_input"]  # the interface stays
    assert [(v.name, str(v.type)) for v in g.outputs] == [("z", "f32[2,3]"), ("y", "f32[2,3]")]
    check_same_outputs(before, g)


def test_dce_keeps_graph_outputs_without_uses_and_constant_outputs():
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, (3,)))
    c = b.const(f32(1, 2, 3), "c")
    y = b.Add(x, c, _out_names=["y"])
    g.outputs = [y, c]
    unchanged("dce", g)
    assert structure(g) == ["%y = Add(%x, %c)"] and [v.name for v in g.constants] == ["c"]


def test_dce_leaves_a_clean_graph_alone():
    g = dce_graph()
    run_pass("dce", g)
    unchanged("dce", g)


@needs["Split"]
def test_dce_keeps_a_multi_output_node_with_one_output_used():
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, (4,)))
    first, _second = b.Split(x, _outputs=2)
    dead = b.Split(x, _outputs=2)
    del dead
    g.outputs = [b.Add(first, first)]
    before = g.clone()
    result = run_pass("dce", g)
    assert result.stats["nodes_removed"] == 1
    assert [n.op for n in g] == ["Split", "Add"]
    check_same_outputs(before, g)


def test_dce_is_linear_on_large_graphs():
    """100k dead nodes all reading one input, plus a 100k-node live chain: a quadratic
    use-list update would take minutes here (no timing assertion, the bound is loose)."""
    g = Graph()
    x = g.add_input("x", tensor_type(F32, (1,)))
    one = g.add_constant(f32(1), "one")
    for _ in range(100_000):
        g.create_node("Add", [x, one], output_types=[x.type])
    v = x
    for _ in range(100_000):
        v = g.create_node("Mul", [v, one], output_types=[x.type]).output
    g.outputs = [v]
    start = time.perf_counter()
    result = dce.dead_code_elimination.apply(g)
    seconds = time.perf_counter() - start
    assert result.stats == {"nodes_removed": 100_000, "constants_removed": 0}
    assert len(g) == 100_000 and len(x.uses) == 1 and len(one.uses) == 100_000
    assert seconds < 30, f"dce took {seconds:.1f}s on 200k nodes"
    # (graph.verify() is itself quadratic in fan-out today, so check the use lists here)
    live = {id(n) for n in g}
    assert all(id(user) in live and user.inputs[i] is one for user, i in one.uses)
