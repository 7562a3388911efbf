"""The approximation families of the intonly pass: for softmax and GELU, which integer op
replaces them and how its integer attributes follow from the real scales.

A family names one softmax form and one GELU form:
- "shift" (I-ViT, Li & Gu, arXiv 2207.01405): Shiftmax and ShiftGELU, exponentials
  from shifts alone (x log2 e ~ x + x/2 - x/16, 2^f ~ 1 + f/2). The cheapest.
- "poly" (I-BERT, Kim et al., arXiv 2101.01321): PolySoftmax (exp(p) ~ 0.3585 (p +
  1.353)^2 + 0.344 on p in (-ln2, 0]) and PolyGELU (erf(u) ~ sign(u) (-0.2888
  (min(|u|, 1.769) - 1.769)^2 + 1)).
- "fine" (requant's): PolySoftmax, and TanhGELU on a 16-bit input: the tanh form of
  GELU, x * sigmoid(1.5958 x + 0.0713548 x^3) (40x closer to GELU than x * sigmoid(1.702
  x) or I-BERT's erf), its sigmoid from I-BERT's exp.
`FAMILIES` lists them; the pass's option `approx="auto"` tries each on the calibration
batches and keeps the one whose outputs are closest to the float graph's.

Parameters (S: the input's scale). The normalisation of both softmax forms and of
ShiftGELU's sigmoid multiplies by factor = (2^31 - 1) // total, so a total near 2^k
leaves factor 31 - k bits: the exponentials are sized to keep it wide.
- Shiftmax: the scores are requantized to the scale 2^-5 (x0 = -32: the exponent's
  fraction to 1/32, i.e. 1.1% in exp) and n = 13, so the largest exponential is 2^18
  (I-ViT's int8 scores with n = 15 land there too), rows of up to 2^13 keys sum below
  2^31, and an exponential below 2^-13 of the row's largest counts as 2^-13.
- PolySoftmax: the scores are requantized to 2^-8 (x0 = floor(-0.6931 * 2^8), b =
  floor(b' 2^8), c = floor(c' 2^16) with b' = 0.96963238 / 0.35815147, c' = 1 /
  0.35815147), so the largest exponential is c ~ 2^17.5; n = 30 (q <= 30).
- ShiftGELU: x0 = floor(-1/(1.702 S)) and n = 15 - bits(|x0|), so that e1 + e2 stays
  below 2^16 and the factor keeps 15 bits (I-ViT's fixed n = 23 leaves it about 4 bits
  with int8 inputs); frac_bits = 7 (I-ViT's 8-bit sigmoid).
- TanhGELU: clip = ceil(6/S) (int16 bound), z_shift such that lin = round(1.5957691 S
  2^(10 + z_shift)) has 21 bits, (cube_mult, cube_shift) = dyadic(0.0713548 S^3
  2^(10 + z_shift)); output scale S 2^-15.
- PolyGELU: S_e = S/sqrt2, b = floor(-1.769/S_e), c = floor((1/-0.2888)/S_e^2), shift
  = the bits of |c| above 15 (erf kept to 16 bits), one = floor(1/(a S_e^2 2^shift));
  output scale S a S_e^2 2^shift / 2.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from requant.ir.ops.intonly import dyadic

__all__ = [
    "FAMILIES",
    "Family",
    "SoftmaxPlan",
    "GeluPlan",
    "softmax_plan",
    "gelu_plan",
    "SHIFT_SCORE_BITS",
    "POLY_SCORE_BITS",
]

logger = logging.getLogger(__name__)

SHIFT_SCORE_BITS = 5
"""Fractional bits of the scores Shiftmax reads (x0 = -2^5)."""
POLY_SCORE_BITS = 8
"""Fractional bits of the scores PolySoftmax reads."""
_IBERT_A, _IBERT_B, _IBERT_C = 0.35815147, 0.96963238, 1.0
_ERF_A, _ERF_B = -0.2888, -1.769
_SIGMOID_FACTOR = 1.702
_TANH_LIN, _TANH_CUBE = 2.0 * math.sqrt(2.0 / math.pi), 2.0 * math.sqrt(2.0 / math.pi) * 0.044715
_TANH_CLIP = 6.0  # |x| beyond which x * sigmoid(z) is x or 0 to float32 precision
_TANH_Z_BITS = 10  # TanhGELU's z has scale 2^-10


@dataclass(frozen=True)
class Family:
    """One approximation family: the softmax op, the GELU op, and the GELU input bits."""

    name: str
    softmax: str  # "Shiftmax" | "PolySoftmax"
    gelu: str  # "ShiftGELU" | "PolyGELU"
    gelu_bits: int  # 8 (int8 input, as the papers) or 16
    description: str


FAMILIES: dict[str, Family] = {
    "shift": Family("shift", "Shiftmax", "ShiftGELU", 8, "I-ViT: Shiftmax + ShiftGELU (shifts only)"),
    "poly": Family("poly", "PolySoftmax", "PolyGELU", 8, "I-BERT: polynomial exp + polynomial erf"),
    "fine": Family("fine", "PolySoftmax", "TanhGELU", 16,
                   "requant: I-BERT's exp in softmax, the tanh form of GELU on 16-bit inputs"),
}


@dataclass(frozen=True)
class SoftmaxPlan:
    """How a softmax row becomes integer: the scale its scores are requantized to and the
    op's attributes (the output's `frac_bits` / `to` are added by the caller)."""

    op: str
    input_scale: float
    attrs: dict


def softmax_plan(op: str) -> SoftmaxPlan:
    """The integer softmax `op`: the scale its scores are requantized to, its attributes."""
    if op == "Shiftmax":
        return SoftmaxPlan(op, 2.0**-SHIFT_SCORE_BITS, {"x0": -(2**SHIFT_SCORE_BITS), "n": 13})
    if op == "PolySoftmax":
        scale = 2.0**-POLY_SCORE_BITS
        attrs = {"x0": math.floor(-0.6931 / scale), "b": math.floor(_IBERT_B / _IBERT_A / scale),
                 "c": math.floor(_IBERT_C / _IBERT_A / scale**2), "n": 30}
        return SoftmaxPlan(op, scale, attrs)
    raise ValueError(f"unknown softmax form {op!r}")


@dataclass(frozen=True)
class GeluPlan:
    """How a GELU becomes integer: the op, its attributes, and the real factor from its
    input scale to its output scale (output scale = input scale * factor)."""

    op: str
    attrs: dict
    scale_factor: float


def gelu_plan(op: str, scale: float) -> GeluPlan:
    """The integer GELU `op` for an input of scale `scale`."""
    if op == "ShiftGELU":
        x0 = math.floor(-1.0 / (_SIGMOID_FACTOR * scale))
        n = max(0, 15 - (-x0).bit_length())
        return GeluPlan(op, {"x0": x0, "n": n, "frac_bits": 7}, 2.0**-7)
    if op == "PolyGELU":
        s_e = scale / math.sqrt(2.0)
        b = math.floor(_ERF_B / s_e)
        c = math.floor((1.0 / _ERF_A) / s_e**2)
        shift = max(0, abs(c).bit_length() - 15)
        s_l = _ERF_A * s_e**2 * 2**shift
        one = math.floor(1.0 / s_l)
        return GeluPlan(op, {"b": b, "c": c, "shift": shift, "one": one}, s_l / 2.0)
    if op == "TanhGELU":
        clip = min(2**15 - 1, math.ceil(_TANH_CLIP / scale))
        z_shift = max(0, 20 - (math.floor(math.log2(_TANH_LIN * scale)) + _TANH_Z_BITS))
        unit = scale * 2.0 ** (_TANH_Z_BITS + z_shift)  # w's integer unit: S 2^(10 + z_shift)
        mult, shift = dyadic(_TANH_CUBE * scale**2 * unit)
        attrs = {"clip": clip, "lin": round(_TANH_LIN * unit), "cube_mult": int(mult), "cube_shift": int(shift),
                 "z_shift": z_shift, "frac_bits": 15}
        return GeluPlan(op, attrs, 2.0**-15)
    raise ValueError(f"unknown GELU form {op!r}")
