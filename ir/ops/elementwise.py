"""Broadcasting elementwise ops with two or more operands (ONNX semantics): Add, Sub,
Mul, Div, Pow, Mod, BitShift, the comparisons, And/Or/Xor, Where, and the variadic
Max, Min, Sum, Mean. One-operand math lives in `unary.py`.

Operands must share one dtype (except Pow's exponent and Where's condition).

Integer semantics:
- Add, Sub, Mul, Sum wrap around in the operand dtype (two's complement), as ONNX
  Runtime does.
- Div truncates toward zero (C, ONNX Runtime); integer division by zero raises.
- Mod with fmod=0 takes the sign of the divisor (Python `%`, floor division); with
  fmod=1 the sign of the dividend (C `fmod`). Integer modulo by zero raises. Float Mod
  needs fmod=1, as ONNX requires.
- Pow with an integer base gives the base's dtype: exact (wrapping) for exponents >= 0;
  a negative exponent gives trunc(1 / base**|e|) (so 0 unless the base is +-1; base 0
  raises); a float exponent computes in float64, truncates toward zero and saturates.
- BitShift (ONNX allows unsigned only; requant also accepts signed): LEFT wraps, RIGHT
  on a signed dtype is arithmetic (floor division by 2**s). A shift count outside
  [0, bits) shifts everything out: 0 (or -1 for a negative signed value shifted right),
  as ONNX's reference implementation does.
- Float ops follow IEEE (x/0 = inf, 0/0 = nan); f16/bf16 results are rounded once from
  float32 (identical to native half arithmetic for these single operations).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.ops._common import check_input, compute_dtype, same_dtype
from requant.ir.registry import InferContext, define_op
from requant.ir.shapes import broadcast_shapes
from requant.ir.types import TensorType

__all__ = ["infer_broadcast", "infer_compare"]


def _present(ctx: InferContext) -> list[int]:
    idx = [i for i, t in enumerate(ctx.inputs) if t is not None]
    if not idx:
        raise ctx.fail("needs at least one input")
    return idx


def _broadcast(ctx: InferContext, idx: list[int]) -> tuple:
    return broadcast_shapes([ctx.inputs[i].shape for i in idx], ctx.schema.name)


def infer_broadcast(ctx: InferContext, cls: str = "any") -> list[TensorType]:
    """Same-dtype operands, numpy broadcasting, output of the operands' dtype."""
    idx = _present(ctx)
    for i in idx:
        check_input(ctx, i, cls)
    dt = same_dtype(ctx, idx)
    return [TensorType(_broadcast(ctx, idx), dt)]


def infer_compare(ctx: InferContext, cls: str = "any") -> list[TensorType]:
    """Like `infer_broadcast` with a bool output."""
    (t,) = infer_broadcast(ctx, cls)
    return [t.with_dtype(dtypes.bool_)]


def _numeric(ctx: InferContext) -> list[TensorType]:
    return infer_broadcast(ctx, "numeric")


def _wrapping(fn):
    def kernel(ins: list, attrs: dict, outs: list) -> Any:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return fn(*ins)

    kernel.__name__ = getattr(fn, "__name__", "kernel")
    return kernel


