"""ONNX lowering of the shape ops (`requant.ir.ops.shape_ops`): standard ONNX, except
Shape's start/end before opset 15, which become Shape then Slice."""

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
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Size",
    "Identity"
)(standard)


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
