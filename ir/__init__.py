"""requant's IR: dtypes, tensor types, Value/Node/Graph, the op registry, the reference
interpreter, the verifier, the text form and the rewrite engine."""

from __future__ import annotations

from requant.ir import dtypes
from requant.ir.builder import Builder
from requant.ir.dtypes import DType, FloatFormat, dtype
from requant.ir.graph import Graph, Node, Value
from requant.ir.interpreter import run
from requant.ir.registry import all_schemas, define_op, get_schema, is_registered
from requant.ir.structural import assert_structural_equal, structural_difference
from requant.ir.types import TensorType, tensor_type
from requant.ir.verifier import verify

__all__ = [
    "dtypes",
    "DType",
    "FloatFormat",
    "dtype",
    "TensorType",
    "tensor_type",
    "Value",
    "Node",
    "Graph",
    "Builder",
    "run",
    "verify",
    "define_op",
    "get_schema",
    "is_registered",
    "all_schemas",
    "parse",
    "structural_difference",
    "assert_structural_equal",
]


def parse(text: str) -> Graph:
    """Parse the text form (`Graph.to_text()`) back into a graph."""
    from requant.ir.text import parse_graph

    return parse_graph(text)
