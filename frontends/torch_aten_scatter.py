"""Lowerings of aten's out-of-place slice writes, what torch.export makes of
`y[:, a:b] = src` and `y[:, i] = src` (Swin's shifted-window mask is a few dozen of
them): slice_scatter and select_scatter.

- slice_scatter(x, src, dim, start, end, step) is x with x[start:end:step] along `dim`
  replaced by src. With step 1 it is Concat(x[:start], src, x[end:]) along dim (the
  slices of x left out where empty); with a larger step, a ScatterND of src's rows into
  the rows start, start + step, ... of x with that axis moved to the front.
- select_scatter(x, src, dim, index) is slice_scatter of src unsqueezed at dim into
  [index, index + 1).

start, end and index follow Python's slicing on the axis (negative counts from the end,
clamped to the extent); they must be known at conversion time, and so must the axis's
extent, except that a start of 0 and an end at or past the extent need neither.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from requant.frontends.torch_aten_common import Cx, norm_dim
from requant.frontends.torch_lowering import INT64_MAX, NotLowerable, lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


def _bounds(cx: Cx, x: Any, axis: int, start: Any, end: Any, step: int) -> tuple[int, int | None]:
    """(start, end) on the axis as Python's slice gives them; end None: to the end."""
    extent = cx.static_int(cx.shape(x)[axis])
    s = 0 if start is None else cx.static_int(start)
    e = INT64_MAX if end is None else cx.static_int(end)
    if s is None or e is None:
        raise NotLowerable("slice_scatter with bounds computed at run time")
    if extent is None:
        if s < 0 or e < 0 or (e < INT64_MAX and step != 1):
            raise NotLowerable("slice_scatter into an axis of symbolic extent with bounds counted from its end")
        return s, None if e >= INT64_MAX else e
    s, e, _ = slice(s, e, step).indices(extent)
    return s, (None if e >= extent else max(e, s))


def _scatter_slice(cx: Cx, x: Any, src: Value, axis: int, start: Any, end: Any, step: int) -> Value:
    v = cx.value(x)
    if step < 1:
        raise NotLowerable(f"slice_scatter with step {step}")
    s, e = _bounds(cx, x, axis, start, end, step)
    if step == 1:
        parts = []
        if s > 0:
            parts.append(cx.emit("Slice", v, cx.int_vector([0]), cx.int_vector([s]), cx.axes([axis])))
        parts.append(src)
        if e is not None:
            parts.append(cx.emit("Slice", v, cx.int_vector([e]), cx.int_vector([INT64_MAX]), cx.axes([axis])))
        return parts[0] if len(parts) == 1 else cx.emit("Concat", *parts, axis=axis)
    stop = cx.static_int(cx.shape(x)[axis]) if e is None else e
    rows = np.arange(s, stop, step, dtype=np.int64)
    if rows.size == 0:
        return v
    perm = [axis] + [d for d in range(v.type.rank) if d != axis]
    front = v if axis == 0 else cx.emit("Transpose", v, perm=perm)
    updates = src if axis == 0 else cx.emit("Transpose", src, perm=perm)
    out = cx.emit("ScatterND", front, cx.const(rows.reshape(-1, 1)), updates)
    return out if axis == 0 else cx.emit("Transpose", out, perm=list(np.argsort(perm)))


@lowers("aten.slice_scatter.default")
def slice_scatter(cx: Cx, x: Any, src: Any, dim: int = 0, start: Any = None, end: Any = None, step: Any = 1) -> Value:
    axis = norm_dim(int(dim), cx.rank(x))
    step_value = cx.static_int(step)
    if step_value is None:
        raise NotLowerable("slice_scatter with a step computed at run time")
    return _scatter_slice(cx, x, cx.tensor(src, cx.out_dtype), axis, start, end, step_value)


@lowers("aten.select_scatter.default")
def select_scatter(cx: Cx, x: Any, src: Any, dim: int, index: Any) -> Value:
    axis = norm_dim(int(dim), cx.rank(x))
    i = cx.static_int(index)
    if i is None:
        raise NotLowerable("select_scatter at an index computed at run time")
    if i < 0:
        extent = cx.static_int(cx.shape(x)[axis])
        if extent is None:
            raise NotLowerable("select_scatter at a negative index into an axis of symbolic extent")
        i += extent
    row = cx.emit("Unsqueeze", cx.tensor(src, cx.out_dtype), cx.axes([axis]))
    return _scatter_slice(cx, x, row, axis, i, i + 1, 1)
