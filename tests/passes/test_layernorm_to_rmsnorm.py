"""layernorm_to_rmsnorm: a pre-norm residual stream centred at its writers, its affine-free
LayerNorms turned into RMSNorms. (a) changed flag and stats, (b) Before/Expected structure
(the embedding rows and the writer's weight columns centred, with numbers that centre
exactly; LayerNorm -> RMSNormalization with its epsilon; an explicit MatMul by
I - 11^T/d where the first value comes from a graph input), (c) the interpreter's outputs
before vs after on seeded inputs within 1e-5 (float32: the centred stream's mean is
zero only up to rounding), (d) the cases that must not match: a linear reading the
stream directly, a post-norm stream, a stream with RMSNorms only.

The model-level check (Llama, OPT, GPT-2, ViT, BERT from both frontends) is in
tests/models/test_rotate_models.py.
"""

from __future__ import annotations

from canonical_testing import run_pass
from quant_testing import block
from rewrite_testing import check_rewrite, check_unchanged

PASS = "layernorm_to_rmsnorm"
TOLERANCES = {"float32": (1e-5, 1e-5)}

# token table rows with integer means, a writer whose weight columns do too
BEFORE = """
graph main(%ids: i64[2,3]) -> (%y) {
  const %table: f32[3,4] = [[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 0.0], [-1.0, 1.0, 2.0, 2.0]]
  const %unit: f32[4] = 1.0
  const %w_up: f32[4,2] = [[1.0, 0.5], [0.0, 1.0], [2.0, -1.0], [1.0, 1.0]]
  const %w_down: f32[2,4] = [[1.0, 1.0, 1.0, 5.0], [2.0, 0.0, -2.0, 4.0]]
  const %b_down: f32[4] = [0.0, 1.0, 2.0, 5.0]
  const %w_head: f32[4,3] = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 2.0, 1.0]]
  %h0: f32[2,3,4] = Gather(%table, %ids) {axis=0}
  %n0: f32[2,3,4] = LayerNormalization(%h0, %unit) {epsilon=1e-05}
  %u: f32[2,3,2] = MatMul(%n0, %w_up)
  %r: f32[2,3,2] = Relu(%u)
  %d: f32[2,3,4] = MatMul(%r, %w_down)
  %f: f32[2,3,4] = Add(%d, %b_down)
  %h1: f32[2,3,4] = Add(%h0, %f)
  %n1: f32[2,3,4] = LayerNormalization(%h1, %unit) {epsilon=1e-05}
  %y: f32[2,3,3] = MatMul(%n1, %w_head)
}"""

EXPECTED = """
graph main(%ids: i64[2,3]) -> (%y) {
  const %table_c: f32[3,4] = [[-2.0, -1.0, 0.0, 3.0], [-1.0, -1.0, 3.0, -1.0], [-2.0, 0.0, 1.0, 1.0]]
  const %unit: f32[4] = 1.0
  const %w_up: f32[4,2] = [[1.0, 0.5], [0.0, 1.0], [2.0, -1.0], [1.0, 1.0]]
  const %w_down_c: f32[2,4] = [[-1.0, -1.0, -1.0, 3.0], [1.0, -1.0, -3.0, 3.0]]
  const %b_down_c: f32[4] = [-2.0, -1.0, 0.0, 3.0]
  const %w_head: f32[4,3] = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 2.0, 1.0]]
  %h0: f32[2,3,4] = Gather(%table_c, %ids) {axis=0}
  %n0: f32[2,3,4] = RMSNormalization(%h0, %unit) {epsilon=1e-05}
  %u: f32[2,3,2] = MatMul(%n0, %w_up)
  %r: f32[2,3,2] = Relu(%u)
  %d: f32[2,3,4] = MatMul(%r, %w_down_c)
  %f: f32[2,3,4] = Add(%d, %b_down_c)
  %h1: f32[2,3,4] = Add(%h0, %f)
  %n1: f32[2,3,4] = RMSNormalization(%h1, %unit) {epsilon=1e-05}
  %y: f32[2,3,3] = MatMul(%n1, %w_head)
}"""


def _ids(graph, seed):
    import numpy as np

    return {"ids": np.random.default_rng(seed).integers(0, 3, (2, 3)).astype(np.int64)}


def test_writers_centred_and_layernorms_become_rmsnorms():
    result = check_rewrite(PASS, BEFORE, EXPECTED, tolerances=TOLERANCES, feeds=_ids,
                           stats={"streams_centred": 1, "writers_centred": 2, "norms_converted": 2,
                                  "explicit_products": 0, "refused": 0})
    (entry,) = result.graph.meta[PASS]
    assert entry["norms_converted"] == 2 and entry["explicit"] == []