for _name, _fn, _comm in (
    ("Add", np.add, True),
    ("Sub", np.subtract, False),
    ("Mul", np.multiply, True),
):
    define_op(_name, inputs=("A", "B"), outputs=("C",), infer=_numeric, kernel=_wrapping(_fn), commutative=_comm)


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.any(b == 0):
        raise ZeroDivisionError("integer Div by zero")
    with np.errstate(over="ignore"):
        return ((a - np.fmod(a, b)) // b).astype(np.result_type(a, b))


def _div(ins: list, attrs: dict, outs: list) -> Any:
    a, b = ins
    if np.issubdtype(a.dtype, np.integer):
        return _int_div(a, b)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.divide(a, b)


define_op("Div", inputs=("A", "B"), outputs=("C",), infer=_numeric, kernel=_div)


def _infer_pow(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "numeric")
    check_input(ctx, 1, "numeric")
    return [TensorType(_broadcast(ctx, [0, 1]), x.dtype)]


def _pow(ins: list, attrs: dict, outs: list) -> Any:
    a, b = ins
    if not np.issubdtype(a.dtype, np.integer):
        ct = compute_dtype(a)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return np.power(a.astype(ct), b.astype(ct)).astype(a.dtype)
    if not np.issubdtype(b.dtype, np.integer):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            r = np.trunc(np.power(a.astype(np.float64), b.astype(np.float64)))
        info = np.iinfo(a.dtype)
        return np.clip(np.nan_to_num(r), info.min, info.max).astype(a.dtype)
    a, b = np.broadcast_arrays(a, b)
    neg = b < 0
    if np.any(neg & (a == 0)):
        raise ZeroDivisionError("integer Pow: 0 to a negative power")
    with np.errstate(over="ignore"):
        r = np.power(a, np.where(neg, 0, b).astype(a.dtype))
    if np.any(neg):
        odd = (np.abs(b) % 2) == 1
        inv = np.where(a == 1, 1, np.where(a == -1, np.where(odd, -1, 1), 0)).astype(a.dtype)
        r = np.where(neg, inv, r)
    return r.astype(a.dtype)


define_op("Pow", inputs=("X", "Y"), outputs=("Z",), infer=_infer_pow, kernel=_pow)


def _infer_mod(ctx: InferContext) -> list[TensorType]:
    (t,) = infer_broadcast(ctx, "numeric")
    fmod = ctx.attrs["fmod"]
    if fmod not in (0, 1):
        raise ctx.fail(f"attribute fmod={fmod!r} must be 0 or 1")
    if t.dtype.is_float and fmod != 1:
        raise ctx.fail(f"float operands ({t.dtype}) need fmod=1")
    return [t]


def _mod(ins: list, attrs: dict, outs: list) -> Any:
    a, b = ins
    if np.issubdtype(a.dtype, np.integer) and np.any(b == 0):
        raise ZeroDivisionError("integer Mod by zero")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.fmod(a, b) if attrs["fmod"] else np.mod(a, b)


define_op("Mod", inputs=("A", "B"), outputs=("C",), attrs={"fmod": 0}, infer=_infer_mod, kernel=_mod)


def _infer_shift(ctx: InferContext) -> list[TensorType]:
    if ctx.attrs["direction"] not in ("LEFT", "RIGHT"):
        raise ctx.fail(f"attribute direction={ctx.attrs['direction']!r} must be 'LEFT' or 'RIGHT'")
    return infer_broadcast(ctx, "int")


def _shift(ins: list, attrs: dict, outs: list) -> Any:
    x, s = np.broadcast_arrays(*ins)
    bits = x.dtype.itemsize * 8
    valid = (s >= 0) & (s < bits)
    count = np.where(valid, s, 0).astype(x.dtype)
    if attrs["direction"] == "LEFT":
        if np.issubdtype(x.dtype, np.signedinteger):  # shift the bit pattern: wraps
            u = np.dtype(f"u{x.dtype.itemsize}")
            shifted = np.left_shift(x.view(u), count.astype(u)).view(x.dtype)
        else:
            shifted = np.left_shift(x, count)
        return np.where(valid, shifted, np.zeros((), x.dtype))
    fill = np.where(x < 0, -1, 0).astype(x.dtype) if np.issubdtype(x.dtype, np.signedinteger) else 0
    return np.where(valid, np.right_shift(x, count), fill).astype(x.dtype)


define_op("BitShift", inputs=("X", "Y"), outputs=("Z",), attrs={"direction": "LEFT"}, infer=_infer_shift, kernel=_shift)

for _name, _fn, _cls in (
    ("Equal", np.equal, "numeric_or_bool"),
    ("Less", np.less, "numeric"),
    ("LessOrEqual", np.less_equal, "numeric"),
    ("Greater", np.greater, "numeric"),
    ("GreaterOrEqual", np.greater_equal, "numeric"),
):
    define_op(
        _name,
        inputs=("A", "B"),
        outputs=("C",),
        infer=lambda ctx, _c=_cls: infer_compare(ctx, _c),
        kernel=_wrapping(_fn),
        commutative=_name == "Equal",
    )

for _name, _fn in (("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)):
    define_op(
        _name,
        inputs=("A", "B"),
        outputs=("C",),
        infer=lambda ctx: infer_compare(ctx, "bool"),
        kernel=_wrapping(_fn),
        commutative=True,
    )


def _infer_where(ctx: InferContext) -> list[TensorType]:
    check_input(ctx, 0, "bool")
    dt = same_dtype(ctx, [1, 2])
    return [TensorType(_broadcast(ctx, [0, 1, 2]), dt)]


define_op(
    "Where",
    inputs=("condition", "X", "Y"),
    outputs=("output",),
    infer=_infer_where,
    kernel=lambda ins, attrs, outs: np.where(ins[0], ins[1], ins[2]),
)


def _variadic(cls: str):
    def infer(ctx: InferContext) -> list[TensorType]:
        if not ctx.inputs or any(t is None for t in ctx.inputs):
            raise ctx.fail("needs one or more inputs, none omitted")
        return infer_broadcast(ctx, cls)

    return infer


def _reduce_kernel(fn):
    def kernel(ins: list, attrs: dict, outs: list) -> Any:
        out = ins[0]
        with np.errstate(over="ignore", invalid="ignore"):
            for x in ins[1:]:
                out = fn(out, x)
        return np.broadcast_to(out, np.broadcast_shapes(*(x.shape for x in ins))).copy()

    return kernel


def _mean(ins: list, attrs: dict, outs: list) -> Any:
    ct = compute_dtype(ins[0])
    total = ins[0].astype(ct)
    for x in ins[1:]:
        total = total + x.astype(ct)
    total = total / ct.type(len(ins))
    return np.broadcast_to(total, np.broadcast_shapes(*(x.shape for x in ins))).astype(ins[0].dtype)


define_op("Max", inputs=("data_0*",), outputs=("max",), infer=_variadic("numeric"), kernel=_reduce_kernel(np.maximum), commutative=True)
define_op("Min", inputs=("data_0*",), outputs=("min",), infer=_variadic("numeric"), kernel=_reduce_kernel(np.minimum), commutative=True)
define_op("Sum", inputs=("data_0*",), outputs=("sum",), infer=_variadic("float"), kernel=_reduce_kernel(np.add), commutative=True)
define_op("Mean", inputs=("data_0*",), outputs=("mean",), infer=_variadic("float"), kernel=_mean, commutative=True)
