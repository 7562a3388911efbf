"""ONNX lowering of the indexing and data-movement ops (`requant.ir.ops.indexing`):
all standard ONNX, emitted as they are, except a Split with neither a `split` input nor
`num_outputs` (opset 13's even split by the output count), which from opset 18 on needs
`num_outputs` written out."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, standard
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers(
    "Concat", "Slice", "Gather", "GatherElements", "GatherND",
    "ScatterElements", "ScatterND", "Pad", "Tile", "Trilu"
)(standard)


@LOWERINGS.lowers("Split")
def _split(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """Opset 18's Split needs `split` or `num_outputs`: an even split by the output
    count gets num_outputs = that count (the registry refuses an uneven one)."""
    has_split = len(ins) > 1 and ins[1] is not None
    if ctx.opset < 18 or has_split or node.attrs.get("num_outputs") is not None:
        standard(ctx, node, ins, outs)
        return
    ctx.emit("Split", ins[:1], outs, name=node.name or None, axis=int(node.attrs.get("axis", 0)),
             num_outputs=len(outs))
