"""ONNX lowering of the linear-algebra ops (`requant.ir.ops.linalg`):
all standard ONNX, emitted as they are."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, standard

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers("MatMul", "Gemm", "Einsum")(standard)
