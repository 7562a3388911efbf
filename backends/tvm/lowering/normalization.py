"""Lowerings of LayerNormalization (with its Mean and InvStdDev outputs),
RMSNormalization, BatchNormalization (inference), InstanceNormalization and
GroupNormalization.

A float32 LayerNormalization over the last axis (Y only) is one row kernel
(`_row_layer_norm`); the others are Relax ops. Layer, RMS and Group norm compute their
statistics in stash_type (float32 or float64), round the normalized values to X's
dtype, then apply scale and bias in X's dtype (f16/bf16: each op in float32, rounded
once), as the reference kernels do; Batch and Instance norm compute in X's compute
dtype and round once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tvm import relax, te, tirx

from requant.backends.tvm.lowering._common import (
    HALF_FLOATS,
    LOWERINGS,
    LowerContext,
    as_dtype,
    constant,
    dims_of,
    dtype_of,
    from_compute,
    in_dtype,
    normalize_axis,
    rank_of,
    relax_dtype,
    to_compute,
)
from requant.backends.tvm.lowering._row import lane_reduce, row_kernel
from requant.backends.tvm.schedule_cpu import ROW_STAGE
from requant.ir.dtypes import DType
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


def _stash(ctx: LowerContext, node: Node) -> str:
    return {1: "float32", 11: "float64"}[int(ctx.attrs(node)["stash_type"])]


def _normalized(ctx: LowerContext, node: Node, x: relax.Expr) -> tuple[dict, str, list[int], relax.Expr]:
    """(attributes, stash dtype, the axes from `axis` on, X in the stash dtype) of a
    LayerNormalization / RMSNormalization."""
    a = ctx.attrs(node)
    st = _stash(ctx, node)
    rank = rank_of(x)
    return a, st, list(range(normalize_axis(int(a["axis"]), rank), rank)), as_dtype(ctx, x, st)


def _row_layer_norm_applies(node: Node, dt: DType, st: str, axes: list[int]) -> bool:
    """A float32 LayerNormalization over a static last axis, Y only, with a scale (and
    bias) of that axis's length: `_row_layer_norm`."""
    x = node.inputs[0].type
    n = x.shape[-1] if x.shape else None
    affine = [v.type.shape for v in node.inputs[1:3] if v is not None]
    return (dt.name == "float32" and st == "float32" and len(node.outputs) == 1 and isinstance(n, int)
            and axes == [x.rank - 1] and all(shape is not None and list(shape) in ([n], [1, n]) for shape in affine))


def _row_layer_norm(ctx: LowerContext, node: Node, ins: list, eps: float) -> relax.Expr:
    """LayerNormalization over the last axis as one row kernel (as Relax ops it was
    three kernels, each a pass over the rows): the mean and the variance about it (two
    passes over the row, as the reference computes them; each sum split over the widest
    of 16 / 8 / 4 lanes dividing the row, independent chains the core overlaps), the
    inverse standard deviation, then (x - mean) * inv * scale + bias."""
    has_bias = len(ins) > 2 and ins[2] is not None

    def build(x: te.Tensor, scale: te.Tensor, *bias: te.Tensor) -> te.Tensor:
        *rows, n = x.shape
        n = int(n)
        lanes = next(w for w in (16, 8, 4, 1) if n % w == 0)
        chunks = n // lanes
        f32 = "float32"
        affine = lambda t, j: t[(0, j) if len(t.shape) == 2 else (j,)]  # noqa: E731

        total = lane_reduce(rows, chunks, lanes, lambda r, j: x[(*r, j)], te.sum, "sum")
        mean = te.compute(rows, lambda *r: total[r] / tirx.const(n, f32), name=f"{ROW_STAGE}_mean")
        squares = lane_reduce(rows, chunks, lanes, lambda r, j: (x[(*r, j)] - mean[r]) * (x[(*r, j)] - mean[r]),
                              te.sum, "squares")
        inv = te.compute(rows, lambda *r: tirx.const(1.0, f32) / tirx.sqrt(
            squares[r] / tirx.const(n, f32) + tirx.const(eps, f32)), name=f"{ROW_STAGE}_inv")

        def out(*i):
            y = (x[i] - mean[i[:-1]]) * inv[i[:-1]] * affine(scale, i[-1])
            return y + affine(bias[0], i[-1]) if bias else y

        return te.compute(x.shape, out, name="layer_norm")

    return row_kernel(ctx, build, list(ins[:3] if has_bias else ins[:2]), "layer_norm")


