"""Lowerings of aten's reductions: sum, mean, amax, amin, prod, logsumexp, max / min
(all elements, along a dim with indices, and the elementwise `.other` overloads),
argmax, argmin, any, all, var, std, linalg_vector_norm, cumsum, topk.

Semantics particular to these lowerings:
- The operand is cast to the result dtype first (so a sum of bools counts the Trues);
  `dim=None` or an empty dim list reduces every axis; the axes go in as an int64
  input (opset-18 form).
- max.dim / min.dim emit ReduceMax/ReduceMin and ArgMax/ArgMin only for the outputs
  something reads.
- argmax / argmin without a dim work on the flattened tensor (reshaped back to all-ones
  extents when keepdim).
- any / all are ReduceMax / ReduceMin of the tensor as int64, cast to bool.
- var / std: mean-centred sum of squares over max(n - correction, 0), correction 1
  unless `unbiased=False` or an explicit correction says otherwise; std takes Sqrt.
  n is a constant for static extents, a product of Shape gathers otherwise.
- linalg_vector_norm of order 1, 2 and inf only (ReduceL1, ReduceL2, ReduceMax(Abs)).
- topk always sorts (TopK's sorted=1), which torch's unsorted result also allows.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from requant.frontends.torch_aten_common import Cx, binary_lowering, norm_dim, norm_dims
from requant.frontends.torch_lowering import NotLowerable, lowers
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


def _reduce(cx: Cx, op: str, x: Any, dims: Any, keepdim: bool, dt: DType | None = None) -> Value:
    """`op` over `dims` (all axes when empty or None) of a torch argument or IR value."""
    dt = dt or cx.out_dtype
    v = cx.cast(x, dt) if isinstance(x, Value) else cx.tensor(x, dt)
    axes = norm_dims(dims, max(v.type.rank, 1))
    if not axes or v.type.rank == 0:
        return cx.emit(op, v, keepdims=int(bool(keepdim)))
    return cx.emit(op, v, cx.axes(axes), keepdims=int(bool(keepdim)))


def _reduction(op: str):
    def lower(cx: Cx, x: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Value:
        return _reduce(cx, op, x, dim, keepdim)

    lower.__name__ = f"lower_{op.lower()}"
    return lower


for _targets, _op in (
    (("aten.sum.dim_IntList", "aten.sum.default"), "ReduceSum"),
    (("aten.mean.dim", "aten.mean.default"), "ReduceMean"),
    (("aten.amax.default",), "ReduceMax"),
    (("aten.amin.default",), "ReduceMin"),
    (("aten.prod.dim_int", "aten.prod.default"), "ReduceProd"),
    (("aten.logsumexp.default",), "ReduceLogSumExp"),
):
    lowers(*_targets)(_reduction(_op))


def _reduce_with_index(value_op: str, index_op: str):
    def lower(cx: Cx, x: Any, dim: int, keepdim: bool = False) -> tuple:
        used = cx.used_outputs()
        v = cx.value(x)
        axis = norm_dim(int(dim), max(v.type.rank, 1))
        values = _reduce(cx, value_op, x, [axis], keepdim) if 0 in used else None
        indices = cx.emit(index_op, v, axis=axis, keepdims=int(bool(keepdim))) if 1 in used else None
        return (values, indices)

    lower.__name__ = f"lower_{value_op.lower()}_with_index"
    return lower


lowers("aten.max.dim")(_reduce_with_index("ReduceMax", "ArgMax"))
lowers("aten.min.dim")(_reduce_with_index("ReduceMin", "ArgMin"))


@lowers("aten.max.default")
def max_all(cx: Cx, x: Any) -> Value:
    return _reduce(cx, "ReduceMax", x, None, False)


@lowers("aten.min.default")
def min_all(cx: Cx, x: Any) -> Value:
    return _reduce(cx, "ReduceMin", x, None, False)


@lowers("aten.max.other")
def max_other(cx: Cx, a: Any, b: Any) -> Value:
    return binary_lowering("Max")(cx, a, b)


@lowers("aten.min.other")
def min_other(cx: Cx, a: Any, b: Any) -> Value:
    return binary_lowering("Min")(cx, a, b)


def _arg_reduce(op: str):
    def lower(cx: Cx, x: Any, dim: int | None = None, keepdim: bool = False) -> Value:
        v = cx.value(x)
        if dim is None:
            flat = cx.emit("Reshape", v, cx.const(np.array([-1], dtype=np.int64)))
            out = cx.emit(op, flat, axis=0, keepdims=0)
            if keepdim:
                out = cx.emit("Reshape", out, cx.const(np.ones(v.type.rank, dtype=np.int64)))
            return out
        return cx.emit(op, v, axis=norm_dim(int(dim), max(v.type.rank, 1)), keepdims=int(bool(keepdim)))

    lower.__name__ = f"lower_{op.lower()}"
    return lower


lowers("aten.argmax.default")(_arg_reduce("ArgMax"))
lowers("aten.argmin.default")(_arg_reduce("ArgMin"))


def _bool_reduction(op: str):
    def lower(cx: Cx, x: Any, dim: Any = None, keepdim: bool = False) -> Value:
        as_int = cx.cast(cx.tensor(x, dtypes.bool_), dtypes.int64)
        return cx.cast(_reduce(cx, op, as_int, dim, keepdim, dtypes.int64), dtypes.bool_)

    lower.__name__ = f"lower_bool_{op.lower()}"
    return lower


lowers("aten.any.dim", "aten.any.dims", "aten.any.default")(_bool_reduction("ReduceMax"))
lowers("aten.all.dim", "aten.all.dims", "aten.all.default")(_bool_reduction("ReduceMin"))


def _count(cx: Cx, v: Value, axes: list[int]) -> Value:
    """Number of elements reduced over `axes`, as a 0-d value of v's dtype."""
    dims = [v.shape[a] for a in axes]
    if all(isinstance(d, int) for d in dims):
        return cx.const(np.asarray(int(np.prod(dims)), v.dtype.np))
    sizes = [cx.dim_size(v, a) for a in axes]
    total = sizes[0]
    for s in sizes[1:]:
        total = cx.emit("Mul", total, s)
    return cx.cast(total, v.dtype)


