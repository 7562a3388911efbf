"""Cases of the elementwise binary and variadic ops (requant.ir.ops.elementwise):
arithmetic, comparisons, logic, Where, Max/Min/Sum/Mean, BitShift."""

from __future__ import annotations

import numpy as np

from op_cases.case import ORT_NO_BF16, C, CaseList, Draws, I

__all__ = ["CASES"]

CASES = CaseList()
add = CASES.add
_d = Draws(101)
r, ri, rb = _d.r, _d.ri, _d.rb

for op in ("Add", "Sub", "Mul", "Div"):
    add(op, [I(r(3, 4)), I(r(4))], label="bcast")
    add(op, [I(r(2, 1, 4)), I(r(3, 1))], label="bcast2")
    add(op, [I(r(5, dt="f16")), I(r(5, dt="f16"))], label="f16")
    add(op, [I(r(5, dt="bf16")), I(r(5, dt="bf16"))], label="bf16", refused=ORT_NO_BF16)
    add(op, [I(r(5, dt="f64")), I(r(5, dt="f64"))], label="f64")
    add(op, [I(ri(3, 4, lo=-50, hi=50)), I(ri(4, lo=1, hi=9) * np.array([1, -1, 1, -1], np.int32))], label="i32")
    add(op, [I(ri(6, dt="i8", lo=-128, hi=127)), I(ri(6, dt="i8", lo=1, hi=127))], label="i8_wrap")
    add(op, [I(r(4, 3), shape=("B", 3)), I(r(3))], expect=("B", 3), label="sym")
add("Div", [I(ri(8, dt="i64", lo=-20, hi=20)), I(np.array([3, -3, 7, -7, 1, -1, 5, -5], np.int64))], label="trunc")
add("Div", [I(np.array([7, -7, 7, -7, 100, -128], np.int8)), I(np.array([2, 2, -2, -2, 7, 3], np.int8))], label="trunc_i8")
add("Pow", [I(r(3, 4, lo=0.1, hi=3)), I(r(3, 4))])
add("Pow", [I(r(3, 4)), I(np.array([2, 3, 0, 1], np.int64))], label="int_exp")
add("Pow", [I(r(6, dt="f16", lo=0.5, hi=2)), I(r(6, lo=-2, hi=2))], label="f16_f32exp")
add("Pow", [I(ri(6, lo=-5, hi=5)), I(ri(6, lo=0, hi=4))], label="i32")
add("Pow", [I(np.array([3, -2, 5, 7], np.int64)), I(np.array([0, 1, 2, 3], np.int64))], label="i64")
# negative exponents (1, -1 or 0) and int32 wrap-around: ONNX leaves them open
add("Pow", [I(np.array([1, -1, -1, 2, -3, 3, 7], np.int32)), I(np.array([-2, -3, -2, -1, -1, 5, 40], np.int32))],
    label="int_negative_and_wrap", oracle="none")
# the export's square-and-multiply: computed exponents of every integer width (an int64
# exponent past 2^62), constant ones, bases ONNX's Pow does not take (computed in int64)
add("Pow", [I(np.array([3, -3, 7, 2, -1, 5, 0, 1], np.int64)),
            I(np.array([2**62 + 3, 2**40, 63, 64, 2**61 + 1, -4, 0, -9], np.int64))], label="i64_huge_exp", oracle="none")
add("Pow", [I(np.array([3, -5, 7, 2, -1, 11], np.int32)), C(np.int64(13))], label="i32_const_exp", oracle="none")
add("Pow", [I(np.array([3, -5, 7, 2], np.int32)), C(np.array([0], np.int32))], label="i32_const_zero", oracle="none")
add("Pow", [I(np.array([3, -5, 7, 2, -1, 100], np.int8)), I(np.array([3, 5, 2, 9, -3, 2], np.int8))], label="i8_wrap",
    oracle="none")
add("Pow", [I(np.array([3, 255, 7, 2, 1, 16], np.uint8)), I(np.array([3, 2, 2, 9, 200, 2], np.uint16))], label="u8_wrap",
    oracle="none")
# a float exponent on integers: the float power truncated, 100^4 saturating to int16's top
# (ONNX leaves overflow open; its reference wraps)
add("Pow", [I(np.array([2, -3, 5, 100], np.int16)), I(np.array([0.5, 2.0, 3.7, 4.0], np.float32))], label="int_float_exp",
    oracle="none")
