"""Lowerings of aten's broadcasting arithmetic, comparisons and logic: add, sub, rsub,
mul, div (true, floor and trunc rounding), floor_divide, remainder, fmod, pow,
maximum/minimum/fmax/fmin, eq/ne/lt/le/gt/ge, logical_and/or/xor/not,
bitwise_and/or/xor/not, where, masked_fill, clamp/clip/hardtanh, clamp_min, clamp_max.

Semantics particular to these lowerings:
- Operands are cast to the node's result dtype (torch's promotion) before the op, so
  IR operands always share one dtype. Comparisons cast to the operands' promoted dtype
  instead (their result is bool), and compare bool operands as int64 (the IR orders
  numbers only; False < True as 0 < 1).
- x + 0, x - 0, x * 1, x / 1 and x ** 1 give no node when the result has x's dtype and
  shape. alpha (add/sub/rsub) is a separate Mul. On bool tensors add is Or, mul is And,
  and the bitwise ops are And/Or/Xor/Not.
- div with rounding_mode="floor" and floor_divide: Floor(Div) on floats;
  (x - Mod(x, y)) / y on integers, exact because Mod(fmod=0) takes the divisor's sign.
  rounding_mode="trunc": the IR's integer Div already truncates; floats round toward
  zero with Where(q < 0, Ceil(q), Floor(q)).
- remainder takes the divisor's sign (Mod fmod=0 on integers, x - Floor(x / y) * y on
  floats); fmod the dividend's (Mod fmod=1).
- fmax/fmin become Max/Min like maximum/minimum, so a NaN operand propagates where
  torch's fmax/fmin would return the other operand.
- clamp with number bounds is one Clip; clamp.Tensor is Max then Min, as torch applies
  them (min first, so min > max gives max).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from requant.frontends.torch_aten_common import (
    Cx,
    binary_lowering,
    emit_floor_div,
    emit_trunc,
    result_has_type_of,
)
from requant.frontends.torch_lowering import ir_dtype, lowers
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


def _stand_in(cx: Cx, arg: Any) -> Any:
    """Something `torch.result_type` promotes exactly like `arg` (0-d tensors rank
    below dimensioned ones, Python numbers below both)."""
    val = cx.val(arg)
    if isinstance(val, torch.Tensor):
        return torch.empty((1,) * val.dim(), dtype=val.dtype)
    if isinstance(val, torch.SymBool):
        return True
    if isinstance(val, torch.SymInt):
        return 1
    if isinstance(val, torch.SymFloat):
        return 1.0
    return val


def _common_dtype(cx: Cx, *args: Any) -> DType:
    ins = [_stand_in(cx, a) for a in args]
    dt = torch.result_type(ins[0], ins[1]) if len(ins) > 1 else torch.result_type(ins[0], ins[0])
    for other in ins[2:]:
        dt = torch.result_type(torch.empty((1,), dtype=dt), other)
    return ir_dtype(dt)


def _is_number(arg: Any, value: float) -> bool:
    return isinstance(arg, (int, float)) and not isinstance(arg, bool) and arg == value


@lowers("aten.add.Tensor", "aten.add.Scalar")
def add(cx: Cx, a: Any, b: Any, *, alpha: Any = 1) -> Value:
    if _is_number(b, 0) and result_has_type_of(cx, a):
        return cx.value(a)
    dt = cx.out_dtype
    if dt == dtypes.bool_:
        return cx.emit("Or", cx.tensor(a, dt), cx.tensor(b, dt))
    y = cx.tensor(b, dt)
    if alpha != 1:
        y = cx.emit("Mul", y, cx.tensor(alpha, dt))
    return cx.emit("Add", cx.tensor(a, dt), y)


@lowers("aten.sub.Tensor", "aten.sub.Scalar")
def sub(cx: Cx, a: Any, b: Any, *, alpha: Any = 1) -> Value:
    if _is_number(b, 0) and result_has_type_of(cx, a):
        return cx.value(a)
    dt = cx.out_dtype
    y = cx.tensor(b, dt)
    if alpha != 1:
        y = cx.emit("Mul", y, cx.tensor(alpha, dt))
    return cx.emit("Sub", cx.tensor(a, dt), y)


@lowers("aten.rsub.Scalar", "aten.rsub.Tensor")
def rsub(cx: Cx, a: Any, b: Any, alpha: Any = 1) -> Value:
    dt = cx.out_dtype
    x = cx.tensor(a, dt)
    if alpha != 1:
        x = cx.emit("Mul", x, cx.tensor(alpha, dt))
    return cx.emit("Sub", cx.tensor(b, dt), x)


@lowers("aten.mul.Tensor", "aten.mul.Scalar")
def mul(cx: Cx, a: Any, b: Any) -> Value:
    if _is_number(b, 1) and result_has_type_of(cx, a):
        return cx.value(a)
    dt = cx.out_dtype
    if dt == dtypes.bool_:
        return cx.emit("And", cx.tensor(a, dt), cx.tensor(b, dt))
    return cx.emit("Mul", cx.tensor(a, dt), cx.tensor(b, dt))


@lowers("aten.div.Tensor", "aten.div.Scalar", "aten.true_divide.Tensor")
def div(cx: Cx, a: Any, b: Any) -> Value:
    if _is_number(b, 1) and result_has_type_of(cx, a):
        return cx.value(a)
    dt = cx.out_dtype
    return cx.emit("Div", cx.tensor(a, dt), cx.tensor(b, dt))


@lowers("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def div_mode(cx: Cx, a: Any, b: Any, *, rounding_mode: str | None = None) -> Value:
    dt = cx.out_dtype
    x, y = cx.tensor(a, dt), cx.tensor(b, dt)
    if rounding_mode is None:
        return cx.emit("Div", x, y)
    if rounding_mode == "floor":
        return emit_floor_div(cx, x, y)
    q = cx.emit("Div", x, y)
    return emit_trunc(cx, q) if dt.is_float else q


@lowers("aten.floor_divide.default", "aten.floor_divide.Scalar")
def floor_divide(cx: Cx, a: Any, b: Any) -> Value:
    dt = cx.out_dtype
    return emit_floor_div(cx, cx.tensor(a, dt), cx.tensor(b, dt))


@lowers("aten.remainder.Tensor", "aten.remainder.Scalar", "aten.remainder.Scalar_Tensor")
def remainder(cx: Cx, a: Any, b: Any) -> Value:
    dt = cx.out_dtype
    x, y = cx.tensor(a, dt), cx.tensor(b, dt)
    if not dt.is_float:
        return cx.emit("Mod", x, y, fmod=0)
    return cx.emit("Sub", x, cx.emit("Mul", cx.emit("Floor", cx.emit("Div", x, y)), y))


@lowers("aten.fmod.Tensor", "aten.fmod.Scalar")
def fmod(cx: Cx, a: Any, b: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Mod", cx.tensor(a, dt), cx.tensor(b, dt), fmod=1)


@lowers("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def pow_(cx: Cx, a: Any, b: Any) -> Value:
    dt = cx.out_dtype
    if _is_number(b, 1) and result_has_type_of(cx, a):
        return cx.value(a)
    return cx.emit("Pow", cx.tensor(a, dt), cx.tensor(b, dt))


for _target, _op in {
    "aten.maximum.default": "Max",
    "aten.minimum.default": "Min",
    "aten.fmax.default": "Max",
    "aten.fmin.default": "Min",
}.items():
    lowers(_target)(binary_lowering(_op))


# -- comparisons and logic --------------------------------------------------------------

_ORDERED = {"Less", "LessOrEqual", "Greater", "GreaterOrEqual"}


def _compare(op: str, negate: bool = False):
    def lower(cx: Cx, a: Any, b: Any) -> Value:
        dt = _common_dtype(cx, a, b)
        if dt == dtypes.bool_ and op in _ORDERED:
            dt = dtypes.int64  # the IR orders numbers only; False < True as 0 < 1
        out = cx.emit(op, cx.tensor(a, dt), cx.tensor(b, dt))
        return cx.emit("Not", out) if negate else out

    lower.__name__ = f"lower_{op.lower()}"
    return lower


for _name, (_op, _neg) in {
    "eq": ("Equal", False),
    "ne": ("Equal", True),
    "lt": ("Less", False),
    "le": ("LessOrEqual", False),
    "gt": ("Greater", False),
    "ge": ("GreaterOrEqual", False),
}.items():
    lowers(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar")(_compare(_op, _neg))


def _logical(op: str):
    def lower(cx: Cx, a: Any, b: Any) -> Value:
        return cx.emit(op, cx.tensor(a, dtypes.bool_), cx.tensor(b, dtypes.bool_))

    lower.__name__ = f"lower_{op.lower()}"
    return lower


def _bitwise(bool_op: str, int_op: str):
    def lower(cx: Cx, a: Any, b: Any) -> Value:
        dt = cx.out_dtype
        return cx.emit(bool_op if dt == dtypes.bool_ else int_op, cx.tensor(a, dt), cx.tensor(b, dt))

    lower.__name__ = f"lower_{bool_op.lower()}"
    return lower


for _name, _op in {"and": "And", "or": "Or", "xor": "Xor"}.items():
    lowers(f"aten.logical_{_name}.default")(_logical(_op))
    lowers(f"aten.bitwise_{_name}.Tensor", f"aten.bitwise_{_name}.Scalar")(
        _bitwise(_op, f"Bitwise{_op}")
    )


@lowers("aten.logical_not.default")
def logical_not(cx: Cx, x: Any) -> Value:
    return cx.emit("Not", cx.tensor(x, dtypes.bool_))


@lowers("aten.bitwise_not.default")
def bitwise_not(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    return cx.emit("Not" if v.dtype == dtypes.bool_ else "BitwiseNot", v)


@lowers("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def where(cx: Cx, cond: Any, a: Any, b: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Where", cx.tensor(cond, dtypes.bool_), cx.tensor(a, dt), cx.tensor(b, dt))


@lowers("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def masked_fill(cx: Cx, x: Any, mask: Any, value: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Where", cx.tensor(mask, dtypes.bool_), cx.tensor(value, dt), cx.tensor(x, dt))


@lowers("aten.clamp.default", "aten.clip.default", "aten.hardtanh.default")
def clamp(cx: Cx, x: Any, min: Any = None, max: Any = None) -> Value:
    dt = cx.out_dtype
    lo = None if min is None else cx.tensor(min, dt)
    hi = None if max is None else cx.tensor(max, dt)
    return cx.emit("Clip", cx.tensor(x, dt), lo, hi)


@lowers("aten.clamp.Tensor", "aten.clip.Tensor")
def clamp_tensor(cx: Cx, x: Any, min: Any = None, max: Any = None) -> Value:
    dt = cx.out_dtype
    v = cx.tensor(x, dt)
    if min is not None:
        v = cx.emit("Max", v, cx.tensor(min, dt))
    if max is not None:
        v = cx.emit("Min", v, cx.tensor(max, dt))
    return v


@lowers("aten.clamp_min.default", "aten.clamp_min.Tensor")
def clamp_min(cx: Cx, x: Any, min: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Max", cx.tensor(x, dt), cx.tensor(min, dt))


@lowers("aten.clamp_max.default", "aten.clamp_max.Tensor")
def clamp_max(cx: Cx, x: Any, max: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Min", cx.tensor(x, dt), cx.tensor(max, dt))
