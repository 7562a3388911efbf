"""Pass "dce": dead-code elimination. Exact: no graph output changes, nor the names or
types of graph outputs.

A node none of whose outputs reaches a graph output -> removed; a constant nothing
reads (and not a graph output) -> removed. Graph inputs stay (they are the graph's
interface).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from requant.ir.graph import Graph, Node, Value
from requant.passes.manager import PassResult, graph_pass

__all__ = ["dead_code_elimination", "remove_unused_constants"]

logger = logging.getLogger(__name__)


@graph_pass("dce", "remove nodes whose outputs reach no graph output, and unused constants")
def dead_code_elimination(graph: Graph) -> PassResult:
    """One reverse sweep: a node is dead when none of its outputs is a graph output and
    every use of its outputs is by a dead node (all users come later in the order)."""
    outputs = {id(v) for v in graph.outputs}
    live_uses: dict[int, int] = {}  # id(value) -> uses by nodes not (yet) found dead
    dead: list[Node] = []
    for node in graph.reversed():
        if all(id(o) not in outputs and live_uses.get(id(o), len(o.uses)) == 0 for o in node.outputs):
            dead.append(node)
            for v in node.inputs:
                if v is not None:
                    live_uses[id(v)] = live_uses.get(id(v), len(v.uses)) - 1
    _remove_nodes(graph, dead)
    constants_removed = remove_unused_constants(graph, list(graph.constants))
    stats = {"nodes_removed": len(dead), "constants_removed": constants_removed}
    return PassResult(graph, bool(dead or constants_removed), stats)


def _remove_nodes(graph: Graph, nodes: list[Node]) -> None:
    """Remove `nodes`, whose outputs are read only by each other and are not graph
    outputs, in time linear in their uses.

    `Graph.remove_node` drops each use with `list.remove`, quadratic for a value read
    by many removed nodes; so each touched use list is filtered once, and while a node
    is removed its inputs' use lists hold only that node's own uses."""
    doomed = {id(n) for n in nodes}
    kept: dict[int, tuple[Value, list[tuple[Node, int]]]] = {}
    for node in nodes:
        for v in node.inputs:
            if v is not None and id(v) not in kept:
                kept[id(v)] = (v, [u for u in v.uses if id(u[0]) not in doomed])
    for node in nodes:
        own: dict[int, tuple[Value, list[tuple[Node, int]]]] = {}
        for i, v in enumerate(node.inputs):
            if v is not None:
                own.setdefault(id(v), (v, []))[1].append((node, i))
        for v, uses in own.values():
            v.uses = uses
        graph.remove_node(node, safe=False)
    for v, uses in kept.values():
        v.uses = uses


def remove_unused_constants(graph: Graph, candidates: Iterable[Value]) -> int:
    """Remove the constants among `candidates` that nothing reads and that are not graph
    outputs; returns how many went."""
    outputs = {id(v) for v in graph.outputs}
    removed = 0
    for c in candidates:
        if c in graph.constants and not c.uses and id(c) not in outputs:
            graph.remove_constant(c)
            removed += 1
    return removed


