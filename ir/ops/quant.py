"""Quantization ops: ONNX's QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger and QLinearMatMul; ONNX Runtime's contrib (domain "com.microsoft")
MatMulIntegerToFloat, DynamicQuantizeMatMul and MatMulNBits; requant's FakeQuantize.

Semantics (the kernels are the oracle; numbers are ONNX Runtime's where ONNX leaves
rounding open, and equal to ONNX's reference wherever that is exact):
- QuantizeLinear: v = x / scale in float32 (f16/bf16 x and scales are widened to
  float32 first, as ORT does), integers round half to even, add the zero point and
  saturate (NaN -> lowest code); fp8 rounds to nearest even, `saturate` as Cast; fp4
  saturates. Scales: one value, 1-D along `axis`, or blocked (`block_size`, opset 21
  layout). Output dtype: the zero point's, else `output_dtype`, else u8. `precision`
  (opset 23) is not modelled: the division is float32.
  saturate=0 follows ONNX's reference (ml_dtypes): ONNX Runtime differs for e4m3
  |v| in [480, 496) (+-448, not NaN) and e5m2 |v| in [61440, 65536) (NaN, not +-inf).
- DequantizeLinear: (x - zero point) as float32 times the scale; output dtype the
  scale's or `output_dtype`. fp8/fp4 zero points must be 0.
- DynamicQuantizeLinear: u8 scale and zero point as ONNX's spec, in float32:
  range widened to include 0, scale = (max - min) / 255, zp =
  round_half_even(clip(-min / scale, 0, 255)); then QuantizeLinear. An all-zero input
  (the spec's scale would be 0) gets scale 1 as in ONNX Runtime (ONNX's reference
  gives 1/255).
- Integer matmuls accumulate exactly and wrap to int32 (two's complement, as ONNX
  Runtime's int32 accumulators). MatMulInteger zero points: scalar, per row of A
  (1-D [M] or [..., M, 1]) and per column of B (1-D [N] or [..., 1, N]).
- QLinearMatMul requantizes as ORT (MLAS): multiplier = f32(f32(a_scale * b_scale) /
  y_scale), y = saturate(round_half_even(f32(acc) * multiplier) + y_zero_point).
  Scales/zero points of a and y: scalar or per row; of b: scalar or per column.
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
- FakeQuantize(X, scale?, zero_point?) {dtype, granularity, axis, group_size}: float32
  quantize-dequantize of `requant.ir.quant_formats` (`QuantScheme.op_attrs()` gives
  the attributes). "tensor"/"channel"/"group" need the scale (ONNX's layouts with
  axis / block_size = group_size); "mx" takes no scale (computed from the data); "nv"
  takes an optional tensor scale (computed from the data when omitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir import quant_formats as qf  # attributes read at run time only (import cycle via cast)
from requant.ir.dtypes import DType
from requant.ir.ops._common import attr_int, opt
from requant.ir.ops.linalg import matmul_shape
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.shapes import normalize_axis
from requant.ir.types import Dim, TensorType

__all__: list[str] = []

_FLOATS_IO = frozenset({dtypes.float32, dtypes.float16, dtypes.bfloat16})
_QUANT = frozenset({
    dtypes.uint8, dtypes.int8, dtypes.uint16, dtypes.int16, dtypes.uint4, dtypes.int4,
    dtypes.fp8_e4m3, dtypes.fp8_e5m2, dtypes.fp4_e2m1,
})
_FLOAT_CODES = frozenset({dtypes.fp8_e4m3, dtypes.fp8_e5m2, dtypes.fp4_e2m1})
_U8_I8 = frozenset({dtypes.uint8, dtypes.int8})
_F32 = frozenset({dtypes.float32})


def _words(ds: frozenset[DType]) -> str:
    return ", ".join(sorted(d.short for d in ds))


def _check(ctx: InferContext, i: int, allowed: frozenset[DType], what: str = "") -> TensorType:
    t = ctx.input(i)
    name = ctx.schema.inputs[min(i, len(ctx.schema.inputs) - 1)].name
    if t is None:
        raise ctx.fail(f"input {name} is missing")
    if t.dtype not in allowed:
        raise ctx.fail(f"input {name} has dtype {t.dtype}, expected {what or _words(allowed)}")
    return t


def _opt_check(ctx: InferContext, i: int, allowed: frozenset[DType]) -> TensorType | None:
    return None if ctx.input(i) is None else _check(ctx, i, allowed)


def _same(ctx: InferContext, i: int, j: int) -> None:
    a, b = ctx.input(i), ctx.input(j)
    if a is not None and b is not None and a.dtype != b.dtype:
        names = [p.name for p in ctx.schema.inputs]
        raise ctx.fail(f"{names[j]} has dtype {b.dtype}, {names[i]} is {a.dtype}; they must match")


def _dtype_attr(ctx: InferContext, name: str) -> DType | None:
    v = ctx.attrs[name]
    if v is None or (isinstance(v, (int, np.integer)) and int(v) == 0):
        return None
    if not isinstance(v, (str, DType)):
        raise ctx.fail(f"attribute {name} must be a requant dtype name such as 'i8' or 'fp8_e4m3', got {v!r}")
    try:
        return dtypes.dtype(v)
    except ValueError as exc:
        raise ctx.fail(f"attribute {name}={v!r}: {exc}") from None


# ----------------------------------------------------------------------------- parameter layouts


def _check_qparam(ctx: InferContext, x: TensorType, p: TensorType, axis: int, block: int, what: str) -> None:
    """A scale / zero point of `x` in ONNX's layout (one value, 1-D along axis, or blocked)."""
    if p.shape is None:
        return
    if all(d == 1 for d in p.shape):
        return  # one element: per tensor
    if x.shape is None:
        return
    rank = len(x.shape)
    if rank == 0:
        raise ctx.fail(f"{what} of shape {p.shape} for a scalar input")
    ax = normalize_axis(axis, rank, ctx.schema.name)
    d = x.shape[ax]
    if block <= 0:
        if len(p.shape) != 1:
            raise ctx.fail(f"{what} must be a scalar or 1-D (per axis) without block_size, got shape {p.shape}")
        if isinstance(d, int) and isinstance(p.shape[0], int) and p.shape[0] != d:
            raise ctx.fail(f"{what} has {p.shape[0]} values, axis {axis} of input {x.shape} has {d}")
        return
    if len(p.shape) != rank:
        raise ctx.fail(f"blocked {what} must have the input's rank {rank}, got shape {p.shape}")
    for i, (pd, xd) in enumerate(zip(p.shape, x.shape)):
        want = -(-xd // block) if (i == ax and isinstance(xd, int)) else (xd if i != ax else None)
        if isinstance(pd, int) and isinstance(want, int) and pd != want:
            raise ctx.fail(
                f"blocked {what} has shape {p.shape}; for input {x.shape} with block_size {block} on axis {axis} "
                f"dim {i} must be {want}"
            )


def _same_shape(ctx: InferContext, a: TensorType, b: TensorType | None, what: str) -> None:
    if b is None or a.shape is None or b.shape is None:
        return
    if len(a.shape) != len(b.shape) or any(
        isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a.shape, b.shape)
    ):
        raise ctx.fail(f"{what}: shapes {a.shape} and {b.shape} differ")


