"""Lowerings of MaxPool, AveragePool (ceil_mode, count_include_pad), GlobalAveragePool and
GlobalMaxPool; f16/bf16 pool in float32 and round once. MaxPool's Indices output has no
lowering (a node-level check refuses it). Where Relax's pooled extent differs from the
output shape the IR infers, the result is cropped to the IR's.

A float MaxPool of static shape is one kernel, a reduction over the window's taps with
a max that propagates NaN (the interpreter's semantics). Relax's pool skips NaN, so the
general path adds a second pool over the input's NaN flags and a select: three passes
over the input where the window form makes one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tvm import relax, te, tirx

from requant.backends.tvm.lowering import _nan as nan_aware
from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    Emitter,
    LowerContext,
    dims_of,
    dtype_of,
    from_compute,
    in_dtype,
    out_shape,
    rank_of,
    requires,
    static_int,
    to_compute,
)
from requant.backends.tvm.lowering._window import static_spatial, window_pads
from requant.backends.tvm.schedule_cpu import WINDOW_BLOCK
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


_MAXPOOL = {1: R.nn.max_pool1d, 2: R.nn.max_pool2d, 3: R.nn.max_pool3d}
_AVGPOOL = {1: R.nn.avg_pool1d, 2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d}
_POOL_LAYOUT = {1: "NCW", 2: "NCHW", 3: "NCDHW"}


def _maxpool_check(node: Node) -> str | None:
    if len(node.outputs) > 1:
        return "MaxPool's Indices output has no TVM lowering; drop the output or keep this model on ONNX Runtime"
    return static_spatial(node)


def _pool(table: dict, is_avg: bool) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        a = ctx.attrs(node)
        dt = in_dtype(node)
        x = to_compute(ctx, ins[0], dt)
        n = rank_of(x) - 2
        kernel = [int(k) for k in a["kernel_shape"]]
        pads = window_pads(node, dims_of(x), kernel)
        kw = dict(pool_size=kernel, strides=list(a["strides"] or [1] * n), padding=pads,
                  dilation=list(a["dilations"] or [1] * n), ceil_mode=bool(a["ceil_mode"]), layout=_POOL_LAYOUT[n])
        if is_avg:
            kw["count_include_pad"] = bool(a["count_include_pad"])
        taps_out = None if is_avg else _tap_max_pool(ctx, node, x, kernel, pads, kw)
        if taps_out is not None:
            return from_compute(ctx, taps_out, dt)
        y = ctx.emit(table[n](x, **kw))
        if not is_avg:  # TVM's max pool skips NaN: the interpreter's windows give NaN
            y = ctx.emit(nan_aware.pooled_max(table[n], x, y, **kw))
        shape = out_shape(ctx, node)
        if shape is not None and any(static_int(p) is not None and static_int(p) != s
                                     for p, s in zip(dims_of(y), shape) if isinstance(s, int)):
            y = ctx.emit(R.strided_slice(y, axes=list(range(2, 2 + n)), begin=[0] * n, end=shape[2:]))
        return from_compute(ctx, y, dt)

    return requires(_maxpool_check if not is_avg else static_spatial)(emit)


def _tap_max_pool(ctx: LowerContext, node: Node, x: relax.Expr, kernel: list[int], pads: list[int],
                  window: dict[str, Any]) -> relax.Expr | None:
    """A float max pool as one reduction over the window's taps with a NaN-propagating
    max; padding and taps past the input (ceil_mode) are -inf. None where it does not
    apply (integer tensors, a symbolic dim): the Relax pool and its NaN pass then."""
    shape = out_shape(ctx, node)
    in_dims = [static_int(d) for d in dims_of(x)]
    if (not dtype_of(x).startswith("float") or shape is None
            or any(not isinstance(d, int) for d in shape) or any(d is None for d in in_dims)):
        return None
    n = len(kernel)
    strides, dilations = window["strides"], window["dilation"]
    spatial = in_dims[2:]

    def build(t: te.Tensor) -> te.Tensor:
        low = tirx.const(float("-inf"), t.dtype)
        # NaN wins from either side: acc > v is false for a NaN v, so v is taken
        nan_max = te.comm_reducer(lambda acc, v: tirx.Select(tirx.any(tirx.isnan(acc), acc > v), acc, v),
                                  lambda dtype: tirx.const(float("-inf"), dtype), name="nan_max")
        taps = [te.reduce_axis((0, k), name=f"tap{a}") for a, k in enumerate(kernel)]

        def out(*idx):
            pos = [idx[2 + a] * strides[a] - pads[a] + taps[a] * dilations[a] for a in range(n)]
            inside = tirx.all(*[tirx.all(p >= 0, p < spatial[a]) for a, p in enumerate(pos)])
            clamped = [tirx.max(tirx.min(p, spatial[a] - 1), 0) for a, p in enumerate(pos)]
            # if_then_else reads only when inside (a Select evaluates both branches, and the
            # simplifier drops the clamp from the branch its condition bounds)
            return nan_max(tirx.if_then_else(inside, t[(idx[0], idx[1], *clamped)], low), axis=taps)

        return te.compute([int(d) for d in shape], out, name=f"{WINDOW_BLOCK}_max")

    return ctx.te(build, x, name=f"{WINDOW_BLOCK}_max")


LOWERINGS.add("MaxPool", _pool(_MAXPOOL, False))
LOWERINGS.add("AveragePool", _pool(_AVGPOOL, True))


def _global_pool(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = in_dtype(node)
        x = to_compute(ctx, ins[0], dt)
        return from_compute(ctx, ctx.emit(fn(x, list(range(2, rank_of(x))), True)), dt)

    return emit


LOWERINGS.add("GlobalAveragePool", _global_pool(R.mean))
LOWERINGS.add("GlobalMaxPool", _global_pool(nan_aware.reduce_max))
