"""fold_batchnorm: BatchNormalization folded into the preceding Conv / linear. Each case
checks (a) the changed flag and stats, (b) the structure (BatchNorm gone, new weight
and bias constants, graph output names kept), (c) the interpreter's outputs before vs
after on seeded inputs, (d) the cases that must not fold.

Tolerance: REL = 1e-5 of the largest |output| (float32). The fold rounds the new
weights once and the conv then accumulates in a different order: a few ulps. The
Before/Expected cases (tests/rewrite_testing.py) hold outputs to rtol = atol = REL and
the folded constants to CONSTANT_RTOL/ATOL: their numbers fold exactly but for the
rounding of var + eps.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import build_graph, only_node, ops, outputs_before_after, run_pass
from quant_testing import assert_rel_close
from rewrite_testing import check_rewrite, check_unchanged
from requant.ir import Graph, tensor_type
from requant.ir.builder import Builder
from requant.passes import get_pass

PASS = "fold_batchnorm"
F32 = "float32"
REL = 1e-5
CONSTANT_RTOL, CONSTANT_ATOL = 1e-6, 1e-6
RNG = np.random.default_rng(7)


def bn_params(b: Builder, c: int) -> list:
    return [b.const(RNG.uniform(0.5, 1.5, c).astype(np.float32)), b.const(RNG.uniform(-0.5, 0.5, c).astype(np.float32)),
            b.const(RNG.uniform(-0.5, 0.5, c).astype(np.float32)), b.const(RNG.uniform(0.5, 2.0, c).astype(np.float32))]


def conv(b: Builder, x, c_in: int, c_out: int, group: int = 1, bias: bool = True):
    w = b.const(RNG.standard_normal((c_out, c_in // group, 3, 3)).astype(np.float32))
    ins = [x, w] + ([b.const(RNG.standard_normal(c_out).astype(np.float32))] if bias else [])
    return b.Conv(*ins, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_conv_batchnorm_folds(bias: bool, group: int) -> None:
    g = build_graph({"x": (F32, [2, 4, 6, 6])},
                    lambda b, x: b.Relu(b.BatchNormalization(conv(b, x, 4, 6, group, bias), *bn_params(b, 6),
                                                             epsilon=1e-3)))
    result, pairs = outputs_before_after(PASS, g)
    assert result.changed and result.stats == {"batchnorms_folded": 1, "refused": 0}
    assert ops(g) == ["Conv", "Relu"]
    c = only_node(g, "Conv")
    assert len(c.inputs) == 3 and all(v.const is not None for v in c.inputs[1:])
    assert c.attrs["group"] == group and c.meta["folded"] == [PASS]
    assert len(g.constants) == 2  # the BatchNorm parameters and the old weights are gone
    assert_rel_close(pairs, REL)


def test_batchnorm_output_is_graph_output_keeps_name() -> None:
    g = build_graph({"x": (F32, [1, 3, 5, 5])}, lambda b, x: b.BatchNormalization(conv(b, x, 3, 4), *bn_params(b, 4)))
    result, pairs = outputs_before_after(PASS, g)
    assert result.changed and ops(g) == ["Conv"]
    assert g.outputs[0].name == "y0" and g.outputs[0].producer.op == "Conv"
    assert_rel_close(pairs, REL)


# BatchNorm1d after a linear, with numbers that fold exactly: var + eps = [0.25, 4, 1],
# so the scale gamma / sqrt(var + eps) is [2, 0.5, 2].
BN1D_PARAMS = """
      const %gamma: f32[3] = [1.0, 1.0, 2.0]
      const %beta: f32[3] = [0.0, 1.0, -1.0]
      const %mean: f32[3] = [0.5, 1.0, -2.0]
      const %var: f32[3] = [0.24999, 3.99999, 0.99999]"""
W_TEXT = "[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]"
W_FOLDED_TEXT = "[[2.0, 1.0, 6.0], [8.0, 2.5, 12.0]]"  # columns times the scale


def test_linear_batchnorm1d_folds_into_weight_and_bias() -> None:
    check_rewrite(PASS, f"""
    graph main(%x: f32[4,2]) -> (%y) {{
      const %w: f32[2,3] = {W_TEXT}
      const %b: f32[3] = [0.5, -1.0, 2.0]{BN1D_PARAMS}
      %t: f32[4,3] = MatMul(%x, %w)
      %u: f32[4,3] = Add(%t, %b)
      %y: f32[4,3] = BatchNormalization(%u, %gamma, %beta, %mean, %var) {{epsilon=1e-05}}
    }}""", f"""
    graph main(%x: f32[4,2]) -> (%y) {{
      const %w_folded: f32[2,3] = {W_FOLDED_TEXT}
      const %b_folded: f32[3] = [0.0, 0.0, 7.0]      // (b - mean) * scale + beta
      %t: f32[4,3] = MatMul(%x, %w_folded)
      %y: f32[4,3] = Add(%t, %b_folded)              // the graph output keeps its name
    }}""", stats={"batchnorms_folded": 1, "refused": 0}, constant_rtol=CONSTANT_RTOL, constant_atol=CONSTANT_ATOL,
        tolerances={"float32": (REL, REL)})


def test_bias_less_linear_batchnorm1d_gets_a_bias() -> None:
    check_rewrite(PASS, f"""
    graph main(%x: f32[4,2]) -> (%y) {{
      const %w: f32[2,3] = {W_TEXT}{BN1D_PARAMS}
      %t: f32[4,3] = MatMul(%x, %w)
      %y: f32[4,3] = BatchNormalization(%t, %gamma, %beta, %mean, %var) {{epsilon=1e-05}}
    }}""", f"""
    graph main(%x: f32[4,2]) -> (%y) {{
      const %w_folded: f32[2,3] = {W_FOLDED_TEXT}
      const %b_folded: f32[3] = [-1.0, 0.5, 3.0]     // -mean * scale + beta
      %t: f32[4,3] = MatMul(%x, %w_folded)
      %y: f32[4,3] = Add(%t, %b_folded)
    }}""", stats={"batchnorms_folded": 1, "refused": 0}, constant_rtol=CONSTANT_RTOL, constant_atol=CONSTANT_ATOL,
        tolerances={"float32": (REL, REL)})


def test_batchnorm_output_read_by_two_convs_still_folds_backwards() -> None:
    def body(b, x):
        y = b.BatchNormalization(conv(b, x, 3, 4), *bn_params(b, 4))
        return conv(b, y, 4, 2), conv(b, y, 4, 5)

    g = build_graph({"x": (F32, [1, 3, 6, 6])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert result.changed and ops(g) == ["Conv", "Conv", "Conv"]
    assert_rel_close(pairs, REL)


# -- must not fold -----------------------------------------------------------------------------


def test_conv_output_also_read_elsewhere_is_refused() -> None:
    check_unchanged(PASS, """
    graph main(%x: f32[1,3,6,6]) -> (%y0, %y1) {
      const %w: f32[4,3,3,3] = 0.25
      const %b: f32[4] = [0.5, -0.5, 0.25, 0.0]
      const %gamma: f32[4] = [1.0, 1.5, 0.5, 2.0]
      const %beta: f32[4] = [0.0, 0.5, -0.5, 0.25]
      const %mean: f32[4] = [0.5, 0.0, -1.0, 0.25]
      const %var: f32[4] = [1.0, 2.0, 0.5, 1.5]
      %c: f32[1,4,6,6] = Conv(%x, %w, %b) {kernel_shape=[3, 3], pads=[1, 1, 1, 1]}
      %y0: f32[1,4,6,6] = BatchNormalization(%c, %gamma, %beta, %mean, %var)
      %y1: f32[1,4,6,6] = Relu(%c)                   // the unnormalised output is read too
    }""", stats={"batchnorms_folded": 0, "refused": 1, "refused:shared_producer": 1})


def test_conv_output_read_by_two_batchnorms_is_refused() -> None:
    def body(b, x):
        c = conv(b, x, 3, 4)
        return b.BatchNormalization(c, *bn_params(b, 4)), b.BatchNormalization(c, *bn_params(b, 4))

    g = build_graph({"x": (F32, [1, 3, 6, 6])}, body)
    result = run_pass(PASS, g)
    assert not result.changed and result.stats["refused:shared_producer"] == 2


def test_batchnorm_on_graph_input_or_conv_output_graph_output_is_refused() -> None:
    g = build_graph({"x": (F32, [1, 3, 4, 4])}, lambda b, x: b.BatchNormalization(x, *bn_params(b, 3)))
    assert run_pass(PASS, g).stats["refused:no_producer"] == 1

    def body(b, x):
        c = conv(b, x, 3, 4)
        return b.BatchNormalization(c, *bn_params(b, 4)), c

    g = build_graph({"x": (F32, [1, 3, 4, 4])}, body)
    assert run_pass(PASS, g).stats["refused:shared_producer"] == 1


def test_non_constant_batchnorm_parameters_are_refused() -> None:
    g = build_graph({"x": (F32, [1, 3, 4, 4]), "s": (F32, [4])},
                    lambda b, x, s: b.BatchNormalization(conv(b, x, 3, 4), s, *bn_params(b, 4)[1:]))
    result = run_pass(PASS, g)
    assert not result.changed and result.stats["refused:non_constant_params"] == 1


def test_training_mode_batchnorm_is_refused() -> None:
    # The op registry refuses training_mode=1 (requant is inference only), so the node is
    # made with explicit output types and the pass runs without the verifier.
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [1, 3, 4, 4]))
    c = conv(b, x, 3, 4)
    node = g.create_node("BatchNormalization", [c, *bn_params(b, 4)], {"training_mode": 1}, output_types=[c.type])
    g.outputs.append(node.outputs[0])
    result = get_pass(PASS)(g, verify=False)
    assert not result.changed
    assert result.stats == {"batchnorms_folded": 0, "refused": 1, "refused:training_mode": 1}
    assert [n.op for n in g] == ["Conv", "BatchNormalization"]


# -- ConvTranspose producers ----------------------------------------------------------------------


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_batchnorm_folds(group: int) -> None:
    def body(b, x):
        w = b.const(RNG.standard_normal((4, 6 // group, 3, 3)).astype(np.float32))  # [C_in, C_out/g, k, k]
        y = b.ConvTranspose(x, w, b.const(RNG.standard_normal(6).astype(np.float32)), kernel_shape=[3, 3],
                            strides=[2, 2], group=group)
        return b.BatchNormalization(y, *bn_params(b, 6), epsilon=1e-3)

    g = build_graph({"x": (F32, [2, 4, 5, 5])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert result.changed and result.stats == {"batchnorms_folded": 1, "refused": 0}
    assert ops(g) == ["ConvTranspose"] and only_node(g, "ConvTranspose").meta["folded"] == [PASS]
    assert_rel_close(pairs, REL)


# -- forward into the readers ---------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_batchnorm_of_a_graph_input_folds_forward_into_unpadded_convs(bias: bool, group: int) -> None:
    def body(b, x):
        y = b.BatchNormalization(x, *bn_params(b, 4), epsilon=1e-3)
        w = b.const(RNG.standard_normal((6, 4 // group, 2, 2)).astype(np.float32))
        ins = [y, w] + ([b.const(RNG.standard_normal(6).astype(np.float32))] if bias else [])
        strided = b.Conv(*ins, kernel_shape=[2, 2], strides=[2, 2], group=group)  # no padding
        return strided, b.Conv(y, b.const(RNG.standard_normal((3, 4, 1, 1)).astype(np.float32)), kernel_shape=[1, 1])

    g = build_graph({"x": (F32, [2, 4, 6, 6])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert result.stats == {"batchnorms_folded": 1, "folded_forward": 1, "refused": 0}
    assert ops(g) == ["Conv", "Conv"] and all(len(n.inputs) == 3 for n in g)  # both now have a bias
    assert_rel_close(pairs, REL)


def test_batchnorm1d_of_an_input_folds_forward_into_a_linear() -> None:
    # scale a = [2, 0.5, 2], shift = beta - a * mean = [-1, 0.5, 3] (the params above);
    # W' = diag(a) W, b' = b + shift @ W = [0.5, -1] + [-1*1 + 0.5*3 + 3*5, -1*2 + 0.5*4 + 3*6]
    check_rewrite(PASS, f"""
    graph main(%x: f32[4,3]) -> (%y) {{
      const %w: f32[3,2] = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
      const %b: f32[2] = [0.5, -1.0]{BN1D_PARAMS}
      %n: f32[4,3] = BatchNormalization(%x, %gamma, %beta, %mean, %var) {{epsilon=1e-05}}
      %t: f32[4,2] = MatMul(%n, %w)
      %y: f32[4,2] = Add(%t, %b)
    }}""", """
    graph main(%x: f32[4,3]) -> (%y) {
      const %w_folded: f32[3,2] = [[2.0, 4.0], [1.5, 2.0], [10.0, 12.0]]
      const %b_folded: f32[2] = [16.0, 17.0]
      %t: f32[4,2] = MatMul(%x, %w_folded)
      %y: f32[4,2] = Add(%t, %b_folded)
    }""", stats={"batchnorms_folded": 1, "folded_forward": 1, "refused": 0}, constant_rtol=CONSTANT_RTOL,
        constant_atol=CONSTANT_ATOL, tolerances={"float32": (REL, REL)})


def test_forward_fold_refused_for_a_padded_conv_reader() -> None:
    # a zero-padded border sees 0 where the BatchNorm would give shift: not exact
    g = build_graph({"x": (F32, [1, 3, 5, 5])},
                    lambda b, x: conv(b, b.BatchNormalization(x, *bn_params(b, 3)), 3, 4))
    result = run_pass(PASS, g)
    assert not result.changed and result.stats["refused:no_producer"] == 1
    assert ops(g) == ["BatchNormalization", "Conv"]
