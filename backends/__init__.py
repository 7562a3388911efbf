"""Backends: IR -> ONNX (+ ONNX Runtime sessions) in `requant.backends.onnx`, IR -> TVM
Relax in `requant.backends.tvm`.

Importing this package is cheap: `to_onnx`, `save_onnx` and `OnnxRuntimeSession` are
looked up on first use, so onnx and onnxruntime load only when an ONNX export or
session is asked for.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__all__ = ["to_onnx", "save_onnx", "OnnxRuntimeSession"]

logger = logging.getLogger(__name__)

_LAZY = {
    "to_onnx": "requant.backends.onnx.export",
    "save_onnx": "requant.backends.onnx.export",
    "OnnxRuntimeSession": "requant.backends.onnx.runtime",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'requant.backends' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