def _zero_float_zp(ctx: InferContext, i: int, dt: DType) -> None:
    if dt in _FLOAT_CODES:
        c = ctx.const(i)
        if c is not None and np.any(np.asarray(c).astype(np.float32) != 0):
            raise ctx.fail(f"a {dt} zero point must be 0")


# ----------------------------------------------------------------------------- QuantizeLinear / DequantizeLinear


def _infer_quantize_linear(ctx: InferContext) -> list[TensorType]:
    x = _check(ctx, 0, _FLOATS_IO)
    s = _check(ctx, 1, _FLOATS_IO)
    zp = _opt_check(ctx, 2, _QUANT)
    axis = attr_int(ctx, "axis")
    block = attr_int(ctx, "block_size", lo=0)
    attr_int(ctx, "saturate", (0, 1))
    want = _dtype_attr(ctx, "output_dtype")
    if want is not None and want not in _QUANT:
        raise ctx.fail(f"output_dtype {want} is not one of {_words(_QUANT)}")
    if zp is not None and want is not None and zp.dtype != want:
        raise ctx.fail(f"output_dtype {want} differs from y_zero_point's dtype {zp.dtype}")
    out = zp.dtype if zp is not None else (want or dtypes.uint8)
    _check_qparam(ctx, x, s, axis, block, "y_scale")
    if zp is not None:
        _same_shape(ctx, s, zp, "y_scale and y_zero_point")
        _zero_float_zp(ctx, 2, out)
    return [x.with_dtype(out)]


