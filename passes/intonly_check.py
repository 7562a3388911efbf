"""The integer-only check: which nodes of a graph still compute on floats.

A node is a float op when any of its inputs or outputs is a float tensor. Two kinds are
the graph's boundary and are named as such, not counted as float ops: a QuantizeLinear
that reads a graph input (the input quantizer) and a DequantizeLinear (possibly followed
by a Cast) that writes a graph output (the output dequantizer). Everything else with a
float operand is listed by name: a graph passes the check when that list is empty, i.e.
every value between the input quantizers and the output dequantizers is an integer.

`float_op_report(graph)` gives both lists and the integer ops used; `INTEGER_ONLY` is
the condition (passes/manager.py `Condition`) the intonly pass ensures with
`strict=True`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from requant.ir.graph import Graph, Node
from requant.passes.manager import Condition

__all__ = ["FloatOpReport", "float_op_report", "INTEGER_ONLY"]

logger = logging.getLogger(__name__)


@dataclass
class FloatOpReport:
    """What the check found: boundary nodes, float ops, and the integer ops by type."""

    boundary: list[str] = field(default_factory=list)
    float_ops: list[str] = field(default_factory=list)
    integer_ops: dict[str, int] = field(default_factory=dict)

    @property
    def integer_only(self) -> bool:
        return not self.float_ops

    def summary(self) -> str:
        if self.integer_only:
            return f"integer-only: 0 float ops between {len(self.boundary)} boundary nodes ({', '.join(self.boundary)})"
        return f"{len(self.float_ops)} float op(s): {', '.join(self.float_ops)}"


def _is_float_node(node: Node) -> bool:
    return any(v is not None and v.dtype.is_float for v in (*node.inputs, *node.outputs))


def _label(node: Node) -> str:
    return f"{node.name or node.outputs[0].name} ({node.op})"


def _writes_output(graph: Graph, node: Node) -> bool:
    """A DequantizeLinear whose output is a graph output, directly or through Casts."""
    frontier = list(node.outputs)
    while frontier:
        v = frontier.pop()
        if graph.is_output(v):
            return True
        frontier += [o for u in v.users if u.op == "Cast" for o in u.outputs]
    return False


def _is_boundary(graph: Graph, node: Node) -> bool:
    inputs = {id(v) for v in graph.inputs}
    if node.op == "QuantizeLinear":
        x = node.inputs[0]
        return x is not None and id(x) in inputs
    if node.op == "DequantizeLinear":
        return _writes_output(graph, node)
    if node.op == "Cast":
        src = node.inputs[0].producer if node.inputs[0] is not None else None
        return src is not None and src.op in ("DequantizeLinear", "Cast") and _writes_output(graph, src)
    return False


def float_op_report(graph: Graph) -> FloatOpReport:
    """Classify every node of `graph` (module docstring)."""
    report = FloatOpReport()
    for node in graph:
        if not _is_float_node(node):
            report.integer_ops[node.op] = report.integer_ops.get(node.op, 0) + 1
        elif _is_boundary(graph, node):
            report.boundary.append(_label(node))
        else:
            report.float_ops.append(_label(node))
    return report


def _float_ops_left(graph: Graph) -> str | None:
    report = float_op_report(graph)
    if report.integer_only:
        return None
    return f"{len(report.float_ops)} float op(s) remain: {', '.join(report.float_ops[:5])}"


INTEGER_ONLY = Condition("integer-only", _float_ops_left, "run 'intonly' (it names the ops it could not convert)")
