"""Lowerings of the indexing family: Concat, Split, Slice, Gather, GatherElements,
GatherND, ScatterElements, ScatterND, Pad, Tile, Trilu.

- Negative indices count from the end. Gather indices out of range (the interpreter
  raises; ONNX leaves it undefined) are clamped to the axis, never read out of bounds
  (TVM's default "fast" take would).
- Split's sizes, Slice's starts/ends/axes/steps, Pad's pads and axes, Tile's repeats and
  Trilu's k must be graph constants; GatherND and ScatterND need the last dim of their
  indices static.
- Pad: negative pads crop first; a fill value float32 cannot carry (bool, integers of
  magnitude 2**24 and more) or one computed at run time is put in with a `where` over
  the padded region.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tvm import relax, tirx

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    const_ints,
    const_scalar,
    constant,
    dims_of,
    dtype_of,
    elementwise_te,
    normalize_axis,
    pad_width,
    rank_of,
    requires,
    requires_const,
    static_int,
)
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


@LOWERINGS.lowers("Concat")
def _concat(ctx: LowerContext, node: Node, ins: list) -> Any:
    if len(ins) == 1:
        return ins[0]
    return ctx.emit(R.concat(ins, axis=int(ctx.attrs(node)["axis"])))


@LOWERINGS.lowers("Split")
@requires_const(1)
def _split(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    dims = dims_of(x)
    axis = normalize_axis(int(ctx.attrs(node)["axis"]), len(dims))
    sizes = const_ints(node, 1)
    if sizes is None:
        sizes = [static_int(ctx.dim(o.type.shape[axis])) if o.type.shape is not None else None for o in node.outputs]
        if any(s is None for s in sizes):
            n = len(node.outputs)
            if len(node.outputs) == 1:
                return [x]
            tup = ctx.emit(R.split(x, n, axis=axis))
            return [ctx.emit(relax.TupleGetItem(tup, i)) for i in range(n)]
    if len(sizes) == 1:
        return [x]
    cuts = list(np.cumsum(sizes)[:-1].tolist())
    tup = ctx.emit(R.split(x, [int(c) for c in cuts], axis=axis))
    return [ctx.emit(relax.TupleGetItem(tup, i)) for i in range(len(sizes))]


@LOWERINGS.lowers("Slice")
@requires_const(1, 2, 3, 4)
def _slice(ctx: LowerContext, node: Node, ins: list) -> Any:
    from requant.ir.shapes import slice_range

    x = ins[0]
    dims = dims_of(x)
    starts, ends = const_ints(node, 1), const_ints(node, 2)
    axes = const_ints(node, 3) or list(range(len(starts)))
    steps = const_ints(node, 4) or [1] * len(starts)
    ax_l, b_l, e_l, s_l = [], [], [], []
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = normalize_axis(a, len(dims))
        n = static_int(dims[a])
        if n is not None:
            s, e = slice_range(n, s, e, st)
            if (st > 0 and e < s) or (st < 0 and e > s):
                e = s  # empty
            if st < 0 and e < 0:
                e = -n - 1  # one before the first element
        else:
            lim = 2**31 - 1
            s, e = max(min(s, lim), -lim), max(min(e, lim), -lim)
        ax_l.append(a)
        b_l.append(int(s))
        e_l.append(int(e))
        s_l.append(int(st))
    return ctx.emit(R.strided_slice(x, axes=ax_l, begin=b_l, end=e_l, strides=s_l))


def _norm_index(ctx: LowerContext, idx: relax.Expr, n: Any) -> relax.Expr:
    """Negative indices count from the end (`n` may be symbolic)."""
    dt = dtype_of(idx)

    def fix(i: Any) -> Any:
        size = tirx.Cast(dt, n) if not isinstance(n, int) else tirx.const(n, dt)
        return tirx.Select(i < tirx.const(0, dt), i + size, i)

    return elementwise_te(ctx, fix, [idx], dt, "wrap_index")


@LOWERINGS.lowers("Gather")
def _gather(ctx: LowerContext, node: Node, ins: list) -> Any:
    x, idx = ins
    dims = dims_of(x)
    axis = normalize_axis(int(ctx.attrs(node)["axis"]), len(dims))
    idx = _norm_index(ctx, idx, dims[axis])
    return ctx.emit(R.take(x, idx, axis=axis, mode="clip"))


@LOWERINGS.lowers("GatherElements")
def _gather_elements(ctx: LowerContext, node: Node, ins: list) -> Any:
    x, idx = ins
    dims = dims_of(x)
    axis = normalize_axis(int(ctx.attrs(node)["axis"]), len(dims))
    idx = _norm_index(ctx, idx, dims[axis])
    return ctx.emit(R.gather_elements(x, idx, axis=axis))


def _gather_nd_check(node: Node) -> str | None:
    t = node.inputs[1].type
    if t.shape is None or not isinstance(t.shape[-1], int):
        return "GatherND needs the last dim of indices to be static in the TVM backend"
    return None


def _norm_nd_indices(ctx: LowerContext, idx: relax.Expr, dims: list[Any], first: int) -> relax.Expr:
    k = static_int(dims_of(idx)[-1])
    lim = [static_int(d) for d in dims[first:first + k]]
    if any(d is None for d in lim):
        return idx
    size = constant(np.array(lim, np.int64), dtype_of(idx))
    return ctx.emit(R.where(R.less(idx, constant(0, dtype_of(idx))), R.add(idx, size), idx))


@LOWERINGS.lowers("GatherND")
@requires(_gather_nd_check)
def _gather_nd(ctx: LowerContext, node: Node, ins: list) -> Any:
    x, idx = ins
    b = int(ctx.attrs(node)["batch_dims"])
    idx = _norm_nd_indices(ctx, idx, dims_of(x), b)
    return ctx.emit(R.gather_nd(x, idx, batch_dims=b))


_SCATTER_REDUCTIONS = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


@LOWERINGS.lowers("ScatterElements")
def _scatter_elements(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    x, idx, upd = ins
    dims = dims_of(x)
    axis = normalize_axis(int(a["axis"]), len(dims))
    idx = _norm_index(ctx, idx, dims[axis])
    return ctx.emit(R.scatter_elements(x, idx, upd, axis=axis, reduction=_SCATTER_REDUCTIONS[a["reduction"]]))


@LOWERINGS.lowers("ScatterND")
@requires(_gather_nd_check)
def _scatter_nd(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    x, idx, upd = ins
    idx = _norm_nd_indices(ctx, idx, dims_of(x), 0)
    return ctx.emit(R.scatter_nd(x, idx, upd, reduction=_SCATTER_REDUCTIONS[a["reduction"]]))


def _pad_check(node: Node) -> str | None:
    for i in (1, 3):
        if i < len(node.inputs) and node.inputs[i] is not None and node.inputs[i].const is None:
            return "pads and axes must be constants for the TVM backend"
    if node.inputs[0].type.shape is None:
        return "Pad needs an input of known rank in the TVM backend"
    return None


@LOWERINGS.lowers("Pad")
@requires(_pad_check)
def _pad(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    rank = rank_of(x)
    pads = const_ints(node, 1)
    axes = const_ints(node, 3)
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    n = len(axes)
    begin, end = [0] * rank, [0] * rank
    for j, a in enumerate(axes):
        begin[a], end[a] = pads[j], pads[j + n]
    # negative pads crop first
    dims = dims_of(x)
    crop_axes = [a for a in range(rank) if begin[a] < 0 or end[a] < 0]
    if crop_axes:
        x = ctx.emit(R.strided_slice(
            x, axes=crop_axes, begin=[max(-begin[a], 0) for a in crop_axes],
            end=[dims[a] + end[a] if end[a] < 0 else dims[a] for a in crop_axes]))
    begin = [max(b, 0) for b in begin]
    end = [max(e, 0) for e in end]
    mode = ctx.attrs(node)["mode"]
    if mode == "wrap":
        return ctx.emit(R.nn.pad(x, pad_width(begin, end), pad_mode="circular"))
    if mode == "constant":
        cv = ins[2] if len(ins) > 2 and ins[2] is not None else None
        if cv is None:
            value: Any = 0.0
        elif node.inputs[2].const is not None:
            value = float(const_scalar(node, 2))
        else:
            return _pad_constant_tensor(ctx, x, begin, end, cv)
        if dtype_of(x) in ("bool",) or dtype_of(x).startswith(("int", "uint")) and abs(value) >= 2**24:
            return _pad_constant_tensor(ctx, x, begin, end, constant(value, dtype_of(x)))
        return ctx.emit(R.nn.pad(x, pad_width(begin, end), pad_mode="constant", pad_value=value))
    return ctx.emit(R.nn.pad(x, pad_width(begin, end), pad_mode={"reflect": "reflect", "edge": "replicate"}[mode]))


def _pad_constant_tensor(ctx: LowerContext, x: relax.Expr, begin: list[int], end: list[int], cv: relax.Expr) -> Any:
    """Pad with zeros, then put the fill value where the padding is."""
    dt = dtype_of(x)
    padded = ctx.emit(R.nn.pad(x, pad_width(begin, end), pad_mode="constant", pad_value=0.0))
    ones = ctx.emit(R.ones_like(R.astype(x, "int8")))
    inside = ctx.emit(R.nn.pad(ones, pad_width(begin, end), pad_mode="constant", pad_value=0.0))
    fill = ctx.emit(R.reshape(R.astype(cv, dt), ()))
    return ctx.emit(R.where(R.astype(inside, "bool"), padded, fill))


@LOWERINGS.lowers("Tile")
@requires_const(1)
def _tile(ctx: LowerContext, node: Node, ins: list) -> Any:
    return ctx.emit(R.tile(ins[0], const_ints(node, 1)))


@LOWERINGS.lowers("Trilu")
@requires_const(1)
def _trilu(ctx: LowerContext, node: Node, ins: list) -> Any:
    k = int(const_scalar(node, 1)) if len(node.inputs) > 1 and node.inputs[1] is not None else 0
    fn = R.triu if ctx.attrs(node)["upper"] else R.tril
    return ctx.emit(fn(ins[0], k))
