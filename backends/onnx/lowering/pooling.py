"""ONNX lowering of the pooling ops (`requant.ir.ops.pooling`): standard ONNX, emitted as
they are, except MaxPool and GlobalMaxPool on floats, which propagate NaN as the
interpreter does (`_nan.nan_propagating`)."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, standard
from requant.backends.onnx.lowering._nan import nan_propagating

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers("AveragePool", "GlobalAveragePool")(standard)
# ONNX Runtime skips NaN in max pools unless it comes first; exported so NaN wins (_nan.py).
LOWERINGS.lowers("MaxPool", "GlobalMaxPool")(nan_propagating)
