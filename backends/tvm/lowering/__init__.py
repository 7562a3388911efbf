"""The TVM lowering: how each requant op becomes Relax, through `relax.BlockBuilder`.

`LOWERINGS` (a `LoweringTable`) maps every op id of requant's registry to an emitter or
to an explicit `Unsupported("because ...")`; a test checks that no registered op is
missing. Each entry is registered beside its emitter, in one module per op family,
mirroring `requant/ir/ops/`; importing this package imports them all:

- `_common`: the table, `LowerContext`, how dtypes travel in Relax (`relax_dtype`),
  the node-level check decorators and the Relax helpers every family uses;
- `elementwise`, `unary`, `activation`, `cast` (and the low-bit float-format
  emulation), `shape_ops`, `indexing`, `reduce`, `linalg`, `conv` and `pooling` (with
  `_window`, the window geometry they share), `normalization`, `attention`, `quant`, `intonly` (integer-only kernels),
  `misc` (constants, Range, Dropout), `rotation` (Hadamard), `fft` (RFFT / IRFFT and the
  Toeplitz products, on backends/tvm/fft_kernels.py), `onnxruntime` (ONNX Runtime's com.microsoft.*
  kernels, and the QAttention refusal).

An emitter is `emit(ctx, node, ins) -> expr | [expr, ...]`: `ins` are the Relax
expressions of the node's inputs (None for an omitted optional input), the result one
expression per node output. `ctx` (`LowerContext`) wraps the BlockBuilder:
`ctx.emit(call)` binds a Relax call, `ctx.te(...)` emits a TE compute (`bb.emit_te`)
where no Relax op fits. Some emitters accept only some nodes (a shape given by a
constant, MaxPool without Indices): they carry a `check(node) -> reason | None`, which
`unsupported_reason` consults, so `to_relax` names every node it cannot lower before it
emits anything. `lowering_for(op)` is `LOWERINGS.lookup`.

Emitters use high-level `relax.op.*` calls wherever one has requant's semantics (they
legalize to TIR that TVM fuses and schedules) and `emit_te` with TE/TIR expressions
for the few bit-level kernels (float-format rounding, BitShift, integer Pow).

Numerics (the interpreter in `requant.ir` is the oracle):
- Integer ops are bit-exact: wrapping Add/Sub/Mul/Neg/Abs/Sum/ReduceSum, truncating
  integer Div (division by zero is undefined behaviour in TVM, where the interpreter
  raises), floor/trunc Mod, BitShift with out-of-range counts, integer Pow by squaring,
  Cast's wrap/saturate rules, MatMulInteger / QLinearMatMul / MatMulIntegerToFloat with
  int32 accumulators, QuantizeLinear's round-half-even + zero point + saturation.
- Float ops follow the interpreter's compute dtypes: f16/bf16 compute in float32 and
  round once (Erf in float64); tolerances per dtype in tests/op_cases/case.py.
- Low-bit float formats (fp8_e4m3, fp8_e5m2, fp4_e2m1, `FloatFormat`): TVM's own
  float8 conversions on llvm are not exact (NaN, subnormals, inf) and it has no fp4 or
  parametric floats, so these values are *emulated in float32*: a tensor of such a
  dtype is a float32 tensor in Relax holding values on the format's grid (NaN/inf as
  the format has them). Converting to a format rounds on its grid in float64 with
  bit-level exponent extraction (exactly `round_to_float_format` / ml_dtypes' rounding,
  with Cast's saturation rules); converting from one is exact. The runtime converts
  arrays of these dtypes at the boundary (`relax_dtype` says the Relax dtype).
- int4/uint4 travel in int8/uint8, as in the interpreter.
- Gather indices out of range (the interpreter raises; ONNX leaves it undefined) are
  clamped to the axis, never read out of bounds (TVM's default "fast" take would).
"""

from __future__ import annotations

import logging

from requant.backends.lowering_table import Unsupported
from requant.backends.tvm.lowering import (  # noqa: F401  (each family registers its entries on import)
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
    pooling,
    quant,
    reduce,
    resize,
    rotation,
    shape_ops,
    unary,
)
from requant.backends.tvm.lowering._common import (
    EMULATED_FLOATS,
    LOWERINGS,
    Emitter,
    LowerContext,
    const_array,
    is_emulated,
    relax_dtype,
    unsupported_reason,
)

__all__ = [
    "EMULATED_FLOATS",
    "LOWERINGS",
    "Emitter",
    "LowerContext",
    "Unsupported",
    "const_array",
    "is_emulated",
    "lowering_for",
    "relax_dtype",
    "unsupported_reason",
]

logger = logging.getLogger(__name__)

lowering_for = LOWERINGS.lookup
