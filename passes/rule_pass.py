"""`rule_pass`: register a list of rewrite rules (ir/rewrite.py) as a named pass.

The pass applies its rules to a fixed point with the rewrite driver and reports how many
times each rule fired, so pipelines and reports see rule-level changes:

    register_rule_pass("canonicalize_linear", "Gemm / transposed weights -> MatMul + Add", RULES)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from requant.ir.graph import Graph
from requant.ir.rewrite import Rule, rewrite
from requant.passes.manager import PassFactory, PassResult, graph_pass

__all__ = ["register_rule_pass"]


def register_rule_pass(name: str, description: str, rules: Sequence[Rule]) -> PassFactory:
    """Register a pass called `name` that applies `rules`; option `max_rewrites` caps
    the driver (None: its default)."""
    rules = tuple(rules)

    def apply_rules(graph: Graph, max_rewrites: int | None = None) -> PassResult:
        result = rewrite(graph, rules, max_rewrites=max_rewrites)
        stats: dict[str, int | float | str] = {"rewrites": result.rewrites}
        stats.update({f"rule:{rule}": count for rule, count in sorted(result.by_rule.items())})
        return PassResult(graph, result.changed, stats)

    apply_rules.__name__ = name
    # the pass belongs to the module that registers it (`requant passes` shows it)
    apply_rules.__module__ = sys._getframe(1).f_globals.get("__name__", __name__)
    return graph_pass(name, description)(apply_rules)
