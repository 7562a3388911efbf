"""The ONNX backend: requant IR -> ONNX (`to_onnx`, `save_onnx`), the lowering table
(`LOWERINGS`, one entry per registered op, filled by the family modules of `lowering/`),
the ONNX format's type conversions (`onnx_types`, which the ONNX frontend reads files
with too), ONNX Runtime sessions (`OnnxRuntimeSession`); the pass that lowers Q/DQ to ONNX
Runtime's own kernels, "lower_quant" (lower_quant.py), registers when first asked for
(it is declared in the package metadata: `get_pass("lower_quant")` finds it). onnx is imported when
an export or a conversion runs; onnxruntime only when a session is made or the export
picks its default opset.
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
