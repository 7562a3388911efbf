"""ONNX Runtime's own quantized matmul kernels, domain "com.microsoft" (op ids
"com.microsoft.MatMulIntegerToFloat", ...): only the ONNX backend's lowering
(backends/onnx/lower_quant.py) makes them, and only ONNX Runtime runs them; the
kernels here are the interpreter's oracle for that lowering.

- MatMulIntegerToFloat / DynamicQuantizeMatMul: y = f32(acc) * f32(a_scale * b_scale)
  (+ bias), float32; a's scale and zero point per tensor, b's per tensor or per column.
  DynamicQuantizeMatMul quantizes A to u8 exactly as DynamicQuantizeLinear.
- MatMulNBits: B holds `bits`-bit codes of W^T [N, K] in blocks of `block_size` along
  K, packed low bits first ([N, k_blocks, block_size * bits / 8] uint8); scales [N,
  k_blocks] (or flat); zero points packed like B ([N, ceil(k_blocks * bits / 8)]) or
  float [N, k_blocks], default 2^(bits - 1); g_idx [K] (deprecated) maps k to its
  block. W[k, n] = (code - zp) * scale in float32; Y = A @ W (+ bias), float32.
  `accuracy_level` is passed to ORT (4 lets ORT quantize A to int8 internally; the
  kernel here always computes in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir import quant_formats as qf
from requant.ir.ops._common import attr_int, opt
from requant.ir.ops.linalg import matmul_shape
from requant.ir.ops.quant import (
    F32,
    U8_I8,
    check_dtype,
    check_optional_dtype,
    check_param_vector,
    check_same_dtype,
    columns_of,
    dynamic_qparams_u8,
    scaled_int_matmul,
)
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.types import Dim, TensorType

__all__ = ["ORT_DOMAIN", "pack_low_first", "unpack_low_first"]

ORT_DOMAIN = "com.microsoft"


def _check_bias(ctx: InferContext, i: int, n: Dim) -> None:
    t = check_optional_dtype(ctx, i, F32)
    if t is None or t.shape is None:
        return
    if len(t.shape) != 1:
        raise ctx.fail(f"bias must be 1-D [N], got shape {t.shape}")
    if isinstance(t.shape[0], int) and isinstance(n, int) and t.shape[0] != n:
        raise ctx.fail(f"bias has {t.shape[0]} values, B has {n} columns")


def _scalar_only(ctx: InferContext, i: int) -> None:
    t = ctx.input(i)
    if t is not None and t.shape is not None and not all(d == 1 for d in t.shape):
        name = ctx.schema.inputs[i].name
        raise ctx.fail(f"{name} must hold one value (per tensor), got shape {t.shape}")


def _infer_matmul_integer_to_float(ctx: InferContext) -> list[TensorType]:
    a = check_dtype(ctx, 0, U8_I8)
    b = check_dtype(ctx, 1, U8_I8)
    check_dtype(ctx, 2, F32)
    check_dtype(ctx, 3, F32)
    check_optional_dtype(ctx, 4, U8_I8)
    check_optional_dtype(ctx, 5, U8_I8)
    check_same_dtype(ctx, 0, 4)
    check_same_dtype(ctx, 1, 5)
    n = columns_of(b)
    _scalar_only(ctx, 2)
    _scalar_only(ctx, 4)
    check_param_vector(ctx, 3, n, "column of B", allow_nd=False)
    check_param_vector(ctx, 5, n, "column of B", allow_nd=False)
    _check_bias(ctx, 6, n)
    return [TensorType(matmul_shape(ctx, a, b), dtypes.float32)]


def _matmul_integer_to_float(ins: list, attrs: dict, outs: list) -> Any:
    return scaled_int_matmul(ins[0], opt(ins, 4), ins[2], ins[1], opt(ins, 5), ins[3], opt(ins, 6))


define_op(
    "MatMulIntegerToFloat",
    inputs=("A", "B", "a_scale", "b_scale", "a_zero_point?", "b_zero_point?", "bias?"),
    infer=_infer_matmul_integer_to_float,
    kernel=_matmul_integer_to_float,
    domain=ORT_DOMAIN,
)


def _infer_dynamic_quantize_matmul(ctx: InferContext) -> list[TensorType]:
    a = check_dtype(ctx, 0, F32)
    b = check_dtype(ctx, 1, U8_I8)
    check_dtype(ctx, 2, F32)
    check_optional_dtype(ctx, 3, U8_I8)
    check_same_dtype(ctx, 1, 3)
    n = columns_of(b)
    check_param_vector(ctx, 2, n, "column of B", allow_nd=False)
    check_param_vector(ctx, 3, n, "column of B", allow_nd=False)
    _check_bias(ctx, 4, n)
    return [TensorType(matmul_shape(ctx, a, b), dtypes.float32)]


def _dynamic_quantize_matmul(ins: list, attrs: dict, outs: list) -> Any:
    a = np.asarray(ins[0], dtype=np.float32)
    scale, zp = dynamic_qparams_u8(a)
    a_q = qf.quantize_linear(a, np.asarray(scale), np.asarray(zp), dtype=dtypes.uint8)
    return scaled_int_matmul(a_q, zp, scale, ins[1], opt(ins, 3), ins[2], opt(ins, 4))


define_op(
    "DynamicQuantizeMatMul",
    inputs=("A", "B", "b_scale", "b_zero_point?", "bias?"),
    infer=_infer_dynamic_quantize_matmul,
    kernel=_dynamic_quantize_matmul,
    domain=ORT_DOMAIN,
)


# ----------------------------------------------------------------------------- MatMulNBits

_NBITS = (2, 4, 8)


def _nbits_layout(ctx: InferContext) -> tuple[int, int, int, int, int]:
    k = attr_int(ctx, "K", lo=1)
    n = attr_int(ctx, "N", lo=1)
    bits = attr_int(ctx, "bits", _NBITS)
    block = attr_int(ctx, "block_size", lo=16)
    if block & (block - 1):
        raise ctx.fail(f"block_size={block} must be a power of two >= 16")
    attr_int(ctx, "accuracy_level", (0, 1, 2, 3, 4))
    k_blocks = -(-k // block)
    return k, n, bits, block, k_blocks


def _check_dims(ctx: InferContext, i: int, wants: Sequence[tuple[int, ...]]) -> None:
    t = ctx.input(i)
    if t is None or t.shape is None:
        return
    for want in wants:
        if len(t.shape) == len(want) and all(not isinstance(d, int) or d == w for d, w in zip(t.shape, want)):
            return
    name = ctx.schema.inputs[i].name
    raise ctx.fail(f"{name} has shape {t.shape}, expected {' or '.join(str(w) for w in wants)}")


def _infer_matmul_nbits(ctx: InferContext) -> list[TensorType]:
    a = check_dtype(ctx, 0, frozenset({dtypes.float32, dtypes.float16}))
    check_dtype(ctx, 1, frozenset({dtypes.uint8}))
    check_dtype(ctx, 2, frozenset({a.dtype}), f"{a.dtype} (A's dtype)")
    k, n, bits, block, k_blocks = _nbits_layout(ctx)
    _check_dims(ctx, 1, [(n, k_blocks, block * bits // 8)])
    _check_dims(ctx, 2, [(n, k_blocks), (n * k_blocks,)])
    zp = check_optional_dtype(ctx, 3, frozenset({dtypes.uint8, a.dtype}))
    if zp is not None:
        if zp.dtype == dtypes.uint8:
            packed = -(-k_blocks * bits // 8)
            _check_dims(ctx, 3, [(n, packed), (n * packed,)])
        else:
            _check_dims(ctx, 3, [(n, k_blocks), (n * k_blocks,)])
    if check_optional_dtype(ctx, 4, frozenset({dtypes.int32})) is not None:
        _check_dims(ctx, 4, [(k,)])
    if check_optional_dtype(ctx, 5, frozenset({a.dtype})) is not None:
        _check_dims(ctx, 5, [(n,)])
    if a.shape is None:
        return [TensorType(None, a.dtype)]
    if not a.shape:
        raise ctx.fail("A must have rank >= 1")
    last = a.shape[-1]
    if isinstance(last, int) and last != k:
        raise ctx.fail(f"A's last dim is {last}, attribute K is {k}")
    return [TensorType(tuple(a.shape[:-1]) + (n,), a.dtype)]


def unpack_low_first(packed: np.ndarray, bits: int) -> np.ndarray:
    """Codes from bytes holding 8 / bits codes each, the first in the lowest bits
    (ORT's MatMulNBits layout); the last axis grows by 8 / bits."""
    p = np.asarray(packed, dtype=np.uint8)
    per = 8 // bits
    shifts = (np.arange(per) * bits).astype(np.uint8)
    codes = (p[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(*p.shape[:-1], p.shape[-1] * per)


def pack_low_first(codes: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of `unpack_low_first` (the last axis is padded with zero codes to a
    whole number of bytes)."""
    c = np.asarray(codes).astype(np.uint8) & np.uint8((1 << bits) - 1)
    per = 8 // bits
    pad = (-c.shape[-1]) % per
    if pad:
        c = np.concatenate([c, np.zeros(c.shape[:-1] + (pad,), np.uint8)], axis=-1)
    c = c.reshape(*c.shape[:-1], c.shape[-1] // per, per)
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(c << shifts, axis=-1).astype(np.uint8)


def _matmul_nbits(ins: list, attrs: dict, outs: list) -> Any:
    a = np.asarray(ins[0])
    k, n, bits, block = int(attrs["K"]), int(attrs["N"]), int(attrs["bits"]), int(attrs["block_size"])
    k_blocks = -(-k // block)
    codes = unpack_low_first(np.asarray(ins[1]).reshape(n, -1), bits)[:, :k].astype(np.float32)
    scales = np.asarray(ins[2]).astype(np.float32).reshape(n, k_blocks)
    zp_in, g_idx, bias = opt(ins, 3), opt(ins, 4), opt(ins, 5)
    if zp_in is None:
        zp = np.full((n, k_blocks), float(1 << (bits - 1)), np.float32)
    elif np.asarray(zp_in).dtype == np.uint8:
        zp = unpack_low_first(np.asarray(zp_in).reshape(n, -1), bits)[:, :k_blocks].astype(np.float32)
    else:
        zp = np.asarray(zp_in).astype(np.float32).reshape(n, k_blocks)
    blk = np.asarray(g_idx).astype(np.int64).reshape(k) if g_idx is not None else np.arange(k) // block
    w_t = (codes - zp[:, blk]) * scales[:, blk]  # [N, K]
    y = np.matmul(a.astype(np.float32), w_t.T)
    if bias is not None:
        y = y + np.asarray(bias).astype(np.float32)
    return y.astype(outs[0].dtype.np)


define_op(
    "MatMulNBits",
    inputs=("A", "B", "scales", "zero_points?", "g_idx?", "bias?"),
    attrs={"K": REQUIRED, "N": REQUIRED, "bits": 4, "block_size": REQUIRED, "accuracy_level": 0},
    infer=_infer_matmul_nbits,
    kernel=_matmul_nbits,
    domain=ORT_DOMAIN,
)
