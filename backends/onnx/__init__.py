"""The ONNX backend: requant IR -> ONNX (`to_onnx`, `save_onnx`), the lowering table
(`LOWERINGS`, one entry per registered op) and ONNX Runtime sessions
(`OnnxRuntimeSession`). Importing this package imports onnx; onnxruntime is imported
only when a session is made or the export picks its default opset.
"""

from __future__ import annotations

import logging

from requant.backends.onnx.export import (
    AUTO_EXTERNAL_DATA_BYTES,
    FALLBACK_OPSET,
    MIN_OPSET,
    max_supported_opset,
    save_onnx,
    to_onnx,
)
from requant.backends.onnx.lowering import LOWERINGS, EmitContext, Unsupported, lowering_for
from requant.backends.onnx.runtime import OnnxRuntimeSession, make_session_options, physical_cores, run_onnx

__all__ = [
    "to_onnx",
    "save_onnx",
    "max_supported_opset",
    "MIN_OPSET",
    "FALLBACK_OPSET",
    "AUTO_EXTERNAL_DATA_BYTES",
    "LOWERINGS",
    "Unsupported",
    "EmitContext",
    "lowering_for",
    "OnnxRuntimeSession",
    "make_session_options",
    "physical_cores",
    "run_onnx",
]

logger = logging.getLogger(__name__)