def _quantize_linear(ins: list, attrs: dict, outs: list) -> Any:
    return qf.quantize_linear(
        ins[0], ins[1], opt(ins, 2), axis=int(attrs["axis"]), block_size=int(attrs["block_size"]),
        dtype=outs[0].dtype, saturate=bool(attrs["saturate"]),
    )


define_op(
    "QuantizeLinear",
    inputs=("x", "y_scale", "y_zero_point?"),
    outputs=("y",),
    attrs={"axis": 1, "block_size": 0, "output_dtype": None, "saturate": 1},
    infer=_infer_quantize_linear,
    kernel=_quantize_linear,
)


def _infer_dequantize_linear(ctx: InferContext) -> list[TensorType]:
    x = _check(ctx, 0, _QUANT | {dtypes.int32})
    s = _check(ctx, 1, _FLOATS_IO)
    zp = _opt_check(ctx, 2, _QUANT | {dtypes.int32})
    _same(ctx, 0, 2)
    axis = attr_int(ctx, "axis")
    block = attr_int(ctx, "block_size", lo=0)
    want = _dtype_attr(ctx, "output_dtype")
    if want is not None and want not in _FLOATS_IO:
        raise ctx.fail(f"output_dtype {want} is not one of {_words(_FLOATS_IO)}")
    _check_qparam(ctx, x, s, axis, block, "x_scale")
    if zp is not None:
        _same_shape(ctx, s, zp, "x_scale and x_zero_point")
        _zero_float_zp(ctx, 2, x.dtype)
    return [x.with_dtype(want or s.dtype)]


def _dequantize_linear(ins: list, attrs: dict, outs: list) -> Any:
    return qf.dequantize_linear(
        ins[0], ins[1], opt(ins, 2), axis=int(attrs["axis"]), block_size=int(attrs["block_size"]),
        out_dtype=outs[0].dtype.np,
    )


define_op(
    "DequantizeLinear",
    inputs=("x", "x_scale", "x_zero_point?"),
    outputs=("y",),
    attrs={"axis": 1, "block_size": 0, "output_dtype": None},
    infer=_infer_dequantize_linear,
    kernel=_dequantize_linear,
    # DQ(constant codes) is how a quantized weight is stored: folding it would turn the
    # weight back into float32 (4x the bytes) and hide it from lower_quant.
    foldable=False,
)


# ----------------------------------------------------------------------------- DynamicQuantizeLinear


def _infer_dynamic_quantize_linear(ctx: InferContext) -> list[TensorType]:
    x = _check(ctx, 0, _F32)
    return [x.with_dtype(dtypes.uint8), TensorType((), dtypes.float32), TensorType((), dtypes.uint8)]


