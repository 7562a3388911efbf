"""Structural comparison of two graphs up to the renaming of values, the check a
Before/Expected pass test ends with (as TVM's `assert_structural_equal` does):

    difference = structural_difference(after, parse_elided(expected_text))
    assert difference is None, difference        # or: assert_structural_equal(after, expected)

Two graphs are structurally equal when
- their inputs agree by position and type;
- their nodes agree in order: op, attributes, number and types of outputs, and wiring
  (each input reads the value that corresponds, in the other graph, to what it reads:
  the same graph input, the output of the corresponding node, or a corresponding
  constant; omitted inputs `_` agree only with omitted inputs);
- their outputs agree by position;
- constants correspond one to one and agree in dtype and shape, and in value unless
  values are not compared (`compare_values=False`) or one side has no payload (an
  elided constant, see `parse_elided`). Float payloads agree within `rtol`/`atol`
  (exactly when both are 0, NaN equal to NaN); integer and bool payloads exactly.
  Constants no node or output reads are paired in order.
Names of values, nodes and the graph, and every `meta` dict are not compared. Float
attributes are held to the constants' tolerance; an int attribute never equals a float.

`structural_difference` returns None or one readable paragraph about the first
difference: where it is (input, node position, output), what differs, and that node's
line in both graphs. `assert_structural_equal` raises an AssertionError with that
paragraph and both graphs' text.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from requant.ir.dtypes import DType
from requant.ir.graph import Graph, Node, Value
from requant.ir.text import format_type, parse_graph
from requant.ir.types import TensorType

__all__ = ["assert_structural_equal", "parse_elided", "structural_difference"]

logger = logging.getLogger(__name__)

# Arrays longer than this are summarised in messages, not printed whole.
_SHOWN_ELEMENTS = 8

# `const %name: type = ...` (or `= ?`): a constant whose payload the text leaves out.
_ELIDED_CONSTANT = re.compile(
    r'^(?P<head>[ \t]*const[ \t]+%(?P<name>"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.]+)[ \t]*:[ \t]*'
    r'(?P<dtype>[A-Za-z0-9_.+-]+)\[[^\]\n]*\][ \t]*=[ \t]*)(?P<payload>\.\.\.|\?)(?=[ \t]*(?://|#|$))',
    re.MULTILINE,
)


def parse_elided(text: str) -> Graph:
    """Parse the text form, where a constant's payload may be written `...` (as
    `Graph.to_text(elide_constants=True)` prints big ones) or `?`: such a constant comes
    back without a payload (`const` None), and structural comparison checks only its
    dtype and shape. Text without elisions parses as `ir.parse` reads it."""
    elided: list[str] = []

    def placeholder(m: re.Match[str]) -> str:
        name = m.group("name")
        elided.append(json.loads(name) if name.startswith('"') else name)
        return m.group("head") + ("false" if m.group("dtype") == "bool" else "0")

    graph = parse_graph(_ELIDED_CONSTANT.sub(placeholder, text))
    by_name = {v.name: v for v in graph.constants}
    for name in elided:
        by_name[name].const = None
    return graph


def assert_structural_equal(actual: Graph, expected: Graph, *, rtol: float = 0.0, atol: float = 0.0,
                            compare_values: bool = True) -> None:
    """Raise AssertionError describing the first difference (see the module docstring),
    followed by both graphs' text."""
    difference = structural_difference(actual, expected, rtol=rtol, atol=atol, compare_values=compare_values)
    if difference is None:
        return
    raise AssertionError(
        f"{difference}\n\nactual graph:\n{actual.to_text(elide_constants=True)}"
        f"\nexpected graph:\n{expected.to_text(elide_constants=True)}"
    )


