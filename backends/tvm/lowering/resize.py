"""Lowering of Resize (`requant.ir.ops.resize`) for any mode, coordinate transformation
and number of axes: the registry's `axis_taps` gives, per resized axis, which inputs
each output index reads and with which weights; they become constants at compile time,
and each axis is a `take` of those indices (nearest: one per output) followed, for
linear and cubic, by the weighted sum over the taps, one axis after another as the
interpreter does. Linear and cubic compute in float32 (f16/bf16 too, rounded once),
float64 for f64 and for integers, which round half to even and saturate.

Needs the resized axes' extents static and scales / sizes / roi constant (the output
shape and the weights are fixed at compile time); other axes may be symbolic.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    constant,
    dtype_of,
    from_compute,
    in_dtype,
    rank_of,
    requires,
    to_compute,
)
from requant.backends.tvm.lowering.cast import convert
from requant.ir import dtypes
from requant.ir.graph import Node
from requant.ir.ops.resize import axis_taps, resize_geometry
from tvm import relax

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


def _resized_axes(node: Node) -> list[int]:
    """The axes whose extent or values the node changes (a scale of exactly 1 outside
    tf_crop_and_resize leaves its axis as it is, symbolic or not)."""
    rank = node.inputs[0].type.rank
    axes = node.attrs.get("axes")
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    scales = _const(node, 2)
    if scales is None or scales.size == 0 or node.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        return axes
    return [a for a, s in zip(axes, scales.ravel()) if float(s) != 1.0]


def _check(node: Node) -> str | None:
    for i in (1, 2, 3):
        v = node.inputs[i] if i < len(node.inputs) else None
        if v is not None and v.const is None:
            name = ("roi", "scales", "sizes")[i - 1]
            return f"Resize's {name} must be a constant for the TVM backend (it fixes the output shape and weights)"
    shape = node.inputs[0].type.shape
    if any(not isinstance(shape[a], int) for a in _resized_axes(node)):
        return "Resize needs the extents of the axes it resizes static in the TVM backend"
    return None


def _const(node: Node, i: int) -> np.ndarray | None:
    v = node.inputs[i] if i < len(node.inputs) else None
    return None if v is None else np.asarray(v.const)


@LOWERINGS.lowers("Resize")
@requires(_check)
def _resize(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = in_dtype(node)
    shape = list(node.inputs[0].type.shape)
    # only the resized extents matter to the geometry; a symbolic one it keeps stands in as 1
    static = tuple(d if isinstance(d, int) else 1 for d in shape)
    geo = resize_geometry(static, dict(a), _const(node, 2), _const(node, 3), _const(node, 1))
    nearest = a["mode"] == "nearest"
    x = ins[0]
    if not nearest:
        x = to_compute(ctx, x, dt) if dt.is_float else ctx.emit(R.astype(x, "float64"))
    for axis, scale, window in zip(geo.axes, geo.scales, geo.rois):
        n_in, n_out = static[axis], geo.out_shape[axis]
        cropped = a["coordinate_transformation_mode"] == "tf_crop_and_resize" and window != (0.0, 1.0)
        if n_out == n_in and scale == 1.0 and not cropped:
            continue
        x = _resize_axis(ctx, x, axis, axis_taps(n_in, n_out, scale, window, a), float(a["extrapolation_value"]), dt)
    if nearest:
        return x
    if dt.is_float:
        return from_compute(ctx, x, dt)
    return convert(ctx, ctx.emit(R.round(x)), dtypes.float64, dt)


def _resize_axis(ctx: LowerContext, x: relax.Expr, axis: int, taps: Any, fill: float, dt: Any) -> relax.Expr:
    rank = rank_of(x)
    cdt = dtype_of(x)
    if taps.weight is None:
        y = ctx.emit(R.take(x, constant(taps.index[:, 0], "int64"), axis=axis, mode="clip"))
    else:
        gathered = ctx.emit(R.take(x, constant(taps.index, "int64"), axis=axis, mode="clip"))
        w = taps.weight.reshape(taps.weight.shape + (1,) * (rank - axis - 1))
        y = ctx.emit(R.sum(R.multiply(gathered, constant(w, cdt)), axis=[axis + 1]))
    if taps.extrapolate is not None and taps.extrapolate.any():
        mask = taps.extrapolate.reshape((-1,) + (1,) * (rank - axis - 1))
        value = fill if cdt.startswith("float") or not dt.is_integer else int(np.clip(np.round(fill), *dt.int_range))
        y = ctx.emit(R.where(constant(mask, "bool"), constant(value, cdt), y))
    return y
