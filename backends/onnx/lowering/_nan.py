"""NaN-propagating reductions for the ONNX export.

ONNX Runtime's CPU kernels for ReduceMax / ReduceMin, ArgMax / ArgMin, MaxPool and
GlobalMaxPool skip a NaN unless it comes first in the reduced slice (max(1, NaN, 2)
is 2 there); the interpreter, numpy and ONNX's reference implementation give NaN (and,
for the arg-reductions, the index of the first NaN). requant has one float semantics,
the interpreter's, so these ops export as

    plain = Op(x, ...)                                   the op itself
    flags = Cast(IsNaN(x), float)                        1.0 where x is NaN
    has   = Greater(<the same max-reduction of flags>, 0)
    y     = Where(has, NaN | ArgMax(flags, ...), plain)  NaN, or the first NaN's index

on float inputs (integer inputs, and dequantized ones, export as the op alone: a
DequantizeLinear of integer codes with a finite scale is never NaN, and the plain op on
it is what ONNX Runtime fuses into an integer kernel, e.g. DQ -> MaxPool -> Q into a
MaxPool on the codes). The price is one more pass
over x and one more reduction of its flags, for ops a model has few of (requant's own
softmax and quantizers emit their reductions directly and are not affected).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np

from requant.backends.onnx.lowering._common import EmitContext, standard
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.ir import dtypes
from requant.ir.graph import Node

__all__ = ["nan_propagating"]

logger = logging.getLogger(__name__)


def _flags(ctx: EmitContext, node: Node, x: str) -> str:
    isnan = ctx.emit("IsNaN", [x], name=ctx.sub_name(node, "isnan"))[0]
    return ctx.emit("Cast", [isnan], to=dtype_to_onnx(dtypes.float32), name=ctx.sub_name(node, "nan_flags"))[0]


def _any_nan(ctx: EmitContext, node: Node, flags_reduced: str) -> str:
    zero = ctx.const(np.array(0.0, np.float32), dtypes.float32, "zero")
    return ctx.emit("Greater", [flags_reduced, zero], name=ctx.sub_name(node, "has_nan"))[0]


def _stand_in(node: Node, op: str) -> SimpleNamespace:
    """What `standard` reads of a node (op, attrs, inputs, label, name), for emitting a
    second reduction with `node`'s axes and attributes and without touching the graph."""
    return SimpleNamespace(op=op, attrs=dict(node.attrs), inputs=node.inputs, label=node.label, name=None)


def _max_over_axis(ctx: EmitContext, node: Node, flags: str, axis: int, keepdims: int) -> str:
    """ReduceMax of `flags` along one axis, in the form the target opset takes."""
    if ctx.opset >= 18:
        axes = ctx.const(np.array([axis], np.int64), dtypes.int64, "axes")
        return ctx.emit("ReduceMax", [flags, axes], keepdims=keepdims, name=ctx.sub_name(node, "any_nan"))[0]
    return ctx.emit("ReduceMax", [flags], axes=[axis], keepdims=keepdims, name=ctx.sub_name(node, "any_nan"))[0]


def _cannot_be_nan(x) -> bool:
    """Integer codes dequantized with a constant finite scale (and zero point)."""
    dq = x.producer
    if dq is None or dq.op != "DequantizeLinear" or not dq.inputs[0].dtype.is_integer:
        return False
    scale = dq.inputs[1]
    return scale is not None and scale.const is not None and bool(np.all(np.isfinite(scale.const)))


def nan_propagating(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """Emit `node` (ReduceMax/Min, ArgMax/Min, MaxPool, GlobalMaxPool) so that NaN wins
    (module docstring); a MaxPool with its Indices output is emitted as it is."""
    x = node.inputs[0]
    if x is None or not x.dtype.is_float or len(outs) > 1 or _cannot_be_nan(x):  # Indices: ORT's own order
        standard(ctx, node, ins, outs)
        return
    plain = [ctx.fresh(f"{outs[0]}_ignoring_nan")]
    standard(ctx, node, ins, plain)
    flags = _flags(ctx, node, ins[0])
    if node.op in ("ArgMax", "ArgMin"):
        attrs = {k: int(node.attrs[k]) for k in ("axis", "keepdims", "select_last_index") if k in node.attrs}
        replacement = ctx.emit("ArgMax", [flags], name=ctx.sub_name(node, "first_nan"), **attrs)[0]
        flag_max = _max_over_axis(ctx, node, flags, attrs.get("axis", 0), attrs.get("keepdims", 1))
    else:
        flag_max = [ctx.fresh(f"{outs[0]}_any_nan")]
        op = "ReduceMax" if node.op in ("ReduceMax", "ReduceMin") else node.op
        standard(ctx, _stand_in(node, op), [flags, *ins[1:]], flag_max)
        flag_max = flag_max[0]
        replacement = ctx.const(np.array(np.nan, dtype=x.dtype.np), x.dtype, "nan")
    ctx.emit("Where", [_any_nan(ctx, node, flag_max), replacement, plain[0]], outs, name=ctx.sub_name(node, "nan"))
