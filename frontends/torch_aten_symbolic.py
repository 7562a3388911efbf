"""Lowerings of the size arithmetic torch.export records under dynamic dims, and of
Python's item access on results: aten.sym_size.int, aten.sym_numel, operator.add / sub
/ mul / floordiv / mod / truediv / neg and the comparisons, torch.sym_max / sym_min /
sym_float / sym_not / sym_ite, math.ceil / floor, operator.getitem, item.

Semantics particular to these lowerings:
- A SymInt is a 0-d int64 value, a SymFloat a 0-d float32 one, a SymBool a 0-d bool.
  An arithmetic result torch already knows (a specialised size) is a constant.
- sym_size is a constant for a static extent, Gather(Shape(x), dim) otherwise;
  sym_numel is Size(x).
- floordiv rounds toward -inf; integer mod takes the divisor's sign (Mod fmod=0). A
  float mod is Mod fmod=1 (the only float Mod the IR has), so it takes the dividend's
  sign where Python's % takes the divisor's.
- math.ceil / floor compute in float32 and cast to int64; sym_ite is refused.
- operator.getitem picks one result of a multi-output node; a result the lowering did
  not produce (mean/rstd of a norm, pooling indices, ...) is refused.
- item / _local_scalar_dense (a data-dependent Python scalar) are refused.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from requant.frontends.torch_aten_common import Cx, emit_floor_div, norm_dim
from requant.frontends.torch_lowering import NotLowerable, lowers
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


@lowers("aten.sym_size.int")
def sym_size(cx: Cx, x: Any, dim: int) -> Value:
    v = cx.value(x)
    return cx.dim_size(v, norm_dim(int(dim), v.type.rank))


@lowers("aten.sym_numel.default")
def sym_numel(cx: Cx, x: Any) -> Value:
    return cx.emit("Size", cx.value(x))


def _symbolic_result(cx: Cx) -> Value | None:
    """A constant when torch already knows the SymInt's value."""
    known = cx.static_int(cx.node)
    return None if known is None else cx.const(np.asarray(known, np.int64))


def _sym_scalar(cx: Cx, arg: Any, dt: DType) -> Value:
    if isinstance(arg, fx.Node):
        return cx.cast(cx.value(arg), dt)
    return cx.const(np.asarray(arg, dt.np))


def _sym_dtype(cx: Cx) -> DType:
    val = cx.out
    if isinstance(val, (torch.SymFloat, float)):
        return dtypes.float32
    if isinstance(val, (torch.SymBool, bool)):
        return dtypes.bool_
    return dtypes.int64


def _sym_binary(op: str):
    def lower(cx: Cx, a: Any, b: Any) -> Value:
        known = _symbolic_result(cx)
        if known is not None:
            return known
        dt = _sym_dtype(cx)
        x, y = _sym_scalar(cx, a, dt), _sym_scalar(cx, b, dt)
        if op == "FloorDiv":
            return emit_floor_div(cx, x, y)
        if op == "Mod":
            return cx.emit("Mod", x, y, fmod=0 if not dt.is_float else 1)
        return cx.emit(op, x, y)

    lower.__name__ = f"lower_sym_{op.lower()}"
    return lower


for _name, _op in {"add": "Add", "sub": "Sub", "mul": "Mul", "floordiv": "FloorDiv", "mod": "Mod",
                   "truediv": "Div"}.items():
    lowers(f"operator.{_name}")(_sym_binary(_op))
lowers("torch.sym_max")(_sym_binary("Max"))
lowers("torch.sym_min")(_sym_binary("Min"))


def _sym_compare(op: str, negate: bool = False):
    def lower(cx: Cx, a: Any, b: Any) -> Value:
        x, y = _sym_scalar(cx, a, dtypes.int64), _sym_scalar(cx, b, dtypes.int64)
        out = cx.emit(op, x, y)
        return cx.emit("Not", out) if negate else out

    lower.__name__ = f"lower_sym_{op.lower()}"
    return lower


for _name, (_op, _neg) in {"eq": ("Equal", False), "ne": ("Equal", True), "lt": ("Less", False),
                           "le": ("LessOrEqual", False), "gt": ("Greater", False),
                           "ge": ("GreaterOrEqual", False)}.items():
    lowers(f"operator.{_name}")(_sym_compare(_op, _neg))


@lowers("operator.neg")
def sym_neg(cx: Cx, a: Any) -> Value:
    known = _symbolic_result(cx)
    return known if known is not None else cx.emit("Neg", cx.value(a))


@lowers("torch.sym_float")
def sym_float(cx: Cx, a: Any) -> Value:
    return _sym_scalar(cx, a, dtypes.float32)


@lowers("torch.sym_not")
def sym_not(cx: Cx, a: Any) -> Value:
    return cx.emit("Not", _sym_scalar(cx, a, dtypes.bool_))


@lowers("math.ceil", "math.floor", "torch.sym_ite")
def sym_round(cx: Cx, *args: Any) -> Value:
    known = _symbolic_result(cx)
    if known is not None:
        return known
    op = cx.meta["torch_op"]
    if op == "torch.sym_ite":
        raise NotLowerable("symbolic if-then-else on sizes")
    x = _sym_scalar(cx, args[0], dtypes.float32)
    return cx.cast(cx.emit("Ceil" if op == "math.ceil" else "Floor", x), dtypes.int64)


@lowers("operator.getitem")
def getitem(cx: Cx, seq: Any, i: int) -> Any:
    items = cx.env[seq]
    if not isinstance(items, (list, tuple)):
        raise NotLowerable(f"indexing a {type(items).__name__} result")
    item = items[i]
    if item is None:
        raise NotLowerable(f"output {i} of {seq.target} (only its main result is supported)")
    return item


@lowers("aten._local_scalar_dense.default", "aten.item.default")
def item(cx: Cx, x: Any) -> Value:
    raise NotLowerable(".item() (a data-dependent Python scalar)")
