"""Lowerings of the unary family: Neg, Abs and Sign (integers directly, floats in their
compute dtype), the float functions (Exp, Log, Sqrt, Reciprocal, Tanh, trigonometric and
hyperbolic functions and their inverses, Floor, Ceil, Round), Erf, IsNaN, IsInf, Not.

Float functions compute in float32 for f16/bf16 (float64 for f64) and round once; Erf
computes in float64, like the interpreter. Round is half to even (TVM's round).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tvm import relax

from requant.backends.tvm.lowering import _nan as nan_aware
from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    Emitter,
    LowerContext,
    as_dtype,
    compute_dtype,
    constant,
    dtype_of,
    from_compute,
    in_dtype,
)
from requant.ir import dtypes
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


def _float_unary(fn: Callable, compute: str | None = None) -> Emitter:
    """A float function computed in the compute dtype (or `compute`, e.g. float64 for Erf)."""

    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = in_dtype(node)
        ct = compute or compute_dtype(dt)
        if dt == dtypes.float64:
            ct = "float64"
        return from_compute(ctx, ctx.emit(fn(as_dtype(ctx, ins[0], ct))), dt)

    return emit


def _reciprocal(x: relax.Expr) -> relax.Expr:
    return R.divide(constant(1, dtype_of(x)), x)


_FLOAT_FUNCTIONS = {
    "Exp": R.exp, "Log": R.log, "Sqrt": R.sqrt, "Reciprocal": _reciprocal, "Tanh": R.tanh,
    "Sin": R.sin, "Cos": R.cos, "Tan": R.tan, "Asin": R.asin, "Acos": R.acos, "Atan": R.atan,
    "Sinh": R.sinh, "Cosh": R.cosh, "Asinh": R.asinh, "Acosh": R.acosh, "Atanh": R.atanh,
    "Floor": R.floor, "Ceil": R.ceil, "Round": R.round,  # TVM's round is half to even
}

for _op, _fn in _FLOAT_FUNCTIONS.items():
    LOWERINGS.add(_op, _float_unary(_fn))
LOWERINGS.add("Erf", _float_unary(R.erf, compute="float64"))


def _int_ok(fn: Callable) -> Emitter:
    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = in_dtype(node)
        if dt.is_integer:
            return ctx.emit(fn(ins[0]))
        return _float_unary(fn)(ctx, node, ins)

    return emit


LOWERINGS.add("Neg", _int_ok(R.negative))
LOWERINGS.add("Abs", _int_ok(R.abs))
LOWERINGS.add("Sign", _int_ok(nan_aware.sign))


@LOWERINGS.lowers("IsNaN")
def _isnan(ctx: LowerContext, node: Node, ins: list) -> Any:
    return ctx.emit(R.isnan(ins[0]))


@LOWERINGS.lowers("IsInf")
def _isinf(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    x = ins[0]
    dt = dtype_of(x)
    inf = ctx.emit(R.isinf(x))
    if a["detect_positive"] and a["detect_negative"]:
        return inf
    zero = constant(0, dt)
    if a["detect_positive"]:
        return ctx.emit(R.logical_and(inf, R.greater(x, zero)))
    if a["detect_negative"]:
        return ctx.emit(R.logical_and(inf, R.less(x, zero)))
    return ctx.emit(R.zeros_like(inf))


@LOWERINGS.lowers("Not")
def _not(ctx: LowerContext, node: Node, ins: list) -> Any:
    return ctx.emit(R.logical_not(ins[0]))
