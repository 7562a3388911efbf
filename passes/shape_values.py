"""Follow shape tensors through a graph whose dims are symbolic, and give the ops that
read them the output types they imply (used by the "bind_dims" pass).

An exporter writes a dynamic batch as a computation on shapes: `Shape(x)` -> `Gather`
(pick the batch) -> `Unsqueeze` -> `Concat` with constants -> `Expand` / `Reshape` /
`Range` / `ConstantOfShape`. Constant folding cannot fold it while the batch is a symbol,
and shape inference, which sees a computed input, leaves the reader's dims unknown;
a backend that fixes shapes at compile time (TVM) then cannot lower the reader. This
module evaluates the shape tensors symbolically, element by element, as IR dims (an int,
a symbol name, or None when unknown):

    Shape(x)[start:end]            -> x's dims
    a constant int tensor          -> its values
    Gather(s, constant i, axis 0)  -> s[i];   Slice(s, constant bounds) -> s[a:b:c]
    Unsqueeze / Squeeze / Identity / Cast to an integer type  -> the same values
    Concat(s1, s2, ..., axis 0)    -> s1 ++ s2 ++ ...

and gives the readers the types those values imply:

    Expand(x, s)           numpy broadcasting of x's dims with s (a 1 takes the other dim)
    Reshape(x, s)          s, a 0 copying x's dim (unless allowzero), a -1 the rest of x's
                           elements when the symbols of x and of s are the same
    ConstantOfShape(s)     s
    Range(0, n, 1)         [n]

Only unknown dims are filled in (a declared dim is never changed); element-wise
arithmetic on symbols (batch * 2) is not followed: it has no IR dim to name it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from requant.ir.graph import Graph, Node, Value
from requant.ir.types import Dim, TensorType

__all__ = ["follow_shape_values", "shape_value"]

logger = logging.getLogger(__name__)

#: a shape tensor's elements as IR dims (a 0-d tensor: one element)
ShapeValue = tuple[Dim, ...]


def _const_ints(v: Value | None) -> list[int] | None:
    if v is None or v.const is None or not np.issubdtype(np.asarray(v.const).dtype, np.integer):
        return None
    return [int(a) for a in np.asarray(v.const).reshape(-1)]


def shape_value(v: Value | None, known: dict[int, ShapeValue]) -> ShapeValue | None:
    """The elements of the 0-d / 1-d integer tensor `v` as IR dims, from `known` (values
    followed so far) or its constant payload; None when not followed."""
    if v is None:
        return None
    found = known.get(id(v))
    if found is not None:
        return found
    ints = _const_ints(v)
    return None if ints is None or (v.type.rank or 0) > 1 else tuple(ints)


def _follow(node: Node, known: dict[int, ShapeValue]) -> ShapeValue | None:
    """The shape value `node`'s first output holds, when its op passes one on."""
    op, ins = node.op, node.inputs
    if op == "Shape":
        dims = ins[0].type.shape
        if dims is None:
            return None
        rank = len(dims)
        start, end = node.attrs.get("start", 0) or 0, node.attrs.get("end")
        return tuple(dims)[slice(start, rank if end is None else end)]
    if op in ("Identity", "Unsqueeze", "Squeeze") or (op == "Cast" and node.outputs[0].dtype.is_integer):
        return shape_value(ins[0], known)
    if op == "Concat" and node.attrs.get("axis") in (0, -1):
        parts = [shape_value(v, known) for v in ins]
        return None if any(p is None for p in parts) else tuple(d for p in parts for d in p)
    if op == "Gather" and node.attrs.get("axis", 0) in (0, -1):
        source, picks = shape_value(ins[0], known), _const_ints(ins[1])
        if source is None or picks is None or not all(-len(source) <= i < len(source) for i in picks):
            return None
        return tuple(source[i] for i in picks)
    if op == "Slice":
        return _slice(shape_value(ins[0], known), [_const_ints(v) for v in ins[1:5]] + [None] * (5 - len(ins)))
    return None


