"""bind_dims: symbolic dims -> sizes, computed shapes folded. (a) changed flag and stats,
(b) structure (types static, Shape chains gone), (c) the interpreter's outputs before vs
after on inputs of the bound sizes, bit for bit (only types and shape constants change),
(d) cases that must not change: a symbol not bound, and contradictory sizes refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import assert_same_outputs, build_graph, ops, run_pass, seeded_inputs
from requant.errors import RequantError
from requant.ir.interpreter import run
from requant.passes.bind_dims import dims_from_feeds

F32 = "float32"


def _dynamic_reshape(b, x):
    """What exporters write for a dynamic batch: reshape to [batch, -1] via Shape."""
    batch = b.Gather(b.Shape(x), b.const(np.array(0, np.int64)), axis=0)
    shape = b.Concat(b.Unsqueeze(batch, b.const(np.array([0], np.int64))), b.const(np.array([-1], np.int64)), axis=0)
    return b.Relu(b.Reshape(x, shape))


def test_binding_the_batch_folds_the_computed_shape() -> None:
    g = build_graph({"x": (F32, ["batch", 4, 2])}, _dynamic_reshape)
    before = g.clone()
    result = run_pass("bind_dims", g, dims={"batch": 5})
    assert result.changed
    assert result.stats["dims_bound"] == 1 and result.stats["values_specialised"] == 1 and result.stats["bound"] == "batch=5"
    assert result.stats["fold_constants:nodes_folded"] == 4 and result.stats["outputs_refined"] == 1
    assert g.inputs[0].type.shape == (5, 4, 2) and g.outputs[0].type.shape == (5, 8)
    assert "Shape" not in ops(g) and "Gather" not in ops(g)
    feeds = [seeded_inputs(g, seed) for seed in (0, 1)]
    assert_same_outputs([(run(before, f), run(g, f)) for f in feeds])


def test_an_unbound_symbol_stays_symbolic_and_nothing_changes() -> None:
    g = build_graph({"x": (F32, ["batch", 4, 2])}, _dynamic_reshape)
    before = g.to_text()
    result = run_pass("bind_dims", g, dims={"sequence": 7})
    assert not result.changed and result.stats == {"dims_bound": 0, "values_specialised": 0}
    assert g.to_text() == before


def test_only_named_symbols_are_bound() -> None:
    g = build_graph({"x": (F32, ["batch", "seq"])}, lambda b, x: b.Softmax(x, axis=-1))
    result = run_pass("bind_dims", g, dims={"seq": 6})
    assert result.changed and g.inputs[0].type.shape == ("batch", 6) and g.outputs[0].type.shape == ("batch", 6)


def test_dims_from_feeds_reads_sizes_and_refuses_contradictions() -> None:
    g = build_graph({"a": (F32, ["batch", 3]), "b": (F32, ["batch", "n"])}, lambda b, x, y: (b.Relu(x), b.Relu(y)))
    assert dims_from_feeds(g, {"a": np.zeros((2, 3)), "b": np.zeros((2, 9))}) == {"batch": 2, "n": 9}
    with pytest.raises(RequantError, match="dim 'batch' is 2 in input 'a' and 4 in input 'b'"):
        dims_from_feeds(g, {"a": np.zeros((2, 3)), "b": np.zeros((4, 9))})
    with pytest.raises(RequantError, match="input 'a' is 2-D"):
        dims_from_feeds(g, {"a": np.zeros((2, 3, 1))})


def test_a_negative_size_is_refused() -> None:
    g = build_graph({"x": (F32, ["batch", 3])}, lambda b, x: b.Relu(x))
    with pytest.raises(RequantError, match="dim 'batch' must be a size >= 0"):
        run_pass("bind_dims", g, dims={"batch": -1})
