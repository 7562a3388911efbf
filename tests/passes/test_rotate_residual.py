"""rotate_residual (QuaRot R1): a random Hadamard rotation Q of a pre-norm residual stream
folded into its writers (W Q) and readers (Q^T W). (a) changed flag and stats, (b)
Before/Expected structure (only weights change; the embedding table, the down projection
and both readers take new constants, checked against Q computed here), (c) the
interpreter's outputs before vs after on seeded inputs within 1e-5 (float32: every sum
reassociated), (d) the cases that must not match, each refused by name: a non-linear
reader inside the stream, a post-norm graph (BERT-style), a LayerNorm not converted to
RMSNorm, a norm with per-channel gamma; `strict` raises instead. The explicit products
at the stream's ends (a graph input as first value, a final norm whose output is the
graph's) are checked too. Model-level exactness: tests/models/test_rotate_models.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import run_pass
from quant_testing import block
from requant import ir
from requant.errors import RequantError
from requant.passes.channel_transforms import rotation_transform
from rewrite_testing import check_rewrite, check_unchanged

PASS = "rotate_residual"
TOLERANCES = {"float32": (1e-5, 1e-5)}
RNG = np.random.default_rng(5)


def _const(shape) -> str:
    return str(np.round(RNG.standard_normal(shape), 3).tolist())


TABLE, W_UP, W_DOWN, B_DOWN, W_HEAD = _const((5, 4)), _const((4, 6)), _const((6, 4)), _const(4), _const((4, 3))

BEFORE = f"""
graph main(%ids: i64[2,3]) -> (%y) {{
  const %table: f32[5,4] = {TABLE}
  const %unit: f32[4] = 1.0
  const %w_up: f32[4,6] = {W_UP}
  const %w_down: f32[6,4] = {W_DOWN}
  const %b_down: f32[4] = {B_DOWN}
  const %w_head: f32[4,3] = {W_HEAD}
  %h0: f32[2,3,4] = Gather(%table, %ids) {{axis=0}}
  %n0: f32[2,3,4] = RMSNormalization(%h0, %unit) {{epsilon=1e-05}}
  %u: f32[2,3,6] = MatMul(%n0, %w_up)
  %r: f32[2,3,6] = Relu(%u)
  %d: f32[2,3,4] = MatMul(%r, %w_down)
  %f: f32[2,3,4] = Add(%d, %b_down)
  %h1: f32[2,3,4] = Add(%h0, %f)
  %n1: f32[2,3,4] = RMSNormalization(%h1, %unit) {{epsilon=1e-05}}
  %y: f32[2,3,3] = MatMul(%n1, %w_head)
}}"""

EXPECTED = """
graph main(%ids: i64[2,3]) -> (%y) {
  const %table_q: f32[5,4] = ...
  const %unit: f32[4] = 1.0
  const %w_up_q: f32[4,6] = ...
  const %w_down_q: f32[6,4] = ...
  const %b_down_q: f32[4] = ...
  const %w_head_q: f32[4,3] = ...
  %h0: f32[2,3,4] = Gather(%table_q, %ids) {axis=0}
  %n0: f32[2,3,4] = RMSNormalization(%h0, %unit) {epsilon=1e-05}
  %u: f32[2,3,6] = MatMul(%n0, %w_up_q)
  %r: f32[2,3,6] = Relu(%u)
  %d: f32[2,3,4] = MatMul(%r, %w_down_q)
  %f: f32[2,3,4] = Add(%d, %b_down_q)
  %h1: f32[2,3,4] = Add(%h0, %f)
  %n1: f32[2,3,4] = RMSNormalization(%h1, %unit) {epsilon=1e-05}
  %y: f32[2,3,3] = MatMul(%n1, %w_head_q)
}"""

NO_CHANGE = {"streams_rotated": 0, "writers_rotated": 0, "readers_rotated": 0, "explicit_products": 0, "refused": 1}


def _ids(graph, seed):
    return {"ids": np.random.default_rng(seed).integers(0, 5, (2, 3)).astype(np.int64)}


def _const_of(graph, node_input_name: str, index: int) -> np.ndarray:
    node = next(n for n in graph if n.outputs[0].name == node_input_name)
    return np.asarray(node.inputs[index].const, np.float64)


def test_writers_take_q_and_readers_take_q_transposed():
    result = check_rewrite(PASS, BEFORE, EXPECTED, options={"seed": 7}, tolerances=TOLERANCES, feeds=_ids,
                           stats={"streams_rotated": 1, "writers_rotated": 2, "readers_rotated": 2,
                                  "explicit_products": 0, "refused": 0})
    g = result.graph
    q = rotation_transform(4, 7).matrix()
    f32 = lambda text: np.asarray(eval(text), np.float32).astype(np.float64)  # noqa: E731
    np.testing.assert_allclose(_const_of(g, "h0", 0), f32(TABLE) @ q, atol=1e-6)
    np.testing.assert_allclose(_const_of(g, "d", 1), f32(W_DOWN) @ q, atol=1e-6)
    np.testing.assert_allclose(_const_of(g, "f", 1), f32(B_DOWN) @ q, atol=1e-6)
    np.testing.assert_allclose(_const_of(g, "u", 1), q.T @ f32(W_UP), atol=1e-6)
    np.testing.assert_allclose(_const_of(g, "y", 1), q.T @ f32(W_HEAD), atol=1e-6)
    (entry,) = g.meta[PASS]
    assert entry["transform"] == "hadamard (Sylvester, random signs) 4x4"
    assert all(n.meta.get("rotated_input") == PASS for n in g if n.op == "MatMul" and n.outputs[0].name in ("u", "y"))


def test_graph_input_and_graph_output_ends_get_one_explicit_product_each():
    text = f"""
    graph main(%x: f32[2,3,4]) -> (%y) {{
      const %unit: f32[4] = 1.0
      const %w_up: f32[4,6] = {W_UP}
      const %w_down: f32[6,4] = {W_DOWN}
      const %b_down: f32[4] = {B_DOWN}
      %n0: f32[2,3,4] = RMSNormalization(%x, %unit) {{epsilon=1e-05}}
      %u: f32[2,3,6] = MatMul(%n0, %w_up)
      %r: f32[2,3,6] = Relu(%u)
      %d: f32[2,3,4] = MatMul(%r, %w_down)
      %f: f32[2,3,4] = Add(%d, %b_down)
      %h1: f32[2,3,4] = Add(%x, %f)
      %y: f32[2,3,4] = LayerNormalization(%h1, %unit, %b_down)
    }}"""
    result = check_rewrite(PASS, text, """
    graph main(%x: f32[2,3,4]) -> (%y) {
      const %q: f32[4,4] = ...
      const %unit: f32[4] = 1.0
      const %w_up_q: f32[4,6] = ...
      const %w_down_q: f32[6,4] = ...
      const %b_down_q: f32[4] = ...
      const %qt: f32[4,4] = ...
      const %b_down: f32[4] = ...
      %xq: f32[2,3,4] = MatMul(%x, %q)           // the first value comes from a graph input
      %n0: f32[2,3,4] = RMSNormalization(%xq, %unit) {epsilon=1e-05}
      %u: f32[2,3,6] = MatMul(%n0, %w_up_q)
      %r: f32[2,3,6] = Relu(%u)
      %d: f32[2,3,4] = MatMul(%r, %w_down_q)
      %f: f32[2,3,4] = Add(%d, %b_down_q)
      %h1: f32[2,3,4] = Add(%xq, %f)
      %h1r: f32[2,3,4] = MatMul(%h1, %qt)        // the final LayerNorm is the graph's output
      %y: f32[2,3,4] = LayerNormalization(%h1r, %unit, %b_down)
    }""", options={"seed": 1}, tolerances=TOLERANCES,
        stats={"streams_rotated": 1, "writers_rotated": 1, "readers_rotated": 1, "explicit_products": 2,
               "refused": 0})
    assert result.graph.meta[PASS][0]["explicit"] == ["x", "h1"]


def test_a_non_linear_reader_inside_the_stream_is_refused_by_name():
    text = BEFORE.replace("%h1: f32[2,3,4] = Add(%h0, %f)", "%h1: f32[2,3,4] = Add(%h0, %f)\n  %s: f32[2,3,4] = Mul(%h0, %h0)")
    text = text.replace("-> (%y)", "-> (%y, %s)")
    why = "stream value %h0: Mul -> %s is a Mul, not a linear"
    check_unchanged(PASS, text, stats={**NO_CHANGE, "refused:reader": 1, "refusal": why})
    with pytest.raises(RequantError, match="rotate_residual: cannot rotate the pre-norm residual stream .*"
                                           "Mul -> %s is a Mul, not a linear"):
        run_pass(PASS, ir.parse(text), strict=True)


def test_a_post_norm_graph_is_refused():
    g, _ = block()
    result = run_pass(PASS, g)
    assert not result.changed and result.stats["refused:post_norm"] == 1
    why = result.stats["refusal"]
    assert "post-norm" in why and "rotate_online" in why and "LayerNorms" in why
    with pytest.raises(RequantError, match="post-norm"):
        run_pass(PASS, block()[0], strict=True)


def test_a_layernorm_or_a_per_channel_gamma_on_the_stream_is_refused():
    layer_norm = BEFORE.replace("%n0: f32[2,3,4] = RMSNormalization", "%n0: f32[2,3,4] = LayerNormalization")
    check_unchanged(PASS, layer_norm, stats={
        **NO_CHANGE, "refused:norm": 1,
        "refusal": "LayerNormalization -> %n0 (LayerNormalization) reads the stream and subtracts its mean, which a "
                   "rotation does not keep: run layernorm_to_rmsnorm first"})
    gamma = BEFORE.replace("%n1: f32[2,3,4] = RMSNormalization(%h1, %unit)", "%n1: f32[2,3,4] = RMSNormalization(%h1, %b_down)")
    check_unchanged(PASS, gamma, stats={
        **NO_CHANGE, "refused:norm": 1,
        "refusal": "RMSNormalization -> %n1 scales each channel differently: run fold_norm_affine first"})
