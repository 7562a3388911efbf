"""Cases of the integer-only ops (requant.ir.ops.intonly, domain "requant"): Requantize,
DyadicAdd, ILayerNorm, Shiftmax, ShiftGELU, PolySoftmax, PolyGELU, TanhGELU. The oracle is the
from-scratch numpy reference in tests/op_references.py (I-ViT's and I-BERT's formulas in
exact rational arithmetic); every output compares bit for bit.

Besides random integers, each op meets its extremes: the ends of the input dtype,
all-equal rows, rows of length 1, negative offsets and zero points, per-channel
parameters, masks with a fully masked row, symbolic dims. The attributes are the ones
the intonly pass computes for realistic scales (`_softmax_attrs`, `_gelu_attrs`).
"""

from __future__ import annotations

import math

import numpy as np

from op_cases.case import EXACT, C, CaseList, Draws, I

from requant.ir.ops.intonly import dyadic
from requant.passes.intonly_approx import gelu_plan

__all__ = ["CASES"]

CASES = CaseList(tol=EXACT, oracle="numpy")
add = CASES.add
_d = Draws(121)
ints, ri = _d.ints, _d.ri


def _dy(factors) -> tuple:
    m, s = dyadic(np.asarray(factors, np.float64))
    return C(m), C(s)


# ----------------------------------------------------------------------------- Requantize

_ACC = ints(2, 5, 6, dt="i32", lo=-(2**20), hi=2**20)
_ACC[0, 0, :] = [-(2**31), 2**31 - 1, 0, -1, 1, 2**30]  # saturating extremes
_M6, _S6 = _dy([0.01, 0.002, 1.5e-4, 0.03, 7e-4, 0.0125])
add("Requantize", [I(_ACC), _M6, _S6, C(np.array([3, -5, 0, -128, 1 << 20, -(1 << 33)], np.int64))],
    {"to": "int8"}, label="per_channel_i32_to_i8_offsets")
add("Requantize", [I(_ACC), *_dy(0.004), C(np.int64(128 << 39))], {"to": "uint8"}, label="u8_zero_point_128")
_ONE = _dy(1.0)
add("Requantize", [I(ints(3, 7, dt="i8")), *_ONE, C(np.int64(128 << 30))], {"to": "uint8"},
    label="i8_to_u8_shift_exact")
add("Requantize", [I(ints(4, 3, dt="i16")), *_dy([0.5, 1.25, 3.0]), C(np.int64(-(7 << 29)))], {"to": "int32"},
    label="i16_to_i32_growing")
add("Requantize", [I(ints(2, 3, 4, dt="u8"), shape=("b", 3, 4)), *_dy(0.731)], {"to": "int16"},
    label="u8_symbolic_no_offset")
add("Requantize", [I(ints(3, 4, 2, dt="i32")), *_dy([-0.02, 0.02, 1e-3, -1e-3]), C(np.int64(-(1 << 40)))],
    {"to": "int8", "axis": 1}, label="axis1_negative_multipliers")
add("Requantize", [I(np.array([-(2**31), 2**31 - 1, -3, 3, -2, 2], np.int32)),
                   C(np.int32(2**31 - 1)), C(np.int32(62)), C(np.int64(-(2**61)))], {"to": "int32"},
    label="largest_multiplier_and_shift")
add("Requantize", [I(np.array([-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5], np.int32)), C(np.int32(1)), C(np.int32(1))],
    {"to": "int8"}, label="halves_round_up")
add("Requantize", [I(ints(5, dt="i32")), C(np.int32(1)), C(np.int32(0))], {"to": "int32"}, label="shift_zero")

# ----------------------------------------------------------------------------- DyadicAdd

_RES = ints(2, 4, 6, dt="i16")
_RES[0, 0] = 2**15 - 1
_BR = ints(2, 4, 6, dt="i32", lo=-(2**22), hi=2**22)
_BR[0, 0] = 2**31 - 1
add("DyadicAdd", [I(_RES), *_dy(0.8), I(_BR), *_dy(np.linspace(1e-4, 3e-3, 6)), C(np.int64(-3))],
    {"to": "int16"}, label="residual_i16_plus_per_channel_i32")
add("DyadicAdd", [I(ints(3, 1, 5, dt="i8")), *_dy(1.0), I(ints(1, 4, 5, dt="i8")), *_dy(0.5)], {"to": "int8"},
    label="broadcast_i8_saturating")
add("DyadicAdd", [I(ints(2, 6, dt="i32", lo=-1000, hi=1000), shape=("n", 6)), *_dy(0.3),
                  C(ints(6, dt="i16")), *_dy(2.5), C(np.array([1, -1, 2, -2, 0, 100], np.int64))],
    {"to": "int32"}, label="constant_branch_per_channel_offset")

# ----------------------------------------------------------------------------- ILayerNorm

_LN16 = ints(3, 4, 16, dt="i16", lo=-4000, hi=4000)
_LN16[0, 0] = 1234  # a row of equal values: variance 0
_LN16[0, 1, ::2], _LN16[0, 1, 1::2] = 2**15 - 1, -(2**15)  # the extremes: var ~ 2^34
_LN16[1, 0, :] = ri(16, dt="i16", lo=-3, hi=3)  # tiny variance: 10 Newton steps from 2^16 do not converge
add("ILayerNorm", [I(_LN16)], label="i16_rows_extremes")
add("ILayerNorm", [I(ints(2, 5, 8, dt="i8"), shape=("b", "s", 8))], label="i8_symbolic")
add("ILayerNorm", [I(ints(4, 1, dt="i16"))], label="rows_of_length_1")
add("ILayerNorm", [I(ints(2, 12, dt="i16", lo=-300, hi=300))], {"steps": 16, "k0": 64}, label="more_steps_small_k0")
add("ILayerNorm", [I(ints(2, 12, dt="i16", lo=-30, hi=30))], {"steps": 20, "k0": 1}, label="k_floor_guard")


