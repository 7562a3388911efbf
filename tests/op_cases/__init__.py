"""The op cases: one list, `CASES`, of one-node cases covering every registered op, that
every op test runs.

A case (op_cases/case.py: `Case`) is one node: op id, operands, attributes, the
tolerance per dtype, the oracle (ONNX's reference implementation, ONNX Runtime, or the
hand-written numpy reference of tests/op_references.py for requant-domain ops), the
opsets its ONNX export is checked at, and what a backend refuses on purpose. One module
per family of requant.ir.ops holds that family's cases, with its own seeded draws.

Three tests run every case:
- tests/ir/test_op_cases.py: the interpreter (type inference + reference kernel)
  against the oracle;
- tests/backends/onnx/test_onnx_op_cases.py: `to_onnx` + ONNX Runtime against the
  interpreter, at each of the case's export opsets, and the round trip through from_onnx;
- tests/backends/tvm/test_tvm_op_cases.py: the TVM build (llvm) against the interpreter.

A new op needs one case here (in its family's module, beside the others of that
family) next to its ir/ops declaration and one emitter per backend.
"""

from __future__ import annotations

from op_cases import (
    activation,
    attention,
    cast,
    conv,
    elementwise,
    fft,
    indexing,
    intonly,
    linalg,
    misc,
    normalization,
    onnxruntime,
    onnxruntime_attention,
    pooling,
    quant,
    reduce,
    resize,
    rotation,
    shape_ops,
    unary,
)
from op_cases.case import (
    BACKENDS,
    EXACT,
    FLOAT_TOL,
    INT_MAX,
    OLD_OPSETS,
    OPSET,
    QDQ_OPSET,
    UNKNOWN_RANK,
    C,
    Case,
    Draws,
    I,
    In,
    Tol,
    build_case,
    i64,
)
from op_cases.quant import FQ_SCHEMES

__all__ = [
    "CASES", "FQ_SCHEMES", "BACKENDS", "EXACT", "FLOAT_TOL", "INT_MAX", "OLD_OPSETS", "OPSET", "QDQ_OPSET",
    "UNKNOWN_RANK", "C", "Case", "Draws", "I", "In", "Tol", "build_case", "i64",
]

FAMILIES = (
    elementwise, unary, activation, normalization, shape_ops, indexing, reduce, linalg, conv, pooling, cast, misc,
    quant, onnxruntime, onnxruntime_attention, attention, rotation, intonly, fft, resize,
)
CASES: list[Case] = [case for family in FAMILIES for case in family.CASES]
