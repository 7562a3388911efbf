"""Pass "cse": common-subexpression elimination. Exact: no graph output changes, nor the
names or types of graph outputs.

Constants of the same dtype, shape and bytes -> the first of them; two nodes with the
same op, the same input values (by identity; either order for a two-input commutative
op), equal attributes (defaults filled in; arrays by dtype/shape/bytes, floats by bits)
and the same output count -> the first of them. Ops declared non-deterministic
(`deterministic=False`) are never merged, nor an Identity that only carries a graph
output's name. The kept value's `meta` wins.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from typing import Any

import numpy as np

from requant.ir.graph import Graph, Node, Value
from requant.errors import RequantError
from requant.ir.registry import OpSchema, get_schema, is_registered
from requant.passes.manager import PassResult, graph_pass

__all__ = ["common_subexpression_elimination", "attr_key", "carries_output_name"]

logger = logging.getLogger(__name__)


@graph_pass("cse", "merge identical nodes (same op, inputs, attributes) and identical constants")
def common_subexpression_elimination(graph: Graph) -> PassResult:
    constants_merged = _merge_constants(graph)
    nodes_merged = 0
    schemas: dict[str, OpSchema | None] = {}
    first_by_key: dict[tuple, Node] = {}
    for node in graph:
        if carries_output_name(graph, node):
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


def carries_output_name(graph: Graph, node: Node) -> bool:
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
