"""ONNX lowering of the reductions (`requant.ir.ops.reduce`): standard ONNX, emitted as
they are, except that ReduceMax/Min and ArgMax/Min on floats propagate NaN as the
interpreter does (`_nan.nan_propagating`), and a float ReduceMean over the two spatial
axes of an NCHW map with keepdims (torch's adaptive_avg_pool2d(x, 1), squeeze-and-excite
pooling) is emitted as GlobalAveragePool, the same mean: ONNX Runtime runs that in its
blocked float layout and fuses `DQ -> GlobalAveragePool -> Q` into
QLinearGlobalAveragePool on uint8 codes, neither of which it does for a ReduceMean."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, standard
from requant.backends.onnx.lowering._nan import nan_propagating
from requant.ir.graph import Node
from requant.ir.ops.reduce import is_spatial_mean

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers(
    "ReduceSum", "ReduceProd", "ReduceL1",
    "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "CumSum", "TopK"
)(standard)
# ONNX Runtime skips NaN in these unless it comes first; exported so NaN wins (_nan.py).
LOWERINGS.lowers("ReduceMax", "ReduceMin", "ArgMax", "ArgMin")(nan_propagating)


@LOWERINGS.lowers("ReduceMean")
def _reduce_mean(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    if is_spatial_mean(node):
        ctx.emit("GlobalAveragePool", [ins[0]], outs, name=node.name)
    else:
        standard(ctx, node, ins, outs)
