"""Helpers the aten lowering families share (`torch_aten_*.py`): comparing torch
extents, normalising dims, filling constant tensors, the lowering factories for
elementwise ops computed in the output dtype, and the few node sequences more than one
family emits (floor division, truncation, softmax that is 0 on fully masked rows).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from requant.frontends.torch_lowering import LoweringContext
from requant.ir.dtypes import DType
from requant.ir.graph import Value

__all__ = [
    "Cx",
    "same_dim",
    "same_shape",
    "static_shape",
    "norm_dim",
    "norm_dims",
    "filled",
    "filled_like",
    "binary_lowering",
    "unary_lowering",
    "result_has_type_of",
    "emit_floor_div",
    "emit_trunc",
    "emit_safe_softmax",
]

logger = logging.getLogger(__name__)

# the short name every lowering's signature uses for its context
Cx = LoweringContext

# Above this many elements a constant-filled tensor becomes Expand(scalar, shape) rather
# than a materialised constant, so masks and zeros do not bloat the graph.
_MATERIALISE_MAX_ELEMENTS = 1024


def same_dim(a: Any, b: Any) -> bool:
    """Two extents are provably equal: equal ints, or SymInts with one expression."""
    ea = a.node.expr if isinstance(a, torch.SymInt) else a
    eb = b.node.expr if isinstance(b, torch.SymInt) else b
    try:
        return bool(ea == eb)
    except TypeError:
        return False


def same_shape(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(same_dim(x, y) for x, y in zip(a, b))


def static_shape(shape: Sequence[Any]) -> list[int] | None:
    out = [LoweringContext.static_int(d) for d in shape]
    return None if any(d is None for d in out) else out


def norm_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def norm_dims(dims: Any, rank: int) -> list[int]:
    if dims is None:
        return []
    if isinstance(dims, int):
        dims = [dims]
    return [norm_dim(int(d), rank) for d in dims]


def filled(cx: Cx, shape_items: Sequence[Any], fill: Any, dt: DType) -> Value:
    """A tensor of `shape_items` (ints, SymInts or 0-d values) filled with `fill`."""
    if isinstance(fill, fx.Node):  # a fill value torch computes at run time
        return cx.emit("Expand", cx.tensor(fill, dt), cx.int_vector(shape_items))
    static = cx.static_ints(shape_items)
    scalar = np.asarray(fill).astype(dt.np)
    if static is not None and int(np.prod(static, dtype=np.int64)) <= _MATERIALISE_MAX_ELEMENTS:
        return cx.const(np.full(static, scalar, dtype=dt.np))
    return cx.emit("Expand", cx.const(scalar), cx.int_vector(shape_items))


def filled_like(cx: Cx, x: Any, fill: Any) -> Value:
    """A tensor shaped like `x` filled with `fill`, in the node's output dtype."""
    dt = cx.out_dtype
    shape = cx.shape(x)
    if static_shape(shape) is not None:
        return filled(cx, shape, fill, dt)
    return cx.emit("Expand", cx.const(np.asarray(fill).astype(dt.np)), cx.shape_of(cx.value(x)))


def binary_lowering(op: str):
    """Elementwise `op` computed in torch's promoted (= output) dtype."""

    def lower(cx: Cx, a: Any, b: Any) -> Value:
        dt = cx.out_dtype
        return cx.emit(op, cx.tensor(a, dt), cx.tensor(b, dt))

    lower.__name__ = f"lower_{op.lower()}"
    return lower


def unary_lowering(op: str, **attrs: Any):
    def lower(cx: Cx, x: Any) -> Value:
        return cx.emit(op, cx.tensor(x, cx.out_dtype), **attrs)

    lower.__name__ = f"lower_{op.lower()}"
    return lower


def result_has_type_of(cx: Cx, x: Any) -> bool:
    """The node's result has exactly `x`'s dtype and shape."""
    xv = cx.val(x)
    return (
        isinstance(xv, torch.Tensor)
        and isinstance(cx.out, torch.Tensor)
        and xv.dtype == cx.out.dtype
        and same_shape(xv.shape, cx.out.shape)
    )


def emit_floor_div(cx: Cx, x: Value, y: Value) -> Value:
    if x.dtype.is_float:
        return cx.emit("Floor", cx.emit("Div", x, y))
    # (x - x mod y) is an exact multiple of y, so the truncating Div is exact there
    return cx.emit("Div", cx.emit("Sub", x, cx.emit("Mod", x, y, fmod=0)), y)


def emit_trunc(cx: Cx, x: Value) -> Value:
    negative = cx.emit("Less", x, cx.const(np.zeros((), x.dtype.np)))
    return cx.emit("Where", negative, cx.emit("Ceil", x), cx.emit("Floor", x))


def emit_safe_softmax(cx: Cx, x: Value, axis: int) -> Value:
    """Softmax that gives 0 instead of NaN along rows that are all -inf (fully masked),
    as torch's attention and `_safe_softmax` do."""
    probs = cx.emit("Softmax", x, axis=axis)
    row_max = cx.emit("ReduceMax", x, cx.axes([axis]), keepdims=1)
    dead = cx.emit("Equal", row_max, cx.const(np.asarray(-np.inf, x.dtype.np)))
    return cx.emit("Where", dead, cx.const(np.zeros((), x.dtype.np)), probs)