def test_a_graph_input_stream_gets_one_explicit_centring_product():
    check_rewrite(PASS, """
    graph main(%x: f32[2,4]) -> (%y) {
      const %unit: f32[4] = 1.0
      const %w_down: f32[4,4] = [[1.0, 1.0, 1.0, 5.0], [2.0, 0.0, -2.0, 4.0], [0.0, 0.0, 0.0, 4.0], [1.0, 2.0, 3.0, 2.0]]
      const %w_head: f32[4,2] = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 2.0]]
      %n0: f32[2,4] = LayerNormalization(%x, %unit) {epsilon=1e-05}
      %d: f32[2,4] = MatMul(%n0, %w_down)
      %h1: f32[2,4] = Add(%x, %d)
      %n1: f32[2,4] = LayerNormalization(%h1, %unit) {epsilon=1e-05}
      %y: f32[2,2] = MatMul(%n1, %w_head)
    }""", """
    graph main(%x: f32[2,4]) -> (%y) {
      const %centre: f32[4,4] = [[0.75, -0.25, -0.25, -0.25], [-0.25, 0.75, -0.25, -0.25], [-0.25, -0.25, 0.75, -0.25], [-0.25, -0.25, -0.25, 0.75]]
      const %unit: f32[4] = 1.0
      const %w_down_c: f32[4,4] = [[-1.0, -1.0, -1.0, 3.0], [1.0, -1.0, -3.0, 3.0], [-1.0, -1.0, -1.0, 3.0], [-1.0, 0.0, 1.0, 0.0]]
      const %w_head: f32[4,2] = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 2.0]]
      %xc: f32[2,4] = MatMul(%x, %centre)     // the first value, written by a graph input
      %n0: f32[2,4] = RMSNormalization(%xc, %unit) {epsilon=1e-05}
      %d: f32[2,4] = MatMul(%n0, %w_down_c)
      %h1: f32[2,4] = Add(%xc, %d)
      %n1: f32[2,4] = RMSNormalization(%h1, %unit) {epsilon=1e-05}
      %y: f32[2,2] = MatMul(%n1, %w_head)
    }""", tolerances=TOLERANCES, stats={"streams_centred": 1, "writers_centred": 1, "norms_converted": 2,
                                        "explicit_products": 1, "refused": 0})


def test_a_layernorm_with_affine_stays_a_layernorm():
    result = check_rewrite(PASS, BEFORE.replace("%n1: f32[2,3,4] = LayerNormalization(%h1, %unit)",
                                                "%n1: f32[2,3,4] = LayerNormalization(%h1, %w_up_gamma)").replace(
        "const %unit: f32[4] = 1.0", "const %unit: f32[4] = 1.0\n  const %w_up_gamma: f32[4] = [1.0, 2.0, 0.5, 1.0]"),
        EXPECTED.replace("%n1: f32[2,3,4] = RMSNormalization(%h1, %unit)",
                         "%n1: f32[2,3,4] = LayerNormalization(%h1, %gamma)").replace(
            "const %unit: f32[4] = 1.0", "const %unit: f32[4] = 1.0\n  const %gamma: f32[4] = [1.0, 2.0, 0.5, 1.0]"),
        tolerances=TOLERANCES, feeds=_ids, stats={"streams_centred": 1, "writers_centred": 2, "norms_converted": 1,
                                                  "explicit_products": 0, "refused": 0})
    assert sum(n.op == "LayerNormalization" for n in result.graph) == 1


def test_a_linear_reading_the_stream_directly_is_refused():
    text = BEFORE.replace("%y: f32[2,3,3] = MatMul(%n1, %w_head)", "%y: f32[2,3,3] = MatMul(%h1, %w_head)")
    check_unchanged(PASS, text, stats={"streams_centred": 0, "writers_centred": 0, "norms_converted": 0,
                                       "explicit_products": 0, "refused": 1, "refused:mean_reader": 1,
                                       "refusal": "MatMul -> %y reads the stream directly (it would see the centred "
                                                  "stream)"})


def test_a_post_norm_stream_is_refused():
    g, _ = block()
    result = run_pass(PASS, g)
    assert not result.changed and result.stats["refused:post_norm"] == 1
    assert "post-norm, its LayerNorms sit on the stream" in result.stats["refusal"] and PASS not in g.meta


def test_an_rmsnorm_stream_is_left_alone():
    check_unchanged(PASS, BEFORE.replace("LayerNormalization", "RMSNormalization"),
                    stats={"streams_centred": 0, "writers_centred": 0, "norms_converted": 0, "explicit_products": 0,
                           "refused": 0})
