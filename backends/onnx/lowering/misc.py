"""ONNX lowering of Constant, ConstantOfShape, Range and Dropout (`requant.ir.ops.misc`):
standard ONNX; a Constant keeps its tensor in the `value` attribute."""

from __future__ import annotations

import logging

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, standard
from requant.backends.onnx.onnx_types import tensor_from_array
from requant.errors import UnsupportedOpError
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers("ConstantOfShape", "Range", "Dropout")(standard)


@LOWERINGS.lowers("Constant")
def _constant(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """A Constant node keeps its tensor in the `value` attribute."""
    from onnx import helper

    value = node.attrs.get("value")
    if value is None:
        raise UnsupportedOpError(f"{node.label}: only Constant(value=array) is supported")
    dt = node.outputs[0].dtype
    proto = helper.make_node("Constant", [], outs, name=node.name or None,
                             value=tensor_from_array(np.asarray(value), dt))
    ctx.nodes.append(proto)
