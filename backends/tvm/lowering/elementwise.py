"""Lowerings of the elementwise family: Add, Sub, Mul, Div, Pow, Mod, BitShift, the
comparisons, And/Or/Xor, Where, and the variadic Max, Min, Sum, Mean.

- f16/bf16 arithmetic computes in float32 and rounds once; integer arithmetic wraps.
- Integer Div truncates toward zero (TVM's integer divide, as requant's Div); division by
  zero is undefined behaviour in TVM, where the interpreter raises.
- Mod is C fmod (the sign of the dividend) with fmod=1, floor mod otherwise.
- Integer Pow is square-and-multiply in TE, exact with wrapping; a negative exponent
  gives 1, -1 or 0 (the truncated reciprocal); a float exponent on an integer base
  computes in float64, truncated and saturated by Cast's rules.
- BitShift by a count outside [0, bits) gives 0 (a signed right shift: the sign fill).
- bool comparisons compare as int8 (LLVM rejects TVM's i1 comparisons).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import tvm
from tvm import relax, tirx

from requant.backends.tvm.lowering import _nan as nan_aware
from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    Emitter,
    LowerContext,
    as_dtype,
    broadcast_all,
    compute_dtype,
    constant,
    dtype_of,
    elementwise_te,
    from_compute,
    in_dtype,
    relax_dtype,
    to_compute,
)
from requant.backends.tvm.lowering.cast import trunc_saturate
from requant.ir import dtypes
from requant.ir.graph import Node

__all__ = ["binary"]

logger = logging.getLogger(__name__)

R = relax.op


def binary(fn: Callable) -> Emitter:
    """`fn(a, b)` on the two operands in their compute dtype, rounded once to their dtype
    (the arithmetic ops, and MatMul)."""

    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = in_dtype(node)
        a, b = (to_compute(ctx, x, dt) for x in ins[:2])
        return from_compute(ctx, ctx.emit(fn(a, b)), dt)

    return emit


# TVM's integer divide truncates toward zero, as requant's Div
LOWERINGS.add("Add", binary(R.add))
LOWERINGS.add("Sub", binary(R.subtract))
LOWERINGS.add("Mul", binary(R.multiply))
LOWERINGS.add("Div", binary(R.divide))


def _compare(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        if in_dtype(node) == dtypes.bool_:  # LLVM rejects TVM's i1 comparisons: compare as int8
            return ctx.emit(fn(R.astype(ins[0], "int8"), R.astype(ins[1], "int8")))
        return ctx.emit(fn(ins[0], ins[1]))

    return emit


LOWERINGS.add("Equal", _compare(R.equal))
LOWERINGS.add("Less", _compare(R.less))
LOWERINGS.add("LessOrEqual", _compare(R.less_equal))
LOWERINGS.add("Greater", _compare(R.greater))
LOWERINGS.add("GreaterOrEqual", _compare(R.greater_equal))


@LOWERINGS.lowers("Mod")
def _mod(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    fn = R.mod if a["fmod"] else R.floor_mod  # mod: C fmod (sign of the dividend)
    return ctx.emit(fn(ins[0], ins[1]))


@LOWERINGS.lowers("Pow")
def _pow(ctx: LowerContext, node: Node, ins: list) -> Any:
    base_dt, exp_dt = in_dtype(node, 0), in_dtype(node, 1)
    x, y = ins
    if base_dt.is_float:
        ct = compute_dtype(base_dt)
        return from_compute(ctx, ctx.emit(R.power(as_dtype(ctx, x, ct), as_dtype(ctx, y, ct))), base_dt)
    xs, ys = broadcast_all(ctx, [x, ctx.emit(R.astype(y, "float64")) if exp_dt.is_float else y])
    out_dt = relax_dtype(base_dt)
    if exp_dt.is_float:
        def float_exp(a: Any, e: Any) -> Any:
            return trunc_saturate(tirx.power(a.astype("float64"), e), base_dt)

        return elementwise_te(ctx, float_exp, [xs, ys], out_dt, "pow_int_float")
    bits = min(exp_dt.bits, 64)

    edt = dtype_of(ys)

    steps = bits - 1 if exp_dt.is_signed else bits
    chunk = 8  # squarings per TE stage: longer chains make TVM's simplifier blow up

    def chain(i0: int, n: int, result: Any, sq: Any, k: Any) -> Any:
        """result * sq^(bits i0 .. i0+n of k), by square-and-multiply with Lets."""
        if n == 0:
            return result
        bit = ((k >> tirx.const(i0, edt)) & tirx.const(1, edt)) == tirx.const(1, edt)
        r_next, sq_next = tirx.Var(f"r{i0}", out_dt), tirx.Var(f"s{i0}", out_dt)
        body = chain(i0 + 1, n - 1, r_next, sq_next, k)
        return tirx.Let(r_next, tirx.Select(bit, result * sq, result), tirx.Let(sq_next, sq * sq, body))

    def positive(e: Any) -> Any:
        return tirx.Select(e < tirx.const(0, edt), tirx.const(0, edt), e)

    result = ctx.emit(R.ones_like(xs))
    base = xs
    for lo in range(0, steps, chunk):
        n = min(chunk, steps - lo)
        result = elementwise_te(ctx, lambda r, b, e, lo=lo, n=n: chain(lo, n, r, b, positive(e)), [result, base, ys],
                                out_dt, "pow_int")
        if lo + n < steps:
            def square(b: Any, n: int = n) -> Any:
                for _ in range(n):
                    v = tirx.Var("sq", out_dt)
                    b = tirx.Let(v, b, v * v)
                return b

            base = elementwise_te(ctx, square, [base], out_dt, "pow_square")

    def negative(a: Any, e: Any, r: Any) -> Any:
        one, zero = tirx.const(1, out_dt), tirx.const(0, out_dt)
        if base_dt.is_signed:
            odd = (e & tirx.const(1, edt)) == tirx.const(1, edt)
            minus = tirx.const(-1, out_dt)
            inv = tirx.Select(a == one, one, tirx.Select(a == minus, tirx.Select(odd, minus, one), zero))
        else:
            inv = tirx.Select(a == one, one, zero)
        return tirx.Select(e < tirx.const(0, edt), inv, r)

    return elementwise_te(ctx, negative, [xs, ys, result], out_dt, "pow_int_sign")


@LOWERINGS.lowers("BitShift")
def _bitshift(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = in_dtype(node)
    out_dt = relax_dtype(dt)
    left = ctx.attrs(node)["direction"] == "LEFT"
    x, s = broadcast_all(ctx, ins)
    bits = tvm.DataType(out_dt).bits

    wide = not dt.is_signed and bits < 64  # TVM's const folder rejects some uint shift forms

    def shift(a: Any, n: Any) -> Any:
        if wide:
            return narrow(signed_shift(a.astype("int64"), n.astype("int64"), "int64"))
        return signed_shift(a, n, out_dt)

    def narrow(v: Any) -> Any:
        return v.astype(out_dt)

    def signed_shift(a: Any, n: Any, wdt: str) -> Any:
        zero = tirx.const(0, wdt)
        valid = (n >= zero) & (n < tirx.const(bits, wdt))
        count = tirx.Select(valid, n, zero)
        if left:
            return tirx.Select(valid, a << count, zero)
        fill = tirx.Select(a < zero, tirx.const(-1, wdt), zero) if dt.is_signed else zero
        return tirx.Select(valid, a >> count, fill)

    return elementwise_te(ctx, shift, [x, s], out_dt, "bitshift")


def _logical(fn: Callable) -> Emitter:
    return lambda ctx, node, ins: ctx.emit(fn(ins[0], ins[1]))


LOWERINGS.add("And", _logical(R.logical_and))
LOWERINGS.add("Or", _logical(R.logical_or))
LOWERINGS.add("Xor", _logical(R.logical_xor))


@LOWERINGS.lowers("Where")
def _where(ctx: LowerContext, node: Node, ins: list) -> Any:
    return ctx.emit(R.where(ins[0], ins[1], ins[2]))


def _variadic(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        out = ins[0]
        for x in ins[1:]:
            out = ctx.emit(fn(out, x))
        return _broadcast_to_out(ctx, node, out, ins)

    return emit


LOWERINGS.add("Max", _variadic(nan_aware.maximum))
LOWERINGS.add("Min", _variadic(nan_aware.minimum))
LOWERINGS.add("Sum", _variadic(R.add))


def _broadcast_to_out(ctx: LowerContext, node: Node, out: relax.Expr, ins: list) -> relax.Expr:
    if len(ins) == 1:
        return out
    return broadcast_all(ctx, [out] + list(ins))[0]


@LOWERINGS.lowers("Mean")
def _mean(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = in_dtype(node)
    xs = [to_compute(ctx, x, dt) for x in ins]
    total = xs[0]
    for x in xs[1:]:
        total = ctx.emit(R.add(total, x))
    total = ctx.emit(R.divide(total, constant(len(ins), dtype_of(total))))
    total = _broadcast_to_out(ctx, node, total, xs)
    return from_compute(ctx, total, dt)
