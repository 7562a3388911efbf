"""ONNX lowering of the broadcasting arithmetic, comparison and logic ops
(`requant.ir.ops.elementwise`): standard ONNX, except BitShift on signed integers,
which ONNX does not define and requant does (wrapping LEFT, arithmetic RIGHT), and Pow
with an integer base, whose overflow ONNX leaves open and requant defines (wrapping for
integer exponents, saturating for float ones), where ONNX Runtime computes a double
power and converts it (INT_MIN past the range, inexact past 2^53)."""

from __future__ import annotations

import logging

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, standard
from requant.backends.onnx.lowering.cast import emit_float_to_int
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers(
    "Add", "Sub", "Mul", "Div", "Mod", "Equal", "Greater", "GreaterOrEqual",
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


@LOWERINGS.lowers("Pow")
def _pow(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """A float base is standard Pow. An integer base (i32, i64) with an integer
    exponent e is square-and-multiply on the bits of |e|, which wraps as requant's Pow
    does: r = prod of p_k over the set bits k of |e|, p_0 = x, p_{k+1} = p_k^2 (a
    constant uniform exponent needs only its own bits). A negative exponent gives
    trunc(1 / x^|e|): x^|e| where |x| = 1, else 0. A float exponent: the power in
    float64, then requant's float -> integer Cast (truncate, saturate)."""
    base, exp = node.inputs
    dt = base.dtype
    if not dt.is_integer:
        standard(ctx, node, ins, outs)
        return
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    if not exp.dtype.is_integer:
        f64 = dtype_to_onnx(dtypes.float64)
        (xf,) = ctx.emit("Cast", [ins[0]], to=f64, name=n("base_f64"))
        (ef,) = ctx.emit("Cast", [ins[1]], to=f64, name=n("exp_f64"))
        (pf,) = ctx.emit("Pow", [xf, ef], name=n("pow_f64"))
        emit_float_to_int(ctx, node, pf, dtypes.float64, dt, outs[0])
        return
    # ONNX's Pow, Mul and Where take no 8/16-bit or unsigned integers: compute those in
    # int64, whose wrapped power has the same low bits, and narrow at the end
    work = dt if dt in (dtypes.int32, dtypes.int64) else dtypes.int64
    x, out = ins[0], outs[0]
    if work != dt:
        (x,) = ctx.emit("Cast", [x], to=dtype_to_onnx(work), name=n("base_i64"))
        out = ctx.fresh(f"{outs[0]}_i64")
    uniform = _uniform_exponent(node)
    if uniform is not None and uniform >= 0:
        _emit_power_chain(ctx, node, x, work, uniform, out)
    else:
        _emit_power_bits(ctx, node, x, work, ins[1], out)
    if work != dt:
        ctx.emit("Cast", [out], outs, to=dtype_to_onnx(dt), name=n("narrow"))


def _uniform_exponent(node: Node) -> int | None:
    """The exponent when it is a constant of one value that does not widen the output."""
    base, exp = node.inputs
    if exp.const is None or base.type.rank is None:
        return None
    e = np.asarray(exp.const)
    if e.size != 1 or e.ndim > base.type.rank:
        return None
    return int(e.reshape(-1)[0])


def _emit_power_chain(ctx: EmitContext, node: Node, x: str, dt: DType, e: int, out: str) -> None:
    """x^e (x of dtype `dt`) for a constant e >= 0 by square-and-multiply (x^0 = x*0 + 1,
    keeping x's shape)."""
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    if e == 0:
        (zero,) = ctx.emit("Mul", [x, ctx.const(np.array(0, dt.np), dt, "pow_zero")], name=n("zero"))
        ctx.emit("Add", [zero, ctx.const(np.array(1, dt.np), dt, "pow_one")], [out], name=node.name or None)
        return
    factors, p, k = [], x, e
    while True:
        if k & 1:
            factors.append(p)
        k >>= 1
        if not k:
            break
        (p,) = ctx.emit("Mul", [p, p], name=n("square"))
    if len(factors) == 1:
        ctx.emit("Identity", [factors[0]], [out], name=node.name or None)
        return
    acc = factors[0]
    for i, f in enumerate(factors[1:], start=2):
        last = i == len(factors)
        (acc,) = ctx.emit("Mul", [acc, f], [out] if last else 1, name=node.name if last and node.name else n("times"))


def _emit_power_bits(ctx: EmitContext, node: Node, x: str, dt: DType, exp_name: str, out: str) -> None:
    """x^e (x of dtype `dt`) for a computed (or non-uniform) integer exponent: one
    square-and-multiply step per bit of the exponent's dtype, then the negative
    exponents."""
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    exp = node.inputs[1]
    i64 = dtypes.int64
    (e,) = ctx.emit("Cast", [exp_name], to=dtype_to_onnx(i64), name=n("exp_i64"))
    (negative,) = ctx.emit("Less", [e, ctx.const(np.array(0, np.int64), i64, "pow_zero_exp")], name=n("negative"))
    (rest,) = ctx.emit("Abs", [e], name=n("abs_exp"))
    two = ctx.const(np.array(2, np.int64), i64, "pow_two")
    one_i64 = ctx.const(np.array(1, np.int64), i64, "pow_one_exp")
    # r starts as x^0 = 1, broadcast to the output's shape through x*0 + 0*e
    (zero,) = ctx.emit("Mul", [x, ctx.const(np.array(0, dt.np), dt, "pow_zero")], name=n("zero"))
    (ezero,) = ctx.emit("Mul", [rest, ctx.const(np.array(0, np.int64), i64, "pow_zero_exp")], name=n("exp_zero"))
    (ezero,) = ctx.emit("Cast", [ezero], to=dtype_to_onnx(dt), name=n("exp_zero_cast"))
    (r,) = ctx.emit("Add", [zero, ezero], name=n("ones_shape"))
    (r,) = ctx.emit("Add", [r, ctx.const(np.array(1, dt.np), dt, "pow_one")], name=n("ones"))
    p = x
    steps = (exp.dtype.bits if exp.dtype.kind == "uint" else exp.dtype.bits - 1)
    for k in range(steps):
        (bit,) = ctx.emit("Equal", [ctx.emit("Mod", [rest, two], name=n("bit"))[0], one_i64], name=n("bit_set"))
        (times,) = ctx.emit("Mul", [r, p], name=n("times"))
        (r,) = ctx.emit("Where", [bit, times, r], name=n("take"))
        if k + 1 < steps:
            (rest,) = ctx.emit("Div", [rest, two], name=n("next_bit"))
            (p,) = ctx.emit("Mul", [p, p], name=n("square"))
    # a negative exponent: trunc(1 / x^|e|) is x^|e| where x is 1 or -1 (the original
    # dtype's -1: an unsigned base has none), else 0
    magnitude = x if node.inputs[0].dtype.kind == "uint" else ctx.emit("Abs", [x], name=n("abs_base"))[0]
    (unit,) = ctx.emit("Equal", [magnitude, ctx.const(np.array(1, dt.np), dt, "pow_unit")], name=n("unit_base"))
    (unit,) = ctx.emit("Not", [unit], name=n("not_unit"))
    (vanish,) = ctx.emit("And", [negative, unit], name=n("vanishes"))
    ctx.emit("Where", [vanish, ctx.const(np.array(0, dt.np), dt, "pow_zero"), r], [out], name=node.name or None)
