"""Tests of the "dce" pass. A node none of whose outputs reaches a graph output goes, and so does a
constant nothing reads.

Each case checks (a) the changed flag and stats, (b) the resulting structure (Before/
Expected text with the surviving names: tests/rewrite_testing.py), (c) agreement with
the interpreter before vs after on seeded inputs, bit for bit for every dtype (no
tolerance: the pass runs the same kernels on the same values), and (d) a graph it must
leave alone.
"""

from __future__ import annotations

import time

from requant.ir import Graph, tensor_type
from requant.passes import dce

from cleanup_testing import F32, f32, needs, seeded_inputs
from rewrite_testing import check_rewrite, check_unchanged


# -- dead-code elimination -----------------------------------------------------------------


DCE_BEFORE = """
graph main(%x: f32[2,3], %unused_input: f32[3]) -> (%z, %y) {
  const %c1: f32[2,3] = 0.5
  const %c2: f32[3] = [1.0, 2.0, 3.0]
  const %c3: f32[1] = [4.0]
  const %never_read: f32[1] = [9.0]
  %y: f32[2,3] = Add(%x, %c1)
  %d1: f32[2,3] = Mul(%x, %c2)           // dead chain: d1 -> d2 -> d3
  %d2: f32[2,3] = Sub(%d1, %c3)
  %d3: f32[2,3] = Add(%d2, %d1)
  %z: f32[2,3] = Mul(%y, %y)
}
"""
DCE_AFTER = """
graph main(%x: f32[2,3], %unused_input: f32[3]) -> (%z, %y) {   // the interface stays
  const %c1: f32[2,3] = 0.5
  %y: f32[2,3] = Add(%x, %c1)
  %z: f32[2,3] = Mul(%y, %y)
}
"""


def test_dce_removes_dead_nodes_and_unused_constants():
    check_rewrite("dce", DCE_BEFORE, DCE_AFTER, stats={"nodes_removed": 3, "constants_removed": 3}, same_names=True,
                  feeds=seeded_inputs)


def test_dce_keeps_graph_outputs_without_uses_and_constant_outputs():
    check_unchanged("dce", """
    graph main(%x: f32[3]) -> (%y, %c) {
      const %c: f32[3] = [1.0, 2.0, 3.0]     // read by nothing but a graph output
      %y: f32[3] = Add(%x, %c)               // a graph output nothing reads
    }""", stats={"nodes_removed": 0, "constants_removed": 0})


def test_dce_leaves_a_clean_graph_alone():
    check_unchanged("dce", DCE_AFTER, stats={"nodes_removed": 0, "constants_removed": 0})


@needs["Split"]
def test_dce_keeps_a_multi_output_node_with_one_output_used():
    check_rewrite("dce", """
    graph main(%x: f32[4]) -> (%y) {
      %first: f32[2], %second: f32[2] = Split(%x) {num_outputs=2}     // one output read: kept
      %a: f32[2], %b: f32[2] = Split(%x) {num_outputs=2}              // none read: dead
      %y: f32[2] = Add(%first, %first)
    }""", """
    graph main(%x: f32[4]) -> (%y) {
      %first: f32[2], %second: f32[2] = Split(%x) {num_outputs=2}
      %y: f32[2] = Add(%first, %first)
    }""", stats={"nodes_removed": 1, "constants_removed": 0}, feeds=seeded_inputs)


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
