"""ONNX lowering of the one-operand math ops (`requant.ir.ops.unary`):
all standard ONNX, emitted as they are."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, standard

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers(
    "Neg", "Abs", "Sign", "Reciprocal", "Exp", "Log", "Sqrt", "Erf", "Tanh", "Sin",
    "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "Floor", "Ceil", "Round", "IsNaN", "IsInf", "Not"
)(standard)
