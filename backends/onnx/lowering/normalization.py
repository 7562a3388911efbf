"""ONNX lowering of the normalizations (`requant.ir.ops.normalization`): standard ONNX,
and for target opsets older than the op (LayerNormalization 17, RMSNormalization 23) its
decomposition into older ONNX ops, statistics in the stash type as ONNX's function
bodies compute them. GroupNormalization with per-channel scale/bias exists from opset
21 only: before it, refused."""

from __future__ import annotations

import logging

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, native_or, scalar_const, standard
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers("BatchNormalization", "InstanceNormalization")(standard)


def _reduce_mean_last_axes(ctx: EmitContext, node: Node, x: str, axes: list[int], tag: str) -> str:
    if ctx.opset >= 18:
        (m,) = ctx.emit("ReduceMean", [x, ctx.const(np.array(axes, np.int64), dtypes.int64, f"{tag}_axes")],
                        keepdims=1, name=ctx.sub_name(node, tag))
    else:
        (m,) = ctx.emit("ReduceMean", [x], axes=axes, keepdims=1, name=ctx.sub_name(node, tag))
    return m


def _norm_axes(node: Node) -> tuple[list[int], DType, DType]:
    x = node.inputs[0]
    rank = x.type.rank
    if rank is None:
        raise UnsupportedOpError(f"{node.label}: decomposing it needs the input's rank")
    axis = int(node.attrs.get("axis", -1)) % max(rank, 1)
    stash = dtypes.float64 if int(node.attrs.get("stash_type", 1)) == 11 else dtypes.float32
    return list(range(axis, rank)), x.dtype, stash


def _rms_norm_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """x / sqrt(mean(x^2) + eps) * scale, statistics in the stash type (ONNX's function body)."""
    axes, dt, stash = _norm_axes(node)
    x = ins[0]
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    xs = x if stash == dt else ctx.emit("Cast", [x], to=dtype_to_onnx(stash), name=n("cast_in"))[0]
    (sq,) = ctx.emit("Mul", [xs, xs], name=n("square"))
    ms = _reduce_mean_last_axes(ctx, node, sq, axes, "mean_square")
    eps = scalar_const(ctx, float(node.attrs.get("epsilon", 1e-5)), stash, "rms_eps")
    (t,) = ctx.emit("Add", [ms, eps], name=n("add_eps"))
    (t,) = ctx.emit("Sqrt", [t], name=n("sqrt"))
    (y,) = ctx.emit("Div", [xs, t], name=n("normalize"))
    if stash != dt:
        (y,) = ctx.emit("Cast", [y], to=dtype_to_onnx(dt), name=n("cast_out"))
    ctx.emit("Mul", [y, ins[1]], outs, name=node.name or None)


LOWERINGS.add("RMSNormalization", native_or(23, _rms_norm_decomposed))


def _layer_norm_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """(x - mean) / sqrt(var + eps) * scale + bias (opsets before 17)."""
    if len(outs) > 1:
        raise UnsupportedOpError(f"{node.label}: Mean/InvStdDev outputs need opset >= 17")
    axes, dt, stash = _norm_axes(node)
    x = ins[0]
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    xs = x if stash == dt else ctx.emit("Cast", [x], to=dtype_to_onnx(stash), name=n("cast_in"))[0]
    mean = _reduce_mean_last_axes(ctx, node, xs, axes, "mean")
    (d,) = ctx.emit("Sub", [xs, mean], name=n("center"))
    (sq,) = ctx.emit("Mul", [d, d], name=n("square"))
    var = _reduce_mean_last_axes(ctx, node, sq, axes, "var")
    eps = scalar_const(ctx, float(node.attrs.get("epsilon", 1e-5)), stash, "ln_eps")
    (t,) = ctx.emit("Add", [var, eps], name=n("add_eps"))
    (t,) = ctx.emit("Sqrt", [t], name=n("sqrt"))
    (y,) = ctx.emit("Div", [d, t], name=n("normalize"))
    if stash != dt:
        (y,) = ctx.emit("Cast", [y], to=dtype_to_onnx(dt), name=n("cast_out"))
    if len(ins) > 2 and ins[2] is not None:
        (y,) = ctx.emit("Mul", [y, ins[1]], name=n("scale"))
        ctx.emit("Add", [y, ins[2]], outs, name=node.name or None)
    else:
        ctx.emit("Mul", [y, ins[1]], outs, name=node.name or None)


LOWERINGS.add("LayerNormalization", native_or(17, _layer_norm_decomposed))


def _group_norm_before_21(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """opsets 18-20 define per-group scale/bias, a different op: not emitted."""
    raise UnsupportedOpError(
        f"{node.label}: GroupNormalization with per-channel scale/bias exists from opset 21; "
        f"target opset is {ctx.opset} (use opset >= 21 or opset=None)"
    )


LOWERINGS.add("GroupNormalization", native_or(21, _group_norm_before_21))
