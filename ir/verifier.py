"""Graph invariants and the checker that enforces them.

`verify(graph)` checks, and names the first offending node in its error:
- every op is registered, its arity and attributes fit the schema;
- SSA: each value has one producer, names are unique;
- every input of a node is a graph input, a constant of the graph, or an output of an
  earlier node (a value from nowhere is "dangling"; a later producer means a cycle or a
  broken order, and the message says which);
- use lists agree with node inputs in both directions;
- declared output types agree with the op's type rule (symbolic dims may refine unknowns);
- graph outputs are defined in the graph.
"""

from __future__ import annotations

from requant.errors import RequantError, VerifyError
from requant.ir.graph import Graph, Node, Value
from requant.ir.registry import get_schema, infer_types
from requant.ir.types import TensorType, dims_compatible

__all__ = ["verify", "topological_order", "types_agree"]


def verify(graph: Graph) -> None:
    defined: set[int] = set()
    names: dict[str, str] = {}

    def claim(v: Value, where: str) -> None:
        if v.name in names:
            raise VerifyError(f"value name %{v.name} is defined twice ({names[v.name]} and {where})")
        names[v.name] = where
        defined.add(id(v))

    for v in graph.inputs:
        if v.producer is not None:
            raise VerifyError(f"graph input %{v.name} has a producer ({v.producer.label})")
        claim(v, "graph input")
    for v in graph.constants:
        if v.const is None:
            raise VerifyError(f"constant %{v.name} has no payload")
        if v.producer is not None:
            raise VerifyError(f"constant %{v.name} has a producer ({v.producer.label})")
        if v.const.dtype != v.dtype.np or (v.shape is not None and tuple(v.const.shape) != tuple(v.shape)):
            raise VerifyError(
                f"constant %{v.name} is declared {v.type} but holds {v.const.dtype}{list(v.const.shape)}"
            )
        claim(v, "constant")

    producers_in_graph = {id(n) for n in graph}
    # One set of recorded uses per value, so checking each node input is O(1) even when
    # a value has many readers.
    recorded_uses: dict[int, set[tuple[int, int]]] = {}
    for node in graph:
        _check_node_schema(node)
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in defined:
                raise VerifyError(_undefined_input_message(node, i, v, producers_in_graph))
            uses = recorded_uses.get(id(v))
            if uses is None:
                uses = recorded_uses[id(v)] = {(id(n), j) for n, j in v.uses}
            if (id(node), i) not in uses:
                raise VerifyError(f"node {node.label}: input {i} %{v.name} is missing from its use list")
        for j, out in enumerate(node.outputs):
            if out.producer is not node or out.index != j:
                raise VerifyError(f"node {node.label}: output {j} %{out.name} does not point back to it")
            claim(out, f"output of {node.label}")
        _check_types(node)

    for v in _all_values(graph):
        for user, i in v.uses:
            if id(user) not in producers_in_graph:
                raise VerifyError(f"value %{v.name} lists a use by {user.label}, which is not in the graph")
            if i >= len(user.inputs) or user.inputs[i] is not v:
                raise VerifyError(f"value %{v.name} lists a use by {user.label} input {i} that reads something else")
    for v in graph.outputs:
        if id(v) not in defined:
            raise VerifyError(f"graph output %{v.name} is not defined in the graph")


def _all_values(graph: Graph):
    yield from graph.inputs
    yield from graph.constants
    for node in graph:
        yield from node.outputs


def _check_node_schema(node: Node) -> None:
    try:
        schema = get_schema(node.op)
    except RequantError as exc:
        raise VerifyError(f"node {node.label}: {exc}") from None
    try:
        schema.check_arity(len(node.inputs))
        schema.fill_attrs(node.attrs)
    except RequantError as exc:
        raise VerifyError(f"node {node.label}: {exc}") from None


def _check_types(node: Node) -> None:
    try:
        inferred = infer_types(node.op, node.inputs, node.attrs, len(node.outputs))
    except RequantError as exc:
        raise VerifyError(f"node {node.label}: {exc}") from None
    for out, want in zip(node.outputs, inferred):
        if not types_agree(out.type, want):
            raise VerifyError(f"node {node.label}: output %{out.name} is declared {out.type} but the op gives {want}")


def types_agree(declared: TensorType, inferred: TensorType) -> bool:
    """Declared and inferred types agree: same dtype; same rank where both are known; each
    dim equal or one of them unknown/symbolic (a declaration may name what inference
    cannot know)."""
    if declared.dtype != inferred.dtype:
        return False
    if declared.shape is None or inferred.shape is None:
        return True
    if len(declared.shape) != len(inferred.shape):
        return False
    return all(dims_compatible(a, b) for a, b in zip(declared.shape, inferred.shape))


def _undefined_input_message(node: Node, i: int, v: Value, in_graph: set[int]) -> str:
    producer = v.producer
    if producer is None or id(producer) not in in_graph:
        return (
            f"node {node.label}: input {i} %{v.name} is dangling: it is not a graph input, "
            f"a constant of the graph, or an output of a node in it"
        )
    cycle = _find_cycle_through(node)
    if cycle:
        path = " -> ".join(n.label for n in cycle)
        return f"node {node.label}: the graph has a cycle: {path}"
    return (
        f"node {node.label}: input {i} %{v.name} is produced later, by {producer.label} "
        f"(nodes are out of topological order; call graph.topological_sort())"
    )


def _find_cycle_through(start: Node) -> list[Node]:
    """A path start -> ... -> start following producer edges backwards, if one exists."""
    stack: list[tuple[Node, list[Node]]] = [(start, [start])]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        for v in node.inputs:
            if v is None or v.producer is None:
                continue
            p = v.producer
            if p is start:
                return [start] + list(reversed(path))
            if id(p) not in seen:
                seen.add(id(p))
                stack.append((p, path + [p]))
    return []


def topological_order(graph: Graph) -> list[Node]:
    """Nodes ordered so producers precede users; keeps the current order where it
    already works. Raises `VerifyError` on a cycle."""
    nodes = list(graph)
    members = {id(n) for n in nodes}
    pending = {id(n): 0 for n in nodes}
    for n in nodes:
        for v in n.inputs:
            if v is not None and v.producer is not None and id(v.producer) in members:
                pending[id(n)] += 1
    import heapq

    index = {id(n): i for i, n in enumerate(nodes)}
    ready = [index[id(n)] for n in nodes if pending[id(n)] == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        n = nodes[heapq.heappop(ready)]
        order.append(n)
        for out in n.outputs:
            for user, _ in out.uses:
                if id(user) in pending:
                    pending[id(user)] -= 1
                    if pending[id(user)] == 0:
                        heapq.heappush(ready, index[id(user)])
    if len(order) != len(nodes):
        stuck = next(n for n in nodes if pending[id(n)] > 0)
        cycle = _find_cycle_through(stuck)
        path = " -> ".join(n.label for n in cycle) if cycle else stuck.label
        raise VerifyError(f"the graph has a cycle: {path}")
    return order