def structural_difference(actual: Graph, expected: Graph, *, rtol: float = 0.0, atol: float = 0.0,
                          compare_values: bool = True) -> str | None:
    """None when the graphs are structurally equal, else a description of the first
    difference (see the module docstring)."""
    difference = _Comparison(actual, expected, rtol, atol, compare_values).first_difference()
    if difference is not None and len(actual) != len(expected):
        difference += f"\n(the actual graph has {len(actual)} nodes, the expected one {len(expected)})"
    return difference


class _Comparison:
    """One comparison: the value correspondence built so far, in both directions."""

    def __init__(self, actual: Graph, expected: Graph, rtol: float, atol: float, compare_values: bool) -> None:
        self.actual, self.expected = actual, expected
        self.rtol, self.atol, self.compare_values = rtol, atol, compare_values
        self.to_expected: dict[Value, Value] = {}
        self.to_actual: dict[Value, Value] = {}

    def pair(self, a: Value, e: Value) -> None:
        self.to_expected[a] = e
        self.to_actual[e] = a

    def first_difference(self) -> str | None:
        for check in (self.inputs, self.nodes, self.outputs, self.unread_constants):
            difference = check()
            if difference is not None:
                return difference
        return None

    # -- graph inputs ----------------------------------------------------------------------
    def inputs(self) -> str | None:
        a_ins, e_ins = self.actual.inputs, self.expected.inputs
        if len(a_ins) != len(e_ins):
            return (f"graph inputs differ in number: {len(a_ins)} vs {len(e_ins)} expected "
                    f"({_refs(a_ins)} vs {_refs(e_ins)})")
        for i, (a, e) in enumerate(zip(a_ins, e_ins)):
            if a.type != e.type:
                return (f"graph input {i} differs in type: %{a.name}: {format_type(a.type)} "
                        f"vs %{e.name}: {format_type(e.type)} expected")
            self.pair(a, e)
        return None

    # -- nodes -----------------------------------------------------------------------------
    def nodes(self) -> str | None:
        a_nodes, e_nodes = self.actual.nodes, self.expected.nodes
        pairs = list(zip(a_nodes, e_nodes))
        # Outputs first, so a node may read a later one (graphs that print out of order).
        for a, e in pairs:
            if a.op == e.op and len(a.outputs) == len(e.outputs):
                for ao, eo in zip(a.outputs, e.outputs):
                    self.pair(ao, eo)
        for position, (a, e) in enumerate(pairs):
            what = self.node_difference(a, e)
            if what is not None:
                return f"node {position} differs: {what}\n  actual:   {_node_line(a)}\n  expected: {_node_line(e)}"
        if len(a_nodes) > len(e_nodes):
            extra = a_nodes[len(e_nodes)]
            return (f"the actual graph has more nodes: node {len(e_nodes)} has no expected counterpart\n"
                    f"  actual:   {_node_line(extra)}")
        if len(e_nodes) > len(a_nodes):
            missing = e_nodes[len(a_nodes)]
            return (f"the actual graph has fewer nodes: expected node {len(a_nodes)} is missing\n"
                    f"  expected: {_node_line(missing)}")
        return None

    def node_difference(self, a: Node, e: Node) -> str | None:
        if a.op != e.op:
            return f"op {a.op} vs {e.op} expected"
        if len(a.outputs) != len(e.outputs):
            return f"{len(a.outputs)} outputs vs {len(e.outputs)} expected"
        for k, (ao, eo) in enumerate(zip(a.outputs, e.outputs)):
            if ao.type != eo.type:
                return f"output {k} has type {format_type(ao.type)} vs {format_type(eo.type)} expected"
        what = self.attrs_difference(a.attrs, e.attrs)
        if what is not None:
            return what
        if len(a.inputs) != len(e.inputs):
            return f"{len(a.inputs)} inputs vs {len(e.inputs)} expected"
        for k, (av, ev) in enumerate(zip(a.inputs, e.inputs)):
            what = self.wiring_difference(av, ev)
            if what is not None:
                return f"input {k} {what}"
        return None

    def attrs_difference(self, a: dict[str, Any], e: dict[str, Any]) -> str | None:
        if set(a) != set(e):
            extra, missing = sorted(set(a) - set(e)), sorted(set(e) - set(a))
            parts = [f"unexpected {', '.join(extra)}"] if extra else []
            parts += [f"missing {', '.join(missing)}"] if missing else []
            return f"attributes differ: {'; '.join(parts)}"
        for key, value in a.items():
            if not self.attr_equal(value, e[key]):
                return f"attribute {key} is {_show(value)} vs {_show(e[key])} expected"
        return None

    def attr_equal(self, a: Any, e: Any) -> bool:
        if _attr_kind(a) != _attr_kind(e):
            return False
        kind = _attr_kind(a)
        if kind == "float":
            return self.floats_close(np.float64(a), np.float64(e))
        if kind == "list":
            return len(a) == len(e) and all(self.attr_equal(x, y) for x, y in zip(a, e))
        if kind == "array":
            return a.dtype == e.dtype and a.shape == e.shape and self.arrays_agree(a, e, a.dtype.kind not in "biu")
        return bool(a == e)

    def floats_close(self, a: np.ndarray | np.float64, e: np.ndarray | np.float64) -> bool:
        with np.errstate(invalid="ignore", over="ignore"):
            if self.rtol == 0.0 and self.atol == 0.0:
                return bool(np.all((a == e) | (np.isnan(a) & np.isnan(e))))
            return bool(np.allclose(a, e, rtol=self.rtol, atol=self.atol, equal_nan=True))

    def arrays_agree(self, a: np.ndarray, e: np.ndarray, is_float: bool) -> bool:
        if is_float:
            return self.floats_close(np.asarray(a, np.float64), np.asarray(e, np.float64))
        return bool(np.array_equal(a, e))

    # -- wiring ----------------------------------------------------------------------------
    def wiring_difference(self, a: Value | None, e: Value | None) -> str | None:
        """Why reading `a` in the actual graph does not correspond to reading `e`."""
        if a is None or e is None:
            if a is e:
                return None
            return f"is {_describe(a, self.actual)} vs {_describe(e, self.expected)} expected"
        known = self.to_expected.get(a)
        if known is e:
            return None
        if known is not None:
            return (f"reads {_describe(a, self.actual)}, whose counterpart is {_describe(known, self.expected)}, "
                    f"but the expected graph reads {_describe(e, self.expected)} there")
        if a in self.actual.constants and e in self.expected.constants:
            if e in self.to_actual:
                other = self.to_actual[e].name
                return (f"reads {_describe(a, self.actual)}, but the expected graph reads "
                        f"{_describe(e, self.expected)}, the counterpart of another constant, %{other}")
            what = self.constant_difference(a, e)
            if what is not None:
                return f"reads constant %{a.name} vs %{e.name} expected: {what}"
            self.pair(a, e)
            return None
        return f"reads {_describe(a, self.actual)} vs {_describe(e, self.expected)} expected"

    def constant_difference(self, a: Value, e: Value) -> str | None:
        if a.type != e.type:
            return f"type {format_type(a.type)} vs {format_type(e.type)}"
        if not self.compare_values or a.const is None or e.const is None:
            return None
        av, ev = np.asarray(a.const), np.asarray(e.const)
        if self.arrays_agree(av, ev, a.dtype.is_float):
            return None
        return _value_mismatch(av, ev, a.dtype, self.rtol, self.atol)

    # -- graph outputs and constants nothing reads --------------------------------------------
    def outputs(self) -> str | None:
        a_outs, e_outs = self.actual.outputs, self.expected.outputs
        if len(a_outs) != len(e_outs):
            return (f"graph outputs differ in number: {len(a_outs)} vs {len(e_outs)} expected "
                    f"({_refs(a_outs)} vs {_refs(e_outs)})")
        for i, (a, e) in enumerate(zip(a_outs, e_outs)):
            what = self.wiring_difference(a, e)
            if what is not None:
                return f"graph output {i} {what}"
        return None

    def unread_constants(self) -> str | None:
        a_left = [v for v in self.actual.constants if v not in self.to_expected]
        e_left = [v for v in self.expected.constants if v not in self.to_actual]
        if len(a_left) != len(e_left):
            return (f"constants that nothing reads differ in number: {len(a_left)} ({_refs(a_left)}) "
                    f"vs {len(e_left)} expected ({_refs(e_left)})")
        for a, e in zip(a_left, e_left):
            what = self.constant_difference(a, e)
            if what is not None:
                return f"unread constant %{a.name} vs %{e.name} expected: {what}"
        return None


