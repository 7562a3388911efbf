"""Tensor sources and inference-time no-ops (ONNX semantics): Constant (only the
`value` attribute, a numpy array), ConstantOfShape (`value`: a one-element numpy array,
default float32 0), Range, Dropout (inference only: the identity; the optional mask
output is all True).

Range computes `start + i * delta` in the operands' dtype (f16/bf16 in float32), with
`max(ceil((limit - start) / delta), 0)` elements; integer Range is exact. Dropout with
a training_mode input that is True (constant: at type inference, else at run time)
is refused: requant runs inference only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.dtypes import from_numpy
from requant.ir.ops._common import check_input, compute_dtype, const_ints, const_scalar, same_dtype
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.types import TensorType

__all__: list[str] = []


def _array_attr(ctx: InferContext, name: str) -> np.ndarray:
    v = ctx.attrs[name]
    if not isinstance(v, (np.ndarray, np.generic)):
        raise ctx.fail(f"attribute {name} must be a numpy array, got {type(v).__name__}")
    v = np.asarray(v)
    try:
        from_numpy(v.dtype)
    except ValueError:
        raise ctx.fail(f"attribute {name} has numpy dtype {v.dtype}, which requant has no dtype for") from None
    return v


def _infer_constant(ctx: InferContext) -> list[TensorType]:
    v = _array_attr(ctx, "value")
    return [TensorType(tuple(v.shape), from_numpy(v.dtype))]


define_op(
    "Constant",
    inputs=(),
    outputs=("output",),
    attrs={"value": REQUIRED},
    infer=_infer_constant,
    kernel=lambda ins, attrs, outs: np.asarray(attrs["value"]).copy(),
)


def _fill_value(attrs) -> np.ndarray:
    v = attrs["value"]
    return np.zeros((), np.float32) if v is None else np.asarray(v).reshape(())


def _infer_constant_of_shape(ctx: InferContext) -> list[TensorType]:
    t = check_input(ctx, 0, "any")
    if t.dtype != dtypes.int64:
        raise ctx.fail(f"input must be i64, got {t.dtype}")
    if t.rank is not None and t.rank != 1:
        raise ctx.fail(f"input must be 1-D, got {t}")
    if ctx.attrs["value"] is None:
        dt = dtypes.float32
    else:
        v = _array_attr(ctx, "value")
        if v.size != 1:
            raise ctx.fail(f"attribute value must hold one element, got shape {v.shape}")
        dt = from_numpy(v.dtype)
    shape = const_ints(ctx, 0)
    if shape is not None:
        if any(d < 0 for d in shape):
            raise ctx.fail(f"negative dim in shape {shape}")
        return [TensorType(tuple(shape), dt)]
    n = t.shape[0] if t.shape is not None else None
    return [TensorType((None,) * n if isinstance(n, int) else None, dt)]


define_op(
    "ConstantOfShape",
    inputs=("input",),
    outputs=("output",),
    attrs={"value": None},
    infer=_infer_constant_of_shape,
    kernel=lambda ins, attrs, outs: np.full(tuple(int(d) for d in ins[0]), _fill_value(attrs)),
)


def _range_count(start, limit, delta) -> int:
    if delta == 0:
        raise ValueError("Range: delta is 0")
    return max(math.ceil((limit - start) / delta), 0)


def _infer_range(ctx: InferContext) -> list[TensorType]:
    for i in range(3):
        t = check_input(ctx, i, "numeric")
        if t.shape is not None and t.rank != 0:
            raise ctx.fail(f"{ctx.schema.inputs[i].name} must be a scalar (rank 0), got {t}")
    dt = same_dtype(ctx, [0, 1, 2])
    vals = [const_scalar(ctx, i) for i in range(3)]
    if any(v is None for v in vals):
        return [TensorType((None,), dt)]
    try:
        return [TensorType((_range_count(*vals),), dt)]
    except ValueError as exc:
        raise ctx.fail(str(exc).removeprefix("Range: ")) from None


def _range(ins: list, attrs: dict, outs: list) -> Any:
    start, limit, delta = (x.reshape(()) for x in ins)
    n = _range_count(start.item(), limit.item(), delta.item())
    ct = compute_dtype(start)
    if np.issubdtype(ct, np.integer):
        return (start.astype(np.int64) + np.arange(n, dtype=np.int64) * delta.astype(np.int64)).astype(start.dtype)
    return (start.astype(ct) + np.arange(n).astype(ct) * delta.astype(ct)).astype(start.dtype)


define_op("Range", inputs=("start", "limit", "delta"), outputs=("output",), infer=_infer_range, kernel=_range)


def _infer_dropout(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "float")
    if ctx.input(1) is not None:
        check_input(ctx, 1, "float")
    if ctx.input(2) is not None:
        check_input(ctx, 2, "bool")
        mode = const_scalar(ctx, 2)
        if mode:
            raise ctx.fail("training_mode=True is not supported: requant runs inference only")
    n = 1 if ctx.num_outputs is None else ctx.num_outputs
    if n not in (1, 2):
        raise ctx.fail(f"has 1 or 2 outputs, {n} asked for")
    return [x, x.with_dtype(dtypes.bool_)][:n]


def _dropout(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    mode = ins[2] if len(ins) > 2 else None
    if mode is not None and bool(np.asarray(mode).reshape(())):
        raise ValueError("Dropout: training_mode=True is not supported (inference only)")
    return [x.copy(), np.ones(x.shape, dtype=bool)][: len(outs)]


define_op(
    "Dropout",
    inputs=("data", "ratio?", "training_mode?"),
    outputs=("output", "mask?"),
    attrs={"seed": None},
    infer=_infer_dropout,
    kernel=_dropout,
)
