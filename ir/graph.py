"""Values, nodes and graphs: the SSA data structure every part of requant works on.

A `Value` has a type, at most one producer, a list of uses `(node, input_index)`, an
optional constant payload and a `meta` dict. A `Node` has an op name, inputs, outputs,
attributes and `meta` (e.g. `created_by`: the rule or pass that made it). A `Graph` keeps
its nodes in a doubly linked list in topological order, so inserting or removing a node
is O(1) however large the graph. Values compare by identity.

Every rewiring goes through the methods here (`set_input`, `replace_all_uses_with`,
`insert_before/after`, `remove_node`), which keep use lists right; `verify()` checks them.
Constant payloads are read-only numpy arrays: passes make new constants, never edit one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir.dtypes import DType
from requant.ir.registry import infer_types
from requant.ir.types import TensorType, type_of_array

__all__ = ["Value", "Node", "Graph"]


class Value:
    """An SSA value: a graph input, a constant, or one output of one node."""

    __slots__ = ("name", "type", "producer", "index", "uses", "const", "meta", "__weakref__")

    def __init__(self, name: str, type: TensorType, const: np.ndarray | None = None) -> None:
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.index = 0
        self.uses: list[tuple[Node, int]] = []
        self.const = const
        self.meta: dict[str, Any] = {}

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def shape(self):
        return self.type.shape

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    @property
    def users(self) -> list[Node]:
        """Distinct nodes that read this value, in first-use order."""
        seen: dict[int, Node] = {}
        for node, _ in self.uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    def replace_all_uses_with(self, other: Value) -> None:
        """Point every node input that reads `self` at `other` (graph outputs: see
        `Graph.replace_value`, which also keeps output names)."""
        if other is self:
            return
        for node, i in list(self.uses):
            node.set_input(i, other)

    def __repr__(self) -> str:
        kind = "const " if self.const is not None else ""
        return f"<Value {kind}%{self.name}: {self.type}>"


class Node:
    """One op application. Inputs may be `None` for an omitted optional input."""

    __slots__ = ("op", "_inputs", "outputs", "attrs", "meta", "name", "graph", "_prev", "_next", "__weakref__")

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None],
        outputs: Sequence[Value],
        attrs: Mapping[str, Any] | None = None,
        name: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.op = op
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = list(outputs)
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.meta: dict[str, Any] = dict(meta or {})
        self.name = name
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        for i, out in enumerate(self.outputs):
            if out.producer is not None:
                raise RequantError(f"value %{out.name} already has a producer ({out.producer.op})")
            out.producer = self
            out.index = i
        for i, v in enumerate(inputs):
            self._inputs.append(v)
            if v is not None:
                v.uses.append((self, i))

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def output(self) -> Value:
        """The only output of a single-output node."""
        if len(self.outputs) != 1:
            raise RequantError(f"{self.op} node {self.label} has {len(self.outputs)} outputs, not one")
        return self.outputs[0]

    @property
    def label(self) -> str:
        """How messages name this node: its name, or its first output."""
        if self.name:
            return f"'{self.name}' ({self.op})"
        first = self.outputs[0].name if self.outputs else "?"
        return f"{self.op} -> %{first}"

    def set_input(self, index: int, value: Value | None) -> None:
        old = self._inputs[index]
        if old is value:
            return
        if old is not None:
            old.uses.remove((self, index))
        self._inputs[index] = value
        if value is not None:
            value.uses.append((self, index))

    def append_input(self, value: Value | None) -> None:
        self._inputs.append(None)
        self.set_input(len(self._inputs) - 1, value)

    def _detach_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v.uses.remove((self, i))
        self._inputs = [None] * len(self._inputs)

    def __repr__(self) -> str:
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in self._inputs)
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"<Node {outs} = {self.op}({ins})>"


class Graph:
    """A function of tensors: inputs, constants, topologically ordered nodes, outputs."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[Value, None] = {}  # an ordered set
        self.meta: dict[str, Any] = {}
        self._head: Node | None = None
        self._tail: Node | None = None
        self._size = 0
        self._names: set[str] = set()
        self._counters: dict[str, Iterator[int]] = {}

    # -- names -------------------------------------------------------------------------
    def fresh_name(self, base: str = "t") -> str:
        """A value name not used in this graph, derived from `base`."""
        if base not in self._names:
            self._names.add(base)
            return base
        counter = self._counters.setdefault(base, itertools.count(1))
        while True:
            candidate = f"{base}_{next(counter)}"
            if candidate not in self._names:
                self._names.add(candidate)
                return candidate

    def _claim_name(self, name: str | None, base: str) -> str:
        if name is None:
            return self.fresh_name(base)
        if name in self._names:
            raise RequantError(f"value name %{name} is already used in graph '{self.name}'")
        self._names.add(name)
        return name

    def rename(self, value: Value, new_name: str) -> None:
        if new_name == value.name:
            return
        claimed = self._claim_name(new_name, new_name)
        self._names.discard(value.name)
        value.name = claimed

    # -- values ------------------------------------------------------------------------
    def has_name(self, name: str) -> bool:
        return name in self._names

    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self._claim_name(name, "input"), type)
        self.inputs.append(v)
        return v

    def add_constant(self, array: Any, name: str | None = None, dtype: DType | None = None, *, base: str = "c") -> Value:
        """A constant value holding a read-only array. A writeable `array` is copied, so
        the caller cannot change the constant behind the graph's back."""
        arr = np.asarray(array)
        if dtype is not None and arr.dtype != dtype.np:
            arr = arr.astype(dtype.np)
        elif arr.flags.writeable:
            arr = arr.copy()
        arr.flags.writeable = False
        v = Value(self._claim_name(name, base), type_of_array(arr, dtype), const=arr)
        self.constants[v] = None
        return v

    def values(self) -> Iterator[Value]:
        """Every value: inputs, constants, then node outputs in order."""
        yield from self.inputs
        yield from self.constants
        for node in self:
            yield from node.outputs

    # -- nodes -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        """Nodes in order. Removing the current node while iterating is safe."""
        node = self._head
        while node is not None:
            nxt = node._next
            yield node
            node = nxt

    def reversed(self) -> Iterator[Node]:
        node = self._tail
        while node is not None:
            prev = node._prev
            yield node
            node = prev

    @property
    def nodes(self) -> list[Node]:
        return list(self)

    def __len__(self) -> int:
        return self._size

    def create_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: Mapping[str, Any] | None = None,
        *,
        num_outputs: int | None = None,
        output_types: Sequence[TensorType] | None = None,
        output_names: Sequence[str | None] | None = None,
        name: str | None = None,
        meta: Mapping[str, Any] | None = None,
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Make a node, infer its output types from the op registry unless given, and
        insert it (at the end, or before/after an anchor)."""
        attrs = dict(attrs or {})
        if output_types is None:
            output_types = infer_types(op, inputs, attrs, num_outputs)
        names = list(output_names) if output_names is not None else [None] * len(output_types)
        outputs = [Value(self._claim_name(n, "t"), t) for n, t in zip(names, output_types)]
        node = Node(op, inputs, outputs, attrs, name=name, meta=meta)
        if before is not None:
            self.insert_before(before, node)
        elif after is not None:
            self.insert_after(after, node)
        else:
            self.append(node)
        return node

    def append(self, node: Node) -> None:
        self._detach_if_linked(node)
        self._link(node, self._tail, None)

    def insert_before(self, anchor: Node, node: Node) -> None:
        self._check_member(anchor)
        if node is anchor:
            return
        self._detach_if_linked(node)
        self._link(node, anchor._prev, anchor)

    def insert_after(self, anchor: Node, node: Node) -> None:
        self._check_member(anchor)
        if node is anchor:
            return
        self._detach_if_linked(node)
        self._link(node, anchor, anchor._next)

    def _detach_if_linked(self, node: Node) -> None:
        # Unlink before the anchor's neighbours are read: the node may be one of them.
        if node.graph is not None:
            node.graph._unlink(node)

    def _check_member(self, node: Node) -> None:
        if node.graph is not self:
            raise RequantError(f"node {node.label} is not in graph '{self.name}'")

    def _link(self, node: Node, prev: Node | None, nxt: Node | None) -> None:
        if node.graph is not None:
            raise RequantError(f"node {node.label} is already linked into a graph")
        node.graph = self
        node._prev, node._next = prev, nxt
        if prev is None:
            self._head = node
        else:
            prev._next = node
        if nxt is None:
            self._tail = node
        else:
            nxt._prev = node
        self._size += 1
        for out in node.outputs:
            self._names.add(out.name)

    def _unlink(self, node: Node) -> None:
        if node._prev is None:
            self._head = node._next
        else:
            node._prev._next = node._next
        if node._next is None:
            self._tail = node._prev
        else:
            node._next._prev = node._prev
        node._prev = node._next = None
        node.graph = None
        self._size -= 1

    def remove_node(self, node: Node, safe: bool = True) -> None:
        """Take a node out of the graph and drop its input uses. With `safe`, refuse when
        one of its outputs is still read or is a graph output."""
        self._check_member(node)
        if safe:
            for out in node.outputs:
                if out.uses:
                    raise RequantError(
                        f"cannot remove {node.label}: output %{out.name} is still used by {out.uses[0][0].label}"
                    )
                if self.is_output(out):
                    raise RequantError(f"cannot remove {node.label}: %{out.name} is a graph output")
        node._detach_inputs()
        self._unlink(node)
        for out in node.outputs:
            self._names.discard(out.name)

    def remove_constant(self, value: Value) -> None:
        if value.uses or self.is_output(value):
            raise RequantError(f"cannot remove constant %{value.name}: it is still used")
        del self.constants[value]
        self._names.discard(value.name)

    def is_output(self, value: Value) -> bool:
        for o in self.outputs:
            if o is value:
                return True
        return False

    def replace_value(self, old: Value, new: Value) -> None:
        """Make every reader of `old`, graph outputs included, read `new`. A graph output
        keeps its name and type: `new` takes over the name (when `new` is itself a graph
        input, constant or output, an Identity node carries the name instead)."""
        if old is new:
            return
        is_output = self.is_output(old)
        if is_output and old.type != new.type:
            raise RequantError(
                f"replacing graph output %{old.name}: type {new.type} differs from {old.type}"
            )
        old.replace_all_uses_with(new)
        if not is_output:
            return
        carrier = new
        if new.producer is None or self.is_output(new):
            anchor = new.producer
            ident = Node("Identity", [new], [Value(self.fresh_name("t"), new.type)])
            if anchor is None or anchor.graph is not self:
                self.append(ident)
            else:
                self.insert_after(anchor, ident)
            carrier = ident.outputs[0]
        out_name = old.name
        self._names.discard(out_name)
        old.name = self.fresh_name(out_name + "_replaced")
        self._names.discard(carrier.name)
        carrier.name = out_name
        self._names.add(out_name)
        self.outputs = [carrier if o is old else o for o in self.outputs]

    # -- whole-graph operations -------------------------------------------------------
    def topological_sort(self) -> None:
        """Reorder nodes so every value is defined before use (stable where possible).
        Raises `VerifyError` naming a node on a cycle."""
        from requant.ir.verifier import topological_order

        order = topological_order(self)
        self._head = self._tail = None
        self._size = 0
        for node in order:
            node.graph = None
            self._link(node, self._tail, None)

    def clone(self) -> Graph:
        """An independent copy: new Values and Nodes, same names; constant payloads are
        shared (they are read-only)."""
        g = Graph(self.name)
        g.meta = _copy_meta(self.meta)
        mapping: dict[Value, Value] = {}
        for v in self.inputs:
            nv = g.add_input(v.name, v.type)
            nv.meta = _copy_meta(v.meta)
            mapping[v] = nv
        for v in self.constants:
            nv = Value(g._claim_name(v.name, "c"), v.type, const=v.const)
            nv.meta = _copy_meta(v.meta)
            g.constants[nv] = None
            mapping[v] = nv
        nodes = list(self)
        for node in nodes:  # all outputs first, so an out-of-order graph clones as it is
            for o in node.outputs:
                nv = Value(g._claim_name(o.name, "t"), o.type)
                nv.meta = _copy_meta(o.meta)
                mapping[o] = nv
        for node in nodes:
            outs = [mapping[o] for o in node.outputs]
            try:
                ins = [None if v is None else mapping[v] for v in node._inputs]
            except KeyError:
                raise RequantError(f"cannot clone graph '{self.name}': {node.label} reads a value from outside it") from None
            g.append(Node(node.op, ins, outs, _copy_meta(node.attrs), node.name, _copy_meta(node.meta)))
        g.outputs = [mapping[v] for v in self.outputs]
        return g

    def verify(self) -> None:
        """Raise `VerifyError` naming the first node that breaks an invariant."""
        from requant.ir.verifier import verify

        verify(self)

    def to_text(self, *, elide_constants: bool = False) -> str:
        """The parseable text form; `elide_constants` shortens big payloads to `...`
        for reading (that text does not parse)."""
        from requant.ir.text import print_graph

        return print_graph(self, elide_constants=elide_constants)

    def to_networkx(self):
        """A `networkx.MultiDiGraph`: one vertex per node (attrs op, name) and per graph
        input / constant; one edge per use, keyed by the value name."""
        import networkx as nx

        g = nx.MultiDiGraph(name=self.name)
        for v in self.inputs:
            g.add_node(f"input:{v.name}", kind="input", type=str(v.type))
        for v in self.constants:
            g.add_node(f"const:{v.name}", kind="constant", type=str(v.type))
        ids: dict[int, str] = {}
        for i, node in enumerate(self):
            key = f"node:{i}"
            ids[id(node)] = key
            g.add_node(key, kind="node", op=node.op, name=node.name, outputs=[o.name for o in node.outputs])
        for v in self.outputs:
            g.add_node(f"output:{v.name}", kind="output", type=str(v.type))

        def source(v: Value) -> str:
            if v.producer is not None:
                return ids[id(v.producer)]
            return f"const:{v.name}" if v.const is not None else f"input:{v.name}"

        for node in self:
            for i, v in enumerate(node._inputs):
                if v is not None:
                    g.add_edge(source(v), ids[id(node)], key=f"{v.name}->{i}", value=v.name, index=i)
        for v in self.outputs:
            g.add_edge(source(v), f"output:{v.name}", key=v.name, value=v.name)
        return g

    def op_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for node in self:
            hist[node.op] = hist.get(node.op, 0) + 1
        return dict(sorted(hist.items()))

    def __repr__(self) -> str:
        return f"<Graph '{self.name}': {len(self.inputs)} inputs, {len(self.constants)} constants, {self._size} nodes>"


def _copy_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in meta.items()}
