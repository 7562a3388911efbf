"""Tests of the "refine_types" pass (passes/refine_types.py): dims that inference knows
once shape computations are folded are written into node outputs.

(a) changed flag and stats; (b) the refined types (and graph outputs kept as declared
unless asked); (c) the interpreter's outputs unchanged, bit for bit (only types change);
(d) a graph whose types are already complete is left alone.
"""

from __future__ import annotations

import numpy as np

from requant.ir import run
from requant.passes import PassManager

from canonical_testing import build_graph, run_pass, seeded_inputs

F32 = "float32"


def computed_expand(b, x):
    """Expand(x, Shape(x) * 1): which size-1 dims grow is unknown until folding."""
    return b.Expand(x, b.Mul(b.Shape(x), b.const(np.array(1, np.int64))))


def test_folded_shapes_refine_an_inner_node_and_keep_the_declared_output():
    g = build_graph({"x": (F32, [1, 3])}, lambda b, x: b.Relu(computed_expand(b, x)))
    expand = next(n for n in g if n.op == "Expand")
    assert expand.outputs[0].type.shape == (None, 3)
    feeds = seeded_inputs(g)
    before = run(g, feeds)
    PassManager(["fold_constants"], verify=True).run(g)
    result = run_pass("refine_types", g)
    assert result.changed and result.stats == {"types_refined": 1}  # the Expand; the Relu is the output
    assert expand.outputs[0].type.shape == (1, 3)
    assert g.outputs[0].type.shape == (None, 3)  # a graph output keeps its declared type
    np.testing.assert_array_equal(run(g, feeds)[0], before[0])


def test_outputs_option_refines_graph_outputs_too():
    g = build_graph({"x": (F32, [1, 3])}, computed_expand)
    PassManager(["fold_constants"], verify=True).run(g)
    result = run_pass("refine_types", g, outputs=True)
    assert result.stats == {"types_refined": 1, "outputs_refined": 1}
    assert g.outputs[0].type.shape == (1, 3)


def test_complete_types_are_left_alone():
    g = build_graph({"x": (F32, [2, 3])}, lambda b, x: b.Relu(x))
    text = g.to_text()
    result = run_pass("refine_types", g)
    assert not result.changed and result.stats == {"types_refined": 0}
    assert g.to_text() == text