# -- messages ------------------------------------------------------------------------------------


def _attr_kind(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, (int, np.integer)):
        return "int"
    if isinstance(v, (float, np.floating)):
        return "float"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, np.ndarray):
        return "array"
    if isinstance(v, DType):
        return "dtype"
    if isinstance(v, TensorType):
        return "type"
    return type(v).__name__


def _refs(values: Sequence[Value]) -> str:
    return ", ".join(f"%{v.name}" for v in values) or "none"


def _describe(v: Value | None, graph: Graph) -> str:
    """How a message names what an input reads: `_`, a graph input, a constant, or the
    output of a node (with its position, which is what corresponds across graphs)."""
    if v is None:
        return "omitted (_)"
    if v.producer is not None:
        position = next((i for i, n in enumerate(graph) if n is v.producer), None)
        where = f"node {position}" if position is not None else "a node outside the graph"
        return f"%{v.name} (output {v.index} of {where}, {v.producer.op})"
    for i, x in enumerate(graph.inputs):
        if x is v:
            return f"%{v.name} (graph input {i})"
    if v in graph.constants:
        return f"%{v.name} (constant {format_type(v.type)})"
    return f"%{v.name} (not defined in this graph)"


def _node_line(node: Node) -> str:
    """A node as the text form writes it, with long array attributes summarised."""
    results = ", ".join(f"%{o.name}: {format_type(o.type)}" for o in node.outputs)
    args = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
    line = f"{results} = {node.op}({args})" if results else f"{node.op}({args})"
    if node.attrs:
        line += " {" + ", ".join(f"{k}={_show(v)}" for k, v in node.attrs.items()) + "}"
    return line