@lowers("aten.var.correction", "aten.std.correction", "aten.var.dim", "aten.std.dim")
def var(cx: Cx, x: Any, dim: Any = None, unbiased: Any = None, keepdim: bool = False, *,
        correction: Any = None) -> Value:
    v = cx.tensor(x, cx.out_dtype)
    axes = norm_dims(dim, v.type.rank) or list(range(v.type.rank))
    if correction is None:
        correction = 1 if unbiased is None or unbiased is True else 0
    ax = cx.axes(axes)
    centred = cx.emit("Sub", v, cx.emit("ReduceMean", v, ax, keepdims=1))
    squares = cx.emit("ReduceSum", cx.emit("Mul", centred, centred), ax, keepdims=int(bool(keepdim)))
    n = _count(cx, v, axes)
    denom = cx.emit("Max", cx.emit("Sub", n, cx.const(np.asarray(correction, v.dtype.np))),
                    cx.const(np.zeros((), v.dtype.np)))
    out = cx.emit("Div", squares, denom)
    return cx.emit("Sqrt", out) if "std" in cx.meta["torch_op"] else out


@lowers("aten.linalg_vector_norm.default")
def vector_norm(cx: Cx, x: Any, ord: float = 2, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Value:
    if ord == 2:
        return _reduce(cx, "ReduceL2", x, dim, keepdim)
    if ord == 1:
        return _reduce(cx, "ReduceL1", x, dim, keepdim)
    if ord == math.inf:
        return _reduce(cx, "ReduceMax", cx.emit("Abs", cx.value(x)), dim, keepdim)
    raise NotLowerable(f"vector norm of order {ord}")


@lowers("aten.cumsum.default")
def cumsum(cx: Cx, x: Any, dim: int, *, dtype: Any = None) -> Value:
    v = cx.tensor(x, cx.out_dtype)
    return cx.emit("CumSum", v, cx.const(np.asarray(norm_dim(int(dim), v.type.rank), np.int64)))


@lowers("aten.topk.default")
def topk(cx: Cx, x: Any, k: Any, dim: int = -1, largest: bool = True, sorted: bool = True) -> tuple:
    v = cx.value(x)
    kv = cx.emit("Unsqueeze", cx.scalar_i64(k), cx.axes([0]))
    return cx.emit("TopK", v, kv, axis=norm_dim(int(dim), v.type.rank), largest=int(bool(largest)),
                   sorted=1, _outputs=2)
