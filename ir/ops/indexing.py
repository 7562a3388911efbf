"""Ops that select, join or lay out elements (ONNX semantics, modern input forms):
Concat, Split (opset 18: optional `split` input, `num_outputs` attribute), Slice
(opset 13: starts/ends/axes/steps inputs), Gather, GatherElements, GatherND,
ScatterElements, ScatterND, Pad (opset 19: optional constant_value and axes inputs;
constant/reflect/edge/wrap), Tile, Trilu.

They take every dtype for the data operand. Index inputs are i32 or i64; negative
indices count from the end; an index out of range raises at run time. Slice clamps
starts/ends as ONNX does (INT64_MAX ends, negative steps). Pad's negative pads crop
(the crop happens before the padding). Split with `num_outputs` and an extent that does
not divide gives ceil(d/n)-sized chunks and a smaller last one; with neither `split`
nor `num_outputs` the node's output count splits evenly (opset 13 form).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.ops._common import attr_int, attr_str, check_input, const_ints, const_scalar, same_dtype
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.shapes import dim_add, dim_mul, normalize_axes, normalize_axis, slice_dim, slice_range, unify_dims
from requant.ir.types import Dim, TensorType

__all__: list[str] = []


def _int_list_input(ctx: InferContext, i: int, cls: str = "index") -> tuple[list[int] | None, int | None]:
    """A 1-D integer input: its constant values and its static length."""
    t = check_input(ctx, i, cls)
    if t.rank is not None and t.rank != 1:
        raise ctx.fail(f"{ctx.schema.inputs[i].name} must be 1-D, got {t}")
    values = const_ints(ctx, i)
    n = t.shape[0] if t.shape is not None and isinstance(t.shape[0], int) else None
    return values, (len(values) if values is not None else n)


# ---------------------------------------------------------------- Concat


def _infer_concat(ctx: InferContext) -> list[TensorType]:
    if not ctx.inputs or any(t is None for t in ctx.inputs):
        raise ctx.fail("needs one or more inputs, none omitted")
    dt = same_dtype(ctx, list(range(len(ctx.inputs))))
    axis = attr_int(ctx, "axis")
    shapes = [t.shape for t in ctx.inputs]
    known = [s for s in shapes if s is not None]
    if not known:
        return [TensorType(None, dt)]
    rank = len(known[0])
    if any(len(s) != rank for s in known):
        raise ctx.fail(f"inputs have different ranks: {', '.join(str(t) for t in ctx.inputs)}")
    if rank == 0:
        raise ctx.fail("cannot concatenate scalars")
    a = normalize_axis(axis, rank, "Concat")
    out: list[Dim] = []
    for i in range(rank):
        if i == a:
            total: Dim = 0
            for s in shapes:
                total = None if s is None else dim_add(total, s[i])
            out.append(total)
        else:
            d: Dim = None
            for s in known:
                d = unify_dims(d, s[i], "Concat", f"dims on axis {i}")
            out.append(d)
    return [TensorType(tuple(out), dt)]


define_op(
    "Concat",
    inputs=("inputs*",),
    outputs=("concat_result",),
    attrs={"axis": REQUIRED},
    infer=_infer_concat,
    kernel=lambda ins, attrs, outs: np.concatenate(ins, axis=attrs["axis"]),
)

# ---------------------------------------------------------------- Split


def _split_sizes(d: int, n: int, op: str = "Split") -> list[int]:
    chunk = -(-d // n)
    sizes = [chunk] * (n - 1) + [d - chunk * (n - 1)]
    if sizes[-1] < 0:
        raise ValueError(f"{op}: cannot split an extent of {d} into {n} outputs of {chunk}")
    return sizes


def _infer_split(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    axis = attr_int(ctx, "axis")
    num = ctx.attrs["num_outputs"]
    if num is not None:
        num = attr_int(ctx, "num_outputs", lo=1)
    a = None if x.rank is None else normalize_axis(axis, x.rank, "Split")
    d = None if a is None else x.shape[a]
    sizes: list[Dim] | None
    if ctx.input(1) is not None:
        if num is not None:
            raise ctx.fail("give either the split input or num_outputs, not both")
        split, n = _int_list_input(ctx, 1, "int")
        if split is not None:
            if any(s < 0 for s in split):
                raise ctx.fail(f"negative size in split {split}")
            if isinstance(d, int) and sum(split) != d:
                raise ctx.fail(f"split {split} sums to {sum(split)}, the axis has {d}")
            sizes = list(split)
        else:
            n = n if n is not None else ctx.num_outputs
            if n is None:
                raise ctx.fail("the number of outputs is unknown: give _outputs or a constant split")
            sizes = [None] * n
    else:
        n = num if num is not None else ctx.num_outputs
        if n is None:
            raise ctx.fail("give num_outputs (or a split input, or the node's output count)")
        if isinstance(d, int):
            if num is None and d % n:
                raise ctx.fail(f"an extent of {d} does not split evenly into {n} outputs; give split or num_outputs")
            try:
                sizes = list(_split_sizes(d, n))
            except ValueError as exc:
                raise ctx.fail(str(exc).removeprefix("Split: ")) from None
        else:
            sizes = [d if n == 1 else None] * n
    if ctx.num_outputs is not None and ctx.num_outputs != len(sizes):
        raise ctx.fail(f"gives {len(sizes)} outputs, the node has {ctx.num_outputs}")
    if x.shape is None:
        return [TensorType(None, x.dtype) for _ in sizes]
    return [TensorType(x.shape[:a] + (s,) + x.shape[a + 1 :], x.dtype) for s in sizes]


def _split(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    split = ins[1] if len(ins) > 1 else None
    axis = attrs["axis"] % x.ndim
    if split is not None:
        sizes = [int(s) for s in split]
    else:
        sizes = _split_sizes(x.shape[axis], len(outs))
    if sum(sizes) != x.shape[axis]:
        raise ValueError(f"split sizes {sizes} do not add up to the extent {x.shape[axis]}")
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


define_op(
    "Split",
    inputs=("input", "split?"),
    outputs=("outputs*",),
    attrs={"axis": 0, "num_outputs": None},
    infer=_infer_split,
    kernel=_split,
)

# ---------------------------------------------------------------- Slice


def _infer_slice(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    starts, n = _int_list_input(ctx, 1)
    ends, n2 = _int_list_input(ctx, 2)
    if ctx.inputs[1].dtype != ctx.inputs[2].dtype:
        raise ctx.fail(f"starts ({ctx.inputs[1].dtype}) and ends ({ctx.inputs[2].dtype}) dtypes differ")
    if n is not None and n2 is not None and n != n2:
        raise ctx.fail(f"starts has {n} values, ends has {n2}")
    n = n if n is not None else n2
    axes = steps = None
    axes_known = steps_known = True
    if ctx.input(3) is not None:
        axes, na = _int_list_input(ctx, 3)
        axes_known = axes is not None
        if na is not None and n is not None and na != n:
            raise ctx.fail(f"axes has {na} values, starts has {n}")
    if ctx.input(4) is not None:
        steps, ns = _int_list_input(ctx, 4)
        steps_known = steps is not None
        if ns is not None and n is not None and ns != n:
            raise ctx.fail(f"steps has {ns} values, starts has {n}")
        if steps is not None and 0 in steps:
            raise ctx.fail(f"steps {steps} contain 0")
    if x.shape is None:
        return [TensorType(None, x.dtype)]
    if not axes_known or (axes is None and n is None):
        return [TensorType((None,) * x.rank, x.dtype)]
    if axes is None:
        axes = list(range(n))
    axes = normalize_axes(axes, x.rank, "Slice")
    out = list(x.shape)
    if starts is None or ends is None or not steps_known:
        for a in axes:
            out[a] = None
        return [TensorType(tuple(out), x.dtype)]
    steps = steps if steps is not None else [1] * len(axes)
    for a, s, e, st in zip(axes, starts, ends, steps):
        out[a] = slice_dim(x.shape[a], s, e, st)
    return [TensorType(tuple(out), x.dtype)]


def _slice(ins: list, attrs: dict, outs: list) -> Any:
    x, starts, ends = ins[0], ins[1], ins[2]
    axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(len(starts))
    steps = ins[4] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = int(a) % x.ndim
        s, e = slice_range(x.shape[a], int(s), int(e), int(st))
        index[a] = slice(s, None if e < 0 else e, int(st))
    return x[tuple(index)]


define_op(
    "Slice",
    inputs=("data", "starts", "ends", "axes?", "steps?"),
    outputs=("output",),
    infer=_infer_slice,
    kernel=_slice,
)

# ---------------------------------------------------------------- Gather family


def _infer_gather(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    idx = check_input(ctx, 1, "index")
    axis = attr_int(ctx, "axis")
    if x.shape is None or idx.shape is None:
        return [TensorType(None, x.dtype)]
    if x.rank == 0:
        raise ctx.fail("data must have rank >= 1")
    a = normalize_axis(axis, x.rank, "Gather")
    return [TensorType(x.shape[:a] + idx.shape + x.shape[a + 1 :], x.dtype)]


def _gather(ins: list, attrs: dict, outs: list) -> Any:
    x, idx = ins
    return np.take(x, idx.astype(np.int64), axis=attrs["axis"])


define_op("Gather", inputs=("data", "indices"), outputs=("output",), attrs={"axis": 0}, infer=_infer_gather, kernel=_gather)


def _infer_gather_elements(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    idx = check_input(ctx, 1, "index")
    axis = attr_int(ctx, "axis")
    if x.rank is not None and idx.rank is not None:
        if x.rank != idx.rank:
            raise ctx.fail(f"data {x} and indices {idx} must have the same rank")
        normalize_axis(axis, x.rank, ctx.schema.name)
    return [TensorType(idx.shape, x.dtype)]


def _fix_index(idx: np.ndarray, n: int) -> np.ndarray:
    idx = idx.astype(np.int64)
    if np.any((idx < -n) | (idx >= n)):
        raise IndexError(f"index out of range for an axis of {n}")
    return np.where(idx < 0, idx + n, idx)


def _gather_elements(ins: list, attrs: dict, outs: list) -> Any:
    x, idx = ins
    axis = attrs["axis"] % x.ndim
    return np.take_along_axis(x, _fix_index(idx, x.shape[axis]), axis=axis)


define_op(
    "GatherElements",
    inputs=("data", "indices"),
    outputs=("output",),
    attrs={"axis": 0},
    infer=_infer_gather_elements,
    kernel=_gather_elements,
)


def _infer_gather_nd(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    idx = check_input(ctx, 1, "index")
    if idx.dtype != dtypes.int64:
        raise ctx.fail(f"indices must be i64, got {idx.dtype}")
    b = attr_int(ctx, "batch_dims", lo=0)
    if x.shape is None or idx.shape is None:
        return [TensorType(None, x.dtype)]
    k = idx.shape[-1] if idx.rank else None
    if idx.rank < 1 or x.rank < 1 or b >= min(x.rank, idx.rank):
        raise ctx.fail(f"bad ranks: data {x}, indices {idx}, batch_dims {b}")
    if not isinstance(k, int):
        return [TensorType(None, x.dtype)]
    if k > x.rank - b:
        raise ctx.fail(f"indices address {k} dims, data has {x.rank - b} after the batch dims")
    return [TensorType(idx.shape[:-1] + x.shape[b + k :], x.dtype)]


def _gather_nd(ins: list, attrs: dict, outs: list) -> Any:
    x, idx = ins
    b = attrs["batch_dims"]
    k = idx.shape[-1]
    xf = x.reshape((-1,) + x.shape[b:])
    idf = idx.reshape((xf.shape[0], -1, k))
    res = []
    for i in range(xf.shape[0]):
        sub = xf[i]
        cols = tuple(_fix_index(idf[i][:, j], sub.shape[j]) for j in range(k))
        res.append(sub[cols])
    out = np.stack(res) if res else np.zeros((0,) + x.shape[b + k :], x.dtype)
    return out.reshape(idx.shape[:-1] + x.shape[b + k :])


define_op(
    "GatherND",
    inputs=("data", "indices"),
    outputs=("output",),
    attrs={"batch_dims": 0},
    infer=_infer_gather_nd,
    kernel=_gather_nd,
)

# ---------------------------------------------------------------- Scatter family

_REDUCTIONS = ("none", "add", "mul", "max", "min")


def _infer_scatter_elements(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    idx = check_input(ctx, 1, "index")
    upd = check_input(ctx, 2, "any")
    same_dtype(ctx, [0, 2])
    attr_str(ctx, "reduction", _REDUCTIONS)
    axis = attr_int(ctx, "axis")
    ranks = {t.rank for t in (x, idx, upd) if t.rank is not None}
    if len(ranks) > 1:
        raise ctx.fail(f"data {x}, indices {idx} and updates {upd} must have one rank")
    if x.rank is not None:
        normalize_axis(axis, x.rank, ctx.schema.name)
    return [x]


def _apply_reduction(out: np.ndarray, where: tuple, values: np.ndarray, reduction: str) -> None:
    """Writes in order, so later duplicates win for 'none' (as ONNX's reference does)."""
    if reduction == "none":
        out[where] = values
        return
    fn = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[reduction]
    fn.at(out, where, values)


def _scatter_elements(ins: list, attrs: dict, outs: list) -> Any:
    x, idx, upd = ins
    axis = attrs["axis"] % x.ndim
    out = x.copy()
    idx = _fix_index(idx, x.shape[axis])
    grid = list(np.indices(idx.shape, sparse=False))
    grid[axis] = idx
    where = tuple(g.reshape(-1) for g in grid)
    _apply_reduction(out, where, upd.reshape(-1), attrs["reduction"])
    return out


define_op(
    "ScatterElements",
    inputs=("data", "indices", "updates"),
    outputs=("output",),
    attrs={"axis": 0, "reduction": "none"},
    infer=_infer_scatter_elements,
    kernel=_scatter_elements,
)


def _infer_scatter_nd(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    idx = check_input(ctx, 1, "index")
    if idx.dtype != dtypes.int64:
        raise ctx.fail(f"indices must be i64, got {idx.dtype}")
    check_input(ctx, 2, "any")
    same_dtype(ctx, [0, 2])
    attr_str(ctx, "reduction", _REDUCTIONS)
    return [x]


def _scatter_nd(ins: list, attrs: dict, outs: list) -> Any:
    x, idx, upd = ins
    out = x.copy()
    k = idx.shape[-1]
    flat = idx.reshape(-1, k)
    cols = tuple(_fix_index(flat[:, j], x.shape[j]) for j in range(k))
    _apply_reduction(out, cols, upd.reshape((flat.shape[0],) + x.shape[k:]), attrs["reduction"])
    return out


define_op(
    "ScatterND",
    inputs=("data", "indices", "updates"),
    outputs=("output",),
    attrs={"reduction": "none"},
    infer=_infer_scatter_nd,
    kernel=_scatter_nd,
)

# ---------------------------------------------------------------- Pad, Tile, Trilu


def _infer_pad(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    attr_str(ctx, "mode", ("constant", "reflect", "edge", "wrap"))
    pads, npads = _int_list_input(ctx, 1)
    if ctx.inputs[1].dtype != dtypes.int64:
        raise ctx.fail(f"pads must be i64, got {ctx.inputs[1].dtype}")
    cv = ctx.input(2)
    if cv is not None:
        if cv.dtype != x.dtype:
            raise ctx.fail(f"constant_value has dtype {cv.dtype}, data has {x.dtype}")
        if cv.shape is not None and not (cv.rank == 0 or (cv.rank == 1 and cv.shape[0] in (1, None))):
            raise ctx.fail(f"constant_value must be a scalar, got {cv}")
    axes: list[int] | None = None
    axes_known = True
    if ctx.input(3) is not None:
        axes, _ = _int_list_input(ctx, 3)
        axes_known = axes is not None
    if x.shape is None:
        return [TensorType(None, x.dtype)]
    if not axes_known:
        return [TensorType((None,) * x.rank, x.dtype)]
    axes = list(range(x.rank)) if axes is None else normalize_axes(axes, x.rank, "Pad")
    if npads is not None and npads != 2 * len(axes):
        raise ctx.fail(f"pads has {npads} values, {2 * len(axes)} expected for {len(axes)} axes")
    out = list(x.shape)
    for j, a in enumerate(axes):
        if pads is None:
            out[a] = None
            continue
        total = pads[j] + pads[j + len(axes)]
        d = dim_add(x.shape[a], total)
        if isinstance(d, int) and d < 0:
            raise ctx.fail(f"pads {pads} crop axis {a} of {x} below zero")
        out[a] = d
    return [TensorType(tuple(out), x.dtype)]


def _pad(ins: list, attrs: dict, outs: list) -> Any:
    x, pads = ins[0], [int(p) for p in ins[1]]
    cv = ins[2] if len(ins) > 2 and ins[2] is not None else None
    axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(x.ndim)
    axes = [int(a) % x.ndim for a in axes]
    n = len(axes)
    crop = [slice(None)] * x.ndim
    width = [(0, 0)] * x.ndim
    for j, a in enumerate(axes):
        b, e = pads[j], pads[j + n]
        crop[a] = slice(-b if b < 0 else 0, x.shape[a] + e if e < 0 else x.shape[a])
        width[a] = (max(b, 0), max(e, 0))
    x = x[tuple(crop)]
    mode = attrs["mode"]
    if mode == "constant":
        value = cv.reshape(()) if cv is not None else np.zeros((), x.dtype)
        return np.pad(x, width, mode="constant", constant_values=value)
    return np.pad(x, width, mode=mode)


define_op(
    "Pad",
    inputs=("data", "pads", "constant_value?", "axes?"),
    outputs=("output",),
    attrs={"mode": "constant"},
    infer=_infer_pad,
    kernel=_pad,
)


def _infer_tile(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    reps, n = _int_list_input(ctx, 1)
    if ctx.inputs[1].dtype != dtypes.int64:
        raise ctx.fail(f"repeats must be i64, got {ctx.inputs[1].dtype}")
    if x.shape is None:
        return [TensorType(None, x.dtype)]
    if n is not None and n != x.rank:
        raise ctx.fail(f"repeats has {n} values, input has rank {x.rank}")
    if reps is None:
        return [TensorType(tuple(d if d == 0 else None for d in x.shape), x.dtype)]
    if any(r < 0 for r in reps):
        raise ctx.fail(f"negative repeats {reps}")
    return [TensorType(tuple(dim_mul(d, r) for d, r in zip(x.shape, reps)), x.dtype)]


define_op(
    "Tile",
    inputs=("input", "repeats"),
    outputs=("output",),
    infer=_infer_tile,
    kernel=lambda ins, attrs, outs: np.tile(ins[0], [int(r) for r in ins[1]]),
)


def _infer_trilu(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    attr_int(ctx, "upper", (0, 1))
    if x.rank is not None and x.rank < 2:
        raise ctx.fail(f"input must have rank >= 2, got {x}")
    k = ctx.input(1)
    if k is not None:
        if k.dtype != dtypes.int64:
            raise ctx.fail(f"k must be i64, got {k.dtype}")
        if k.shape is not None and not (k.rank == 0 or (k.rank == 1 and k.shape[0] in (1, None))):
            raise ctx.fail(f"k must be a scalar, got {k}")
        const_scalar(ctx, 1)
    return [x]


def _trilu(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    k = int(ins[1].reshape(())) if len(ins) > 1 and ins[1] is not None else 0
    if x.size == 0:
        return x.copy()
    return np.triu(x, k) if attrs["upper"] else np.tril(x, k)


define_op("Trilu", inputs=("input", "k?"), outputs=("output",), attrs={"upper": 1}, infer=_infer_trilu, kernel=_trilu)
