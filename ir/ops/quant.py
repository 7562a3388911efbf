"""Quantization ops: ONNX's QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
MatMulInteger and QLinearMatMul; requant's FakeQuantize. (ONNX Runtime's own quantized
kernels are declared in ops/onnxruntime.py, in their domain.)

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
- FakeQuantize(X, scale?, zero_point?) {dtype, granularity, axis, group_size}: float32
  quantize-dequantize of `requant.ir.quant_formats` (`QuantScheme.op_attrs()` gives
  the attributes). "tensor"/"channel"/"group" need the scale (ONNX's layouts with
  axis / block_size = group_size); "mx" takes no scale (computed from the data); "nv"
  takes an optional tensor scale (computed from the data when omitted); "token" (signed
  integers, per-token dynamic) takes no scale or zero point and the attribute `clip` in
  (0, 1] (its scales are amax_row * clip / (2^(bits-1) - 1); 1 elsewhere).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir import quant_formats as qf  # attributes read at run time only (import cycle via cast)
from requant.ir.dtypes import DType
from requant.ir.ops._common import attr_float, attr_int, opt
from requant.ir.ops.linalg import matmul_shape
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.shapes import normalize_axis
from requant.ir.types import Dim, TensorType

__all__ = [
    "F32",
    "U8_I8",
    "check_dtype",
    "check_optional_dtype",
    "check_same_dtype",
    "check_param_vector",
    "columns_of",
    "column_param",
    "int_matmul",
    "wrap_int32",
    "scaled_int_matmul",
    "dynamic_qparams_u8",
    "fake_quantize_scheme",
]

_FLOATS_IO = frozenset({dtypes.float32, dtypes.float16, dtypes.bfloat16})
_QUANT = frozenset({
    dtypes.uint8, dtypes.int8, dtypes.uint16, dtypes.int16, dtypes.uint4, dtypes.int4,
    dtypes.fp8_e4m3, dtypes.fp8_e5m2, dtypes.fp4_e2m1,
})
_FLOAT_CODES = frozenset({dtypes.fp8_e4m3, dtypes.fp8_e5m2, dtypes.fp4_e2m1})
U8_I8 = frozenset({dtypes.uint8, dtypes.int8})
F32 = frozenset({dtypes.float32})


def _words(ds: frozenset[DType]) -> str:
    return ", ".join(sorted(d.short for d in ds))


def check_dtype(ctx: InferContext, i: int, allowed: frozenset[DType], what: str = "") -> TensorType:
    t = ctx.input(i)
    name = ctx.schema.inputs[min(i, len(ctx.schema.inputs) - 1)].name
    if t is None:
        raise ctx.fail(f"input {name} is missing")
    if t.dtype not in allowed:
        raise ctx.fail(f"input {name} has dtype {t.dtype}, expected {what or _words(allowed)}")
    return t


def check_optional_dtype(ctx: InferContext, i: int, allowed: frozenset[DType]) -> TensorType | None:
    return None if ctx.input(i) is None else check_dtype(ctx, i, allowed)


def check_same_dtype(ctx: InferContext, i: int, j: int) -> None:
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
    x = check_dtype(ctx, 0, _FLOATS_IO)
    s = check_dtype(ctx, 1, _FLOATS_IO)
    zp = check_optional_dtype(ctx, 2, _QUANT)
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
    x = check_dtype(ctx, 0, _QUANT | {dtypes.int32})
    s = check_dtype(ctx, 1, _FLOATS_IO)
    zp = check_optional_dtype(ctx, 2, _QUANT | {dtypes.int32})
    check_same_dtype(ctx, 0, 2)
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
    x = check_dtype(ctx, 0, F32)
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


def columns_of(b: TensorType) -> Dim:
    return None if b.shape is None or len(b.shape) < 2 else b.shape[-1]


def check_param_vector(ctx: InferContext, i: int, n: Dim, where: str, allow_nd: bool = True) -> None:
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


def int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact integer matmul as int64 (float64 BLAS when every partial sum is exact there)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    k = a.shape[-1] if a.ndim else 1
    bound = k * (int(np.abs(a).max(initial=0)) * int(np.abs(b).max(initial=0)))
    if bound < 2**53:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a, b)


def wrap_int32(c: np.ndarray) -> np.ndarray:
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


def column_param(p: np.ndarray | None) -> np.ndarray | int:
    if p is None:
        return 0
    p = np.asarray(p)
    return p.reshape(()) if p.size == 1 else p


def _infer_matmul_integer(ctx: InferContext) -> list[TensorType]:
    a = check_dtype(ctx, 0, U8_I8)
    b = check_dtype(ctx, 1, U8_I8)
    check_optional_dtype(ctx, 2, U8_I8)
    check_optional_dtype(ctx, 3, U8_I8)
    check_same_dtype(ctx, 0, 2)
    check_same_dtype(ctx, 1, 3)
    check_param_vector(ctx, 2, _rows(a), "row of A")
    check_param_vector(ctx, 3, columns_of(b), "column of B")
    return [TensorType(matmul_shape(ctx, a, b), dtypes.int32)]


def _matmul_integer(ins: list, attrs: dict, outs: list) -> Any:
    a, b = np.asarray(ins[0]), np.asarray(ins[1])
    a64 = a.astype(np.int64) - _row_param(opt(ins, 2), a.ndim)
    b64 = b.astype(np.int64) - column_param(opt(ins, 3))
    return wrap_int32(int_matmul(a64, b64))


define_op(
    "MatMulInteger",
    inputs=("A", "B", "a_zero_point?", "b_zero_point?"),
    infer=_infer_matmul_integer,
    kernel=_matmul_integer,
)


def _infer_qlinear_matmul(ctx: InferContext) -> list[TensorType]:
    a = check_dtype(ctx, 0, U8_I8)
    check_dtype(ctx, 1, F32)
    check_dtype(ctx, 2, U8_I8)
    b = check_dtype(ctx, 3, U8_I8)
    check_dtype(ctx, 4, F32)
    check_dtype(ctx, 5, U8_I8)
    check_dtype(ctx, 6, F32)
    y_zp = check_dtype(ctx, 7, U8_I8)
    check_same_dtype(ctx, 0, 2)
    check_same_dtype(ctx, 3, 5)
    m, n = _rows(a), columns_of(b)
    for i, count, where in ((1, m, "row of a"), (2, m, "row of a"), (4, n, "column of b"), (5, n, "column of b"),
                            (6, m, "row of the output"), (7, m, "row of the output")):
        check_param_vector(ctx, i, count, where)
    return [TensorType(matmul_shape(ctx, a, b), y_zp.dtype)]


def _qlinear_matmul(ins: list, attrs: dict, outs: list) -> Any:
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = (np.asarray(v) for v in ins)
    acc = wrap_int32(int_matmul(a.astype(np.int64) - _row_param(a_zp, a.ndim),
                                b.astype(np.int64) - column_param(b_zp)))
    f32 = np.float32
    mult = (_row_param(a_s.astype(f32), a.ndim) * column_param(b_s.astype(f32))).astype(f32)
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


def scaled_int_matmul(a_q: np.ndarray, a_zp: Any, a_scale: Any, b: np.ndarray, b_zp: Any, b_scale: Any,
                       bias: np.ndarray | None) -> np.ndarray:
    """f32(acc) * f32(a_scale * b_scale) (+ bias), as ORT's scale-bias output processor."""
    acc = wrap_int32(int_matmul(np.asarray(a_q).astype(np.int64) - column_param(a_zp),
                                np.asarray(b).astype(np.int64) - column_param(b_zp)))
    f32 = np.float32
    mult = (np.asarray(a_scale, f32).reshape(()) * column_param(np.asarray(b_scale, f32))).astype(f32)
    y = acc.astype(f32) * mult
    if bias is not None:
        y = y + np.asarray(bias, f32)
    return y.astype(f32)


