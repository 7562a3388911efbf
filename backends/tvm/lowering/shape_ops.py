"""Lowerings of the shape family: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand,
Identity, Shape, Size.

The axes inputs of Squeeze and Unsqueeze must be graph constants (node-level checks,
reported before anything is emitted); so must the shape input of Reshape and Expand,
unless the node's output type knows every dim (ints, or symbols of the graph inputs:
a shape computed from a symbolic batch by Shape -> Gather -> Concat), which then gives
the shape. Squeeze without axes needs a static input shape. A target shape with a 0 extent gives zeros of that shape
(Relax reads a 0 in a shape as "copy this dim"). Shape and Size of static dims are
constants; of symbolic ones, read from the tensor's run-time shape.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from tvm import relax

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    const_ints,
    constant,
    dims_of,
    dtype_of,
    normalize_axis,
    out_shape,
    rank_of,
    requires,
    requires_const,
    requires_const_or_typed_output,
    static_int,
    typed_out_shape,
)
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


@LOWERINGS.lowers("Reshape")
@requires_const_or_typed_output(1)
def _reshape(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    shape = out_shape(ctx, node) if node.inputs[1].const is not None else typed_out_shape(ctx, node)
    if shape is None:
        target = const_ints(node, 1)
        dims = dims_of(x)
        if not ctx.attrs(node)["allowzero"]:
            target = [dims[i] if t == 0 else t for i, t in enumerate(target)]
        shape = target
    if any(static_int(d) == 0 for d in shape):  # Relax reads a 0 in a shape as "copy this dim"
        return ctx.emit(R.zeros(relax.ShapeExpr(shape), dtype_of(x)))
    return ctx.emit(R.reshape(x, shape))


@LOWERINGS.lowers("Flatten")
def _flatten(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    dims = dims_of(x)
    axis = normalize_axis(ctx.attrs(node)["axis"], len(dims))
    lead = 1
    for d in dims[:axis]:
        lead = lead * d
    return ctx.emit(R.reshape(x, [lead, -1])) if axis < len(dims) else ctx.emit(R.reshape(x, [lead, 1]))


def _squeeze_check(node: Node) -> str | None:
    if len(node.inputs) < 2 or node.inputs[1] is None:
        t = node.inputs[0].type
        if not t.is_static:
            return "Squeeze without axes needs a static input shape in the TVM backend; give the axes"
        return None
    if node.inputs[1].const is None:
        return "input axes must be a constant for the TVM backend"
    return None


@LOWERINGS.lowers("Squeeze")
@requires(_squeeze_check)
def _squeeze(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    axes = const_ints(node, 1)
    rank = rank_of(x)
    if axes is None:
        axes = [i for i, d in enumerate(node.inputs[0].type.shape) if d == 1]
    else:
        axes = sorted(normalize_axis(a, rank) for a in axes)
    if not axes:
        return x
    return ctx.emit(R.squeeze(x, axes))


@LOWERINGS.lowers("Unsqueeze")
@requires_const(1)
def _unsqueeze(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    axes = const_ints(node, 1)
    r = rank_of(x) + len(axes)
    axes = sorted(a % r for a in axes)
    if not axes:
        return x
    return ctx.emit(R.expand_dims(x, axes))


@LOWERINGS.lowers("Transpose")
def _transpose(ctx: LowerContext, node: Node, ins: list) -> Any:
    perm = ctx.attrs(node)["perm"]
    rank = rank_of(ins[0])
    perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
    return ctx.emit(R.permute_dims(ins[0], perm))


@LOWERINGS.lowers("Expand")
@requires_const_or_typed_output(1)
def _expand(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    shape = out_shape(ctx, node) if node.inputs[1].const is not None else typed_out_shape(ctx, node)
    if shape is None:
        target = const_ints(node, 1)
        dims = dims_of(x)
        r = max(len(dims), len(target))
        dims = [1] * (r - len(dims)) + dims
        target = [1] * (r - len(target)) + target
        shape = [d if t == 1 else t for d, t in zip(dims, target)]
    return ctx.emit(R.broadcast_to(x, shape))


@LOWERINGS.lowers("Identity")
def _identity(ctx: LowerContext, node: Node, ins: list) -> Any:
    return ins[0]


@LOWERINGS.lowers("Shape")
def _shape_op(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dims = dims_of(ins[0])
    rank = len(dims)
    s = a["start"] + rank if a["start"] < 0 else a["start"]
    e = rank if a["end"] is None else (a["end"] + rank if a["end"] < 0 else a["end"])
    s, e = min(max(s, 0), rank), min(max(e, 0), rank)
    e = max(s, e)
    part = dims[s:e]
    if all(static_int(d) is not None for d in part):
        return constant(np.array([static_int(d) for d in part], np.int64), "int64")
    full = ctx.emit(R.shape_to_tensor(R.shape_of(ins[0])))
    return ctx.emit(R.strided_slice(full, axes=[0], begin=[s], end=[e]))


@LOWERINGS.lowers("Size")
def _size(ctx: LowerContext, node: Node, ins: list) -> Any:
    dims = dims_of(ins[0])
    if all(static_int(d) is not None for d in dims):
        return constant(np.int64(math.prod(static_int(d) for d in dims)), "int64")
    full = ctx.emit(R.astype(R.shape_to_tensor(R.shape_of(ins[0])), "int64"))
    return ctx.emit(R.prod(full))
