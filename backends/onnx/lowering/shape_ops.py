"""ONNX lowering of the shape ops (`requant.ir.ops.shape_ops`): standard ONNX, except
Shape's start/end before opset 15, which become Shape then Slice, and Squeeze with an
axes tensor known to be empty, which squeezes nothing (ONNX's spec and reference) where
ONNX Runtime would squeeze every dim of extent 1: it becomes Identity. (An axes tensor
computed at run time, of unknown length, is exported as it is.)"""

from __future__ import annotations

import logging

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, standard
from requant.ir import dtypes
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers(
    "Reshape", "Transpose", "Unsqueeze", "Flatten", "Expand", "Size",
    "Identity"
)(standard)


@LOWERINGS.lowers("Squeeze")
def _squeeze(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """An empty axes tensor squeezes nothing: Identity (ONNX Runtime would squeeze all)."""
    axes = node.inputs[1] if len(node.inputs) > 1 else None
    if axes is not None and axes.type.shape == (0,):
        ctx.emit("Identity", [ins[0]], outs, name=node.name or None)
        return
    standard(ctx, node, ins, outs)


@LOWERINGS.lowers("Shape")
def _shape(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """Shape's start/end exist from opset 15; before it, Shape then Slice."""
    start, end = node.attrs.get("start"), node.attrs.get("end")
    if ctx.opset >= 15:
        standard(ctx, node, ins, outs)
        return
    if not start and end is None:
        ctx.emit("Shape", ins, outs, name=node.name or None)
        return
    (full,) = ctx.emit("Shape", ins, name=ctx.sub_name(node, "shape"))
    i64 = lambda v, tag: ctx.const(np.array([v], np.int64), dtypes.int64, tag)  # noqa: E731
    stop = np.iinfo(np.int64).max if end is None else int(end)
    ctx.emit("Slice", [full, i64(int(start or 0), "shape_start"), i64(stop, "shape_end"), i64(0, "shape_axis")],
             outs, name=node.name or None)
