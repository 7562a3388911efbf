"""Row kernels for the TVM lowerings: one PrimFunc for a whole op over the last axis
(reductions, per-row values, the output), and the float32 exponential as a TIR
expression that LLVM vectorises (libm's `expf` is a scalar call per element).

A row kernel's stages named `ROW_STAGE...` are per-row values, or whole rows the
schedule keeps (schedule_cpu.RowReduction computes them once at the row instead of
inlining them into every reader).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tvm import relax, te, tirx

from requant.backends.tvm.lowering._common import LowerContext, with_shape_expr
from requant.backends.tvm.schedule_cpu import ROW_LANES_STAGE, ROW_STAGE

__all__ = ["OP_PATTERN_OUT_EWISE_FUSABLE", "exp_f32", "lane_reduce", "row_kernel"]

logger = logging.getLogger(__name__)

OP_PATTERN_OUT_EWISE_FUSABLE = 4  # TVM's kOutEWiseFusable: elementwise consumers fuse into the kernel

# Cody-Waite split of ln 2 (the high part exact in 9 bits, so n * hi is exact for |n| < 2^15)
# and the degree-5 minimax polynomial of Cephes' expf for exp(r) - 1 - r on [-ln2/2, ln2/2]
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_LOG2E = 1.44269504088896341
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_EXP_LO = -87.33654  # below, 2^n leaves float32's normal range: the result is 0


def row_kernel(ctx: LowerContext, build: Callable[..., te.Tensor], xs: list[relax.Expr], name: str) -> relax.Expr:
    """One PrimFunc for a whole row op: `build(*placeholders)` returns its output tensor.
    Marked out-elementwise fusable, so an elementwise consumer (a Requantize, a
    Quantize) fuses into it."""
    out = ctx.te(build, *[with_shape_expr(ctx, x) for x in xs], name=name)
    gv = ctx.bb.lookup_binding(out).args[0]
    ctx.bb.update_func(gv, ctx.bb.get()[gv].with_attr("op_pattern", OP_PATTERN_OUT_EWISE_FUSABLE))
    return out


def lane_reduce(rows: list, chunks, lanes: int, value: Callable, reducer: Callable, name: str) -> te.Tensor:
    """`reducer` (te.sum, te.max) of value(r, j) over j = c * lanes + l of each row: per
    lane first (`ROW_LANES_STAGE<name>`, `lanes` independent dependency chains, one
    vector per step of c in the schedule, where one chain per row waits on every step),
    then across the lanes (`ROW_STAGE_<name>`)."""
    c = te.reduce_axis((0, chunks), name=f"c_{name}")
    part = te.compute((*rows, lanes), lambda *i: reducer(value(i[:-1], c * lanes + i[-1]), axis=c),
                      name=f"{ROW_LANES_STAGE}{name}")
    lane = te.reduce_axis((0, lanes), name=f"lane_{name}")
    return te.compute(rows, lambda *r: reducer(part[(*r, lane)], axis=lane), name=f"{ROW_STAGE}_{name}")


def exp_f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp(x) for float32 x in [-87.34, 88.37] within 2 ulp of the true value; 0 below
    (where the true value is subnormal or smaller), exp(88.37) above (where 2^n would
    leave the exponent field; the softmax calls it with x <= 0). x = n ln2 + r with
    |r| <= ln2/2 (n rounded, ln 2 in two parts so that r is exact), exp(r) by the
    polynomial, 2^n put into the exponent field. NaN in gives an unspecified value:
    callers that can see NaN select it out."""
    f32 = "float32"
    # clamped below too: -inf would reach the float -> int conversion
    xc = tirx.max(tirx.min(x, tirx.const(88.37626, f32)), tirx.const(-88.0, f32))
    n = tirx.floor(xc * tirx.const(_LOG2E, f32) + tirx.const(0.5, f32))
    r = xc - n * tirx.const(_LN2_HI, f32) - n * tirx.const(_LN2_LO, f32)
    p = tirx.const(_EXP_POLY[0], f32)
    for c in _EXP_POLY[1:]:
        p = p * r + tirx.const(c, f32)
    y = p * r * r + r + tirx.const(1.0, f32)
    # 2^n as (n + 127) << 23, n in [-126, 127] here
    ni = tirx.max(n.astype("int32"), tirx.const(-126, "int32"))
    scale = tirx.reinterpret(f32, (ni + tirx.const(127, "int32")) << tirx.const(23, "int32"))
    return tirx.Select(xc < tirx.const(_EXP_LO, f32), tirx.const(0.0, f32), y * scale)
