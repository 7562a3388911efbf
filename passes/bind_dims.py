"""Pass "bind_dims": specialise a graph to concrete sizes of its symbolic dims.

Backends that generate code per shape (TVM's schedules tile static loops; its Relax
ops want constant shape operands for Range/Expand/Reshape) build faster and better
code for `batch = 64` than for `batch = ?`. Given `dims` ({symbol: size}), every value
type (inputs, outputs and intermediates) has the symbol replaced by the size; the
computed shapes (Shape -> Gather -> Concat chains that exporters write for a dynamic
batch) then fold to constants with `fold_constants`, which this pass runs after the
substitution, followed by `refine_types` so readers of folded shapes get static types;
graph outputs whose declared dims were unknown take the inferred sizes too (binding is
the one place where an output's type is meant to become more specific).

A symbol not in `dims` stays symbolic; a size that contradicts a static dim elsewhere
is found by the verifier (types no longer agree), not silently accepted. Where symbols
remain (no size given, or `static_shapes=False` on a TVM target: one build for every
size), the shape computations cannot fold; the pass then follows them symbolically
(`shape_values.follow_shape_values`: Shape -> Gather -> Concat -> Expand gives the
Expand the type [batch, 6]) and re-infers the readers, so that a backend that needs
every output shape known at compile time can build the graph with its dims symbolic.
Stats: `dims_bound` (symbols replaced), `bound` ("batch=64, seq=128"),
`values_specialised`, `shapes_followed` (output types filled in by following shape
computations), plus the folding's counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph
from requant.ir.types import TensorType
from requant.passes.manager import PassResult, get_pass, graph_pass
from requant.passes.shape_values import follow_shape_values

__all__ = ["bind_dims", "dims_from_feeds"]

logger = logging.getLogger(__name__)

#: rounds of following shape computations and re-inferring their readers (each round
#: reaches the shape computations that read what the previous one typed)
FOLLOW_ROUNDS = 4


def dims_from_feeds(graph: Graph, feeds: Mapping[str, Any]) -> dict[str, int]:
    """{symbol: size} read off arrays fed to the graph's inputs (by name); a symbol seen
    with two sizes is an error naming both inputs."""
    sizes: dict[str, tuple[int, str]] = {}
    for v in graph.inputs:
        arr = feeds.get(v.name)
        if arr is None or v.type.shape is None:
            continue
        shape = np.shape(arr)
        if len(shape) != len(v.type.shape):
            raise RequantError(f"input '{v.name}' is {len(v.type.shape)}-D, got an array of shape {list(shape)}")
        for d, n in zip(v.type.shape, shape):
            if isinstance(d, str):
                seen = sizes.setdefault(d, (int(n), v.name))
                if seen[0] != int(n):
                    raise RequantError(f"dim '{d}' is {seen[0]} in input '{seen[1]}' and {n} in input '{v.name}'")
    return {d: n for d, (n, _) in sizes.items()}


def _bound(t: TensorType, dims: Mapping[str, int]) -> TensorType | None:
    if t.shape is None or not any(isinstance(d, str) and d in dims for d in t.shape):
        return None
    return TensorType(tuple(dims.get(d, d) if isinstance(d, str) else d for d in t.shape), t.dtype)


@graph_pass("bind_dims", "specialise symbolic dims to sizes (then fold the computed shapes)")
def bind_dims(graph: Graph, dims: Mapping[str, int] | None = None,
              overrides: Mapping[str, int] | None = None) -> PassResult:
    """`dims` (e.g. read off example inputs) updated by `overrides` (given by the user)."""
    dims = {**(dims or {}), **(overrides or {})}
    for name, size in dims.items():
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
            raise RequantError(f"bind_dims: dim '{name}' must be a size >= 0, got {size!r}")
    specialised = 0
    used: set[str] = set()
    for v in graph.values():  # constants have static shapes: never bound
        t = _bound(v.type, dims)
        if t is not None:
            used.update(d for d in v.type.shape if isinstance(d, str) and d in dims)
            v.type = t
            specialised += 1
    stats: dict[str, Any] = {"dims_bound": len(used), "values_specialised": specialised}
    if used:
        stats["bound"] = ", ".join(f"{d}={dims[d]}" for d in sorted(used))
    if specialised:
        for p in (get_pass("fold_constants"), get_pass("refine_types", outputs=True)):
            result = p.run(graph)
            stats.update({f"{p.name}:{k}": v for k, v in result.stats.items() if isinstance(v, (int, float))})
        stats["outputs_refined"] = result.stats["outputs_refined"]
    followed = _follow_symbolic_shapes(graph) if _has_symbols(graph) else 0
    if followed:
        stats["shapes_followed"] = followed
    logger.debug("bind_dims: %s", stats)
    return PassResult(graph, specialised > 0 or followed > 0, stats)


def _has_symbols(graph: Graph) -> bool:
    return any(isinstance(d, str) for v in graph.inputs for d in (v.type.shape or ()))


def _follow_symbolic_shapes(graph: Graph) -> int:
    """Fill in the output types that the graph's shape computations imply, re-inferring
    the readers after each round; returns the types filled in by following."""
    refine = get_pass("refine_types", outputs=True)
    total = 0
    for _ in range(FOLLOW_ROUNDS):
        changed = follow_shape_values(graph)
        if not changed:
            break
        total += changed
        refine.run(graph)
    return total
