"""ONNX lowering of Cast and CastLike (`requant.ir.ops.cast`). Cast pins requant's
semantics where ONNX leaves them open: float -> integer truncates, saturates (to the
range's ends exactly, also where the float type cannot hold the top one) and maps NaN
to 0."""

from __future__ import annotations

import logging

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, scalar_const, standard
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Node

__all__ = ["emit_float_to_int"]

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers("CastLike")(standard)


def _float_bound(value: int, dt: DType) -> np.ndarray | None:
    """The float of dtype `dt` nearest to integer `value` that is not farther from zero
    (so a Clip to it stays inside the integer range); None when every finite value of
    `dt` already is (f16 against i32, ...)."""
    np_t = dt.np
    if abs(value) > float(np.finfo(np.float32 if dt == dtypes.bfloat16 else np_t).max):
        return None
    f = np.array([value], dtype=np.float64).astype(np_t)
    if abs(float(f[0])) > abs(value):
        # one step toward zero: IEEE magnitudes order like their bit patterns
        uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[f.itemsize]
        f = (f.view(uint) - uint(1)).view(np_t)
    return f.reshape(())


@LOWERINGS.lowers("Cast")
def _cast(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """Cast with requant's semantics where ONNX leaves them open: float -> integer
    truncates and saturates (a Clip first; ONNX says "undefined if out of range" and
    ONNX Runtime rounds, not truncates, into int4/uint4, so those go through i8/u8).
    Where the float type cannot hold the top of the range (2^63 - 1 in f64, 2^31 - 1
    in f32) the Clip stops at the float below it, and what lay above that float is
    lifted onto the top; NaN becomes 0 by a Where before the Clip (ONNX Runtime casts
    NaN to the lowest integer). fp8/fp4 sources are widened to f32 first (exact).
    A `FloatFormat` target has no ONNX element type: refused."""
    from requant.ir.dtypes import FloatFormat

    src = node.inputs[0].dtype
    dst = dtypes.dtype(node.attrs["to"])
    if isinstance(dst, FloatFormat):
        raise UnsupportedOpError(
            f"{node.label}: Cast to the parametric float {dst} has no ONNX form (ONNX Runtime would "
            f"keep plain float32); quantize with a standard format (fp8_e4m3, fp4_e2m1, int4) instead"
        )
    if not (src.is_float and dst.is_integer):
        standard(ctx, node, ins, outs)
        return
    emit_float_to_int(ctx, node, ins[0], src, dst, outs[0])


def emit_float_to_int(ctx: EmitContext, node: Node, x: str, src: DType, dst: DType, out: str) -> None:
    """ONNX nodes writing `out`: float `x` (of dtype `src`) as integer dtype `dst` by
    requant's Cast (truncated, saturated, NaN -> 0; `_cast` says how). Helper nodes are
    named after `node`."""
    from requant.ir.dtypes import FloatFormat

    outs = [out]
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    if src in (dtypes.fp8_e4m3, dtypes.fp8_e5m2, dtypes.fp4_e2m1):  # storage formats: exact in f32
        (x,) = ctx.emit("Cast", [x], to=dtype_to_onnx(dtypes.float32), name=n("widen"))
        src = dtypes.float32
    if isinstance(src, FloatFormat):  # exported as the float32 it is held in
        src = dtypes.float32
    (nan,) = ctx.emit("IsNaN", [x], name=n("is_nan"))
    (x,) = ctx.emit("Where", [nan, scalar_const(ctx, 0.0, src, "cast_nan"), x], name=n("nan_to_zero"))
    lo, hi = dst.int_range
    lo_f, hi_f = _float_bound(lo, src), _float_bound(hi, src)
    clipped = x
    if lo_f is not None or hi_f is not None:
        bounds = [None if b is None else ctx.const(b, src, tag) for b, tag in ((lo_f, "cast_lo"), (hi_f, "cast_hi"))]
        (clipped,) = ctx.emit("Clip", [x, *bounds], name=n("saturate"))
    if dst in (dtypes.int4, dtypes.uint4):
        wide = dtypes.int8 if dst == dtypes.int4 else dtypes.uint8
        (clipped,) = ctx.emit("Cast", [clipped], to=dtype_to_onnx(wide), name=n("truncate"))
    if hi_f is None or float(hi_f) >= hi:
        ctx.emit("Cast", [clipped], outs, to=dtype_to_onnx(dst), name=node.name or None)
        return
    # the bound was the float below the top: lift what lay above it onto the top, with
    # Add and Mul (ONNX Runtime has no uint64 Where)
    (y,) = ctx.emit("Cast", [clipped], to=dtype_to_onnx(dst), name=n("cast"))
    (big,) = ctx.emit("Greater", [x, ctx.const(hi_f, src, "cast_hi")], name=n("above_top"))
    (step,) = ctx.emit("Cast", [big], to=dtype_to_onnx(dst), name=n("above_top_int"))
    gap = ctx.const(np.array(hi - int(hi_f), dtype=dst.np), dst, "cast_top_gap")
    (lift,) = ctx.emit("Mul", [step, gap], name=n("lift"))
    ctx.emit("Add", [y, lift], outs, name=node.name or None)
