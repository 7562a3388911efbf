"""Exact cleanup passes: dead-code elimination, common-subexpression elimination and
constant folding. None of them changes a single bit of any graph output, nor the names
or types of graph outputs.

- "dce" (`dead_code_elimination`): a node none of whose outputs reaches a graph output
  -> removed; a constant nothing reads (and not a graph output) -> removed. Graph inputs
  stay (they are the graph's interface).
- "cse" (`common_subexpression_elimination`): constants of the same dtype, shape and
  bytes -> the first of them; two nodes with the same op, the same input values (by
  identity; either order for a two-input commutative op), equal attributes (defaults
  filled in; arrays by dtype/shape/bytes, floats by bits) and the same output count ->
  the first of them. Ops declared non-deterministic (`deterministic=False`) are never
  merged, nor an Identity that only carries a graph output's name. The kept value's
  `meta` wins.
- "fold_constants" (`constant_folding`): a node whose inputs are all constants -> its
  outputs as constants, computed with the op's reference kernel; `Shape` / `Size` of a
  tensor with a fully static shape -> a constant even when the tensor is not. Skipped,
  with a stat: unregistered ops, kernels that raise, results over `max_elements` that are
  also larger than the inputs (Expand, ConstantOfShape, ...). Never folded: ops declared
  `deterministic=False` or `foldable=False` (e.g. a DequantizeLinear that must stay),
  dead nodes (left to DCE), and an output whose static result type would differ from the
  declared type of a graph output.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph, Node, Value
from requant.ir.registry import OpSchema, get_schema, is_registered, run_kernel
from requant.passes.manager import PassResult, graph_pass

__all__ = [
    "dead_code_elimination",
    "common_subexpression_elimination",
    "constant_folding",
]

logger = logging.getLogger(__name__)


# -- dead-code elimination -------------------------------------------------------------------


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
    constants_removed = _remove_unused_constants(graph, list(graph.constants))
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


def _remove_unused_constants(graph: Graph, candidates: Iterable[Value]) -> int:
    outputs = {id(v) for v in graph.outputs}
    removed = 0
    for c in candidates:
        if c in graph.constants and not c.uses and id(c) not in outputs:
            graph.remove_constant(c)
            removed += 1
    return removed


# -- common-subexpression elimination -------------------------------------------------------


@graph_pass("cse", "merge identical nodes (same op, inputs, attributes) and identical constants")
def common_subexpression_elimination(graph: Graph) -> PassResult:
    constants_merged = _merge_constants(graph)
    nodes_merged = 0
    schemas: dict[str, OpSchema | None] = {}
    first_by_key: dict[tuple, Node] = {}
    for node in graph:
        if _carries_output_name(graph, node):
            continue
        key = _node_key(node, schemas)
        if key is None:
            continue
        first = first_by_key.setdefault(key, node)
        if first is node or not _can_take_over(graph, node.outputs, first.outputs):
            continue
        for old, new in zip(node.outputs, first.outputs):
            graph.replace_value(old, new)
        graph.remove_node(node)
        nodes_merged += 1
    stats = {"nodes_merged": nodes_merged, "constants_merged": constants_merged}
    return PassResult(graph, bool(nodes_merged or constants_merged), stats)


def _carries_output_name(graph: Graph, node: Node) -> bool:
    """An Identity that only gives a graph output its name: merging (or folding) it
    would need a new Identity to carry the name, so a second run would change the
    graph again."""
    return node.op == "Identity" and all(graph.is_output(o) for o in node.outputs)


def _merge_constants(graph: Graph) -> int:
    """Replace each constant by the first one with the same type and bytes. Only
    constants sharing a type with another are hashed, so unique weights cost nothing."""
    by_type: dict[Any, list[Value]] = {}
    for c in graph.constants:
        by_type.setdefault(c.type, []).append(c)
    merged = 0
    for group in by_type.values():
        if len(group) < 2:
            continue
        first_by_bytes: dict[tuple[str, bytes], list[Value]] = {}
        for c in group:
            data = _raw_bytes(c.const)
            key = (c.const.dtype.str, hashlib.blake2b(data, digest_size=16).digest())
            bucket = first_by_bytes.setdefault(key, [])
            # A digest match is confirmed byte for byte: the pass must stay exact.
            keep = next((k for k in bucket if np.array_equal(_raw_bytes(k.const), data)), None)
            if keep is None or not _can_take_over(graph, [c], [keep]):
                bucket.append(c)
                continue
            graph.replace_value(c, keep)
            graph.remove_constant(c)
            merged += 1
    return merged


def _raw_bytes(array: np.ndarray) -> np.ndarray:
    """The array's bytes as a flat uint8 view (copying only if not contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _can_take_over(graph: Graph, olds: list[Value], news: list[Value]) -> bool:
    """Whether `news` can replace `olds` everywhere: same types, and where an old value
    is a graph output that needs an Identity to carry its name, Identity exists."""
    for old, new in zip(olds, news):
        if old.type != new.type:
            return False
        if graph.is_output(old) and (new.producer is None or graph.is_output(new)) and not is_registered("Identity"):
            return False
    return True


