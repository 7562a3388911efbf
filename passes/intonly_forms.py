"""How the intonly pass represents a real tensor by integers, and the one way it changes
that representation: dyadic requantization.

- `IntRep(codes, scale, bias)`: the real value is `codes * scale + bias`, with `scale`
  and `bias` one float or a vector along the last axis (per channel). An integer
  matmul's accumulator is one (scale s_x * s_w[c], its bias folded in as `bias`), so is a
  LayerNorm's normalized output (scale gamma * sqrt(N) / 2^30, bias beta) and an int8
  activation (`bias` = -zero_point * scale). No node computes `bias`: it reaches the
  codes as the integer offset of the next requantization.
- `Form(dtype, scale, zero_point)`: what a reader needs, per tensor: e.g. uint8 codes
  with zero point 128 for an integer matmul's activation (the same codes as int8, moved
  up by 128: x86's u8 x s8 product), int16 for the residual stream, int32 for scores.
- `requantize(b, rep, form)`: the codes of `rep` in `form`, as one `Requantize` node:
  `round(codes * scale / form.scale + bias / form.scale) + zero_point`, saturated, with
  the ratio written as multiplier * 2^-shift (`dyadic`) per channel and the bias and
  zero point as an integer offset before the shift (so they round once, together).
  Nothing is emitted when the codes already have the form.
- `quantize_constant(array, form)`: a float constant's codes in a form, at compile time.
- `rescale_terms(rep, out_scale)`: one branch of an integer add (DyadicAdd): its
  multiplier / shift pair and its bias in output units.
Every `Value` made here carries `meta["int_scale"]` (and `meta["int_zero_point"]`): the
scale the graph states for its codes, without a float op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from requant.ir import dtypes
from requant.ir.builder import Builder
from requant.ir.dtypes import DType
from requant.ir.graph import Value
from requant.ir.ops.intonly import MAX_SHIFT, dyadic

__all__ = ["IntRep", "Form", "requantize", "quantize_constant", "rescale_terms", "qmax", "annotate"]

logger = logging.getLogger(__name__)


def qmax(dt: DType, zero_point: int = 0) -> int:
    """The largest |code - zero_point| both sides of zero can hold."""
    lo, hi = dt.int_range
    return int(min(hi - zero_point, zero_point - lo))


def _vec(a) -> np.ndarray:
    """A per-tensor (0-d) or per-channel (1-d) float64 parameter."""
    a = np.asarray(a, np.float64)
    return a.reshape(()) if a.size == 1 else a.reshape(-1)


@dataclass(frozen=True)
class IntRep:
    """real = codes * scale + bias (module docstring)."""

    codes: Value
    scale: np.ndarray
    bias: np.ndarray = field(default_factory=lambda: np.zeros(()))

    @staticmethod
    def make(codes: Value, scale, bias=0.0) -> IntRep:
        return IntRep(codes, _vec(scale), _vec(bias))

    @property
    def per_tensor(self) -> bool:
        return self.scale.ndim == 0 and self.bias.ndim == 0

    @property
    def amax_scale(self) -> float:
        return float(np.max(np.abs(self.scale)))

    def with_codes(self, codes: Value) -> IntRep:
        return IntRep(codes, self.scale, self.bias)

    def affine(self, mul=1.0, add=0.0) -> IntRep:
        """The rep of real * mul + add (mul, add: one value or a per-channel vector)."""
        mul, add = _vec(mul), _vec(add)
        return IntRep(self.codes, _vec(self.scale * mul), _vec(self.bias * mul + add))

    def zero_point(self) -> int | None:
        """The integer zero point this rep's bias is (per tensor), else None."""
        if not self.per_tensor or float(self.scale) == 0:
            return None
        zp = -float(self.bias) / float(self.scale)
        return int(round(zp)) if abs(zp - round(zp)) < 1e-9 else None


