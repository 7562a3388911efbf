"""Lowerings of aten's one-operand math: neg, abs, sign, exp, log, sqrt, reciprocal,
the trigonometric and hyperbolic functions, erf, floor, ceil, round, trunc, rsqrt,
log1p, expm1, isnan, isinf. (Activation functions are `torch_aten_activation.py`.)

Semantics particular to these lowerings:
- The operand is cast to the node's result dtype first (torch computes exp of an
  integer tensor in float, for instance).
- round and trunc of an integer tensor give no node; trunc of a float is
  Where(x < 0, Ceil(x), Floor(x)) (the IR has no Trunc).
- isnan / isinf of a non-float tensor are constant False tensors shaped like it.
- rsqrt is Reciprocal(Sqrt(x)), log1p Log(x + 1), expm1 Exp(x) - 1: the plain forms,
  without the extra precision torch's fused kernels keep near 0.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from requant.frontends.torch_aten_common import Cx, emit_trunc, filled_like, unary_lowering
from requant.frontends.torch_lowering import lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


for _name, _op in {
    "neg": "Neg",
    "abs": "Abs",
    "sign": "Sign",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "reciprocal": "Reciprocal",
    "sin": "Sin",
    "cos": "Cos",
    "tan": "Tan",
    "tanh": "Tanh",
    "asin": "Asin",
    "acos": "Acos",
    "atan": "Atan",
    "sinh": "Sinh",
    "cosh": "Cosh",
    "erf": "Erf",
    "floor": "Floor",
    "ceil": "Ceil",
}.items():
    lowers(f"aten.{_name}.default")(unary_lowering(_op))


@lowers("aten.isnan.default", "aten.isinf.default")
def isnan_isinf(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    if not v.dtype.is_float:
        return filled_like(cx, x, False)
    return cx.emit("IsNaN" if cx.meta["torch_op"] == "aten.isnan.default" else "IsInf", v)


@lowers("aten.round.default")
def round_(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    return v if not v.dtype.is_float else cx.emit("Round", v)


@lowers("aten.trunc.default")
def trunc(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    return v if not v.dtype.is_float else emit_trunc(cx, v)


@lowers("aten.rsqrt.default")
def rsqrt(cx: Cx, x: Any) -> Value:
    return cx.emit("Reciprocal", cx.emit("Sqrt", cx.tensor(x, cx.out_dtype)))


@lowers("aten.log1p.default")
def log1p(cx: Cx, x: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Log", cx.emit("Add", cx.tensor(x, dt), cx.const(np.ones((), dt.np))))


@lowers("aten.expm1.default")
def expm1(cx: Cx, x: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Sub", cx.emit("Exp", cx.tensor(x, dt)), cx.const(np.ones((), dt.np)))