def _schema(op: str, cache: dict[str, OpSchema | None]) -> OpSchema | None:
    if op not in cache:
        cache[op] = get_schema(op) if is_registered(op) else None
    return cache[op]


def _node_key(node: Node, schemas: dict[str, OpSchema | None]) -> tuple | None:
    """What two nodes must share to be merged, or None for a node never merged."""
    schema = _schema(node.op, schemas)
    if schema is None or not schema.extra.get("deterministic", True):
        return None
    try:
        attrs = schema.fill_attrs(node.attrs)
    except RequantError:
        attrs = dict(node.attrs)
    inputs: Any = node.inputs
    if schema.commutative and len(inputs) == 2:
        # Only a two-input commutative op is order-free: a variadic float Sum is not
        # associative, so Sum(a, b, c) and Sum(a, c, b) may round differently.
        inputs = frozenset(inputs)
    attrs_key = tuple(sorted((k, attr_key(v)) for k, v in attrs.items()))
    return (node.op, inputs, attrs_key, len(node.outputs))


def attr_key(value: Any) -> Any:
    """A hashable key equal for equal attribute values: arrays by dtype, shape and
    bytes; floats by their bits (nan equals nan, 0.0 differs from -0.0)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return ("i", int(value))
    if isinstance(value, float):
        return ("f", struct.pack("<d", value))
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            return ("o", arr.shape, repr(arr.tolist()))
        return ("a", arr.dtype.str, arr.shape, _raw_bytes(arr).tobytes())
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, (list, tuple)):
        return ("l", tuple(attr_key(v) for v in value))
    if isinstance(value, dict):
        return ("d", tuple(sorted((repr(k), attr_key(v)) for k, v in value.items())))
    try:
        hash(value)
    except TypeError:
        return ("r", type(value).__qualname__, repr(value))
    return ("h", type(value).__qualname__, value)


# -- constant folding -----------------------------------------------------------------------

_SHAPE_OPS = ("Shape", "Size")

_FOLD_STATS = (
    "nodes_folded",
    "skipped_large",
    "skipped_unregistered",
    "skipped_failed",
    "skipped_output_type",
    "constants_removed",
)


@graph_pass("fold_constants", "evaluate nodes whose inputs are all constants (and Shape/Size of static shapes)")
def constant_folding(graph: Graph, max_elements: int = 1 << 20) -> PassResult:
    """`max_elements`: a result with more elements than this and than its inputs
    together is left to run time (stat `skipped_large`)."""
    stats = dict.fromkeys(_FOLD_STATS, 0)
    read_by_folded: list[Value] = []
    for node in graph:
        inputs = node.inputs  # taken now: folding detaches them
        outcome = _fold_node(graph, node, max_elements)
        if outcome is None:
            continue
        stats[outcome] += 1
        if outcome == "nodes_folded":
            read_by_folded.extend(v for v in inputs if v is not None and v.is_constant)
    stats["constants_removed"] = _remove_unused_constants(graph, dict.fromkeys(read_by_folded))
    return PassResult(graph, stats["nodes_folded"] > 0, stats)


def _fold_node(graph: Graph, node: Node, max_elements: int) -> str | None:
    """Fold one node if it can be; returns the stat to count, or None when the node is
    not a candidate at all."""
    all_const = all(v is None or v.is_constant for v in node.inputs)
    by_shape = not all_const and node.op in _SHAPE_OPS and _static_input(node)
    if not (all_const or by_shape) or not _worth_folding(graph, node):
        return None
    if not is_registered(node.op):
        return "skipped_unregistered"
    schema = get_schema(node.op)
    if not schema.extra.get("deterministic", True) or not schema.extra.get("foldable", True):
        return None
    if _too_large(node, (t.numel for t in (o.type for o in node.outputs)), max_elements):
        return "skipped_large"
    try:
        with np.errstate(all="ignore"):
            results = run_kernel(node.op, _kernel_args(node, by_shape), node.attrs, [o.type for o in node.outputs])
    except Exception as exc:  # a kernel that cannot run here leaves the node to run time
        logger.debug("fold_constants: %s not folded: %s: %s", node.label, type(exc).__name__, exc)
        return "skipped_failed"
    if _too_large(node, (r.size for r in results), max_elements):
        return "skipped_large"
    verdict = _check_results(graph, node, results)
    if verdict is not None:
        return verdict
    _replace_by_constants(graph, node, results)
    return "nodes_folded"


def _static_input(node: Node) -> bool:
    return bool(node.inputs) and node.inputs[0] is not None and node.inputs[0].type.is_static


def _worth_folding(graph: Graph, node: Node) -> bool:
    """Dead nodes are DCE's job; an Identity that only carries a graph output's name is
    already as folded as it gets."""
    if not any(o.uses or graph.is_output(o) for o in node.outputs):
        return False
    return not _carries_output_name(graph, node)


def _too_large(node: Node, output_sizes: Iterable[int | None], max_elements: int) -> bool:
    sizes = list(output_sizes)
    if any(s is None for s in sizes):
        return False  # unknown until the kernel has run
    produced = sum(sizes)
    consumed = sum(v.const.size for v in node.inputs if v is not None and v.is_constant)
    return produced > max_elements and produced > consumed


def _kernel_args(node: Node, by_shape: bool) -> list[np.ndarray | None]:
    if not by_shape:
        return [None if v is None else v.const for v in node.inputs]
    # Shape/Size read only the shape: a zero-stride view stands in for the tensor.
    x = node.inputs[0]
    stand_in = np.broadcast_to(np.zeros((), dtype=x.dtype.np), x.type.shape)
    return [stand_in] + [None if v is None else v.const for v in node.inputs[1:]]


def _check_results(graph: Graph, node: Node, results: list[np.ndarray]) -> str | None:
    """None when every result can stand for its output value, else the stat to count."""
    for out, arr in zip(node.outputs, results):
        declared = out.type.shape
        if declared is not None and (
            len(declared) != arr.ndim
            or any(isinstance(d, int) and d != n for d, n in zip(declared, arr.shape))
        ):
            logger.debug("fold_constants: %s gave shape %s for %s", node.label, arr.shape, out.type)
            return "skipped_failed"
        if graph.is_output(out):
            if not out.type.is_static:
                return "skipped_output_type"  # a graph output's declared type must not change
            if not is_registered("Identity"):
                return "skipped_output_type"  # nothing could carry the output's name
    return None


def _replace_by_constants(graph: Graph, node: Node, results: list[np.ndarray]) -> None:
    constants = []
    for out, arr in zip(node.outputs, results):
        c = graph.add_constant(arr, dtype=out.dtype)
        graph.replace_value(out, c)
        constants.append((c, out))
    graph.remove_node(node)
    # The constant takes the name its value had when the node went (free again now);
    # for a graph output that is the `_replaced` name, the output keeps its own.
    for c, out in constants:
        graph.rename(c, out.name)
