"""ONNX lowering of the reductions (`requant.ir.ops.reduce`): standard ONNX, emitted as
they are, except that ReduceMax/Min and ArgMax/Min on floats propagate NaN as the
interpreter does (`_nan.nan_propagating`)."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, standard
from requant.backends.onnx.lowering._nan import nan_propagating

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers(
    "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1",
    "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "CumSum", "TopK"
)(standard)
# ONNX Runtime skips NaN in these unless it comes first; exported so NaN wins (_nan.py).
LOWERINGS.lowers("ReduceMax", "ReduceMin", "ArgMax", "ArgMin")(nan_propagating)
