"""bind_dims: symbolic dims -> sizes, computed shapes folded. (a) changed flag and stats,
(b) structure (types static, Shape chains gone), (c) the interpreter's outputs before vs
after on inputs of the bound sizes, bit for bit (only types and shape constants change),
(d) cases that must not change: arithmetic on a symbol (not followed), and
contradictory sizes refused. Symbols left unbound keep their computed shapes, which the
pass follows into the readers' types (Before/Expected).
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import assert_same_outputs, build_graph, ops, run_pass, seeded_inputs
from rewrite_testing import check_rewrite, check_unchanged
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


def test_an_unbound_symbol_stays_symbolic_and_nothing_is_folded() -> None:
    g = build_graph({"x": (F32, ["batch", 4, 2])}, _dynamic_reshape)
    before = g.clone()
    result = run_pass("bind_dims", g, dims={"sequence": 7})
    # nothing bound; the computed shape is followed: the Reshape is [batch, 8], not [?, ?]
    assert result.changed and result.stats == {"dims_bound": 0, "values_specialised": 0, "shapes_followed": 1}
    assert g.inputs[0].type.shape == ("batch", 4, 2) and g.outputs[0].type.shape == ("batch", 8)
    assert ops(g) == ops(before)  # the Shape chain stays: it cannot fold while batch is a symbol
    assert_same_outputs([(run(before, f), run(g, f)) for f in (seeded_inputs(g, seed) for seed in (0, 1))])


# exporters' dynamic batch: ids [batch, 6] broadcast from a constant row by a computed
# shape, and positions 0..batch-1 from Range; both readers get symbolic types
FOLLOW_BEFORE = """
graph main(%x: f32[batch,3], %ids: i64[batch,6]) -> (%y, %pos) {
  const %zero: i64[] = 0
  const %one: i64[] = 1
  const %axis0: i64[1] = [0]
  const %six: i64[1] = [6]
  const %row: i64[1,6] = [[0, 1, 2, 3, 4, 5]]
  %shape: i64[2] = Shape(%x)
  %n: i64[] = Gather(%shape, %zero) {axis=0}
  %n1: i64[1] = Unsqueeze(%n, %axis0)
  %target: i64[2] = Concat(%n1, %six) {axis=0}
  %rows: i64[?,?] = Expand(%row, %target)
  %y: i64[?,?] = Add(%ids, %rows)
  %pos: i64[?] = Range(%zero, %n, %one)
}
"""
FOLLOW_EXPECTED = FOLLOW_BEFORE.replace("%rows: i64[?,?]", "%rows: i64[batch,6]").replace(
    "%y: i64[?,?]", "%y: i64[batch,6]").replace("%pos: i64[?]", "%pos: i64[batch]")


def _follow_feeds(graph, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    batch = 2 + seed
    return {"x": rng.standard_normal((batch, 3)).astype(np.float32), "ids": rng.integers(0, 9, (batch, 6))}


def test_computed_shapes_of_an_unbound_symbol_are_followed() -> None:
    check_rewrite("bind_dims", FOLLOW_BEFORE, FOLLOW_EXPECTED, feeds=_follow_feeds,
                  stats={"dims_bound": 0, "values_specialised": 0, "shapes_followed": 2})


# arithmetic on the symbol (batch * 2) has no IR dim to name it: nothing to follow
NOT_FOLLOWED = """
graph main(%x: f32[batch,3]) -> (%pos) {
  const %zero: i64[] = 0
  const %one: i64[] = 1
  const %two: i64[] = 2
  %shape: i64[2] = Shape(%x)
  %n: i64[] = Gather(%shape, %zero) {axis=0}
  %twice: i64[] = Mul(%n, %two)
  %pos: i64[?] = Range(%zero, %twice, %one)
}
"""


def test_arithmetic_on_a_symbol_is_not_followed() -> None:
    check_unchanged("bind_dims", NOT_FOLLOWED, stats={"dims_bound": 0, "values_specialised": 0})


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
