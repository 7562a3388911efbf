"""Cases of ONNX Runtime's fused quantized attention (requant.ir.ops.onnxruntime_attention,
com.microsoft.QAttention); the oracle is ONNX Runtime. TVM has no lowering for it (its
table says why), so only the interpreter and the ONNX export run these."""

from __future__ import annotations

import numpy as np

from op_cases.case import C, CaseList, Draws, I, Tol

__all__ = ["CASES"]

# ORT sums the float32 products of its GEMMs and softmax in its own order: 1e-5 of the
# output's largest magnitude
CASES = CaseList(oracle="ort", export_opsets=(None, 17), tol={"f32": Tol(0.0, 1e-5, scale_atol=True)})
add = CASES.add
_d = Draws(115)
r, ints = _d.r, _d.ints

_BATCH, _SEQ, _D_IN, _HIDDEN, _HEADS = 2, 5, 16, 12, 3
_X = ints(_BATCH, _SEQ, _D_IN)
_BIAS = C(r(3 * _HIDDEN, lo=-0.5, hi=0.5))
_W8 = C(ints(_D_IN, 3 * _HIDDEN, dt="i8"))
_MASK_2D = np.ones((_BATCH, _SEQ), np.int32)
_MASK_2D[1, 3:] = 0
_MASK_3D = np.ones((_BATCH, _SEQ, _SEQ), np.int32)
_MASK_3D[0, :, 4] = 0
_MASK_3D[1, 2, :] = 0  # a fully masked row: ORT adds mask_filter_value, so it attends to every key

add("com.microsoft.QAttention",
    [I(_X, shape=("b", _SEQ, _D_IN)), _W8, _BIAS, C(np.float32(0.02)), C(r(3 * _HIDDEN, lo=1e-3, hi=1e-2)),
     I(_MASK_2D, shape=("b", _SEQ)), C(np.uint8(131)), C(ints(3 * _HIDDEN, dt="i8", lo=-3, hi=3))],
    {"num_heads": _HEADS}, label="per_column_i8_mask2d")
add("com.microsoft.QAttention",
    [I(_X, shape=("b", _SEQ, _D_IN)), C(ints(_D_IN, 3 * _HIDDEN)), _BIAS, C(np.float32(0.02)), C(np.float32(0.004)),
     I(_MASK_3D, shape=("b", _SEQ, _SEQ)), C(np.uint8(120)), C(np.uint8(128))],
    {"num_heads": _HEADS, "scale": 0.3}, label="u8_scale_mask3d_masked_row")
add("com.microsoft.QAttention",
    [I(_X, shape=("b", _SEQ, _D_IN)), _W8, _BIAS, C(np.float32(0.03)), C(np.float32(0.005))],
    {"num_heads": _HEADS, "mask_filter_value": -1e9}, label="no_mask")