@dataclass(frozen=True)
class Form:
    """Per-tensor codes of `dtype` with `scale` and `zero_point` (module docstring)."""

    dtype: DType
    scale: float
    zero_point: int = 0

    def key(self) -> tuple:
        return (self.dtype.name, float(np.float64(self.scale)), int(self.zero_point))

    def matches(self, rep: IntRep) -> bool:
        return (rep.codes.dtype == self.dtype and rep.per_tensor and float(rep.scale) == self.scale
                and rep.zero_point() == self.zero_point)


def annotate(v: Value, scale, zero_point=0) -> Value:
    """Record the scale (and zero point) of codes `v` in its metadata."""
    s = np.asarray(scale, np.float64)
    v.meta["int_scale"] = float(s) if s.ndim == 0 else [float(x) for x in s.reshape(-1)]
    zp = np.asarray(zero_point)
    if zp.ndim or float(zp) != 0:
        v.meta["int_zero_point"] = int(zp) if zp.ndim == 0 else [float(x) for x in zp.reshape(-1)]
    return v


def _dyadic_params(factor: np.ndarray, offset_units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(multiplier, shift, offset) with codes * multiplier + offset >> shift ~ codes *
    factor + offset_units; the offset is rounded once, before the shift. The shift is
    capped so that |offset| < 2^61 (a tiny factor with a large bias, e.g. a LayerNorm's
    beta, would otherwise push the offset past int64); the multiplier then carries fewer
    than 31 bits, still about 31 - log2|offset_units|."""
    factor = np.asarray(factor, np.float64)
    units = np.asarray(offset_units, np.float64)
    mult, shift = dyadic(factor)
    shape = np.broadcast_shapes(factor.shape, units.shape)
    factor, units = np.broadcast_to(factor, shape), np.broadcast_to(units, shape)
    mult, shift = np.broadcast_to(mult, shape).astype(np.int64), np.broadcast_to(shift, shape).astype(np.int64)
    room = 61 - np.ceil(np.log2(np.abs(units) + 1.0)).astype(np.int64)
    capped = shift > room
    if np.any(capped):
        shift = np.where(capped, np.maximum(room, 0), shift)
        mult = np.where(capped, np.round(factor * np.exp2(shift.astype(np.float64))).astype(np.int64), mult)
    offset = np.round(units * np.exp2(shift.astype(np.float64))).astype(np.int64)
    return mult.astype(np.int32), shift.astype(np.int32), offset


def _param_const(b: Builder, array: np.ndarray, dt: DType, base: str) -> Value:
    a = np.asarray(array)
    a = a.reshape(()) if a.size == 1 else a.reshape(-1)
    return b.graph.add_constant(a.astype(dt.np), dtype=dt, base=base)


def requantize(b: Builder, rep: IntRep, form: Form, name: str = "rq") -> Value:
    """The codes of `rep` in `form` (module docstring)."""
    if form.matches(rep):
        return rep.codes
    factor = rep.scale / form.scale
    offset_units = rep.bias / form.scale + form.zero_point
    mult, shift, offset = _dyadic_params(factor, offset_units)
    offset_v = None if not np.any(offset) else _param_const(b, offset, dtypes.int64, f"{name}_offset")
    out = b.Requantize(rep.codes, _param_const(b, mult, dtypes.int32, f"{name}_mult"),
                       _param_const(b, shift, dtypes.int32, f"{name}_shift"), offset_v, to=form.dtype.name)
    return annotate(out, form.scale, form.zero_point)


def quantize_constant(array: np.ndarray, form: Form) -> np.ndarray:
    """A float constant's codes in `form`: round half away from zero, saturate."""
    lo, hi = form.dtype.int_range
    codes = np.round(np.asarray(array, np.float64) / form.scale) + form.zero_point
    return np.clip(codes, lo, hi).astype(form.dtype.np)


def rescale_terms(rep: IntRep, out_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(multiplier, shift, bias in output units) of one DyadicAdd branch."""
    mult, shift = dyadic(rep.scale / out_scale)
    shift = np.minimum(shift, MAX_SHIFT).astype(np.int32)
    return mult, shift, rep.bias / out_scale
