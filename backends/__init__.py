"""Backends: IR -> ONNX (+ ONNX Runtime sessions) in `requant.backends.onnx`, IR -> TVM
Relax in `requant.backends.tvm`.

Importing this package is cheap: `to_onnx`, `save_onnx` and `OnnxRuntimeSession` are
looked up on first use, so onnx and onnxruntime load only when an ONNX export or
session is asked for.
"""

from __future__ import annotations

import logging

from requant import _lazy_getattr

__all__ = ["to_onnx", "save_onnx", "OnnxRuntimeSession"]

logger = logging.getLogger(__name__)

__getattr__ = _lazy_getattr(__name__, {
    "to_onnx": "requant.backends.onnx.export",
    "save_onnx": "requant.backends.onnx.export",
    "OnnxRuntimeSession": "requant.backends.onnx.runtime",
}, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
