"""Reductions along axes (ONNX opset 18 forms, axes as an optional i64 input):
ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL1, ReduceL2,
ReduceSumSquare, ReduceLogSum, ReduceLogSumExp; and ArgMax, ArgMin, CumSum, TopK.

Axes omitted or empty reduce every axis unless `noop_with_empty_axes=1`, which skips
the reduction but still applies the elementwise part (ReduceSumSquare squares,
ReduceL1/L2 take |x|, ReduceLogSum takes log). Empty reductions give ONNX's identities
(0 for sums, 1 for ReduceProd, -inf / the dtype minimum for ReduceMax, +inf / maximum
for ReduceMin).

Integer semantics: ReduceSum, ReduceProd, ReduceSumSquare, ReduceL1 and CumSum wrap in
the input dtype; ReduceMean sums in int64 and divides with truncation toward zero;
ReduceL2 takes the float64 root and truncates. Floats accumulate in float32 (f16/bf16)
or their own dtype (f32, f64). ArgMax/ArgMin give i64 and the first extreme index
(the last with select_last_index=1). TopK always returns its results sorted (allowed
for sorted=0), ties broken by the lower index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.ops._common import attr_int, check_input, compute_dtype, const_ints, const_scalar
from requant.ir.registry import InferContext, define_op
from requant.ir.shapes import normalize_axes, normalize_axis
from requant.ir.types import TensorType

__all__ = ["is_spatial_mean"]


def _infer_reduce(cls: str):
    def infer(ctx: InferContext) -> list[TensorType]:
        x = check_input(ctx, 0, cls)
        keep = attr_int(ctx, "keepdims", (0, 1))
        noop = attr_int(ctx, "noop_with_empty_axes", (0, 1))
        axes: list[int] | None = None
        known = True
        n = None
        if ctx.input(1) is not None:
            t = check_input(ctx, 1, "index")
            if t.dtype != dtypes.int64:
                raise ctx.fail(f"axes must be i64, got {t.dtype}")
            if t.rank is not None and t.rank != 1:
                raise ctx.fail(f"axes must be 1-D, got {t}")
            axes = const_ints(ctx, 1)
            known = axes is not None
            n = len(axes) if axes is not None else (t.shape[0] if t.shape is not None else None)
        if x.shape is None:
            return [TensorType(None, x.dtype)]
        if not known:
            if keep:
                return [TensorType(tuple(1 if d == 1 else None for d in x.shape), x.dtype)]
            return [TensorType(None if not isinstance(n, int) or n == 0 else (None,) * (x.rank - n), x.dtype)]
        if not axes:
            if noop:
                return [x]
            axes = list(range(x.rank))
        axes = normalize_axes(axes, x.rank, ctx.schema.name)
        if keep:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return [TensorType(shape, x.dtype)]

    return infer


def _axes(ins, attrs, x) -> tuple[int, ...] | None:
    """The axes to reduce, or None for 'no reduction' (noop_with_empty_axes)."""
    axes = ins[1] if len(ins) > 1 and ins[1] is not None else None
    if axes is None or len(axes) == 0:
        return None if attrs["noop_with_empty_axes"] else tuple(range(x.ndim))
    return tuple(int(a) % x.ndim for a in axes)


def _reduce_kernel(pre: Callable | None, red: str, post: Callable | None):
    """Reduction = elementwise `pre`, then `red` over the axes, then elementwise `post`."""

    def kernel(ins: list, attrs: dict, outs: list) -> Any:
        x = ins[0]
        is_int = np.issubdtype(x.dtype, np.integer)
        xc = x if is_int else x.astype(compute_dtype(x), copy=False)
        axes = _axes(ins, attrs, x)
        keep = bool(attrs["keepdims"])
        with np.errstate(all="ignore"):
            v = pre(xc) if pre is not None else xc
            if axes is not None:
                v = _REDUCERS[red](v, axes, keep)
            if post is not None:
                v = post(v)
        return np.asarray(v).astype(x.dtype)

    return kernel


def _extreme(v: np.ndarray, fn, low: bool):
    if np.issubdtype(v.dtype, np.integer):
        info = np.iinfo(v.dtype)
        return info.min if low else info.max
    return -np.inf if low else np.inf


def _int_mean(v, axes, keep):
    if not np.issubdtype(v.dtype, np.integer):
        return np.mean(v, axis=axes, keepdims=keep)
    total = np.sum(v, axis=axes, keepdims=keep, dtype=np.int64)
    count = int(np.prod([v.shape[a] for a in axes], dtype=np.int64))
    q = np.abs(total) // count
    return np.where(total < 0, -q, q)


_REDUCERS: dict[str, Callable] = {
    "sum": lambda v, axes, keep: np.sum(v, axis=axes, keepdims=keep, dtype=v.dtype),
    "prod": lambda v, axes, keep: np.prod(v, axis=axes, keepdims=keep, dtype=v.dtype),
    "mean": _int_mean,
    "max": lambda v, axes, keep: np.max(v, axis=axes, keepdims=keep, initial=_extreme(v, np.max, True)),
    "min": lambda v, axes, keep: np.min(v, axis=axes, keepdims=keep, initial=_extreme(v, np.min, False)),
}


def _sqrt(v):
    if np.issubdtype(v.dtype, np.integer):
        return np.trunc(np.sqrt(v.astype(np.float64)))
    return np.sqrt(v)


def _log_sum_exp(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    xc = x.astype(compute_dtype(x), copy=False)
    axes = _axes(ins, attrs, x)
    if axes is None:
        return x.copy()
    keep = bool(attrs["keepdims"])
    with np.errstate(all="ignore"):
        m = np.max(xc, axis=axes, keepdims=True, initial=-np.inf)
        m = np.where(np.isfinite(m), m, 0).astype(xc.dtype)
        s = np.log(np.sum(np.exp(xc - m), axis=axes, keepdims=True)) + m
    return (s if keep else np.squeeze(s, axis=axes)).astype(x.dtype)


_ATTRS = {"keepdims": 1, "noop_with_empty_axes": 0}
for _name, _cls, _kernel in (
    ("ReduceSum", "numeric", _reduce_kernel(None, "sum", None)),
    ("ReduceMean", "numeric", _reduce_kernel(None, "mean", None)),
    ("ReduceMax", "numeric", _reduce_kernel(None, "max", None)),
    ("ReduceMin", "numeric", _reduce_kernel(None, "min", None)),
    ("ReduceProd", "numeric", _reduce_kernel(None, "prod", None)),
    ("ReduceL1", "numeric", _reduce_kernel(np.abs, "sum", None)),
    ("ReduceL2", "numeric", _reduce_kernel(lambda v: v * v, "sum", _sqrt)),
    ("ReduceSumSquare", "numeric", _reduce_kernel(lambda v: v * v, "sum", None)),
    ("ReduceLogSum", "float", _reduce_kernel(None, "sum", np.log)),
    ("ReduceLogSumExp", "float", _log_sum_exp),
):
    define_op(
        _name,
        inputs=("data", "axes?"),
        outputs=("reduced",),
        attrs=dict(_ATTRS),
        infer=_infer_reduce(_cls),
        kernel=_kernel,
    )


def _infer_arg(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "numeric")
    axis = attr_int(ctx, "axis")
    keep = attr_int(ctx, "keepdims", (0, 1))
    attr_int(ctx, "select_last_index", (0, 1))
    if x.shape is None:
        return [TensorType(None, dtypes.int64)]
    a = normalize_axis(axis, x.rank, ctx.schema.name)
    shape = tuple(1 if i == a else d for i, d in enumerate(x.shape)) if keep else x.shape[:a] + x.shape[a + 1 :]
    return [TensorType(shape, dtypes.int64)]


def _arg(fn):
    def kernel(ins: list, attrs: dict, outs: list) -> Any:
        x = ins[0]
        if x.dtype.kind == "V":
            x = x.astype(np.float32)
        axis = attrs["axis"] % x.ndim
        if attrs["select_last_index"]:
            idx = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            idx = fn(x, axis=axis)
        if attrs["keepdims"]:
            idx = np.expand_dims(idx, axis)
        return idx.astype(np.int64)

    return kernel


_ARG_ATTRS = {"axis": 0, "keepdims": 1, "select_last_index": 0}
define_op("ArgMax", inputs=("data",), outputs=("reduced",), attrs=dict(_ARG_ATTRS), infer=_infer_arg, kernel=_arg(np.argmax))
define_op("ArgMin", inputs=("data",), outputs=("reduced",), attrs=dict(_ARG_ATTRS), infer=_infer_arg, kernel=_arg(np.argmin))


def _infer_cumsum(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "numeric")
    a = check_input(ctx, 1, "index")
    attr_int(ctx, "exclusive", (0, 1))
    attr_int(ctx, "reverse", (0, 1))
    if a.shape is not None and not (a.rank == 0 or (a.rank == 1 and a.shape[0] in (1, None))):
        raise ctx.fail(f"axis must be a scalar, got {a}")
    axis = const_scalar(ctx, 1)
    if axis is not None and x.rank is not None:
        normalize_axis(int(axis), x.rank, "CumSum")
    return [x]


def _cumsum(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    axis = int(ins[1].reshape(())) % x.ndim
    xc = x if np.issubdtype(x.dtype, np.integer) else x.astype(compute_dtype(x))
    if attrs["reverse"]:
        xc = np.flip(xc, axis)
    with np.errstate(over="ignore"):
        y = np.cumsum(xc, axis=axis, dtype=xc.dtype)
    if attrs["exclusive"]:
        y = np.concatenate([np.zeros_like(np.take(y, [0], axis=axis)), np.take(y, range(x.shape[axis] - 1), axis=axis)], axis=axis)
    if attrs["reverse"]:
        y = np.flip(y, axis)
    return y.astype(x.dtype)


define_op(
    "CumSum",
    inputs=("x", "axis"),
    outputs=("y",),
    attrs={"exclusive": 0, "reverse": 0},
    infer=_infer_cumsum,
    kernel=_cumsum,
)


def _infer_topk(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "numeric")
    k = ctx.inputs[1]
    if k.dtype != dtypes.int64:
        raise ctx.fail(f"K must be i64, got {k.dtype}")
    if k.shape is not None and not (k.rank == 1 and k.shape[0] in (1, None)):
        raise ctx.fail(f"K must be a 1-D tensor of one value, got {k}")
    axis = attr_int(ctx, "axis")
    attr_int(ctx, "largest", (0, 1))
    attr_int(ctx, "sorted", (0, 1))
    kv = const_scalar(ctx, 1)
    if x.shape is None:
        return [TensorType(None, x.dtype), TensorType(None, dtypes.int64)]
    a = normalize_axis(axis, x.rank, "TopK")
    if kv is not None:
        if kv < 0 or (isinstance(x.shape[a], int) and kv > x.shape[a]):
            raise ctx.fail(f"K={kv} out of range for axis {a} of {x}")
    shape = x.shape[:a] + (kv,) + x.shape[a + 1 :]
    return [TensorType(shape, x.dtype), TensorType(shape, dtypes.int64)]


def _topk(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    k = int(ins[1].reshape(-1)[0])
    axis = attrs["axis"] % x.ndim
    xs = x.astype(np.float32) if x.dtype.kind == "V" else x
    n = x.shape[axis]
    if attrs["largest"]:
        # stable descending order with ties by ascending index
        order = n - 1 - np.flip(np.argsort(np.flip(xs, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(xs, axis=axis, kind="stable")
    idx = np.take(order, range(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


define_op(
    "TopK",
    inputs=("X", "K"),
    outputs=("Values", "Indices"),
    attrs={"axis": -1, "largest": 1, "sorted": 1},
    infer=_infer_topk,
    kernel=_topk,
)


def is_spatial_mean(node: Any) -> bool:
    """Whether IR node `node` is a ReduceMean of a float rank-4 value over axes 2 and 3
    with keepdims: global average pooling of an NCHW map (torch's adaptive_avg_pool2d(x,
    1), squeeze-and-excite pooling), which backends run as such."""
    if node.op != "ReduceMean" or not node.inputs:
        return False
    x = node.inputs[0]
    if x is None or x.type.rank != 4 or not x.dtype.is_float or int(node.attrs.get("keepdims", 1)) != 1:
        return False
    axes_value = node.inputs[1] if len(node.inputs) > 1 else None
    if axes_value is not None:
        if axes_value.const is None:
            return False
        axes = [int(a) for a in np.asarray(axes_value.const).reshape(-1)]
    else:
        axes = [int(a) for a in node.attrs.get("axes", [])]
    return sorted(a % 4 for a in axes) == [2, 3]
