"""Declarations of every op requant knows, one module per family. Importing this package
registers them all in `requant.ir.registry`.

- `elementwise`: broadcasting binary/variadic arithmetic, comparisons, logic, Where.
- `unary`: one-operand math (Neg, Abs, Exp, Log, Sqrt, Erf, trig, Floor/Ceil/Round, ...).
- `activation`: Relu family, Gelu, Sigmoid, HardSwish, Softplus, Swish, Clip, Softmax.
- `normalization`: LayerNormalization, RMSNormalization, BatchNormalization, ...
- `shape_ops`: Reshape, Flatten, Squeeze/Unsqueeze, Transpose, Expand, Shape, Size, Identity.
- `indexing`: Concat, Split, Slice, Gather*, Scatter*, Pad, Tile, Trilu.
- `reduce`: Reduce*, ArgMax/ArgMin, CumSum, TopK.
- `linalg`: MatMul, Gemm, Einsum.
- `conv`: Conv, ConvTranspose. `pooling`: MaxPool, AveragePool, Global*Pool.
- `resize`: Resize (nearest, linear, cubic; every coordinate transformation mode).
- `cast`: Cast, CastLike (and `cast_to`, the shared conversion routine).
- `misc`: Constant, ConstantOfShape, Range, Dropout.
- `quant`: Q/DQ, integer matmuls, FakeQuantize.
- `fft`: RFFT / IRFFT and the Toeplitz products computed with them (ToeplitzMatMulFFT,
  ToeplitzLowRankMatMulFFT).
- `intonly`: integer-only kernels (Requantize, DyadicAdd, ILayerNorm, Shiftmax, ShiftGELU,
  PolySoftmax, PolyGELU) of I-ViT / I-BERT style integer-only transformers.
- `rotation`: Hadamard (an online orthogonal rotation along one axis).
- `onnxruntime` / `onnxruntime_attention`: ONNX Runtime's own kernels (domain
  "com.microsoft": MatMulIntegerToFloat, DynamicQuantizeMatMul, MatMulNBits, QAttention),
  which only the ONNX backend's lowering makes.
"""

from __future__ import annotations

from requant.ir.ops import (  # noqa: F401
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
