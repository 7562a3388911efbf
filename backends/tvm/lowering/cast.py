"""Lowerings of Cast and CastLike, and the conversions other families share: `convert`
(Cast's rules between any two requant dtypes), `encode_float` (rounding onto a low-bit
float format's grid) and `trunc_saturate` (float -> integer).

Low-bit float formats (fp8_e4m3, fp8_e5m2, fp4_e2m1, `FloatFormat`) are emulated: a
tensor of such a dtype is a float32 tensor in Relax holding values on the format's grid
(TVM's own float8 conversions on llvm are not exact for NaN, subnormals and inf, and it
has no fp4 or parametric floats). Converting to a format rounds to nearest even in
float64 with bit-level exponent extraction, exactly as `round_to_float_format` and
ml_dtypes do: fp8 saturating clamps to +-max (NaN stays NaN); fp8 non-saturating gives
the NaN of the value's sign (e4m3) or +-inf (e5m2) past the largest finite value; fp4
and `FloatFormat` saturate and map NaN to +max. Converting from a format is exact.

Float -> integer truncates toward zero, saturates to the range and maps NaN to 0;
integer -> integer wraps (int4/uint4 by their low four bits, carried in int8/uint8);
anything -> bool is `!= 0`.
"""

from __future__ import annotations

import logging
from typing import Any

from tvm import relax, tirx

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    as_dtype,
    constant,
    dtype_of,
    elementwise_te,
    in_dtype,
    is_emulated,
    out_dtype,
    relax_dtype,
)
from requant.ir import dtypes
from requant.ir.dtypes import DType, FloatFormat
from requant.ir.graph import Node

__all__ = ["convert", "encode_float", "f64_exponent", "pow2_f64", "trunc_saturate"]

logger = logging.getLogger(__name__)

R = relax.op


def _grid_params(dt: DType) -> tuple[int, int, float, float]:
    """(exponent bits, mantissa bits, bias, largest finite value) of an emulated format."""
    if isinstance(dt, FloatFormat):
        return dt.exp_bits, dt.man_bits, dt.bias, dt.max_value
    if dt == dtypes.fp8_e4m3:
        return 4, 3, 7.0, 448.0
    if dt == dtypes.fp8_e5m2:
        return 5, 2, 15.0, 57344.0
    return 2, 1, 1.0, 6.0  # fp4_e2m1


def f64_exponent(v: Any) -> Any:
    """The unbiased binary exponent of float64 `v` (int64, from its bits)."""
    bits = tirx.reinterpret("int64", v)
    return ((bits >> tirx.const(52, "int64")) & tirx.const(0x7FF, "int64")) - tirx.const(1023, "int64")


def pow2_f64(e: Any) -> Any:
    """2**e as float64 for an int64 exponent in the normal range (exact)."""
    biased = (e + tirx.const(1023, "int64")) << tirx.const(52, "int64")
    return tirx.reinterpret("float64", biased)


def _grid_round(v: Any, man_bits: int, bias: float) -> Any:
    """Round float64 `v` to nearest even on a float grid with `man_bits` mantissa bits,
    exponent bias `bias` and subnormals below exponent 1 (unbounded above): the core of
    `round_to_float_format`. Non-finite values pass through."""
    scale = 2.0**bias
    y = v * tirx.const(scale, "float64")
    e = tirx.max(f64_exponent(y), tirx.const(1, "int64"))
    e = tirx.min(e, tirx.const(1023 + man_bits, "int64"))
    q = pow2_f64(e - tirx.const(man_bits, "int64"))
    r = tirx.round(y / q) * q
    r = tirx.Select(tirx.isfinite(y), r, y)
    return r / tirx.const(scale, "float64")


def _nan_f64(negative: bool) -> Any:
    """A quiet float64 NaN with the given sign bit, from its bits (TVM folds a negated
    NaN constant back to the positive one)."""
    bits = -(1 << 51) if negative else 0x7FF8000000000000  # 0xFFF8000000000000 as int64
    return tirx.reinterpret("float64", tirx.const(bits, "int64"))


