"""ONNX lowering of the reductions (`requant.ir.ops.reduce`):
all standard ONNX, emitted as they are."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, standard

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers(
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
    "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ArgMax",
    "ArgMin", "CumSum", "TopK"
)(standard)
