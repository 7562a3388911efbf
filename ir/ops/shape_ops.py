"""Ops that change a tensor's shape but not its values (ONNX semantics, modern input
forms): Reshape (allowzero), Flatten, Squeeze and Unsqueeze (axes as an input),
Transpose, Expand, Identity, and the shape queries Shape (start/end) and Size.

They take every dtype, storage formats (fp8, fp4, int4) included. Shape-carrying inputs
(Reshape.shape, Expand.shape, Squeeze/Unsqueeze.axes) are 1-D int64 tensors. When such
an input is a graph constant the type rule uses its values; otherwise it knows only the
output rank (from the input's static length) and leaves the dims unknown (None).

Squeeze with an empty (but present) axes tensor squeezes nothing, as the ONNX spec,
its shape inference and its reference implementation say (ONNX Runtime squeezes every
1 instead); with axes omitted it drops every dim of extent 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.ops._common import attr_int, attr_ints, check_input, const_ints
from requant.ir.registry import InferContext, define_op
from requant.ir.shapes import (
    broadcast_shapes,
    normalize_axes,
    reshape_shape,
    symbolic_product,
)
from requant.ir.types import Dim, TensorType

__all__: list[str] = []


def _shape_input(ctx: InferContext, i: int) -> tuple[list[int] | None, int | None]:
    """A 1-D int64 shape/axes input: its constant values and its static length."""
    t = ctx.input(i)
    name = ctx.schema.inputs[i].name
    if t.dtype != dtypes.int64:
        raise ctx.fail(f"{name} must be i64, got {t.dtype}")
    if t.rank is not None and t.rank != 1:
        raise ctx.fail(f"{name} must be 1-D, got {t}")
    values = const_ints(ctx, i)
    n = t.shape[0] if t.shape is not None and isinstance(t.shape[0], int) else None
    if values is not None:
        n = len(values)
    return values, n


def _infer_reshape(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    allowzero = attr_int(ctx, "allowzero", (0, 1))
    target, n = _shape_input(ctx, 1)
    if target is None:
        return [TensorType(None if n is None else (None,) * n, x.dtype)]
    return [TensorType(reshape_shape(x.shape, target, bool(allowzero), "Reshape"), x.dtype)]


def _reshape(ins: list, attrs: dict, outs: list) -> Any:
    x, shape = ins
    target = [int(s) for s in shape]
    if not attrs["allowzero"]:
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


define_op(
    "Reshape",
    inputs=("data", "shape"),
    outputs=("reshaped",),
    attrs={"allowzero": 0},
    infer=_infer_reshape,
    kernel=_reshape,
)


def _infer_flatten(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    axis = attr_int(ctx, "axis")
    if x.shape is None:
        return [TensorType((None, None), x.dtype)]
    r = x.rank
    if not -r <= axis <= r:
        raise ctx.fail(f"axis {axis} out of range for rank {r}")
    axis = axis + r if axis < 0 else axis
    return [TensorType((symbolic_product(x.shape[:axis]), symbolic_product(x.shape[axis:])), x.dtype)]


def _flatten(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    axis = attrs["axis"] + x.ndim if attrs["axis"] < 0 else attrs["axis"]
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))


define_op("Flatten", inputs=("input",), outputs=("output",), attrs={"axis": 1}, infer=_infer_flatten, kernel=_flatten)


def _infer_squeeze(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    if ctx.input(1) is None:
        if x.shape is None or not all(isinstance(d, int) for d in x.shape):
            return [TensorType(None, x.dtype)]  # which dims are 1 is known only at run time
        return [TensorType(tuple(d for d in x.shape if d != 1), x.dtype)]
    axes, n = _shape_input(ctx, 1)
    if x.shape is None:
        return [TensorType(None, x.dtype)]
    if axes is None:
        if n == 0:  # a computed axes tensor known to be empty: nothing is squeezed
            return [x]
        return [TensorType(None if n is None else (None,) * (x.rank - n), x.dtype)]
    axes = normalize_axes(axes, x.rank, "Squeeze")
    for a in axes:
        if isinstance(x.shape[a], int) and x.shape[a] != 1:
            raise ctx.fail(f"cannot squeeze axis {a} of extent {x.shape[a]} in {x}")
    return [TensorType(tuple(d for i, d in enumerate(x.shape) if i not in axes), x.dtype)]


def _squeeze(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    axes = ins[1] if len(ins) > 1 else None
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(int(a) for a in axes))


define_op("Squeeze", inputs=("data", "axes?"), outputs=("squeezed",), infer=_infer_squeeze, kernel=_squeeze)


def _infer_unsqueeze(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    axes, n = _shape_input(ctx, 1)
    if x.shape is None or n is None:
        return [TensorType(None, x.dtype)]
    r = x.rank + n
    if axes is None:
        return [TensorType((None,) * r, x.dtype)]
    axes = normalize_axes(axes, r, "Unsqueeze")
    rest = iter(x.shape)
    return [TensorType(tuple(1 if i in axes else next(rest) for i in range(r)), x.dtype)]


def _unsqueeze(ins: list, attrs: dict, outs: list) -> Any:
    x, axes = ins
    r = x.ndim + len(axes)
    axes = sorted(int(a) % r if r else 0 for a in axes)
    return np.expand_dims(x, axis=tuple(axes)) if axes else x


define_op("Unsqueeze", inputs=("data", "axes"), outputs=("expanded",), infer=_infer_unsqueeze, kernel=_unsqueeze)


def _infer_transpose(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    perm = attr_ints(ctx, "perm")
    if x.shape is None:
        return [TensorType(None, x.dtype)]
    if perm is None:
        perm = list(range(x.rank))[::-1]
    if sorted(perm) != list(range(x.rank)):
        raise ctx.fail(f"perm {perm} is not a permutation of the {x.rank} axes of {x}")
    return [TensorType(tuple(x.shape[p] for p in perm), x.dtype)]


define_op(
    "Transpose",
    inputs=("data",),
    outputs=("transposed",),
    attrs={"perm": None},
    infer=_infer_transpose,
    kernel=lambda ins, attrs, outs: np.transpose(ins[0], attrs["perm"]),
)


def _infer_expand(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    target, n = _shape_input(ctx, 1)
    if target is not None:
        if x.shape is None:
            return [TensorType(None, x.dtype)]
        if any(t < 0 for t in target):
            raise ctx.fail(f"negative dim in shape {target}")
        return [TensorType(broadcast_shapes([x.shape, tuple(target)], "Expand"), x.dtype)]
    if x.shape is None or n is None:
        return [TensorType(None, x.dtype)]
    r = max(x.rank, n)
    padded: list[Dim] = [1] * (r - x.rank) + list(x.shape)
    return [TensorType(tuple(d if isinstance(d, int) and d != 1 else None for d in padded), x.dtype)]


def _expand(ins: list, attrs: dict, outs: list) -> Any:
    x, shape = ins
    out = np.broadcast_shapes(x.shape, tuple(int(s) for s in shape))
    return np.broadcast_to(x, out).copy()


define_op("Expand", inputs=("input", "shape"), outputs=("output",), infer=_infer_expand, kernel=_expand)

define_op(
    "Identity",
    inputs=("input",),
    outputs=("output",),
    infer=lambda ctx: [check_input(ctx, 0, "any")],
    kernel=lambda ins, attrs, outs: ins[0],
)


def _shape_bounds(rank: int, start: int, end: int | None) -> tuple[int, int]:
    s = start + rank if start < 0 else start
    e = rank if end is None else (end + rank if end < 0 else end)
    s, e = min(max(s, 0), rank), min(max(e, 0), rank)
    return s, max(s, e)


def _infer_shape(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    start = attr_int(ctx, "start")
    end = None if ctx.attrs["end"] is None else attr_int(ctx, "end")
    if x.rank is None:
        return [TensorType((None,), dtypes.int64)]
    s, e = _shape_bounds(x.rank, start, end)
    return [TensorType((e - s,), dtypes.int64)]


def _shape(ins: list, attrs: dict, outs: list) -> Any:
    s, e = _shape_bounds(ins[0].ndim, attrs["start"], attrs["end"])
    return np.array(ins[0].shape[s:e], dtype=np.int64)


define_op(
    "Shape",
    inputs=("data",),
    outputs=("shape",),
    attrs={"start": 0, "end": None},
    infer=_infer_shape,
    kernel=_shape,
)
define_op(
    "Size",
    inputs=("data",),
    outputs=("size",),
    infer=lambda ctx: [TensorType((), check_input(ctx, 0, "any") and dtypes.int64)],
    kernel=lambda ins, attrs, outs: np.array(ins[0].size, dtype=np.int64),
)
