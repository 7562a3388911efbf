"""ONNX lowering of the broadcasting arithmetic, comparison and logic ops
(`requant.ir.ops.elementwise`): standard ONNX, except BitShift on signed integers,
which ONNX does not define and requant does (wrapping LEFT, arithmetic RIGHT)."""

from __future__ import annotations

import logging

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, standard
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers(
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Greater", "GreaterOrEqual",
    "Less", "LessOrEqual", "And", "Or", "Xor", "Where", "Max", "Min", "Sum", "Mean"
)(standard)


@LOWERINGS.lowers("BitShift")
def _bitshift(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """ONNX BitShift takes unsigned integers only; requant also shifts signed ones:
    LEFT wraps (shift the same bits as unsigned), RIGHT is arithmetic
    (asr(x, s) = ((x + 2^(b-1)) as unsigned >> s) - 2^(b-1-s)).

    A count outside [0, b) shifts everything out. LEFT: an unsigned shift by b or more
    gives 0 in ONNX Runtime as in requant (a negative count, read as unsigned, is such a
    count). RIGHT: a signed value shifted out is -1 or 0, which is asr(x, b-1), so the
    count (read as unsigned, which makes a negative one huge) is clamped to b-1."""
    dt = node.inputs[0].dtype
    if dt.kind == "uint":
        standard(ctx, node, ins, outs)
        return
    if dt.kind != "int" or dt.bits not in (8, 16, 32, 64):
        raise UnsupportedOpError(f"{node.label}: BitShift on {dt} has no ONNX form")
    udt = dtypes.dtype(f"u{dt.bits}")
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    direction = node.attrs.get("direction", "LEFT")
    if direction == "LEFT":
        (s,) = ctx.emit("Cast", [ins[1]], to=dtype_to_onnx(udt), name=n("shift_u"))
        (xu,) = ctx.emit("Cast", [ins[0]], to=dtype_to_onnx(udt), name=n("x_u"))
        (y,) = ctx.emit("BitShift", [xu, s], direction="LEFT", name=n("shift"))
        ctx.emit("Cast", [y], outs, to=dtype_to_onnx(dt), name=node.name or None)
        return
    # RIGHT: clamp the count, bias into the unsigned range, shift logically, remove the
    # shifted bias (ONNX Runtime has no uint16 Min: a 16-bit count is clamped in uint32)
    cdt = dtypes.uint32 if dt.bits == 16 else udt
    (s,) = ctx.emit("Cast", [ins[1]], to=dtype_to_onnx(cdt), name=n("shift_u"))
    (s,) = ctx.emit("Min", [s, ctx.const(np.array(dt.bits - 1, dtype=cdt.np), cdt, "asr_max_shift")], name=n("clamp"))
    if cdt != udt:
        (s,) = ctx.emit("Cast", [s], to=dtype_to_onnx(udt), name=n("shift_narrow"))
    bias_u = ctx.const(np.array(1 << (dt.bits - 1), dtype=udt.np), udt, "asr_bias")
    (xu,) = ctx.emit("Cast", [ins[0]], to=dtype_to_onnx(udt), name=n("x_u"))
    (xb,) = ctx.emit("Add", [xu, bias_u], name=n("bias"))
    (y,) = ctx.emit("BitShift", [xb, s], direction="RIGHT", name=n("shift"))
    (bias_s,) = ctx.emit("BitShift", [bias_u, s], direction="RIGHT", name=n("bias_shift"))
    (d,) = ctx.emit("Sub", [y, bias_s], name=n("unbias"))
    ctx.emit("Cast", [d], outs, to=dtype_to_onnx(dt), name=node.name or None)