# ----------------------------------------------------------------------------- softmax forms


def _shift_attrs(scale: float, n: int, frac: int, to: str) -> dict:
    return {"x0": math.floor(-1.0 / scale), "n": n, "frac_bits": frac, "to": to}


def _poly_attrs(scale: float, frac: int, to: str) -> dict:
    a, b, c = 0.35815147, 0.96963238, 1.0
    return {"x0": math.floor(-0.6931 / scale), "b": math.floor(b / a / scale), "c": math.floor(c / a / scale**2),
            "n": 30, "frac_bits": frac, "to": to}


_SCORES = ints(2, 3, 4, 9, dt="i32", lo=-3000, hi=3000)
_SCORES[0, 0, 0, :] = 77  # all equal
_SCORES[0, 0, 1, :] = [-(2**31), 2**31 - 1] + [0] * 7  # the ends of int32: one element carries the row
_MASK = _d.rb(2, 1, 4, 9)
_MASK[0, 0, 2, :] = False  # a fully masked row: zeros
_MASK[..., 0] = True
_I8_SCORES = ints(4, 6, dt="i8")
_I8_SCORES[0, :] = -128
_U8_PROBS = (("Shiftmax", _shift_attrs(2.0**-8, 15, 8, "uint8")), ("PolySoftmax", _poly_attrs(2.0**-8, 8, "uint8")))
for op, attrs in _U8_PROBS:
    add(op, [I(_SCORES)], attrs, label="i32_scores_u8_probs")
    add(op, [I(_SCORES), I(_MASK)], attrs, label="bool_mask_fully_masked_row")
    add(op, [I(_SCORES[..., :1])], attrs, label="rows_of_length_1")
    add(op, [I(ints(2, 3, 5, dt="i32", lo=-900, hi=900), shape=("b", "s", "t"))], attrs, label="symbolic")
add("Shiftmax", [I(_I8_SCORES)], _shift_attrs(0.08, 15, 15, "int16"), label="ivit_i8_scores_i16_probs")
add("Shiftmax", [I(_I8_SCORES)], _shift_attrs(0.08, 15, 7, "int8"), label="i8_probs")
add("PolySoftmax", [I(_I8_SCORES)], _poly_attrs(0.08, 15, "int16"), label="i8_scores_i16_probs")
add("PolySoftmax", [I(ints(3, 40, dt="i16", lo=-8000, hi=0))], _poly_attrs(2.0**-10, 15, "int32"),
    label="deep_exponents_i32_probs")


# ----------------------------------------------------------------------------- GELU forms


def _poly_gelu_attrs(scale: float, shift: int) -> dict:
    s_e = scale / math.sqrt(2.0)
    a = -0.2888
    return {"b": math.floor(-1.769 / s_e), "c": math.floor((1.0 / a) / s_e**2), "shift": shift,
            "one": math.floor(1.0 / (a * s_e**2 * 2**shift))}


_ACT8 = ints(3, 4, 10, dt="i8")
_ACT8[0, 0, :] = -7  # all negative
_ACT8[0, 1, :] = 127
_ACT8[0, 2, :5], _ACT8[0, 2, 5:] = -128, 127
add("ShiftGELU", [I(_ACT8)], {"x0": math.floor(-1 / (1.702 * 0.05)), "n": 23, "frac_bits": 7}, label="ivit_i8")
add("ShiftGELU", [I(ints(2, 3, 1, dt="i8"))], {"x0": math.floor(-1 / (1.702 * 0.05))}, label="rows_of_length_1")
add("ShiftGELU", [I(ints(2, 6, 8, dt="i16", lo=-3000, hi=3000), shape=("b", "s", 8))],
    {"x0": math.floor(-1 / (1.702 * 2e-3)), "n": 15, "frac_bits": 12}, label="i16_finer")
add("PolyGELU", [I(_ACT8)], _poly_gelu_attrs(0.05, 0), label="ibert_i8")
add("PolyGELU", [I(ints(2, 6, 8, dt="i16"), shape=("b", "s", 8))], _poly_gelu_attrs(2e-3, 8), label="i16_shifted")

_ACT16 = ints(3, 4, 12, dt="i16")
_ACT16[0, 0, :6], _ACT16[0, 0, 6:] = -(2**15), 2**15 - 1
_ACT16[0, 1, :] = 0
add("TanhGELU", [I(_ACT16)], gelu_plan("TanhGELU", 3e-4).attrs, label="i16_beyond_clip")
add("TanhGELU", [I(ints(2, 5, 8, dt="i16", lo=-4000, hi=4000), shape=("b", "s", 8))], gelu_plan("TanhGELU", 1e-3).attrs,
    label="i16_symbolic")
add("TanhGELU", [I(_ACT8)], gelu_plan("TanhGELU", 0.05).attrs, label="i8_coarse")
add("TanhGELU", [I(ints(4, 1, dt="i16"))], gelu_plan("TanhGELU", 1e-5).attrs, label="fine_scale_no_clip")