def _show(v: Any) -> str:
    if isinstance(v, np.ndarray):
        flat = v.reshape(-1)
        shown = ", ".join(str(x) for x in flat[:_SHOWN_ELEMENTS])
        more = ", ..." if flat.size > _SHOWN_ELEMENTS else ""
        return f"array({v.dtype}{list(v.shape)}, [{shown}{more}])"
    if isinstance(v, DType):
        return f"dtype({v.short})"
    if isinstance(v, TensorType):
        return f"type({format_type(v)})"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # as the text form writes it
    return repr(v)


def _value_mismatch(a: np.ndarray, e: np.ndarray, dt: DType, rtol: float, atol: float) -> str:
    """Where two payloads of one type first differ, and by how much."""
    if dt.is_float:
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            bad = ~((np.abs(a64 - e64) <= atol + rtol * np.abs(e64)) | (np.isnan(a64) & np.isnan(e64)))
        tolerance = f" (rtol={rtol:g}, atol={atol:g})"
    else:
        bad = a != e
        tolerance = ""
    index = tuple(int(i) for i in np.argwhere(bad)[0]) if a.ndim else ()
    count = int(np.count_nonzero(bad))
    return (f"values differ at {list(index)}: {_element(a[index], dt)} vs {_element(e[index], dt)} expected"
            f"{tolerance}; {count} of {a.size} elements differ")


def _element(x: Any, dt: DType) -> str:
    if dt.is_float:
        return repr(float(x))
    return repr(bool(x)) if dt.kind == "bool" else str(int(x))
