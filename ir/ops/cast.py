"""Dtype conversion: Cast and CastLike (ONNX opset 19+ with `saturate`), and
`cast_to`, the conversion every other module (QuantizeLinear, passes) should reuse.

`Cast.to` is a requant dtype name, not an ONNX enum: the short spelling ("f32", "i64",
"bf16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "i4", "ff_e2m1_b1") is canonical; long names
("float32") are accepted too. Conversion rules:
- to bool: zero (either sign) is False, everything else (NaN included) True; from
  bool: 1/0.
- integer -> integer: keeps the low bits (two's complement wrap), int4/uint4 included
  (200 i16 -> -56 i8; 9 -> -7 i4).
- float -> integer: truncation toward zero; ONNX leaves out-of-range undefined,
  requant saturates to the dtype's range and maps NaN to 0.
- -> f64/f32/f16/bf16: round to nearest even, overflow to +-inf.
- -> fp8_e4m3 / fp8_e5m2: round to nearest even; with saturate=1 (the default)
  out-of-range values and +-inf become +-max finite (448 / 57344), NaN stays NaN; with
  saturate=0, e4m3 overflow gives NaN and e5m2 overflow +-inf (ONNX's tables).
- -> fp4_e2m1 and `FloatFormat` (no inf/NaN in the format): always saturating,
  round to nearest even on the format's grid, NaN maps to +max (fp4: +6).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.dtypes import DType, FloatFormat
from requant.ir.ops._common import attr_int, check_input
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.types import TensorType

__all__ = ["cast_to", "round_to_float_format"]

_FP8 = (dtypes.fp8_e4m3, dtypes.fp8_e5m2)


def round_to_float_format(x: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    """Round to nearest even on `fmt`'s grid, saturating at +-max (NaN -> +max);
    returns float32."""
    y = np.asarray(x, dtype=np.float64) * 2.0**fmt.bias
    y = np.where(np.isnan(y), np.inf, y)
    _, ex = np.frexp(np.where(np.isfinite(y), y, 0.0))
    q = np.exp2(np.maximum(ex - 1, 1) - fmt.man_bits)
    top = (2.0 - 2.0**-fmt.man_bits) * 2.0 ** (2**fmt.exp_bits - 1)
    with np.errstate(invalid="ignore", over="ignore"):
        r = np.where(np.isfinite(y), np.round(y / q) * q, y)
    r = np.clip(r, -top, top)
    return (r / 2.0**fmt.bias).astype(np.float32)


def _float_to_int(x: np.ndarray, dt: DType) -> np.ndarray:
    lo, hi = dt.int_range
    r = np.trunc(np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf))
    with np.errstate(invalid="ignore"):
        small = r <= float(lo)
        big = r >= float(hi)
        mid = np.where(small | big, 0, r).astype(dt.np)
    return np.where(small, dt.np.type(lo), np.where(big, dt.np.type(hi), mid)).astype(dt.np)


def _wrap_int(x: np.ndarray, dt: DType) -> np.ndarray:
    if dt.bits == 4:
        v = x.astype(np.int64) & 0xF
        if dt.kind == "int":
            v = (v ^ 8) - 8
        return v.astype(dt.np)
    return x.astype(dt.np)


def cast_to(x: np.ndarray, dst: DType | str, saturate: bool = True) -> np.ndarray:
    """`x` (a numpy array in some requant dtype's storage) converted to `dst`'s storage,
    by the rules in this module's docstring."""
    dst = dtypes.dtype(dst)
    x = np.asarray(x)
    if dst == dtypes.bool_:
        if x.dtype.kind == "V":
            x = x.astype(np.float32)
        return x != 0
    if x.dtype == np.bool_:
        return x.astype(np.int8).astype(dst.np)
    src_int = np.issubdtype(x.dtype, np.integer)
    if dst.is_integer:
        if src_int:
            return _wrap_int(x, dst)
        return _float_to_int(x if x.dtype.kind == "f" else x.astype(np.float32), dst)
    # float destinations
    if isinstance(dst, FloatFormat):
        return round_to_float_format(x, dst)
    if dst == dtypes.fp4_e2m1:
        xf = np.asarray(x, dtype=np.float64)
        xf = np.where(np.isnan(xf), 6.0, np.clip(xf, -6.0, 6.0))
        return xf.astype(dst.np)
    if dst in _FP8 and saturate:
        import ml_dtypes

        top = float(ml_dtypes.finfo(dst.np).max)
        xf = np.asarray(x, dtype=np.float64) if src_int or x.dtype.kind == "V" else x
        return np.clip(xf, -top, top).astype(dst.np)
    if src_int and dst in _FP8:
        x = x.astype(np.float64)
    return x.astype(dst.np)


def _target(ctx: InferContext) -> DType:
    to = ctx.attrs["to"]
    if not isinstance(to, str):
        raise ctx.fail(f"attribute to must be a requant dtype name such as 'f32' or 'fp8_e4m3', got {to!r}")
    try:
        return dtypes.dtype(to)
    except ValueError as exc:
        raise ctx.fail(f"attribute to={to!r}: {exc}") from None


def _infer_cast(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    attr_int(ctx, "saturate", (0, 1))
    return [x.with_dtype(_target(ctx))]


def _cast(ins: list, attrs: dict, outs: list) -> Any:
    return cast_to(ins[0], outs[0].dtype, bool(attrs["saturate"]))


define_op(
    "Cast",
    inputs=("input",),
    outputs=("output",),
    attrs={"to": REQUIRED, "saturate": 1},
    infer=_infer_cast,
    kernel=_cast,
)


def _infer_cast_like(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "any")
    target = check_input(ctx, 1, "any")
    attr_int(ctx, "saturate", (0, 1))
    return [x.with_dtype(target.dtype)]


define_op(
    "CastLike",
    inputs=("input", "target_type"),
    outputs=("output",),
    attrs={"saturate": 1},
    infer=_infer_cast_like,
    kernel=_cast,
)
