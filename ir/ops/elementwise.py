"""Elementwise ops with numpy broadcasting (ONNX semantics).

Integer semantics: Add/Sub/Mul wrap around in the operand dtype (two's complement, as
ONNX Runtime does); Div on integers truncates toward zero (C and ONNX Runtime), and
raises on division by zero; Pow on integers is exact while it fits the dtype, then
wraps. Comparison ops return bool.
"""

from __future__ import annotations

import numpy as np

from requant.ir.registry import InferContext, define_op
from requant.ir.shapes import broadcast_shapes
from requant.ir.types import TensorType
from requant.ir import dtypes

__all__: list[str] = []


def _same_dtype(ctx: InferContext) -> None:
    present = [t for t in ctx.inputs if t is not None]
    first = present[0].dtype
    for t in present[1:]:
        if t.dtype != first:
            raise ctx.fail(f"operand dtypes differ: {first} and {t.dtype}")


def infer_broadcast(ctx: InferContext) -> list[TensorType]:
    _same_dtype(ctx)
    shape = broadcast_shapes([t.shape for t in ctx.inputs], ctx.schema.name)
    return [TensorType(shape, ctx.inputs[0].dtype)]


def infer_compare(ctx: InferContext) -> list[TensorType]:
    _same_dtype(ctx)
    shape = broadcast_shapes([t.shape for t in ctx.inputs], ctx.schema.name)
    return [TensorType(shape, dtypes.bool_)]


def infer_same(ctx: InferContext) -> list[TensorType]:
    return [ctx.inputs[0]]


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.any(b == 0):
        raise ZeroDivisionError("integer Div by zero")
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q).astype(np.result_type(a, b))


def _div(ins, attrs, outs):
    a, b = ins
    if np.issubdtype(a.dtype, np.integer):
        return _int_div(a, b)
    return np.divide(a, b)


def _wrapping(fn):
    def kernel(ins, attrs, outs):
        with np.errstate(over="ignore"):
            return fn(*ins)

    return kernel


for _name, _fn, _comm in (
    ("Add", np.add, True),
    ("Sub", np.subtract, False),
    ("Mul", np.multiply, True),
):
    define_op(_name, inputs=("A", "B"), outputs=("C",), infer=infer_broadcast, kernel=_wrapping(_fn), commutative=_comm)

define_op("Div", inputs=("A", "B"), outputs=("C",), infer=infer_broadcast, kernel=_div)


def _pow(ins, attrs, outs):
    a, b = ins
    with np.errstate(over="ignore", invalid="ignore"):
        return np.power(a, b.astype(a.dtype) if not np.issubdtype(a.dtype, np.integer) else b).astype(a.dtype)


def _infer_pow(ctx: InferContext) -> list[TensorType]:
    shape = broadcast_shapes([ctx.inputs[0].shape, ctx.inputs[1].shape], "Pow")
    return [TensorType(shape, ctx.inputs[0].dtype)]


define_op("Pow", inputs=("X", "Y"), outputs=("Z",), infer=_infer_pow, kernel=_pow)

for _name, _fn in (
    ("Equal", np.equal),
    ("Less", np.less),
    ("LessOrEqual", np.less_equal),
    ("Greater", np.greater),
    ("GreaterOrEqual", np.greater_equal),
):
    define_op(_name, inputs=("A", "B"), outputs=("C",), infer=infer_compare, kernel=_wrapping(_fn))

for _name, _fn in (("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)):
    define_op(_name, inputs=("A", "B"), outputs=("C",), infer=infer_compare, kernel=_wrapping(_fn), commutative=True)
