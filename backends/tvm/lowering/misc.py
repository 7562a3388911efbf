"""Lowerings of the sources and no-ops: Constant, ConstantOfShape and Range are computed
once by the reference kernel and emitted as Relax constants (ConstantOfShape and Range
need constant inputs: their output shape depends on the values); Dropout is inference
only (its input, and an all-true mask when the node has one; training_mode must be a
constant).
"""

from __future__ import annotations

import logging
from typing import Any

from tvm import relax

from requant.backends.tvm.lowering._common import LOWERINGS, LowerContext, const_array, requires
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


def _all_const(node: Node) -> str | None:
    if any(v is not None and v.const is None for v in node.inputs):
        return ("its inputs must be constants for the TVM backend (the output shape depends on their values); "
                "run constant folding first")
    return None


@LOWERINGS.lowers("ConstantOfShape", "Range")
@requires(_all_const)
def _constant_folded_from_constant_inputs(ctx: LowerContext, node: Node, ins: list) -> Any:
    return _constant_folded(ctx, node, ins)


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
