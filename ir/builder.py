"""`Builder`: write graphs the way they read, `y = b.Add(b.MatMul(x, w), bias)`.

Each call makes one node through `Graph.create_node` (types inferred from the registry)
and returns its output (or a tuple of outputs for multi-output ops). Nodes go at the end
of the graph, or before an anchor node; every node made is tagged with `meta`, e.g.
`{"created_by": "rule_name"}`. Reserved keywords: `_outputs` (number of outputs for
variadic-output ops), `_name` (node name), `_out_names` (output value names).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir.dtypes import DType
from requant.ir.graph import Graph, Node, Value
from requant.ir.types import TensorType

__all__ = ["Builder"]


class Builder:
    def __init__(self, graph: Graph, before: Node | None = None, meta: dict[str, Any] | None = None) -> None:
        self.graph = graph
        self.before = before
        self.meta = meta or {}  # nodes copy it, so it can be shared between builders
        self.created: list[Node] = []

    def input(self, name: str, type: TensorType) -> Value:
        return self.graph.add_input(name, type)

    def const(self, array: Any, name: str | None = None, dtype: DType | None = None) -> Value:
        return self.graph.add_constant(np.asarray(array), name=name, dtype=dtype)

    def node(self, op: str, *inputs: Value | None, _outputs: int | None = None, _name: str | None = None,
             _out_names: list[str] | None = None, **attrs: Any) -> Node:
        node = self.graph.create_node(
            op, list(inputs), attrs, num_outputs=_outputs, output_names=_out_names, name=_name,
            meta=self.meta, before=self.before,
        )
        self.created.append(node)
        return node

    def __getattr__(self, op: str):
        if op.startswith("_"):
            raise AttributeError(op)
        return self[op]

    def __getitem__(self, op: str):
        """`b["domain.Name"](...)`: a node of an op of another domain, by its op id."""

        def make(*inputs: Value | None, **attrs: Any):
            node = self.node(op, *inputs, **attrs)
            return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

        make.__name__ = op
        self.__dict__[op] = make  # later calls find it without __getattr__
        return make