def encode_float(ctx: LowerContext, x: relax.Expr, dst: DType, saturate: bool) -> relax.Expr:
    """`x` (any float or int Relax tensor) rounded onto `dst`'s grid, as `cast_to` does;
    float32 result (the emulated storage)."""
    _, man, bias, top = _grid_params(dst)
    fp8 = dst in (dtypes.fp8_e4m3, dtypes.fp8_e5m2)
    f64 = "float64"

    def enc(a: Any) -> Any:
        v = a.astype(f64)
        nan = tirx.isnan(v)
        top_c = tirx.const(top, f64)
        if fp8 and saturate:
            r = _grid_round(tirx.max(tirx.min(v, top_c), -top_c), man, bias)
            r = tirx.Select(nan, tirx.const(float("nan"), f64), r)
        elif fp8:
            r = _grid_round(v, man, bias)
            over = tirx.abs(r) > top_c
            if dst == dtypes.fp8_e4m3:
                # e4m3 has no inf: an overflow becomes the NaN code of its sign (0x7f or
                # 0xff), and a NaN input keeps its own sign
                r = tirx.Select(over, tirx.Select(r > tirx.const(0.0, f64), _nan_f64(False), _nan_f64(True)), r)
                r = tirx.Select(nan, v, r)
            else:
                inf = tirx.const(float("inf"), f64)
                r = tirx.Select(over & (r > tirx.const(0.0, f64)), inf, tirx.Select(over, -inf, r))
        else:  # fp4 / FloatFormat: saturating, NaN -> +max
            v = tirx.Select(nan, top_c, v)
            v = tirx.max(tirx.min(v, top_c), -top_c)
            r = _grid_round(v, man, bias)
            r = tirx.max(tirx.min(r, top_c), -top_c)
        return r.astype("float32")

    return elementwise_te(ctx, enc, [x], "float32", "encode_" + dst.short.replace(".", "_"))


def trunc_saturate(v: Any, dst: DType) -> Any:
    """float64 scalar `v` as integer dtype `dst`: truncated toward zero, saturated to its
    range, NaN -> 0 (requant's Cast; integer Pow with a float exponent)."""
    lo, hi = dst.int_range
    out = relax_dtype(dst)
    f64 = "float64"
    r = tirx.trunc(v)
    r = tirx.Select(tirx.isnan(r), tirx.const(0.0, f64), r)
    small = r <= tirx.const(float(lo), f64)
    big = r >= tirx.const(float(hi), f64)
    mid = tirx.Select(small | big, tirx.const(0.0, f64), r).astype(out)
    return tirx.Select(small, tirx.const(lo, out), tirx.Select(big, tirx.const(hi, out), mid))


def _float_to_int(ctx: LowerContext, x: relax.Expr, dst: DType) -> relax.Expr:
    """Truncate toward zero, saturate to dst's range, NaN -> 0 (requant's Cast)."""
    return elementwise_te(ctx, lambda a: trunc_saturate(a.astype("float64"), dst), [x], relax_dtype(dst),
                          "float_to_" + dst.short)


def _wrap_int(ctx: LowerContext, x: relax.Expr, dst: DType) -> relax.Expr:
    out = relax_dtype(dst)
    if dst.bits != 4:
        return as_dtype(ctx, x, out)
    v = ctx.emit(R.bitwise_and(R.astype(x, "int64"), constant(0xF, "int64")))
    if dst.kind == "int":
        v = ctx.emit(R.subtract(R.bitwise_xor(v, constant(8, "int64")), constant(8, "int64")))
    return ctx.emit(R.astype(v, out))


def convert(ctx: LowerContext, x: relax.Expr, src: DType, dst: DType, saturate: bool = True) -> relax.Expr:
    """`x` (values of requant dtype `src`) converted to `dst` by Cast's rules."""
    out = relax_dtype(dst)
    if dst == dtypes.bool_:
        return ctx.emit(R.not_equal(x, constant(0, dtype_of(x))))
    if src == dtypes.bool_:
        return ctx.emit(R.astype(x, out))
    if dst.is_integer:
        if src.is_integer:
            return _wrap_int(ctx, x, dst)
        return _float_to_int(ctx, x, dst)
    if is_emulated(dst):
        if src == dst:
            return x
        return encode_float(ctx, x, dst, saturate)
    return as_dtype(ctx, x, out)


@LOWERINGS.lowers("Cast", "CastLike")
def _cast(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    return convert(ctx, ins[0], in_dtype(node), out_dtype(node), bool(a["saturate"]))