@LOWERINGS.lowers("LayerNormalization")
def _layer_norm(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = in_dtype(node)
    a, st, axes, xs = _normalized(ctx, node, ins[0])
    if _row_layer_norm_applies(node, dt, st, axes):
        return [_row_layer_norm(ctx, node, ins, float(a["epsilon"]))]
    mean = ctx.emit(R.mean(xs, axes, True))
    d = ctx.emit(R.subtract(xs, mean))
    var = ctx.emit(R.mean(R.multiply(d, d), axes, True))
    inv = ctx.emit(R.divide(constant(1, st), R.sqrt(R.add(var, constant(a["epsilon"], st)))))
    y = ctx.emit(R.multiply(d, inv))
    y = from_compute(ctx, y, dt)
    y = _half_op(ctx, R.multiply, y, ins[1], dt)
    if len(ins) > 2 and ins[2] is not None:
        y = _half_op(ctx, R.add, y, ins[2], dt)
    return [y, mean, inv][: len(node.outputs)]


def _half_op(ctx: LowerContext, fn: Callable, a: relax.Expr, b: relax.Expr, dt: DType) -> relax.Expr:
    """One binary op in X's dtype (f16/bf16: computed in float32, rounded once)."""
    if dt in HALF_FLOATS:
        return ctx.emit(R.astype(fn(R.astype(a, "float32"), R.astype(b, "float32")), relax_dtype(dt)))
    return ctx.emit(fn(a, b))


@LOWERINGS.lowers("RMSNormalization")
def _rms_norm(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = in_dtype(node)
    a, st, axes, xs = _normalized(ctx, node, ins[0])
    ms = ctx.emit(R.mean(R.multiply(xs, xs), axes, True))
    y = ctx.emit(R.divide(xs, R.sqrt(R.add(ms, constant(a["epsilon"], st)))))
    y = from_compute(ctx, y, dt)
    return _half_op(ctx, R.multiply, y, ins[1], dt)


def _channel(ctx: LowerContext, p: relax.Expr, rank: int, ct: str) -> relax.Expr:
    return ctx.emit(R.reshape(as_dtype(ctx, p, ct), [1, -1] + [1] * (rank - 2)))


@LOWERINGS.lowers("BatchNormalization")
def _batch_norm(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = in_dtype(node)
    x = to_compute(ctx, ins[0], dt)
    ct, rank = dtype_of(x), rank_of(x)
    scale, b, mean, var = (_channel(ctx, p, rank, ct) for p in ins[1:5])
    inv = ctx.emit(R.divide(constant(1, ct), R.sqrt(R.add(var, constant(a["epsilon"], ct)))))
    y = ctx.emit(R.add(R.multiply(R.multiply(R.subtract(x, mean), inv), scale), b))
    return from_compute(ctx, y, dt)


@LOWERINGS.lowers("InstanceNormalization")
def _instance_norm(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = in_dtype(node)
    x = to_compute(ctx, ins[0], dt)
    ct, rank = dtype_of(x), rank_of(x)
    axes = list(range(2, rank))
    mean = ctx.emit(R.mean(x, axes, True))
    d = ctx.emit(R.subtract(x, mean))
    var = ctx.emit(R.mean(R.multiply(d, d), axes, True))
    y = ctx.emit(R.divide(d, R.sqrt(R.add(var, constant(a["epsilon"], ct)))))
    y = ctx.emit(R.add(R.multiply(y, _channel(ctx, ins[1], rank, ct)), _channel(ctx, ins[2], rank, ct)))
    return from_compute(ctx, y, dt)


@LOWERINGS.lowers("GroupNormalization")
def _group_norm(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = in_dtype(node)
    st = _stash(ctx, node)
    x = ins[0]
    dims = dims_of(x)
    rank = len(dims)
    g = int(a["num_groups"])
    xs = ctx.emit(R.reshape(as_dtype(ctx, x, st), [dims[0], g, -1]))
    mean = ctx.emit(R.mean(xs, [2], True))
    d = ctx.emit(R.subtract(xs, mean))
    var = ctx.emit(R.mean(R.multiply(d, d), [2], True))
    y = ctx.emit(R.divide(d, R.sqrt(R.add(var, constant(a["epsilon"], st)))))
    y = as_dtype(ctx, ctx.emit(R.reshape(y, dims)), relax_dtype(dt))
    y = _half_op(ctx, R.multiply, y, ctx.emit(R.reshape(ins[1], [1, -1] + [1] * (rank - 2))), dt)
    return _half_op(ctx, R.add, y, ctx.emit(R.reshape(ins[2], [1, -1] + [1] * (rank - 2))), dt)