def _slice(source: ShapeValue | None, bounds: list[list[int] | None]) -> ShapeValue | None:
    starts, ends, axes, steps = bounds[:4]
    if source is None or starts is None or ends is None or len(starts) != 1 or axes not in (None, [0], [-1]):
        return None
    step = steps[0] if steps else 1
    return tuple(source[slice(starts[0], ends[0], step)]) if step else None


def _broadcast(dims: Sequence[Dim], target: ShapeValue) -> tuple[Dim, ...]:
    rank = max(len(dims), len(target))
    a = [1] * (rank - len(dims)) + list(dims)
    b = [1] * (rank - len(target)) + list(target)
    out: list[Dim] = []
    for d, t in zip(a, b):
        if t == 1 or t == d:
            out.append(d)
        elif d == 1:
            out.append(t)
        else:
            out.append(None)  # a symbol against another dim: which one wins is not known here
    return tuple(out)


def _reshaped(dims: Sequence[Dim], target: ShapeValue, allowzero: bool) -> tuple[Dim, ...]:
    out = [dims[i] if t == 0 and not allowzero and i < len(dims) else t for i, t in enumerate(target)]
    if out.count(-1) != 1:
        return tuple(None if d == -1 else d for d in out)
    static_in = [d for d in dims if isinstance(d, int)]
    static_out = [d for d in out if isinstance(d, int) and d != -1]
    symbols_in = Counter(d for d in dims if isinstance(d, str))
    symbols_out = Counter(d for d in out if isinstance(d, str))
    rest: Dim = None
    if None not in dims and None not in out and symbols_in == symbols_out and int(np.prod(static_out)) > 0:
        total, kept = int(np.prod(static_in)), int(np.prod(static_out))
        rest = total // kept if total % kept == 0 else None
    return tuple(rest if d == -1 else d for d in out)


def _implied(node: Node, known: dict[int, ShapeValue]) -> tuple[Dim, ...] | None:
    """The output dims the shape value read by `node` implies, or None."""
    op, ins = node.op, node.inputs
    if op == "Expand" and ins[0].type.shape is not None:
        target = shape_value(ins[1], known)
        return None if target is None else _broadcast(ins[0].type.shape, target)
    if op == "Reshape" and ins[0].type.shape is not None:
        target = shape_value(ins[1], known)
        return None if target is None else _reshaped(ins[0].type.shape, target, bool(node.attrs.get("allowzero")))
    if op == "ConstantOfShape":
        return shape_value(ins[0], known)
    if op == "Range" and _const_ints(ins[0]) == [0] and _const_ints(ins[2]) == [1]:
        limit = shape_value(ins[1], known)
        return None if limit is None or len(limit) != 1 else limit
    return None


def _filled(declared: TensorType, implied: tuple[Dim, ...]) -> TensorType | None:
    """`declared` with its unknown dims taken from `implied` (same rank), or None."""
    if declared.shape is not None and len(declared.shape) != len(implied):
        return None
    old = declared.shape if declared.shape is not None else (None,) * len(implied)
    new = tuple(i if d is None else d for d, i in zip(old, implied))
    return TensorType(new, declared.dtype) if new != old or declared.shape is None else None


def follow_shape_values(graph: Graph) -> int:
    """Give Expand / Reshape / ConstantOfShape / Range nodes whose shape input is computed
    the output types it implies (only dims that were unknown); returns how many output
    types changed. Readers downstream keep their unknown dims until re-inferred
    (the `refine_types` pass)."""
    known: dict[int, ShapeValue] = {}
    changed = 0
    for node in graph:
        if not node.outputs:
            continue
        value = _follow(node, known)
        if value is not None:
            known[id(node.outputs[0])] = value
            continue
        implied = _implied(node, known)
        if implied is None:
            continue
        better = _filled(node.outputs[0].type, implied)
        if better is not None:
            node.outputs[0].type = better
            changed += 1
    logger.debug("follow_shape_values: %d output types filled in", changed)
    return changed
