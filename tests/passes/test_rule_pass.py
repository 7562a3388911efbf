"""register_rule_pass: a rule list becomes a registered pass that reports each rule."""

from __future__ import annotations

import numpy as np

import requant.ir as ir
from requant.ir.pattern import Const, op
from requant.ir.rewrite import Rule
from requant.passes import PassManager, available_passes, get_pass
from requant.passes.rule_pass import register_rule_pass

MUL_BY_ONE = Rule("mul_by_one", pattern=lambda x: op.Mul(x, Const("one", value=1.0)), replace=lambda op, m: m.x)
register_rule_pass("test_drop_mul_by_one", "x * 1 -> x (test pass)", [MUL_BY_ONE])


def _graph(factor: float) -> ir.Graph:
    g = ir.Graph()
    b = ir.Builder(g)
    x = b.input("x", ir.tensor_type("f32", [3]))
    y = b.Relu(b.Mul(b.Relu(x), b.const(np.full(3, factor, np.float32))))
    g.rename(y, "y")
    g.outputs.append(y)
    return g


def test_rule_pass_is_registered_and_reports_rule_counts():
    assert "test_drop_mul_by_one" in available_passes()
    g = _graph(1.0)
    before = g.clone()
    result = PassManager(["test_drop_mul_by_one", "dce"], verify=True).run(g)
    assert result.changed
    assert result.records[0].stats == {"rewrites": 1, "rule:mul_by_one": 1}
    assert g.op_histogram() == {"Relu": 2}
    x = {"x": np.array([-1.0, 0.5, 2.0], np.float32)}
    np.testing.assert_array_equal(ir.run(g, x)[0], ir.run(before, x)[0])  # exact: only a * 1 went


def test_rule_pass_leaves_a_graph_without_matches_alone():
    g = _graph(2.0)
    text = g.to_text()
    result = get_pass("test_drop_mul_by_one")(g)
    assert result.changed is False and result.stats == {"rewrites": 0}
    assert g.to_text() == text
