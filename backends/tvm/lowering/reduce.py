"""Lowerings of the reductions: ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd,
ReduceL1, ReduceL2, ReduceSumSquare, ReduceLogSum, ReduceLogSumExp, ArgMax, ArgMin,
CumSum, TopK.

Axes inputs must be graph constants; empty axes reduce everything unless
noop_with_empty_axes. f16/bf16 reduce in float32 and round once; integer sums wrap;
integer ReduceMean sums in int64 and truncates the quotient; integer ReduceL2 truncates
the float64 square root. ReduceLogSumExp subtracts the row maximum first (0 where it is
not finite). ArgMax/ArgMin with select_last_index need a static axis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from tvm import relax

from requant.backends.tvm.lowering import _nan as nan_aware
from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    Emitter,
    LowerContext,
    const_ints,
    const_scalar,
    constant,
    dims_of,
    dtype_of,
    from_compute,
    in_dtype,
    normalize_axis,
    rank_of,
    relax_dtype,
    requires,
    requires_const,
    static_int,
    to_compute,
)
from requant.errors import UnsupportedOpError
from requant.ir.dtypes import DType
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


def _reduce_axes(ctx: LowerContext, node: Node, rank: int) -> list[int] | None:
    """The reduced axes, or None for no reduction (noop_with_empty_axes)."""
    axes = const_ints(node, 1)
    if not axes:
        return None if ctx.attrs(node)["noop_with_empty_axes"] else list(range(rank))
    return sorted({a % rank for a in axes})


def _reduction(pre: Callable | None, red: str, post: Callable | None) -> Emitter:
    @requires_const(1)
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = in_dtype(node)
        keep = bool(ctx.attrs(node)["keepdims"])
        x = to_compute(ctx, ins[0], dt)
        axes = _reduce_axes(ctx, node, rank_of(x))
        v = ctx.emit(pre(ctx, x)) if pre is not None else x
        if axes is not None:
            v = ctx.emit(_REDUCERS[red](ctx, v, axes, keep, dt))
        if post is not None:
            v = ctx.emit(post(ctx, v, dt))
        return from_compute(ctx, v, dt)

    return emit


def _int_mean(ctx: LowerContext, v: relax.Expr, axes: list[int], keep: bool, dt: DType) -> relax.Expr:
    if not dt.is_integer:
        return R.mean(v, axes, keep)
    dims = dims_of(v)
    total = ctx.emit(R.sum(R.astype(v, "int64"), axes, keep))
    if all(static_int(dims[a]) is not None for a in axes):
        n = constant(int(math.prod(static_int(dims[a]) for a in axes)), "int64")
    else:
        # the reduced axes' sizes from the run-time shape (not the whole tensor's size)
        sizes = R.astype(R.shape_to_tensor(R.shape_of(v)), "int64")
        n = ctx.emit(R.prod(R.take(sizes, relax.const(np.array(axes, np.int64)), axis=0)))
    return R.astype(R.divide(total, n), relax_dtype(dt))  # TVM's integer divide truncates


_REDUCERS: dict[str, Callable] = {
    "sum": lambda ctx, v, axes, keep, dt: R.sum(v, axes, keep),
    "prod": lambda ctx, v, axes, keep, dt: R.prod(v, axes, keep),
    "mean": _int_mean,
    "max": lambda ctx, v, axes, keep, dt: nan_aware.reduce_max(v, axes, keep),
    "min": lambda ctx, v, axes, keep, dt: nan_aware.reduce_min(v, axes, keep),
}


def _sqrt_post(ctx: LowerContext, v: relax.Expr, dt: DType) -> relax.Expr:
    if dt.is_integer:
        return R.astype(R.trunc(R.sqrt(R.astype(v, "float64"))), dtype_of(v))
    return R.sqrt(v)


LOWERINGS.add("ReduceSum", _reduction(None, "sum", None))
LOWERINGS.add("ReduceMean", _reduction(None, "mean", None))
LOWERINGS.add("ReduceMax", _reduction(None, "max", None))
LOWERINGS.add("ReduceMin", _reduction(None, "min", None))
LOWERINGS.add("ReduceProd", _reduction(None, "prod", None))
LOWERINGS.add("ReduceL1", _reduction(lambda ctx, v: R.abs(v), "sum", None))
LOWERINGS.add("ReduceL2", _reduction(lambda ctx, v: R.multiply(v, v), "sum", _sqrt_post))
LOWERINGS.add("ReduceSumSquare", _reduction(lambda ctx, v: R.multiply(v, v), "sum", None))
LOWERINGS.add("ReduceLogSum", _reduction(None, "sum", lambda ctx, v, dt: R.log(v)))


@LOWERINGS.lowers("ReduceLogSumExp")
@requires_const(1)
def _log_sum_exp(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = in_dtype(node)
    keep = bool(ctx.attrs(node)["keepdims"])
    x = to_compute(ctx, ins[0], dt)
    axes = _reduce_axes(ctx, node, rank_of(x))
    if axes is None:
        return ins[0]
    m = ctx.emit(R.max(x, axes, True))
    m = ctx.emit(R.where(R.isfinite(m), m, constant(0, dtype_of(m))))
    s = ctx.emit(R.add(R.log(R.sum(R.exp(R.subtract(x, m)), axes, True)), m))
    if not keep:
        s = ctx.emit(R.squeeze(s, axes))
    return from_compute(ctx, s, dt)


def _arg(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        a = ctx.attrs(node)
        x = ins[0]
        dims = dims_of(x)
        axis = normalize_axis(int(a["axis"]), len(dims))
        keep = bool(a["keepdims"])
        if a["select_last_index"]:
            idx = ctx.emit(R.astype(nan_aware.arg_reduce(fn, ctx.emit(R.flip(x, axis)), axis, keep), "int64"))
            n = dims[axis]
            last = constant(static_int(n) - 1, "int64") if static_int(n) is not None else None
            if last is None:
                raise UnsupportedOpError(f"{node.label}: select_last_index needs a static axis in the TVM backend")
            return ctx.emit(R.subtract(last, idx))
        return ctx.emit(R.astype(nan_aware.arg_reduce(fn, x, axis, keep), "int64"))

    return emit


LOWERINGS.add("ArgMax", _arg(R.argmax))
LOWERINGS.add("ArgMin", _arg(R.argmin))


def _cumsum_check(node: Node) -> str | None:
    if node.inputs[1].const is None:
        return "input axis must be a constant for the TVM backend"
    return None


@LOWERINGS.lowers("CumSum")
@requires(_cumsum_check)
def _cumsum(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = in_dtype(node)
    x = to_compute(ctx, ins[0], dt)
    axis = int(const_scalar(node, 1)) % rank_of(x)
    if a["reverse"]:
        x = ctx.emit(R.flip(x, axis))
    y = ctx.emit(R.cumsum(x, axis=axis, dtype=dtype_of(x), exclusive=bool(a["exclusive"])))
    if a["reverse"]:
        y = ctx.emit(R.flip(y, axis))
    return from_compute(ctx, y, dt)


@LOWERINGS.lowers("TopK")
@requires_const(1)
def _topk(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    k = int(const_scalar(node, 1))
    axis = normalize_axis(int(a["axis"]), rank_of(ins[0]))
    tup = ctx.emit(R.topk(ins[0], k=k, axis=axis, ret_type="both", largest=bool(a["largest"]), dtype="int64"))
    return [ctx.emit(relax.TupleGetItem(tup, 0)), ctx.emit(relax.TupleGetItem(tup, 1))]