# ----------------------------------------------------------------------------- FakeQuantize


def fake_quantize_scheme(attrs: dict, has_zero_point: bool = False) -> qf.QuantScheme:
    """The scheme a FakeQuantize node's attributes describe."""
    return qf.QuantScheme.from_op_attrs(dict(attrs), symmetric=not has_zero_point)


def _infer_fake_quantize(ctx: InferContext) -> list[TensorType]:
    x = check_dtype(ctx, 0, F32)
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
    s = check_optional_dtype(ctx, 1, F32)
    if zp is not None:
        if not dt.is_integer:
            raise ctx.fail(f"{dt} takes no zero point")
        if zp.dtype != dt:
            raise ctx.fail(f"zero_point has dtype {zp.dtype}, the format is {dt}")
    clip = attr_float(ctx, "clip")
    if not 0.0 < clip <= 1.0 or (clip != 1.0 and gran != "token"):
        raise ctx.fail(f"clip must be in (0, 1] and applies to granularity 'token' only, got {clip} with {gran!r}")
    if gran in ("mx", "token"):
        if s is not None:
            raise ctx.fail(f"granularity {gran!r} computes its scales from the data: give no scale input")
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
    if (scheme.is_block_format or gran == "token") and x.shape is not None and not x.shape:
        raise ctx.fail(f"granularity {gran!r} needs an input of rank >= 1")
    if gran in ("channel", "group", "mx", "nv", "token") and x.shape is not None and x.shape:
        normalize_axis(axis, len(x.shape), ctx.schema.name)
    return [x]


def _fake_quantize(ins: list, attrs: dict, outs: list) -> Any:
    zp = opt(ins, 2)
    scheme = fake_quantize_scheme(attrs, zp is not None)
    return qf.fake_quantize(ins[0], scheme, opt(ins, 1), zp, clip=float(attrs["clip"]))


define_op(
    "FakeQuantize",
    inputs=("X", "scale?", "zero_point?"),
    attrs={"dtype": REQUIRED, "granularity": "tensor", "axis": -1, "group_size": 0, "clip": 1.0},
    infer=_infer_fake_quantize,
    kernel=_fake_quantize,
    domain="requant",
)

