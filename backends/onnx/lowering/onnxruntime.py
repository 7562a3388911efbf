"""ONNX lowering of ONNX Runtime's contrib ops (`requant.ir.ops.onnxruntime`,
`onnxruntime_attention`): MatMulIntegerToFloat, DynamicQuantizeMatMul, MatMulNBits and
QAttention, emitted as they are in their domain (com.microsoft); the exporter imports
each domain an emitter uses, version 1."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext
from requant.ir.graph import Node
from requant.ir.registry import get_schema

__all__: list[str] = []

logger = logging.getLogger(__name__)


@LOWERINGS.lowers("com.microsoft.MatMulIntegerToFloat", "com.microsoft.DynamicQuantizeMatMul",
                  "com.microsoft.MatMulNBits")
def _contrib(ctx: EmitContext, node: Node, ins: list, outs: list, floats: tuple[str, ...] = ()) -> None:
    """An ONNX Runtime contrib op: the same op in its domain (com.microsoft), its
    attributes ONNX ints except those named in `floats`; attributes left at None stay
    unset."""
    schema = get_schema(node.op)
    attrs = {k: (float(v) if k in floats else int(v)) for k, v in node.attrs.items() if v is not None}
    ctx.emit(schema.name, ins, outs, domain=schema.domain, name=node.name or None, **attrs)


@LOWERINGS.lowers("com.microsoft.QAttention")
def _qattention(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """com.microsoft QAttention as it is: num_heads / unidirectional ints, scale and
    mask_filter_value floats."""
    _contrib(ctx, node, ins, outs, floats=("scale", "mask_filter_value"))