def dynamic_qparams_u8(x: np.ndarray) -> tuple[np.float32, np.uint8]:
    """DynamicQuantizeLinear's (scale, zero point), float32 arithmetic as ONNX's spec."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return np.float32(1.0), np.uint8(0)
    hi = np.float32(max(np.float32(0), x.max()))
    lo = np.float32(min(np.float32(0), x.min()))
    scale = np.float32(1.0) if hi == lo else np.float32(hi - lo) / np.float32(255)
    initial = np.float32(0) - lo / scale
    zp = np.rint(np.clip(initial, np.float32(0), np.float32(255)))
    return np.float32(scale), np.uint8(zp)


def _dynamic_quantize_linear(ins: list, attrs: dict, outs: list) -> Any:
    x = np.asarray(ins[0], dtype=np.float32)
    scale, zp = dynamic_qparams_u8(x)
    y = qf.quantize_linear(x, np.asarray(scale), np.asarray(zp), dtype=dtypes.uint8)
    return [y, np.asarray(scale, np.float32), np.asarray(zp, np.uint8)]


define_op(
    "DynamicQuantizeLinear",
    inputs=("x",),
    outputs=("y", "y_scale", "y_zero_point"),
    infer=_infer_dynamic_quantize_linear,
    kernel=_dynamic_quantize_linear,
)


# ----------------------------------------------------------------------------- integer matmuls


def _rows(a: TensorType) -> Dim:
    return None if a.shape is None or len(a.shape) < 2 else a.shape[-2]


def _cols(b: TensorType) -> Dim:
    return None if b.shape is None or len(b.shape) < 2 else b.shape[-1]


def _check_vector(ctx: InferContext, i: int, n: Dim, where: str, allow_nd: bool = True) -> None:
    """Input `i` is one value, or (per row / column) 1-D of length `n`, or N-D broadcasting."""
    t = ctx.input(i)
    if t is None or t.shape is None or all(d == 1 for d in t.shape):
        return
    name = ctx.schema.inputs[i].name
    if len(t.shape) == 1:
        d = t.shape[0]
        if isinstance(d, int) and isinstance(n, int) and d != n:
            raise ctx.fail(f"{name} has {d} values; per {where} needs {n}")
        return
    if not allow_nd:
        raise ctx.fail(f"{name} must be a scalar or 1-D (per {where}), got shape {t.shape}")


def _int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer matmul as int64 (float64 BLAS when every partial sum is exact there)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    k = a.shape[-1] if a.ndim else 1
    bound = k * (int(np.abs(a).max(initial=0)) * int(np.abs(b).max(initial=0)))
    if bound < 2**53:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a, b)


def _wrap_i32(c: np.ndarray) -> np.ndarray:
    return np.asarray(c, dtype=np.int64).astype(np.int32)


def _row_param(p: np.ndarray | None, a_ndim: int) -> np.ndarray | int:
    """A per-row parameter of A ([M] -> [M, 1]); scalars and N-D forms as given."""
    if p is None:
        return 0
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(())
    if p.ndim == 1 and a_ndim >= 2:
        return p.reshape(-1, 1)
    return p


def _col_param(p: np.ndarray | None) -> np.ndarray | int:
    if p is None:
        return 0
    p = np.asarray(p)
    return p.reshape(()) if p.size == 1 else p


def _infer_matmul_integer(ctx: InferContext) -> list[TensorType]:
    a = _check(ctx, 0, _U8_I8)
    b = _check(ctx, 1, _U8_I8)
    _opt_check(ctx, 2, _U8_I8)
    _opt_check(ctx, 3, _U8_I8)
    _same(ctx, 0, 2)
    _same(ctx, 1, 3)
    _check_vector(ctx, 2, _rows(a), "row of A")
    _check_vector(ctx, 3, _cols(b), "column of B")
    return [TensorType(matmul_shape(ctx, a, b), dtypes.int32)]


def _matmul_integer(ins: list, attrs: dict, outs: list) -> Any:
    a, b = np.asarray(ins[0]), np.asarray(ins[1])
    a64 = a.astype(np.int64) - _row_param(opt(ins, 2), a.ndim)
    b64 = b.astype(np.int64) - _col_param(opt(ins, 3))
    return _wrap_i32(_int_matmul(a64, b64))


define_op(
    "MatMulInteger",
    inputs=("A", "B", "a_zero_point?", "b_zero_point?"),
    infer=_infer_matmul_integer,
    kernel=_matmul_integer,
)


def _infer_qlinear_matmul(ctx: InferContext) -> list[TensorType]:
    a = _check(ctx, 0, _U8_I8)
    _check(ctx, 1, _F32)
    _check(ctx, 2, _U8_I8)
    b = _check(ctx, 3, _U8_I8)
    _check(ctx, 4, _F32)
    _check(ctx, 5, _U8_I8)
    _check(ctx, 6, _F32)
    y_zp = _check(ctx, 7, _U8_I8)
    _same(ctx, 0, 2)
    _same(ctx, 3, 5)
    m, n = _rows(a), _cols(b)
    for i, count, where in ((1, m, "row of a"), (2, m, "row of a"), (4, n, "column of b"), (5, n, "column of b"),
                            (6, m, "row of the output"), (7, m, "row of the output")):
        _check_vector(ctx, i, count, where)
    return [TensorType(matmul_shape(ctx, a, b), y_zp.dtype)]


def _qlinear_matmul(ins: list, attrs: dict, outs: list) -> Any:
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = (np.asarray(v) for v in ins)
    acc = _wrap_i32(_int_matmul(a.astype(np.int64) - _row_param(a_zp, a.ndim),
                                b.astype(np.int64) - _col_param(b_zp)))
    f32 = np.float32
    mult = (_row_param(a_s.astype(f32), a.ndim) * _col_param(b_s.astype(f32))).astype(f32)
    mult = (mult / _row_param(y_s.astype(f32), a.ndim)).astype(f32)
    v = acc.astype(f32) * mult
    dt = outs[0].dtype
    lo, hi = dt.int_range
    zp = np.asarray(_row_param(y_zp.astype(np.int64), a.ndim), dtype=np.float64)
    r = np.rint(v.astype(np.float64))
    r = np.where(np.isnan(r), lo - zp, np.clip(r, lo - zp, hi - zp)) + zp
    return r.astype(dt.np)


define_op(
    "QLinearMatMul",
    inputs=("a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point"),
    infer=_infer_qlinear_matmul,
    kernel=_qlinear_matmul,
)


# ----------------------------------------------------------------------------- ONNX Runtime contrib matmuls


def _check_bias(ctx: InferContext, i: int, n: Dim) -> None:
    t = _opt_check(ctx, i, _F32)
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
    a = _check(ctx, 0, _U8_I8)
    b = _check(ctx, 1, _U8_I8)
    _check(ctx, 2, _F32)
    _check(ctx, 3, _F32)
    _opt_check(ctx, 4, _U8_I8)
    _opt_check(ctx, 5, _U8_I8)
    _same(ctx, 0, 4)
    _same(ctx, 1, 5)
    n = _cols(b)
    _scalar_only(ctx, 2)
    _scalar_only(ctx, 4)
    _check_vector(ctx, 3, n, "column of B", allow_nd=False)
    _check_vector(ctx, 5, n, "column of B", allow_nd=False)
    _check_bias(ctx, 6, n)
    return [TensorType(matmul_shape(ctx, a, b), dtypes.float32)]


def _scaled_int_matmul(a_q: np.ndarray, a_zp: Any, a_scale: Any, b: np.ndarray, b_zp: Any, b_scale: Any,
                       bias: np.ndarray | None) -> np.ndarray:
    """f32(acc) * f32(a_scale * b_scale) (+ bias), as ORT's scale-bias output processor."""
    acc = _wrap_i32(_int_matmul(np.asarray(a_q).astype(np.int64) - _col_param(a_zp),
                                np.asarray(b).astype(np.int64) - _col_param(b_zp)))
    f32 = np.float32
    mult = (np.asarray(a_scale, f32).reshape(()) * _col_param(np.asarray(b_scale, f32))).astype(f32)
    y = acc.astype(f32) * mult
    if bias is not None:
        y = y + np.asarray(bias, f32)
    return y.astype(f32)


