"""Cases of Cast and CastLike (requant.ir.ops.cast): between floats, integers, bool, the
4-bit integers, fp8 (saturating or not), fp4 and FloatFormat grids."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from op_cases.case import QDQ_OPSET, CaseList, Draws, I

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(111)
r, ri, rb = _d.r, _d.ri, _d.rb

_OPSETS = (None, 21)  # fp8 and the 4-bit types joined Cast in 19 and 21
_NO_ORT_FP4 = {"onnxruntime": "ONNX Runtime has no fp4_e2m1 Cast kernel (test_fp4_cast_exports_but_ort_has_no_kernel)"}
_X = np.array([-300.0, -2.7, -1.5, -0.4, 0.0, 0.3, 0.5, 1.5, 2.5, 3.9, 100.0, 500.0], np.float32)
_X_SMALL = np.array([-100.0, -2.7, -1.5, -0.4, 0.0, 0.3, 0.5, 1.5, 2.5, 3.9, 100.0, 120.0], np.float32)

for to in ("f16", "bf16", "f64", "fp8_e4m3", "fp8_e5m2", "bool"):
    add("Cast", [I(_X)], {"to": to}, label=to, export_opsets=_OPSETS)
for to in ("i32", "i64", "i8", "u8", "i16"):
    x = _X_SMALL if to == "i8" else np.abs(_X_SMALL) if to == "u8" else _X
    add("Cast", [I(x)], {"to": to}, label=to, export_opsets=_OPSETS if to in ("i32", "i64", "u8") else (None,))
# negative floats to u8 saturate at 0 like every float -> int cast (ONNX leaves it open;
# its reference wraps): test_cast_float_to_int_saturates
add("Cast", [I(r(3, 5, lo=-20, hi=200))], {"to": "u8"}, label="u8_negative", oracle="none")
add("Cast", [I(_X)], {"to": "fp8_e4m3", "saturate": 0}, label="fp8_nosat")
add("Cast", [I(np.array([np.inf, -np.inf, np.nan, 1e6], np.float32))], {"to": "fp8_e4m3"}, label="fp8_inf")
add("Cast", [I(np.array([np.inf, -np.inf, np.nan, 1e6], np.float32))], {"to": "fp8_e5m2"}, label="fp8_e5m2_inf")
add("Cast", [I(np.array([np.inf, -np.inf, 1e6], np.float32))], {"to": "fp8_e5m2", "saturate": 0}, label="fp8_e5m2_nosat")
add("Cast", [I(np.array([np.nan, 1e-3, 2.0**-9, 3 * 2.0**-10, 465, 479, 481, -500, 1e30], np.float32))],
    {"to": "fp8_e4m3", "saturate": 0}, label="fp8_e4m3_subnormal_overflow",
    known_failures={"onnxruntime": "ONNX Runtime's non-saturating e4m3 conversion gives +-448 for |x| in "
                                   "[480, 496) where ONNX's reference and requant give NaN"})
add("Cast", [I(np.array([np.nan, 2.0**-16, 3 * 2.0**-17, 6e4, 61440, 61439, -7e4], np.float32))],
    {"to": "fp8_e5m2", "saturate": 0}, label="fp8_e5m2_subnormal_overflow",
    known_failures={"onnxruntime": "ONNX Runtime's non-saturating e5m2 conversion gives NaN for |x| in "
                                   "[61440, 65536) where ONNX's reference and requant give +-inf"})
add("Cast", [I(np.array([-7, -6.5, -3.2, -0.3, 0, 0.25, 0.75, 1.25, 2.5, 5, 7, 100], np.float32))], {"to": "fp4_e2m1"},
    label="fp4", refused=_NO_ORT_FP4)
# NaN -> +6 (fp4 has no NaN; test_cast_fp4_nan_and_saturation), where ONNX's reference gives -0
add("Cast", [I(np.array([np.nan, np.inf, -np.inf, 6.5, -0.2, 0.25, 2.5e-3], np.float32))], {"to": "fp4_e2m1"},
    label="fp4_specials", oracle="none", refused=_NO_ORT_FP4)
_INT4_OPSETS = (None, QDQ_OPSET, 21)  # int4 joined Cast in 21; ORT's Q/DQ opset widens int4 outputs
add("Cast", [I(np.array([-8, -3, 0, 2, 7], np.float32))], {"to": "i4"}, label="i4", export_opsets=_INT4_OPSETS)
add("Cast", [I(np.array([0, 3, 9.4, 15, 15.6], np.float32))], {"to": "u4"}, label="u4", export_opsets=_INT4_OPSETS)
add("Cast", [I(np.array([-8, -3, 0, 2, 7], np.int8), "i4")], {"to": "f32"}, label="i4_f32", export_opsets=_INT4_OPSETS)
add("Cast", [I(np.array([0, 3, 9, 15], np.uint8), "u4")], {"to": "f32"}, label="u4_f32", export_opsets=_INT4_OPSETS)
add("Cast", [I(np.array([200, -200, 127, -129, 5], np.int32))], {"to": "i8"}, label="int_wrap")
add("Cast", [I(np.array([9, -9, 16, 7, 17, -1, 15], np.int32))], {"to": "i4"}, label="i4_wrap")
add("Cast", [I(np.array([9, -9, 16, 7, 17, -1, 15], np.int32))], {"to": "u4"}, label="u4_wrap")
# float -> int saturates and NaN -> 0 (test_cast_float_to_int_saturates), where ONNX leaves
# it open (its reference gives INT64_MIN for NaN)
add("Cast", [I(np.array([1e10, -1e10, np.nan, 3.9, -3.9, 2.0**62, -(2.0**63), 2.0**63], np.float64))], {"to": "i64"},
    label="f64_i64_saturate", oracle="none")
# the same at the other widths whose top no float holds, f32 -> i32 / u32 / u64 / i64
for _to in ("i32", "u32", "u64", "i64"):
    add("Cast", [I(np.array([np.nan, -np.nan, 2.0**31, 2.0**31 - 128, 2.0**32, 2.0**64, 1e30, -1e30, 7.9, -7.9],
                            np.float32))], {"to": _to}, label=f"f32_{_to}_saturate", oracle="none")
# a FloatFormat grid (LLM-FP4's searched formats): no ONNX dtype, test_float_format_grid states it
add("Cast", [I(np.linspace(-8, 8, 161, dtype=np.float32))], {"to": "ff_e3m2_b2.5"}, label="float_format", oracle="none",
    refused={"onnx": "a FloatFormat has no ONNX dtype"})
add("Cast", [I(ri(6, dt="i64", lo=-1000, hi=1000))], {"to": "f32"}, label="i64_f32")
add("Cast", [I(rb(6))], {"to": "f32"}, label="bool_f32")
add("Cast", [I(rb(6))], {"to": "i64"}, label="bool_i64")
add("Cast", [I(_X.astype(ml_dtypes.float8_e4m3fn))], {"to": "f32"}, label="fp8_f32", export_opsets=_OPSETS)
add("Cast", [I(_X.astype(ml_dtypes.float8_e5m2))], {"to": "f32"}, label="fp8_e5m2_f32", export_opsets=_OPSETS)
add("Cast", [I(_X.astype(ml_dtypes.bfloat16))], {"to": "f32"}, label="bf16_f32", export_opsets=_OPSETS)
add("Cast", [I(_X.astype(ml_dtypes.bfloat16))], {"to": "fp8_e5m2"}, label="bf16_fp8")
add("Cast", [I(_X.astype(ml_dtypes.bfloat16))], {"to": "fp8_e4m3"}, label="bf16_fp8_e4m3")
add("Cast", [I(r(3, 4), shape=("B", 4))], {"to": "f16"}, expect=("B", 4), label="sym")
add("CastLike", [I(_X), I(np.zeros(1, np.float16))], label="f16", export_opsets=_OPSETS)
add("CastLike", [I(_X), I(np.zeros(1, ml_dtypes.float8_e4m3fn))], {"saturate": 0}, label="fp8_nosat")
