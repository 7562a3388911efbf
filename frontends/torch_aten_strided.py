"""Lowering of aten.as_strided, which torch.export leaves where a view's strides cannot be
said with view ops: most often a re-striding of a tensor into the same shape (a
channels-last ConvNeXt's `mean(..., keepdim=True)` before its head), sometimes a
window over the input's storage.

as_strided(x, size, stride, offset) reads, for output index i, the element at storage
position offset + sum(i_k * stride_k) of x's storage. A graph value has no storage, but
torch's metadata gives x's own strides and offset, so every storage position x holds
maps back to one of x's elements:
- same shape, offset and strides on every axis of extent above 1 (the strides of
  extent-1 axes never matter): the values are x's, and no node is made (symbolic
  extents allowed);
- otherwise, for static shapes, a Gather with constant indices from x flattened
  row-major (a Reshape alone when they are 0, 1, 2, ... in order). Positions x does
  not hold (a window past its storage) are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from requant.frontends.torch_aten_common import Cx, same_dim, static_shape
from requant.frontends.torch_lowering import NotLowerable, lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


def _is_restride(shape: Sequence[Any], strides: Sequence[Any], size: Sequence[Any], stride: Sequence[Any]) -> bool:
    """Same extents, and the same stride wherever an extent may exceed 1."""
    if len(shape) != len(size) or not all(same_dim(a, b) for a, b in zip(shape, size)):
        return False
    for extent, a, b in zip(size, strides, stride):
        if Cx.static_int(extent) == 1:
            continue
        if not same_dim(a, b):
            return False
    return True


def storage_gather_indices(shape: Sequence[int], strides: Sequence[int], offset: int, size: Sequence[int],
                           stride: Sequence[int], storage_offset: int) -> np.ndarray:
    """For each element of the as_strided result (shape `size`), the row-major flat index
    of the element of x (shape `shape`, strides `strides`, offset `offset`) at the same
    storage position; ValueError when x holds no element there."""
    grid = np.indices(tuple(shape), dtype=np.int64).reshape(len(shape), -1)
    positions = offset + (np.asarray(strides, np.int64)[:, None] * grid).sum(axis=0) if len(shape) else \
        np.array([offset], np.int64)
    lookup = dict(zip(positions.tolist(), range(positions.size)))
    out_grid = np.indices(tuple(size), dtype=np.int64).reshape(len(size), -1)
    wanted = storage_offset + (np.asarray(stride, np.int64)[:, None] * out_grid).sum(axis=0) if len(size) else \
        np.array([storage_offset], np.int64)
    missing = [p for p in wanted.tolist() if p not in lookup]
    if missing:
        raise ValueError(f"storage position {missing[0]} is not an element of the input")
    return np.array([lookup[p] for p in wanted.tolist()], dtype=np.int64).reshape(tuple(size))


@lowers("aten.as_strided.default", "aten.as_strided_copy.default")
def as_strided(cx: Cx, x: Any, size: Sequence[Any], stride: Sequence[Any], storage_offset: Any = None) -> Value:
    v = cx.value(x)
    meta = cx.val(x)
    size, stride = [cx.val(d) for d in size], [cx.val(d) for d in stride]  # SymInts, not FX nodes
    offset = cx.static_int(storage_offset) if storage_offset is not None else int(meta.storage_offset())
    own_offset = cx.static_int(meta.storage_offset())
    if offset == own_offset and _is_restride(meta.shape, meta.stride(), size, stride):
        return v
    shape, strides = static_shape(meta.shape), static_shape(meta.stride())
    out_size, out_stride = static_shape(size), static_shape(stride)
    if None in (shape, strides, out_size, out_stride, offset, own_offset):
        raise NotLowerable("as_strided other than a re-striding, on symbolic shapes")
    try:
        idx = storage_gather_indices(shape, strides, own_offset, out_size, out_stride, offset)
    except ValueError as exc:
        raise NotLowerable(f"as_strided reading outside its input: {exc}") from None
    if idx.size == int(np.prod(shape)) and np.array_equal(idx.reshape(-1), np.arange(idx.size)):
        return cx.emit("Reshape", v, cx.const(np.array(out_size, np.int64)))
    flat = cx.emit("Reshape", v, cx.const(np.array([-1], np.int64)))
    return cx.emit("Gather", flat, cx.const(idx), axis=0)