def _matmul_integer_to_float(ins: list, attrs: dict, outs: list) -> Any:
    return _scaled_int_matmul(ins[0], opt(ins, 4), ins[2], ins[1], opt(ins, 5), ins[3], opt(ins, 6))


define_op(
    "MatMulIntegerToFloat",
    inputs=("A", "B", "a_scale", "b_scale", "a_zero_point?", "b_zero_point?", "bias?"),
    infer=_infer_matmul_integer_to_float,
    kernel=_matmul_integer_to_float,
    domain="com.microsoft",
)


def _infer_dynamic_quantize_matmul(ctx: InferContext) -> list[TensorType]:
    a = _check(ctx, 0, _F32)
    b = _check(ctx, 1, _U8_I8)
    _check(ctx, 2, _F32)
    _opt_check(ctx, 3, _U8_I8)
    _same(ctx, 1, 3)
    n = _cols(b)
    _check_vector(ctx, 2, n, "column of B", allow_nd=False)
    _check_vector(ctx, 3, n, "column of B", allow_nd=False)
    _check_bias(ctx, 4, n)
    return [TensorType(matmul_shape(ctx, a, b), dtypes.float32)]


def _dynamic_quantize_matmul(ins: list, attrs: dict, outs: list) -> Any:
    a = np.asarray(ins[0], dtype=np.float32)
    scale, zp = dynamic_qparams_u8(a)
    a_q = qf.quantize_linear(a, np.asarray(scale), np.asarray(zp), dtype=dtypes.uint8)
    return _scaled_int_matmul(a_q, zp, scale, ins[1], opt(ins, 3), ins[2], opt(ins, 4))


