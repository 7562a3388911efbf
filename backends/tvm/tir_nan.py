"""The NaN test for TIR expressions that TVM's vectoriser takes.

`tirx.isnan` is not marked vectorisable in TVM, so a vectorised loop holding one is
emitted lane by lane (and LLVM may then re-vectorise the loop around it with gathers
and scatters, several times slower). `is_nan(v)` tests the bits instead: with the sign
cleared, a float is NaN exactly when its bits exceed those of infinity (an all-ones
exponent and a nonzero mantissa), for every payload, sign and signalling bit, and
integer arithmetic on the bits vectorises like any other.
"""

from __future__ import annotations

from tvm import tirx

__all__ = ["is_nan"]

#: float dtype -> (the integer of its width, its bits without the sign, infinity's bits)
_NAN_BITS = {"float16": ("int16", 0x7FFF, 0x7C00), "float32": ("int32", 0x7FFFFFFF, 0x7F800000),
            "float64": ("int64", 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


def is_nan(v: tirx.PrimExpr) -> tirx.PrimExpr:
    """Whether `v` is NaN: on the bits for float16 / float32 / float64, `tirx.isnan`
    for other float formats, false for integers."""
    dtype = str(v.ty.dtype)
    if dtype in _NAN_BITS:
        int_dtype, magnitude, infinity = _NAN_BITS[dtype]
        bits = tirx.reinterpret(int_dtype, v) & tirx.const(magnitude, int_dtype)
        return bits > tirx.const(infinity, int_dtype)
    if dtype.startswith(("float", "bfloat")):
        return tirx.isnan(v)
    return tirx.const(False, "bool")
