"""fold_batchnorm: BatchNormalization folded into the preceding Conv / linear. Each case
checks (a) the changed flag and stats, (b) the structure (BatchNorm gone, new weight
and bias constants, graph output names kept), (c) the interpreter's outputs before vs
after on seeded inputs, (d) the cases that must not fold.

Tolerance: REL = 1e-5 of the largest |output| (float32). The fold rounds the new
weights once and the conv then accumulates in a different order: a few ulps.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import build_graph, only_node, ops, outputs_before_after, run_pass
from quant_testing import assert_rel_close
from requant.ir import Graph, tensor_type
from requant.ir.builder import Builder
from requant.passes import get_pass

PASS = "fold_batchnorm"
F32 = "float32"
REL = 1e-5
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


@pytest.mark.parametrize("bias", [True, False])
def test_linear_batchnorm1d_folds(bias: bool) -> None:
    w = RNG.standard_normal((8, 5)).astype(np.float32)

    def body(b, x):
        y = b.MatMul(x, b.const(w))
        if bias:
            y = b.Add(y, b.const(RNG.standard_normal(5).astype(np.float32)))
        return b.BatchNormalization(y, *bn_params(b, 5))

    g = build_graph({"x": (F32, [4, 8])}, body)
    result, pairs = outputs_before_after(PASS, g)
    assert result.changed and result.stats["batchnorms_folded"] == 1
    assert ops(g) == ["MatMul", "Add"]
    add = only_node(g, "Add")
    assert g.outputs[0] is add.outputs[0] and g.outputs[0].name == "y0"
    assert_rel_close(pairs, REL)


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
    def body(b, x):
        c = conv(b, x, 3, 4)
        return b.BatchNormalization(c, *bn_params(b, 4)), b.Relu(c)

    g = build_graph({"x": (F32, [1, 3, 6, 6])}, body)
    before = g.to_text()
    result = run_pass(PASS, g)
    assert not result.changed
    assert result.stats == {"batchnorms_folded": 0, "refused": 1, "refused:shared_producer": 1}
    assert g.to_text() == before


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
