"""fold_norm_affine: LayerNorm / RMSNorm gamma and beta folded into the linears reading
the norm. Each case checks (a) the changed flag and stats, (b) the structure (unit
scale, no bias input, new weights; a bias-less linear gains an Add), (c) the
interpreter's outputs before vs after on seeded inputs, (d) the cases that must not
fold: a norm whose output also feeds a residual Add or an activation, a graph output,
a norm over more than the last axis.

Tolerance: REL = 1e-5 of the largest |output| (float32): one rounding of the new
weights and a different summation order. The Before/Expected cases (tests/
rewrite_testing.py) hold outputs to rtol = atol = REL elementwise; their weights fold
exactly, so the Expected constants are compared exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import build_graph, only_node, outputs_before_after, run_pass
from quant_testing import assert_rel_close
from rewrite_testing import check_rewrite, check_unchanged

PASS = "fold_norm_affine"
F32 = "float32"
REL = 1e-5
TOLERANCES = {"float32": (REL, REL)}
RNG = np.random.default_rng(11)
H = 8
GAMMA = RNG.uniform(0.5, 1.5, H).astype(np.float32)
BETA = RNG.uniform(-0.5, 0.5, H).astype(np.float32)


def weight(n_out: int) -> np.ndarray:
    return RNG.standard_normal((H, n_out)).astype(np.float32)


def linear(b, x, n_out: int, bias: bool = True):
    y = b.MatMul(x, b.const(weight(n_out)))
    return b.Add(y, b.const(RNG.standard_normal(n_out).astype(np.float32))) if bias else y


def layer_norm(b, x, beta: bool = True):
    return b.LayerNormalization(x, b.const(GAMMA), *([b.const(BETA)] if beta else []), epsilon=1e-5)


# Numbers that fold exactly: W' = diag(gamma) W (rows scaled), b' = b + beta @ W.
GAMMA_TEXT = "[0.5, 2.0, 1.0, 4.0]"
WA_TEXT = "[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]"
WA_FOLDED_TEXT = "[[0.5, 1.0], [6.0, 8.0], [5.0, 6.0], [28.0, 32.0]]"
WB_TEXT = "[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 2.0]]"
WB_FOLDED_TEXT = "[[0.5, 0.0, 0.5], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 8.0]]"


def test_layer_norm_into_linears_with_and_without_bias() -> None:
    result = check_rewrite(PASS, f"""
    graph main(%x: f32[2,3,4]) -> (%y0, %y1) {{
      const %gamma: f32[4] = {GAMMA_TEXT}
      const %beta: f32[4] = [1.0, 0.0, -1.0, 0.5]
      const %wa: f32[4,2] = {WA_TEXT}
      const %ba: f32[2] = [0.5, -0.5]
      const %wb: f32[4,3] = {WB_TEXT}
      %n: f32[2,3,4] = LayerNormalization(%x, %gamma, %beta) {{epsilon=1e-05}}
      %ta: f32[2,3,2] = MatMul(%n, %wa)
      %y0: f32[2,3,2] = Add(%ta, %ba)
      %y1: f32[2,3,3] = MatMul(%n, %wb)
    }}""", f"""
    graph main(%x: f32[2,3,4]) -> (%y0, %y1) {{
      const %wa_folded: f32[4,2] = {WA_FOLDED_TEXT}
      const %ba_folded: f32[2] = [0.0, -0.5]
      const %wb_folded: f32[4,3] = {WB_FOLDED_TEXT}
      const %wb_bias: f32[3] = [0.0, -1.0, 1.0]        // beta @ W: the bias-less linear gains an Add
      const %unit: f32[4] = 1.0
      %n: f32[2,3,4] = LayerNormalization(%x, %unit) {{epsilon=1e-05}}   // unit scale, no bias input
      %ta: f32[2,3,2] = MatMul(%n, %wa_folded)
      %y0: f32[2,3,2] = Add(%ta, %ba_folded)
      %tb: f32[2,3,3] = MatMul(%n, %wb_folded)
      %y1: f32[2,3,3] = Add(%tb, %wb_bias)
    }}""", stats={"norms_folded": 1, "linears_updated": 2, "refused": 0}, tolerances=TOLERANCES)
    ln = only_node(result.graph, "LayerNormalization")
    assert ln.meta["folded"] == [PASS] and ln.meta["created_by"] == PASS


def test_rms_norm_into_linears() -> None:
    check_rewrite(PASS, f"""
    graph main(%x: f32[2,4,4]) -> (%y0, %y1) {{
      const %gamma: f32[4] = {GAMMA_TEXT}
      const %wa: f32[4,2] = {WA_TEXT}
      const %wb: f32[4,3] = {WB_TEXT}
      %n: f32[2,4,4] = RMSNormalization(%x, %gamma) {{epsilon=1e-06}}
      %y0: f32[2,4,2] = MatMul(%n, %wa)
      %y1: f32[2,4,3] = MatMul(%n, %wb)
    }}""", f"""
    graph main(%x: f32[2,4,4]) -> (%y0, %y1) {{
      const %wa_folded: f32[4,2] = {WA_FOLDED_TEXT}
      const %wb_folded: f32[4,3] = {WB_FOLDED_TEXT}
      const %unit: f32[4] = 1.0
      %n: f32[2,4,4] = RMSNormalization(%x, %unit) {{epsilon=1e-06}}
      %y0: f32[2,4,2] = MatMul(%n, %wa_folded)          // no beta: no Add
      %y1: f32[2,4,3] = MatMul(%n, %wb_folded)
    }}""", stats={"norms_folded": 1, "linears_updated": 2, "refused": 0}, tolerances=TOLERANCES)


def test_shared_gamma_constant_is_not_mutated() -> None:
    # CSE merges equal norm weights of different layers: folding one norm must leave
    # the other norm's (shared) gamma untouched.
    def body(b, x):
        g_c = b.const(GAMMA)
        first = b.LayerNormalization(x, g_c)
        second = b.LayerNormalization(b.Relu(x), g_c)
        return linear(b, first, 4), b.Add(second, x)

    g = build_graph({"x": (F32, [2, H])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert result.stats["norms_folded"] == 1 and result.stats["refused:non_linear_reader"] == 1
    norms = [n for n in g if n.op == "LayerNormalization"]
    assert np.all(norms[0].inputs[1].const == 1.0) and np.array_equal(norms[1].inputs[1].const, GAMMA)
    assert_rel_close(pairs, REL)


def test_identity_affine_is_left_alone() -> None:
    def body(b, x):
        return linear(b, b.LayerNormalization(x, b.const(np.ones(H, np.float32))), 4)

    g = build_graph({"x": (F32, [2, H])}, body)
    result = run_pass(PASS, g)
    assert not result.changed and result.stats["norms_folded"] == 0 and result.stats["refused"] == 0


# -- must not fold -----------------------------------------------------------------------------


def test_norm_feeding_residual_add_is_refused() -> None:
    # post-LN BERT: the LayerNorm output is both the next linear's input and the residual
    check_unchanged(PASS, f"""
    graph main(%x: f32[2,3,4]) -> (%y) {{
      const %gamma: f32[4] = {GAMMA_TEXT}
      const %beta: f32[4] = [1.0, 0.0, -1.0, 0.5]
      const %w: f32[4,4] = 0.5
      const %b: f32[4] = [0.5, -0.5, 0.0, 1.0]
      %n: f32[2,3,4] = LayerNormalization(%x, %gamma, %beta) {{epsilon=1e-05}}
      %t: f32[2,3,4] = MatMul(%n, %w)
      %u: f32[2,3,4] = Add(%t, %b)
      %y: f32[2,3,4] = Add(%u, %n)                       // the residual reads the norm too
    }}""", stats={"norms_folded": 0, "linears_updated": 0, "refused": 1, "refused:non_linear_reader": 1})


@pytest.mark.parametrize("reader", ["Gelu", "activation_matmul"])
def test_norm_read_by_linear_and_non_linear_is_refused(reader: str) -> None:
    def body(b, x):
        n = layer_norm(b, x)
        other = b.Gelu(n) if reader == "Gelu" else b.MatMul(b.Transpose(x, perm=[1, 0]), n)
        return linear(b, n, 4), other

    g = build_graph({"x": (F32, [H, H])}, body)
    result = run_pass(PASS, g)
    assert not result.changed and result.stats["refused:non_linear_reader"] == 1


def test_norm_graph_output_and_multi_axis_norm_are_refused() -> None:
    def body(b, x):
        n = layer_norm(b, x)
        return linear(b, n, 4), n

    g = build_graph({"x": (F32, [2, H])}, body)
    assert run_pass(PASS, g).stats["refused:graph_output"] == 1

    def body2(b, x):
        n = b.LayerNormalization(x, b.const(np.full((3, H), 2.0, np.float32)), axis=-2)
        return linear(b, n, 4)

    g = build_graph({"x": (F32, [2, 3, H])}, body2)
    assert run_pass(PASS, g).stats["refused:not_per_feature"] == 1