add("Mod", [I(ri(12, lo=-20, hi=20)), I(np.array([3, -3, 7, -7] * 3, np.int32))], label="floor")
add("Mod", [I(ri(12, lo=-20, hi=20)), I(np.array([3, -3, 7, -7] * 3, np.int32))], {"fmod": 1}, label="fmod")
add("Mod", [I(r(3, 4)), I(r(4, lo=0.5, hi=2))], {"fmod": 1}, label="float")
add("BitShift", [I(ri(8, dt="u8", lo=0, hi=255)), I(ri(8, dt="u8", lo=0, hi=7))], {"direction": "LEFT"})
add("BitShift", [I(ri(8, dt="u8", lo=0, hi=255)), I(ri(8, dt="u8", lo=0, hi=7))], {"direction": "RIGHT"}, label="u8_right")
add("BitShift", [I(ri(8, dt="u32", lo=0, hi=10**6)), I(ri(8, dt="u32", lo=0, hi=40))], {"direction": "RIGHT"}, label="u32")
# signed shifts (ONNX's BitShift is unsigned only): arithmetic right shift, left shift
# wraps; counts outside [0, 31] (ONNX leaves them open) give 0, or -1 for a negative
# shifted right
add("BitShift", [I(np.array([1, -1, -100, 12345, -2**31, 2**31 - 1], np.int32)), I(np.array([0, 1, 5, 31, 3, 4], np.int32))],
    {"direction": "LEFT"}, label="i32_left")
add("BitShift", [I(np.array([1, -1, -100, 12345, -2**31, 2**31 - 1], np.int32)), I(np.array([0, 1, 5, 31, 3, 4], np.int32))],
    {"direction": "RIGHT"}, label="i32_right")
add("BitShift", [I(np.array([-100, -1, 5, 7, 1 << 20, -(1 << 30)], np.int32)), I(np.array([3, 40, -1, 31, 4, 2], np.int32))],
    {"direction": "RIGHT"}, label="signed_right_out_of_range", oracle="none")
# counts at and past the width, and negative ones, on every signed width the export biases
for _dt, _bits in ((np.int8, 8), (np.int16, 16), (np.int32, 32), (np.int64, 64)):
    add("BitShift", [I(np.array([-8, 4, -1, -8, 4, -1, -128, 127], _dt)),
                     I(np.array([_bits, _bits + 1, 100, -1, -3, _bits - 1, _bits - 1, -(2**7)], _dt))],
        {"direction": "RIGHT"}, label=f"i{_bits}_right_shifted_out", oracle="none")
    add("BitShift", [I(np.array([-8, 4, -1, -8, 4, -1, -128, 127], _dt)),
                     I(np.array([_bits, _bits + 1, 100, -1, -3, _bits - 1, _bits - 1, -(2**7)], _dt))],
        {"direction": "LEFT"}, label=f"i{_bits}_left_shifted_out", oracle="none")
add("BitShift", [I(np.array([-100, -1, 5, 7, 1 << 20, 3], np.int32)), I(np.array([3, 40, -1, 31, 12, 30], np.int32))],
    {"direction": "LEFT"}, label="signed_left_wraps", oracle="none")
for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"):
    add(op, [I(ri(3, 4, lo=-3, hi=3).astype(np.float32)), I(ri(4, lo=-3, hi=3).astype(np.float32))])
    add(op, [I(ri(3, 4, dt="i64", lo=-3, hi=3)), I(ri(1, dt="i64", lo=-3, hi=3))], label="i64")
    add(op, [I(ri(3, 4, lo=-3, hi=3)), I(ri(3, 4, lo=-3, hi=3))], label="i32")
add("Equal", [I(rb(3, 4)), I(rb(4))], label="bool")
for op in ("And", "Or", "Xor"):
    add(op, [I(rb(3, 4)), I(rb(4))])
add("Where", [I(rb(3, 1)), I(r(3, 4)), I(r(4))])
add("Where", [I(rb(5)), I(ri(5, dt="i64")), I(ri(1, dt="i64"))], label="i64")
add("Where", [I(rb(2, 3), shape=("B", 3)), I(r(2, 3), shape=("B", 3)), I(r(3))], expect=("B", 3), label="sym")
for op in ("Max", "Min"):
    add(op, [I(r(3, 4))], label="one")
    add(op, [I(r(3, 4)), I(r(4)), I(r(3, 1))], label="three")
    add(op, [I(ri(3, 4)), I(ri(4))], label="i32")
for op in ("Sum", "Mean"):
    add(op, [I(r(3, 4)), I(r(4)), I(r(3, 1))])
    add(op, [I(r(3, 4, dt="f16")), I(r(3, 4, dt="f16"))], label="f16")
