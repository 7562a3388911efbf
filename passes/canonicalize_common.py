"""Small helpers shared by the canonicalisation rule modules (passes/canonical_*.py):
reading scalar constants, comparing float constants within rounding, reduction axes,
parameter shapes, and building variant patterns from a table of pieces.

Nothing here is a pass; see passes/canonicalize.py for what the passes do.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir import registry
from requant.ir.builder import Builder
from requant.ir.graph import Graph, Node, Value
from requant.ir.pattern import OpPattern
from requant.ir.rewrite import Rule
from requant.ir.types import Dim, Shape, TensorType

__all__ = [
    "FLOAT_CONST_RTOL",
    "scalar",
    "is_scalar_close",
    "ints",
    "trailing_axes",
    "param_fits",
    "fully_known",
    "same_known_type",
    "producer",
    "new_constant",
    "would_infer",
    "variant_rules",
    "output_name_carrier",
]

logger = logging.getLogger(__name__)

FLOAT_CONST_RTOL = 1e-6
"""How close a float constant must be to a textbook value (sqrt(2), 0.044715, 1/sqrt(D))
to count as it: exporters store these in float32, whose rounding is 6e-8 relative; 1e-6
also accepts a value computed in float32 in a different order (sqrt(s)**2 for s), and
still refuses any different constant a model could mean."""


def scalar(v: Value | None) -> float | None:
    """The value of a constant holding one element (any shape), else None."""
    if v is None or v.const is None or v.const.size != 1:
        return None
    return float(np.asarray(v.const).reshape(-1)[0])


def is_scalar_close(v: Value | None, want: float, rtol: float = FLOAT_CONST_RTOL) -> bool:
    got = scalar(v)
    return got is not None and abs(got - want) <= rtol * abs(want)


def ints(v: Value | None) -> list[int] | None:
    """The elements of a constant integer tensor, flattened, else None."""
    if v is None or v.const is None or not np.issubdtype(v.const.dtype, np.integer):
        return None
    return [int(a) for a in np.asarray(v.const).reshape(-1)]


def trailing_axes(axes: Value | None, rank: int | None) -> int | None:
    """k when the constant `axes` are exactly the last k axes of a rank-`rank` tensor
    (in any order, negative or not), else None."""
    values = ints(axes)
    if values is None or rank is None or not values:
        return None
    norm = sorted(a + rank if a < 0 else a for a in values)
    k = len(norm)
    return k if norm == list(range(rank - k, rank)) else None


def fully_known(shape: Shape) -> bool:
    """Every dim is an int or a symbol (no unknown dims, known rank)."""
    return shape is not None and all(d is not None for d in shape)


def same_known_type(a: TensorType, b: TensorType) -> bool:
    """The same dtype and the same fully known shape (symbols compare by name)."""
    return a.dtype == b.dtype and fully_known(a.shape) and a.shape == b.shape


def param_fits(param: Value, x: Value, k: int) -> bool:
    """Whether `param` (a norm's scale or bias) has x's dtype and broadcasts only over
    the last `k` axes of x, so it is a per-feature parameter, not a full tensor."""
    t, xt = param.type, x.type
    if t.dtype != xt.dtype or t.shape is None or xt.shape is None or t.rank > k:
        return False
    tail: Sequence[Dim] = xt.shape[len(xt.shape) - t.rank:] if t.rank else ()
    return all(d == 1 or d == e for d, e in zip(t.shape, tail))


def producer(v: Value | None, op: str) -> Node | None:
    """The node making `v` when it is an `op` node, else None."""
    if v is None or v.producer is None or v.producer.op != op:
        return None
    return v.producer


def new_constant(builder: Builder, array: np.ndarray, like: Value | None = None, suffix: str = "c") -> Value:
    """A constant for a rewritten weight: named after the value it derives from, with
    that value's meta (e.g. `torch_fqn`), so provenance survives the rewrite."""
    base = f"{like.name}_{suffix}" if like is not None else suffix
    dtype = like.dtype if like is not None and like.dtype.np == np.asarray(array).dtype else None
    c = builder.graph.add_constant(np.ascontiguousarray(array), dtype=dtype, base=base)
    if like is not None:
        c.meta.update(like.meta)
    return c


def would_infer(op: str, inputs: Sequence[Value | TensorType | None], attrs: dict[str, Any]) -> str | None:
    """None when `op` accepts these inputs (types, or values with their payloads), else
    the type rule's complaint: a rule checks this before it builds a node that could
    not exist, so a refused match is a reason, never a crash mid-rewrite."""
    values = [Value("_probe", t) if isinstance(t, TensorType) else t for t in inputs]
    try:
        registry.infer_types(op, values, attrs)
    except RequantError as exc:
        return str(exc)
    return None


def output_name_carrier(graph: Graph, node: Node, source: Value) -> bool:
    """Whether removing `node` (replacing its output by `source`) would only move a
    graph output's name onto a new Identity: the rewrite would then never stop."""
    out = node.outputs[0]
    return graph.is_output(out) and (source.producer is None or graph.is_output(source))


def variant_rules(
    name: str,
    pieces: Sequence[Sequence[tuple[str, Any]]],
    build: Callable[..., OpPattern],
    replace: Callable[[Builder, Any], Any],
    check: Callable[[Any], Any] | None = None,
    description: str = "",
) -> list[Rule]:
    """One rule per combination of pattern pieces: `pieces` is a list of alternatives per
    slot, each `(tag, piece)`; `build(*pieces)` makes the pattern. The rule is named
    `name[tag1,tag2,...]` so stats say which form fired. Exporters spell the same
    function in several operand orders and groupings; a table of pieces keeps each form
    readable instead of hiding the alternatives inside a check."""
    rules = []
    for combo in itertools.product(*pieces):
        tags = ",".join(tag for tag, _ in combo)
        pattern = build(*(piece for _, piece in combo))
        rules.append(Rule(f"{name}[{tags}]", pattern=pattern, check=check, replace=replace, description=description))
    return rules
