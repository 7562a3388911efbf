"""Lowerings of aten's view and layout ops: view / _unsafe_view / reshape / view_copy,
flatten, permute, transpose, t / numpy_T, unsqueeze, squeeze, expand.

Semantics particular to these lowerings:
- A view to a static shape is Reshape with a constant shape. Under symbolic dims, a
  size equal to the input's extent at the same position becomes 0 (copy that extent)
  and a single remaining unknown becomes -1, so the usual transformer views still get
  a constant shape; only what is left is computed with Shape/Gather/Concat.
- Views, permutes, transposes and expands that leave the tensor as it is (same shape,
  identity permutation, t of a rank < 2 tensor) give no node.
- squeeze removes only the axes whose extent is statically 1: torch leaves an axis of
  another extent alone, where the IR's Squeeze would fail.
- expand writes 1 for every extent it keeps (torch's -1, or the input's own size),
  since the IR's Expand broadcasts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch.fx as fx

from requant.frontends.torch_aten_common import Cx, norm_dim, norm_dims, same_dim, same_shape, static_shape
from requant.frontends.torch_lowering import lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


def _dim_of(cx: Cx, item: Any) -> Any:
    """A size argument as an int or a SymInt (for comparing with torch's shapes)."""
    if isinstance(item, fx.Node):
        return item.meta.get("val")
    return item


def _reshape_to(cx: Cx, v: Value, items: list[Any], in_shape: Sequence[Any]) -> Value:
    """Reshape `v` to the torch size list `items` (ints, SymInt nodes, 0-d values).

    Static results get a constant shape. Otherwise an item equal to the input's extent
    at the same position becomes 0 (ONNX: copy that extent) and a single remaining
    unknown becomes -1, so the usual transformer views still get a constant shape; what
    is left goes through Shape/Gather/Concat."""
    out_static = static_shape(cx.out.shape)
    if out_static is not None:
        if list(v.shape or ()) == out_static and v.type.is_static:
            return v
        return cx.emit("Reshape", v, cx.const(np.array(out_static, dtype=np.int64)))
    if same_shape(in_shape, cx.out.shape):
        return v
    statics = [cx.static_int(i) if not isinstance(i, Value) else None for i in items]
    if 0 not in statics:
        for i, item in enumerate(items):
            if statics[i] is None and i < len(in_shape) and not isinstance(item, Value) \
                    and same_dim(_dim_of(cx, item), in_shape[i]):
                items[i], statics[i] = 0, 0
    unknown = [i for i, s in enumerate(statics) if s is None]
    if len(unknown) == 1 and -1 not in statics:
        items[unknown[0]] = -1
    return cx.emit("Reshape", v, cx.int_vector(items))


@lowers("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.view_copy.default")
def view(cx: Cx, x: Any, size: Sequence[Any]) -> Value:
    return _reshape_to(cx, cx.value(x), list(size), cx.shape(x))


@lowers("aten.flatten.using_ints")
def flatten(cx: Cx, x: Any, start_dim: int = 0, end_dim: int = -1) -> Value:
    v = cx.value(x)
    rank = v.type.rank
    if rank == 0:
        return cx.emit("Reshape", v, cx.const(np.array([1], dtype=np.int64)))
    start, end = norm_dim(start_dim, rank), norm_dim(end_dim, rank)
    in_shape = cx.shape(x)
    items: list[Any] = [d if cx.static_int(d) is not None else cx.dim_size(v, i) for i, d in enumerate(in_shape)]
    items = items[:start] + [-1] + items[end + 1:]
    return _reshape_to(cx, v, items, in_shape)


@lowers("aten.permute.default", "aten.permute_copy.default")
def permute(cx: Cx, x: Any, dims: Sequence[int]) -> Value:
    v = cx.value(x)
    perm = norm_dims(list(dims), v.type.rank)
    if perm == sorted(perm):
        return v
    return cx.emit("Transpose", v, perm=perm)


@lowers("aten.transpose.int")
def transpose(cx: Cx, x: Any, dim0: int, dim1: int) -> Value:
    v = cx.value(x)
    rank = v.type.rank
    perm = list(range(rank))
    a, b = norm_dim(dim0, rank), norm_dim(dim1, rank)
    if a == b:
        return v
    perm[a], perm[b] = perm[b], perm[a]
    return cx.emit("Transpose", v, perm=perm)


@lowers("aten.t.default", "aten.numpy_T.default")
def t(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    if v.type.rank < 2:
        return v
    return cx.emit("Transpose", v, perm=list(reversed(range(v.type.rank))))


@lowers("aten.unsqueeze.default", "aten.unsqueeze_copy.default")
def unsqueeze(cx: Cx, x: Any, dim: int) -> Value:
    v = cx.value(x)
    return cx.emit("Unsqueeze", v, cx.axes([norm_dim(int(dim), v.type.rank + 1)]))


@lowers("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default", "aten.squeeze_copy.dims")
def squeeze(cx: Cx, x: Any, dims: Any = None) -> Value:
    v = cx.value(x)
    shape = cx.shape(x)
    candidates = range(len(shape)) if dims is None else norm_dims(dims, max(len(shape), 1))
    # torch leaves an axis whose extent is not 1 alone instead of failing as ONNX does
    axes = [d for d in candidates if d < len(shape) and cx.static_int(shape[d]) == 1]
    if not axes:
        return v
    return cx.emit("Squeeze", v, cx.axes(axes))


@lowers("aten.expand.default", "aten.expand_copy.default")
def expand(cx: Cx, x: Any, size: Sequence[Any], *, implicit: bool = False) -> Value:
    v = cx.value(x)
    in_shape = cx.shape(x)
    if same_shape(in_shape, cx.out.shape):
        return v
    new = len(size) - len(in_shape)
    items: list[Any] = []
    for i, item in enumerate(size):
        j = i - new
        # ONNX Expand broadcasts: a 1 keeps the input's extent, like torch's -1
        keep = cx.static_int(item) == -1 or (j >= 0 and same_dim(_dim_of(cx, item), in_shape[j]))
        items.append(1 if keep else item)
    return cx.emit("Expand", v, cx.int_vector(items))
