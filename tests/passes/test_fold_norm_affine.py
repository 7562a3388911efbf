"""fold_norm_affine: LayerNorm / RMSNorm gamma and beta folded into the linears reading
the norm. Each case checks (a) the changed flag and stats, (b) the structure (unit
scale, no bias input, new weights; a bias-less linear gains an Add), (c) the
interpreter's outputs before vs after on seeded inputs, (d) the cases that must not
fold: a norm whose output also feeds a residual Add or an activation, a graph output,
a norm over more than the last axis.

Tolerance: REL = 1e-5 of the largest |output| (float32): one rounding of the new
weights and a different summation order.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import build_graph, only_node, ops, outputs_before_after, run_pass
from quant_testing import assert_rel_close

PASS = "fold_norm_affine"
F32 = "float32"
REL = 1e-5
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


def test_layer_norm_into_linears_with_and_without_bias() -> None:
    def body(b, x):
        n = layer_norm(b, x)
        return linear(b, n, 6, bias=True), linear(b, n, 4, bias=False)

    g = build_graph({"x": (F32, [2, 3, H])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert result.changed and result.stats == {"norms_folded": 1, "linears_updated": 2, "refused": 0}
    ln = only_node(g, "LayerNormalization")
    assert len(ln.inputs) == 2 and np.all(ln.inputs[1].const == 1.0)
    assert ops(g).count("Add") == 2  # the bias-less linear gained one for beta @ W
    assert ln.meta["folded"] == [PASS] and ln.meta["created_by"] == PASS
    assert_rel_close(pairs, REL)


def test_rms_norm_into_linears() -> None:
    def body(b, x):
        n = b.RMSNormalization(x, b.const(GAMMA), epsilon=1e-6)
        return linear(b, n, 5, bias=False), linear(b, n, 3, bias=False)

    g = build_graph({"x": (F32, [2, 4, H])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert result.changed and result.stats["linears_updated"] == 2
    assert ops(g) == ["RMSNormalization", "MatMul", "MatMul"]  # no beta: no Add
    assert np.all(only_node(g, "RMSNormalization").inputs[1].const == 1.0)
    assert_rel_close(pairs, REL)


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
    def body(b, x):
        n = layer_norm(b, x)
        return b.Add(linear(b, n, H), n)

    g = build_graph({"x": (F32, [2, 3, H])}, body)
    before = g.to_text()
    result = run_pass(PASS, g)
    assert not result.changed
    assert result.stats == {"norms_folded": 0, "linears_updated": 0, "refused": 1, "refused:non_linear_reader": 1}
    assert g.to_text() == before


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
