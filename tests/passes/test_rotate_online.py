"""rotate_online: requant's Hadamard op on linear inputs with H^T folded into the linears
(per-linear for any model; QuaRot's R4 with scope "writers"), across heads after
rotate_heads, on queries and keys (R3). (a) changed flag and stats, (b) Before/Expected
structure (one Hadamard per rotated activation, shared by its linear readers, on the
branch to them only; the readers' weights take H^T, checked against H computed here),
(c) the interpreter's outputs before vs after on seeded inputs within 1e-5 (float32),
(d) the cases that must not match: no linear reader, readers that already read a rotated
input, an unknown scope or block. A width without a Hadamard matrix takes a dense orthogonal
product. With `block`, the Hadamard is block-diagonal (I (x) H_b, the weights take its
transpose) and the attention output needs none across heads. Model-level exactness:
tests/models/test_rotate_models.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import run_pass, seeded_inputs
from requant import ir
from requant.errors import RequantError
from requant.ir.hadamard import normalized_hadamard
from requant.passes.rotate_online import block_order
from rewrite_testing import assert_same_function, check_rewrite, check_unchanged
from rotation_testing import attention

PASS = "rotate_online"
TOLERANCES = {"float32": (1e-5, 1e-5)}
RNG = np.random.default_rng(12)
W1 = np.round(RNG.standard_normal((8, 3)), 3).astype(np.float32)
W2 = np.round(RNG.standard_normal((8, 2)), 3).astype(np.float32)
NONE_ROTATED = {"activations_rotated": 0, "linears_updated": 0, "across_heads": 0, "qk_rotated": 0, "dense": 0}

# a post-norm-style input: the norm's output feeds two linears and a residual Add
BEFORE = f"""
graph main(%x: f32[2,8]) -> (%y1, %y2, %s) {{
  const %gamma: f32[8] = [1.0, 2.0, 0.5, 1.0, 1.5, 1.0, 1.0, 3.0]
  const %w1: f32[8,3] = {W1.tolist()}
  const %w2: f32[8,2] = {W2.tolist()}
  %n: f32[2,8] = LayerNormalization(%x, %gamma) {{epsilon=1e-05}}
  %y1: f32[2,3] = MatMul(%n, %w1)
  %y2: f32[2,2] = MatMul(%n, %w2)
  %s: f32[2,8] = Add(%n, %x)
}}"""

EXPECTED = """
graph main(%x: f32[2,8]) -> (%y1, %y2, %s) {
  const %gamma: f32[8] = [1.0, 2.0, 0.5, 1.0, 1.5, 1.0, 1.0, 3.0]
  const %w1_h: f32[8,3] = ...
  const %w2_h: f32[8,2] = ...
  %n: f32[2,8] = LayerNormalization(%x, %gamma) {epsilon=1e-05}
  %nh: f32[2,8] = Hadamard(%n) {axis=-1}      // shared by both linears
  %y1: f32[2,3] = MatMul(%nh, %w1_h)
  %y2: f32[2,2] = MatMul(%nh, %w2_h)
  %s: f32[2,8] = Add(%n, %x)                   // the residual still reads the norm itself
}"""


def test_one_hadamard_per_activation_and_its_transpose_in_the_weights():
    result = check_rewrite(PASS, BEFORE, EXPECTED, tolerances=TOLERANCES,
                           stats={**NONE_ROTATED, "activations_rotated": 1, "linears_updated": 2})
    h = normalized_hadamard(8)
    by_output = {n.outputs[0].name: n for n in result.graph}
    np.testing.assert_allclose(by_output["y1"].inputs[1].const, h.T @ W1.astype(np.float64), atol=1e-6)
    np.testing.assert_allclose(by_output["y2"].inputs[1].const, h.T @ W2.astype(np.float64), atol=1e-6)
    assert by_output["y1"].meta["rotated_input"] == PASS
    # running it again finds every reader rotated already
    again = run_pass(PASS, result.graph)
    assert not again.changed and again.stats["skipped:rotated_offline"] == 1


def test_scope_norms_and_writers_choose_activations():
    text = BEFORE.replace("%y2: f32[2,2] = MatMul(%n, %w2)", "%r: f32[2,8] = Relu(%x)\n  %y2: f32[2,2] = MatMul(%r, %w2)")
    g = ir.parse(text)
    assert run_pass(PASS, g, scope="norms").stats["activations_rotated"] == 1  # n, not Relu's output
    g = ir.parse(text)
    assert run_pass(PASS, g, scope="all").stats["activations_rotated"] == 2
    check_unchanged(PASS, text, options={"scope": "writers"}, stats=NONE_ROTATED)  # no residual stream here


def test_a_width_without_a_hadamard_matrix_takes_a_dense_rotation():
    text = """
    graph main(%x: f32[2,6]) -> (%y) {
      const %w: f32[6,2] = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 3.0], [1.0, -1.0]]
      %r: f32[2,6] = Relu(%x)
      %y: f32[2,2] = MatMul(%r, %w)
    }"""
    result = check_rewrite(PASS, text, """
    graph main(%x: f32[2,6]) -> (%y) {
      const %q: f32[6,6] = ...
      const %w_q: f32[6,2] = ...
      %r: f32[2,6] = Relu(%x)
      %rq: f32[2,6] = MatMul(%r, %q)
      %y: f32[2,2] = MatMul(%rq, %w_q)
    }""", tolerances=TOLERANCES, stats={**NONE_ROTATED, "activations_rotated": 1, "linears_updated": 1, "dense": 1})
    q = next(n for n in result.graph if n.outputs[0].name == "r_transformed").inputs[1].const.astype(np.float64)
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-6)


def test_across_heads_after_rotate_heads_and_queries_keys():
    text = attention(heads=4, kv_heads=2, size=4)
    g = ir.parse(text)
    run_pass("rotate_heads", g)
    result = run_pass(PASS, g, scope="all", qk=True)
    assert result.stats == {**NONE_ROTATED, "activations_rotated": 2, "linears_updated": 4, "across_heads": 1,
                            "qk_rotated": 1}
    hadamards = [n for n in g if n.op == "Hadamard"]
    assert sorted(int(n.attrs["axis"]) for n in hadamards) == [-2, -1, -1, -1]  # across heads; x, q, k
    across = next(n for n in hadamards if n.attrs["axis"] == -2)
    view = across.inputs[0]
    assert view.type.shape == (1, 3, 4, 4) and view.producer.op == "Reshape"
    assert view.producer.inputs[0].name == "m"  # after the merge, which QAttention's match ends at
    assert across.outputs[0].users[0].op == "Reshape" and across.outputs[0].users[0].outputs[0].type.shape == (1, 3, 16)
    assert_same_function(ir.parse(text), g, TOLERANCES, (0, 1, 2), seeded_inputs)


def test_nothing_to_rotate_and_a_bad_scope():
    check_unchanged(PASS, """
    graph main(%x: f32[2,8]) -> (%y) {
      %y: f32[2,8] = Relu(%x)
    }""", stats=NONE_ROTATED)
    with pytest.raises(RequantError, match="scope must be one of all, writers, norms"):
        run_pass(PASS, ir.parse(BEFORE), scope="every")


# the same graph, 16 channels wide: block 4 rotates each run of 4 channels on its own
W16 = np.round(RNG.standard_normal((16, 3)), 3).astype(np.float32)
BLOCK_BEFORE = f"""
graph main(%x: f32[2,16]) -> (%y, %s) {{
  const %w: f32[16,3] = {W16.tolist()}
  %r: f32[2,16] = Relu(%x)
  %y: f32[2,3] = MatMul(%r, %w)
  %s: f32[2,16] = Add(%r, %x)
}}"""

BLOCK_EXPECTED = """
graph main(%x: f32[2,16]) -> (%y, %s) {
  const %w_h: f32[16,3] = ...
  %r: f32[2,16] = Relu(%x)
  %rh: f32[2,16] = Hadamard(%r) {axis=-1, block=4}
  %y: f32[2,3] = MatMul(%rh, %w_h)
  %s: f32[2,16] = Add(%r, %x)
}"""


def test_block_diagonal_hadamard_and_its_transpose_in_the_weights():
    result = check_rewrite(PASS, BLOCK_BEFORE, BLOCK_EXPECTED, options={"block": 4}, tolerances=TOLERANCES,
                           stats={**NONE_ROTATED, "activations_rotated": 1, "linears_updated": 1, "blocked": 1})
    q = np.kron(np.eye(4), normalized_hadamard(4))
    w = next(n for n in result.graph if n.op == "MatMul").inputs[1].const
    np.testing.assert_allclose(w, q.T @ W16.astype(np.float64), atol=1e-6)
    # a block as wide as the activation (or wider) is the plain Hadamard: no block attribute
    full = run_pass(PASS, ir.parse(BLOCK_BEFORE), block=16)
    assert "blocked" not in full.stats
    assert "block" not in next(n for n in full.graph if n.op == "Hadamard").attrs


def test_block_order_is_the_largest_hadamard_order_dividing_the_width():
    assert [block_order(n, 32) for n in (384, 1536, 96, 24, 156, 1000, 20)] == [32, 32, 32, 24, 12, 20, 20]
    assert block_order(1536, 0) == 1536 and block_order(1536, 12) == 12
    assert block_order(50, 32) == 50 and block_order(99, 32) == 99  # blocks of 2 or 1: the whole width instead


def test_a_width_whose_blocks_would_be_tiny_takes_the_whole_width():
    text = f"""
    graph main(%x: f32[2,18]) -> (%y) {{
      const %w: f32[18,3] = {np.round(np.random.default_rng(18).standard_normal((18, 3)), 3).tolist()}
      %r: f32[2,18] = Relu(%x)
      %y: f32[2,3] = MatMul(%r, %w)
    }}"""
    result = run_pass(PASS, ir.parse(text), block=4)  # 18 = 2 x 9: the largest order dividing it is 2
    assert result.stats == {**NONE_ROTATED, "activations_rotated": 1, "linears_updated": 1, "dense": 1}


def test_block_within_the_head_size_needs_no_hadamard_across_heads():
    text = attention(heads=4, kv_heads=2, size=4)
    g = ir.parse(text)
    run_pass("rotate_heads", g)
    result = run_pass(PASS, g, scope="all", block=4)
    assert result.stats == {**NONE_ROTATED, "activations_rotated": 1, "linears_updated": 3,
                            "skipped:heads_within_block": 1, "blocked": 1}
    assert [dict(n.attrs) for n in g if n.op == "Hadamard"] == [{"axis": -1, "block": 4}]  # x only
    assert_same_function(ir.parse(text), g, TOLERANCES, (0, 1, 2), seeded_inputs)


@pytest.mark.parametrize("block", [-4, 6, 156, True, 4.0])
def test_a_block_that_is_no_hadamard_order_is_refused(block):
    with pytest.raises(RequantError, match="block must be 0 .* or a Hadamard order"):
        run_pass(PASS, ir.parse(BLOCK_BEFORE), block=block)
