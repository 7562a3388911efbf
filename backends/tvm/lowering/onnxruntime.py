"""Lowerings of ONNX Runtime's own kernels (domain com.microsoft): MatMulIntegerToFloat,
DynamicQuantizeMatMul (int32 accumulation of the quantized operands, then float scales
and bias) and MatMulNBits (codes of `bits` bits packed low bits first, per-block scales
and zero points, optional g_idx and bias, dequantized to float32 weights); and the
refusal of QAttention, which TVM targets never make.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tvm import relax

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    as_dtype,
    constant,
    optional_input,
    out_dtype,
    relax_dtype,
)
from requant.backends.tvm.lowering.quant import column_param, dynamic_qparams, int_accumulate, quantize_values
from requant.ir import dtypes
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


def _scaled_int_matmul(ctx: LowerContext, a_q: relax.Expr, a_zp: Any, a_s: relax.Expr, b: relax.Expr, b_zp: Any,
                       b_s: relax.Expr, bias: relax.Expr | None) -> relax.Expr:
    acc = int_accumulate(ctx, a_q, a_zp, b, b_zp)
    mult = ctx.emit(R.multiply(R.reshape(a_s, ()), b_s))
    y = ctx.emit(R.multiply(R.astype(acc, "float32"), mult))
    if bias is not None:
        y = ctx.emit(R.add(y, bias))
    return y


@LOWERINGS.lowers("com.microsoft.MatMulIntegerToFloat")
def _matmul_integer_to_float(ctx: LowerContext, node: Node, ins: list) -> Any:
    a_zp, a_zpv = optional_input(ins, node, 4)
    b_zp, b_zpv = optional_input(ins, node, 5)
    bias, _ = optional_input(ins, node, 6)
    return _scaled_int_matmul(ctx, ins[0], column_param(ctx, a_zp, a_zpv), ins[2], ins[1],
                              column_param(ctx, b_zp, b_zpv), column_param(ctx, ins[3], node.inputs[3]), bias)


@LOWERINGS.lowers("com.microsoft.DynamicQuantizeMatMul")
def _dynamic_quantize_matmul(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ins[0]
    scale, zp_f = dynamic_qparams(ctx, a)
    a_q = quantize_values(ctx, ctx.emit(R.divide(a, scale)), zp_f, dtypes.uint8, True)
    b_zp, b_zpv = optional_input(ins, node, 3)
    bias, _ = optional_input(ins, node, 4)
    return _scaled_int_matmul(ctx, a_q, ctx.emit(R.astype(zp_f, "uint8")), scale, ins[1],
                              column_param(ctx, b_zp, b_zpv), column_param(ctx, ins[2], node.inputs[2]), bias)


def _unpack_low_first(ctx: LowerContext, packed: relax.Expr, n: int, bits: int, count: int) -> relax.Expr:
    """[n, ...] uint8 bytes -> [n, count] codes (first code in the lowest bits)."""
    per = 8 // bits
    flat = ctx.emit(R.reshape(packed, [n, -1, 1]))
    shifts = constant(np.arange(per, dtype=np.uint8) * bits, "uint8")
    codes = ctx.emit(R.bitwise_and(R.right_shift(flat, shifts), constant((1 << bits) - 1, "uint8")))
    codes = ctx.emit(R.reshape(codes, [n, -1]))
    return ctx.emit(R.strided_slice(codes, axes=[1], begin=[0], end=[count]))


@LOWERINGS.lowers("com.microsoft.MatMulNBits")
def _matmul_nbits(ctx: LowerContext, node: Node, ins: list) -> Any:
    at = ctx.attrs(node)
    k, n, bits, block = int(at["K"]), int(at["N"]), int(at["bits"]), int(at["block_size"])
    k_blocks = -(-k // block)
    f = "float32"
    codes = as_dtype(ctx, _unpack_low_first(ctx, ins[1], n, bits, k), f)  # [N, K]
    scales = ctx.emit(R.reshape(as_dtype(ctx, ins[2], f), [n, k_blocks]))
    zp_in, zp_v = optional_input(ins, node, 3)
    if zp_in is None:
        zp = constant(np.full((n, k_blocks), float(1 << (bits - 1)), np.float32), f)
    elif zp_v.dtype == dtypes.uint8:
        zp = as_dtype(ctx, _unpack_low_first(ctx, zp_in, n, bits, k_blocks), f)
    else:
        zp = ctx.emit(R.reshape(as_dtype(ctx, zp_in, f), [n, k_blocks]))
    g_idx, _ = optional_input(ins, node, 4)
    if g_idx is not None:
        idx = ctx.emit(R.astype(R.reshape(g_idx, [k]), "int64"))
        s_k = ctx.emit(R.take(scales, idx, axis=1))
        z_k = ctx.emit(R.take(zp, idx, axis=1))
    else:
        s_k = ctx.emit(R.strided_slice(R.repeat(scales, block, axis=1), axes=[1], begin=[0], end=[k]))
        z_k = ctx.emit(R.strided_slice(R.repeat(zp, block, axis=1), axes=[1], begin=[0], end=[k]))
    w_t = ctx.emit(R.multiply(R.subtract(codes, z_k), s_k))  # [N, K]
    a = as_dtype(ctx, ins[0], f)
    y = ctx.emit(R.matmul(a, R.permute_dims(w_t, [1, 0])))
    bias, _ = optional_input(ins, node, 5)
    if bias is not None:
        y = ctx.emit(R.add(y, as_dtype(ctx, bias, f)))
    return as_dtype(ctx, y, relax_dtype(out_dtype(node)))


LOWERINGS.unsupported(
    "com.microsoft.QAttention",
    "QAttention is ONNX Runtime's fused CPU attention kernel (its mask adds mask_filter_value "
    "rather than masking out); TVM targets lower Q/DQ with the lower_integer pass, which never "
    "makes it: run lower_integer on the Q/DQ graph instead of the ONNX backend's lower_quant")
