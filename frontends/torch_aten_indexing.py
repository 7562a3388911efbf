"""Lowerings of the aten ops that select, join or lay out elements: repeat, cat /
concat, stack, split / split_with_sizes, unbind, slice, narrow, select, flip,
constant_pad_nd, tril / triu, embedding, index_select, gather, index / _unsafe_index.

Semantics particular to these lowerings:
- cat skips the legacy empty 1-D tensors torch still accepts next to higher ranks;
  cat and stack cast every part to the result dtype.
- split, split_with_sizes and unbind take their sizes from torch's result metadata, so
  a split of a symbolic extent is refused; one part is the input itself.
- A slice of the whole axis (start 0, step 1, end at or past the extent) gives no node.
  A missing end is INT64_MAX, which Slice clamps.
- flip is a Slice with step -1 from -1 to INT64_MIN on each flipped axis.
- constant_pad_nd's pad list pairs up from the last axis backwards, as torch's does.
- index with one index tensor is Gather; with several it is GatherND over the indexed
  axes moved to the front, after broadcasting the index tensors against each other.
  Adjacent indexed axes are moved back into place afterwards, as torch keeps them.
  Boolean-mask indexing (a data-dependent size) is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from requant.frontends.torch_aten_common import (
    Cx,
    norm_dim,
    norm_dims,
    result_has_type_of,
    same_shape,
    static_shape,
)
from requant.frontends.torch_lowering import INT64_MAX, NotLowerable, lowers
from requant.ir import dtypes
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


@lowers("aten.repeat.default")
def repeat(cx: Cx, x: Any, repeats: Sequence[Any]) -> Value:
    v = cx.value(x)
    extra = len(repeats) - v.type.rank
    if extra > 0:
        v = cx.emit("Unsqueeze", v, cx.axes(list(range(extra))))
    return cx.emit("Tile", v, cx.int_vector(list(repeats)))


@lowers("aten.cat.default", "aten.concat.default")
def cat(cx: Cx, tensors: Sequence[Any], dim: int = 0) -> Value:
    dt = cx.out_dtype
    rank = cx.out.dim()
    # torch.cat still accepts (and skips) legacy empty 1-D tensors next to higher ranks
    parts = [t for t in tensors if not (cx.rank(t) == 1 and cx.static_int(cx.shape(t)[0]) == 0 and rank > 1)]
    values = [cx.tensor(t, dt) for t in parts]
    if len(values) == 1:
        return values[0]
    return cx.emit("Concat", *values, axis=norm_dim(int(dim), rank))


@lowers("aten.stack.default")
def stack(cx: Cx, tensors: Sequence[Any], dim: int = 0) -> Value:
    dt = cx.out_dtype
    axis = norm_dim(int(dim), cx.out.dim())
    values = [cx.emit("Unsqueeze", cx.tensor(t, dt), cx.axes([axis])) for t in tensors]
    return values[0] if len(values) == 1 else cx.emit("Concat", *values, axis=axis)


def _split(cx: Cx, x: Any, sizes: list[int], dim: int) -> tuple:
    v = cx.value(x)
    axis = norm_dim(int(dim), v.type.rank)
    if len(sizes) == 1:
        return (v,)
    return cx.emit("Split", v, cx.const(np.array(sizes, dtype=np.int64)), axis=axis, _outputs=len(sizes))


def _output_sizes(cx: Cx, dim: int) -> list[int]:
    sizes = [cx.static_int(t.shape[norm_dim(dim, t.dim())]) for t in cx.out]
    if any(s is None for s in sizes):
        raise NotLowerable("split of a symbolic extent")
    return sizes


@lowers("aten.split_with_sizes.default", "aten.split_with_sizes_copy.default")
def split_with_sizes(cx: Cx, x: Any, split_sizes: Sequence[Any], dim: int = 0) -> tuple:
    return _split(cx, x, _output_sizes(cx, int(dim)), dim)


@lowers("aten.split.Tensor", "aten.split_copy.Tensor")
def split(cx: Cx, x: Any, split_size: Any, dim: int = 0) -> tuple:
    return _split(cx, x, _output_sizes(cx, int(dim)), dim)


@lowers("aten.unbind.int", "aten.unbind_copy.int")
def unbind(cx: Cx, x: Any, dim: int = 0) -> tuple:
    axis = norm_dim(int(dim), cx.rank(x))
    parts = _split(cx, x, [1] * len(cx.out), axis)
    return tuple(cx.emit("Squeeze", p, cx.axes([axis])) for p in parts)


@lowers("aten.slice.Tensor", "aten.slice_copy.Tensor")
def slice_(cx: Cx, x: Any, dim: int = 0, start: Any = None, end: Any = None, step: Any = 1) -> Value:
    v = cx.value(x)
    axis = norm_dim(int(dim), v.type.rank)
    start = 0 if start is None else start
    end = INT64_MAX if end is None else end
    s_start, s_end, s_step = cx.static_int(start), cx.static_int(end), cx.static_int(step)
    extent = cx.static_int(cx.shape(x)[axis])
    whole = s_start == 0 and s_step == 1 and s_end is not None and (
        s_end >= INT64_MAX or (extent is not None and s_end >= extent))
    if whole or result_has_type_of(cx, x) and s_start == 0 and s_step == 1:
        return v
    return cx.emit("Slice", v, cx.int_vector([start]), cx.int_vector([end]), cx.axes([axis]),
                   cx.int_vector([step]))


@lowers("aten.narrow.default")
def narrow(cx: Cx, x: Any, dim: int, start: Any, length: Any) -> Value:
    v = cx.value(x)
    axis = norm_dim(int(dim), v.type.rank)
    begin = cx.scalar_i64(start)
    stop = cx.emit("Add", begin, cx.scalar_i64(length))
    one = cx.axes([0])
    return cx.emit("Slice", v, cx.emit("Unsqueeze", begin, one), cx.emit("Unsqueeze", stop, one), cx.axes([axis]))


@lowers("aten.select.int", "aten.select_copy.int")
def select(cx: Cx, x: Any, dim: int, index: Any) -> Value:
    v = cx.value(x)
    return cx.emit("Gather", v, cx.scalar_i64(index), axis=norm_dim(int(dim), v.type.rank))


@lowers("aten.flip.default")
def flip(cx: Cx, x: Any, dims: Sequence[int]) -> Value:
    v = cx.value(x)
    axes = norm_dims(list(dims), v.type.rank)
    n = len(axes)
    return cx.emit("Slice", v, cx.const(np.full(n, -1, np.int64)), cx.const(np.full(n, -INT64_MAX - 1, np.int64)),
                   cx.axes(axes), cx.const(np.full(n, -1, np.int64)))


@lowers("aten.constant_pad_nd.default")
def constant_pad_nd(cx: Cx, x: Any, pad: Sequence[Any], value: float = 0) -> Value:
    v = cx.value(x)
    rank = v.type.rank
    pairs = len(pad) // 2
    axes = [rank - 1 - i for i in range(pairs)]
    begins, ends = list(pad[0::2]), list(pad[1::2])
    return cx.emit("Pad", v, cx.int_vector(begins + ends), cx.const(np.asarray(value, v.dtype.np)), cx.axes(axes),
                   mode="constant")


@lowers("aten.tril.default", "aten.triu.default")
def trilu(cx: Cx, x: Any, diagonal: Any = 0) -> Value:
    upper = int(cx.meta["torch_op"].startswith("aten.triu"))
    return cx.emit("Trilu", cx.value(x), cx.scalar_i64(diagonal), upper=upper)


# -- gathering -----------------------------------------------------------------------------


@lowers("aten.embedding.default")
def embedding(cx: Cx, weight: Any, indices: Any, padding_idx: int = -1, scale_grad_by_freq: bool = False,
              sparse: bool = False) -> Value:
    return cx.emit("Gather", cx.value(weight), cx.value(indices), axis=0)


@lowers("aten.index_select.default")
def index_select(cx: Cx, x: Any, dim: int, index: Any) -> Value:
    v = cx.value(x)
    return cx.emit("Gather", v, cx.value(index), axis=norm_dim(int(dim), v.type.rank))


@lowers("aten.gather.default")
def gather(cx: Cx, x: Any, dim: int, index: Any, *, sparse_grad: bool = False) -> Value:
    v = cx.value(x)
    return cx.emit("GatherElements", v, cx.value(index), axis=norm_dim(int(dim), v.type.rank))


def _broadcast_indices(cx: Cx, indices: list[Value], vals: list[Any]) -> list[Value]:
    """Index tensors broadcast against each other, as advanced indexing does."""
    shapes = [tuple(val.shape) for val in vals]
    if all(same_shape(s, shapes[0]) for s in shapes):
        return indices
    statics = [static_shape(s) for s in shapes]
    if all(s is not None for s in statics):
        target = list(np.broadcast_shapes(*[tuple(s) for s in statics]))
        shape = cx.const(np.array(target, dtype=np.int64))
        return [i if list(s) == target else cx.emit("Expand", i, shape) for i, s in zip(indices, statics)]
    # symbolic extents: adding zeros shaped like every operand broadcasts to the common shape
    zero = cx.const(np.zeros((), np.int64))
    total = cx.emit("Mul", indices[0], zero)
    for i in indices[1:]:
        total = cx.emit("Add", total, cx.emit("Mul", i, zero))
    return [cx.emit("Add", i, total) for i in indices]


@lowers("aten.index.Tensor", "aten._unsafe_index.Tensor")
def index(cx: Cx, x: Any, indices: Sequence[Any]) -> Value:
    v = cx.value(x)
    dims = [d for d, i in enumerate(indices) if i is not None]
    vals = [cx.val(indices[d]) for d in dims]
    if any(val.dtype == torch.bool for val in vals):
        raise NotLowerable("boolean-mask indexing (its result size depends on the data)")
    idx = [cx.cast(cx.value(indices[d]), dtypes.int64) for d in dims]
    if len(dims) == 1:
        return cx.emit("Gather", v, idx[0], axis=dims[0])
    idx = _broadcast_indices(cx, idx, vals)
    n_b = max(val.dim() for val in vals)
    stacked = cx.emit("Concat", *[cx.emit("Unsqueeze", i, cx.axes([-1])) for i in idx], axis=-1)
    rest = [d for d in range(v.type.rank) if d not in dims]
    perm = dims + rest
    data = v if perm == list(range(v.type.rank)) else cx.emit("Transpose", v, perm=perm)
    out = cx.emit("GatherND", data, stacked)
    adjacent = dims == list(range(dims[0], dims[0] + len(dims)))
    if adjacent and dims[0] > 0:
        # torch keeps adjacent indexed axes in place; GatherND put them first
        before = dims[0]
        back = [n_b + i for i in range(before)] + list(range(n_b)) + \
            [n_b + before + j for j in range(len(rest) - before)]
        out = cx.emit("Transpose", out, perm=back)
    return out
