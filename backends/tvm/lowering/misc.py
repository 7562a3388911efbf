"""Lowerings of the sources and no-ops: Constant, ConstantOfShape and Range are computed
once by the reference kernel and emitted as Relax constants when their inputs are
constants. Their output shape depends on the input values, so a computed input is
accepted only where the node's output type knows the shape (a symbolic batch followed
through Shape -> Gather by the shape inference): ConstantOfShape then fills that shape,
Range (constant start and delta) counts `start + i * delta` along it. Dropout is
inference only (its input, and an all-true mask when the node has one; training_mode
must be a constant).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tvm import relax, te, tirx

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    const_array,
    relax_dtype,
    requires,
    requires_const_or_typed_output,
    typed_out_shape,
)
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


@LOWERINGS.lowers("Constant")
def _constant_folded(ctx: LowerContext, node: Node, ins: list) -> Any:
    """Nodes whose inputs are all constants: computed once by the reference kernel."""
    from requant.ir.registry import run_kernel

    arrays = [None if v is None else v.const for v in node.inputs]
    outs = run_kernel(node.op, arrays, node.attrs, [o.type for o in node.outputs])
    return [const_array(a, o.type.dtype) for a, o in zip(outs, node.outputs)]


def _all_const(node: Node) -> bool:
    return all(v is None or v.const is not None for v in node.inputs)


@LOWERINGS.lowers("ConstantOfShape")
@requires_const_or_typed_output(0)
def _constant_of_shape(ctx: LowerContext, node: Node, ins: list) -> Any:
    if _all_const(node):
        return _constant_folded(ctx, node, ins)
    value = node.attrs.get("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    dt = node.outputs[0].type.dtype
    return ctx.emit(R.full(typed_out_shape(ctx, node), const_array(fill.reshape(()), dt), relax_dtype(dt)))


def _range_check(node: Node) -> str | None:
    start, _, delta = node.inputs
    if start.const is None or delta.const is None:
        return ("its start and delta must be constants for the TVM backend (the output shape depends on their "
                "values); run constant folding first")
    return None


@LOWERINGS.lowers("Range")
@requires_const_or_typed_output(1)
@requires(_range_check)
def _range(ctx: LowerContext, node: Node, ins: list) -> Any:
    if _all_const(node):
        return _constant_folded(ctx, node, ins)
    (length,) = typed_out_shape(ctx, node)
    dt = relax_dtype(node.outputs[0].type.dtype)
    start, delta = (np.asarray(v.const).item() for v in (node.inputs[0], node.inputs[2]))
    first, step = tirx.const(start, dt), tirx.const(delta, dt)
    return ctx.te(lambda: te.compute((length,), lambda i: first + i.astype(dt) * step, name="range"), name="range")


def _dropout_check(node: Node) -> str | None:
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].const is None:
        return "training_mode must be a constant False for the TVM backend (inference only)"
    return None


@LOWERINGS.lowers("Dropout")
@requires(_dropout_check)
def _dropout(ctx: LowerContext, node: Node, ins: list) -> Any:
    outs = [ins[0]]
    if len(node.outputs) > 1:
        outs.append(ctx.emit(R.astype(R.ones_like(ins[0]), "bool")))
    return outs
