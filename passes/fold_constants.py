"""Pass "fold_constants": constant folding. Exact: no graph output changes, nor the names
or types of graph outputs.

A node whose inputs are all constants -> its outputs as constants, computed with the
op's reference kernel; `Shape` / `Size` of a tensor with a fully static shape -> a
constant even when the tensor is not. Skipped, with a stat: unregistered ops, kernels
that raise, results over `max_elements` that are also larger than the inputs (Expand,
ConstantOfShape, ...). Never folded: ops declared `deterministic=False` or
`foldable=False` (e.g. a DequantizeLinear that must stay), dead nodes (left to DCE), and
an output whose static result type would differ from the declared type of a graph
output.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from requant.ir.graph import Graph, Node, Value
from requant.ir.registry import get_schema, is_registered, run_kernel
from requant.passes.cse import carries_output_name
from requant.passes.dce import remove_unused_constants
from requant.passes.manager import PassResult, graph_pass

__all__ = ["constant_folding"]

logger = logging.getLogger(__name__)


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
    stats["constants_removed"] = remove_unused_constants(graph, dict.fromkeys(read_by_folded))
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
    return not carries_output_name(graph, node)


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