define_op(
    "DynamicQuantizeMatMul",
    inputs=("A", "B", "b_scale", "b_zero_point?", "bias?"),
    infer=_infer_dynamic_quantize_matmul,
    kernel=_dynamic_quantize_matmul,
    domain="com.microsoft",
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
    a = _check(ctx, 0, frozenset({dtypes.float32, dtypes.float16}))
    _check(ctx, 1, frozenset({dtypes.uint8}))
    _check(ctx, 2, frozenset({a.dtype}), f"{a.dtype} (A's dtype)")
    k, n, bits, block, k_blocks = _nbits_layout(ctx)
    _check_dims(ctx, 1, [(n, k_blocks, block * bits // 8)])
    _check_dims(ctx, 2, [(n, k_blocks), (n * k_blocks,)])
    zp = _opt_check(ctx, 3, frozenset({dtypes.uint8, a.dtype}))
    if zp is not None:
        if zp.dtype == dtypes.uint8:
            packed = -(-k_blocks * bits // 8)
            _check_dims(ctx, 3, [(n, packed), (n * packed,)])
        else:
            _check_dims(ctx, 3, [(n, k_blocks), (n * k_blocks,)])
    if _opt_check(ctx, 4, frozenset({dtypes.int32})) is not None:
        _check_dims(ctx, 4, [(k,)])
    if _opt_check(ctx, 5, frozenset({a.dtype})) is not None:
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
    domain="com.microsoft",
)


# ----------------------------------------------------------------------------- FakeQuantize


def fake_quantize_scheme(attrs: dict, has_zero_point: bool = False) -> qf.QuantScheme:
    """The scheme a FakeQuantize node's attributes describe."""
    return qf.QuantScheme.from_op_attrs(dict(attrs), symmetric=not has_zero_point)


def _infer_fake_quantize(ctx: InferContext) -> list[TensorType]:
    x = _check(ctx, 0, _F32)
    dt = _dtype_attr(ctx, "dtype")
    if dt is None:
        raise ctx.fail("attribute dtype must name a format (i8, u8, i4, u4, fp8_e4m3, fp8_e5m2, fp4_e2m1, ff_e<E>m<M>_b<bias>)")
    axis = attr_int(ctx, "axis")
    gsize = attr_int(ctx, "group_size", lo=0)
    gran = ctx.attrs["granularity"]
    zp = ctx.input(2)
    try:
        scheme = fake_quantize_scheme(ctx.attrs, zp is not None and dt.is_integer)
    except (ValueError, TypeError) as exc:
        raise ctx.fail(str(exc)) from None
    s = _opt_check(ctx, 1, _F32)
    if zp is not None:
        if not dt.is_integer:
            raise ctx.fail(f"{dt} takes no zero point")
        if zp.dtype != dt:
            raise ctx.fail(f"zero_point has dtype {zp.dtype}, the format is {dt}")
    if gran == "mx":
        if s is not None:
            raise ctx.fail("granularity 'mx' computes its scales from the data: give no scale input")
    elif gran == "nv":
        if s is not None and s.shape is not None and not all(d == 1 for d in s.shape):
            raise ctx.fail(f"the nv tensor scale must hold one value, got shape {s.shape}")
    else:
        if s is None:
            raise ctx.fail(f"granularity {gran!r} needs the scale input")
        block = gsize if gran == "group" else 0
        if gran == "tensor" and s.shape is not None and not all(d == 1 for d in s.shape):
            raise ctx.fail(f"a per-tensor scale must hold one value, got shape {s.shape}")
        _check_qparam(ctx, x, s, axis, block, "scale")
        _same_shape(ctx, s, zp, "scale and zero_point")
    if scheme.is_block_format and x.shape is not None and not x.shape:
        raise ctx.fail("block formats need an input of rank >= 1")
    if gran in ("channel", "group", "mx", "nv") and x.shape is not None and x.shape:
        normalize_axis(axis, len(x.shape), ctx.schema.name)
    return [x]


def _fake_quantize(ins: list, attrs: dict, outs: list) -> Any:
    zp = opt(ins, 2)
    scheme = fake_quantize_scheme(attrs, zp is not None)
    return qf.fake_quantize(ins[0], scheme, opt(ins, 1), zp)


define_op(
    "FakeQuantize",
    inputs=("X", "scale?", "zero_point?"),
    attrs={"dtype": REQUIRED, "granularity": "tensor", "axis": -1, "group_size": 0},
    infer=_infer_fake_quantize,
    kernel=_fake_quantize,
    domain="requant",
)

