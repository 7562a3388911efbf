"""The ONNX lowering table: how each requant op becomes ONNX nodes.

`LOWERINGS` maps every op of requant's registry to an emitter or to an explicit
`Unsupported("because ...")`; a test checks that no registered op is missing. Its entries
are registered beside their emitters, one module per op family mirroring
`requant.ir.ops` (`elementwise`, `unary`, `activation`, `normalization`, `shape_ops`,
`indexing`, `intonly`, `reduce`, `linalg`, `conv`, `pooling`, `cast`, `attention`, `misc`, `quant`,
`fake_quantize`, `fft`, `onnxruntime`, `rotation`); `_common` holds the table, the `EmitContext` emitters
write into and the emitter of standard ops.

Standard ops (ONNX names and modern-opset semantics in the registry) go through
`standard`, which copies the op and adapts it to older target opsets. Ops newer than the
target opset (Gelu 20, RMSNormalization 23, Swish 24, ...) are decomposed into older ONNX
ops. Where ONNX leaves semantics open and ONNX Runtime differs from requant, the emitter
pins requant's (Cast float -> int saturates and truncates; BitShift on signed ints).
requant's own ops lower to standard ONNX, ONNX Runtime's contrib ops to their own domain.

Whenever a node does not become one ONNX node of the same op, the exporter records the
original node on the ONNX nodes it became (see `export.py`), so reading the file back
with `from_onnx` restores it exactly.
"""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering import (  # noqa: F401  (each family registers its ops)
    activation,
    attention,
    cast,
    conv,
    elementwise,
    fake_quantize,
    fft,
    indexing,
    intonly,
    linalg,
    misc,
    normalization,
    onnxruntime,
    pooling,
    quant,
    reduce,
    resize,
    rotation,
    shape_ops,
    unary,
)
from requant.backends.onnx.lowering._common import (
    LOWERINGS,
    EmitContext,
    Emitter,
    Unsupported,
    onnx_schema,
    standard,
)

__all__ = [
    "Unsupported",
    "EmitContext",
    "Emitter",
    "LOWERINGS",
    "lowering_for",
    "standard",
    "onnx_schema",
]

logger = logging.getLogger(__name__)

lowering_for = LOWERINGS.lookup
"""The emitter of an op; raises `UnsupportedOpError` with the table's reason."""
