"""ONNX lowering of the integer-only ops (`requant.ir.ops.intonly`): Requantize,
DyadicAdd, ILayerNorm, Shiftmax, ShiftGELU, PolySoftmax, PolyGELU, TanhGELU, each decomposed into
standard ONNX integer ops that ONNX Runtime runs bit-exactly.

Everything computes in int64 (Cast in, Cast out after a Clip to the output dtype's
range). What ONNX Runtime's integer kernels do and what the decompositions therefore
avoid (measured on ONNX Runtime 1.32, CPU):
- integer `Div` truncates toward zero (-7 / 2 = -3): a floor division is
  `Div(Sub(a, Mod(a, b)), b)` with `Mod(fmod=0)`, whose result takes the divisor's sign,
  so the subtraction leaves an exact multiple of b; where a is known to be >= 0 (and b >
  0), a plain `Div` is the floor already;
- `BitShift` takes unsigned types only, so right shifts are those floor divisions by
  2^s, and 2^s itself is a constant (or, for a computed exponent, a uint64
  `BitShift(1, s)` cast back to int64);
- int64 `Mul` is exact (two's complement wrap beyond 2^63, which the ops' ranges keep
  clear of).
Reductions run along the last axis (`ReduceMax` takes `axes` as an attribute before
opset 18).
"""

from __future__ import annotations

import logging

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Node
from requant.ir.ops.intonly import INT32_MAX, TANH_GELU_EXP

__all__: list[str] = []

logger = logging.getLogger(__name__)

_I64 = dtypes.int64
_I64_MIN = np.iinfo(np.int64).min


class _Int64:
    """Emits int64 arithmetic for one requant node (helper node names derive from it)."""

    def __init__(self, ctx: EmitContext, node: Node) -> None:
        self.ctx = ctx
        self.node = node
        self._n = 0

    def _name(self, part: str) -> str | None:
        self._n += 1
        return self.ctx.sub_name(self.node, f"{part}{self._n}")

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        return self.ctx.emit(op_type, list(inputs), name=self._name(op_type.lower()), **attrs)[0]

    def const(self, value) -> str:
        return self.ctx.const(np.asarray(value, np.int64), _I64, "intonly_c")

    def cast(self, x: str, dt: DType) -> str:
        return self.op("Cast", x, to=dtype_to_onnx(dt))

    def add(self, a: str, b: str) -> str:
        return self.op("Add", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.op("Sub", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", a, b)

    def div_nonneg(self, a: str, b: str) -> str:
        """a // b for a >= 0, b > 0: ONNX's truncating Div is the floor there."""
        return self.op("Div", a, b)

    def floor_div(self, a: str, b: str) -> str:
        """floor(a / b) for any signs: Div(a - Mod(a, b), b) is exact."""
        return self.op("Div", self.sub(a, self.op("Mod", a, b, fmod=0)), b)

    def pow2(self, exponent: str) -> str:
        """2^exponent (int64, 0 <= exponent <= 62) via a uint64 left shift."""
        u64 = dtypes.uint64
        one = self.ctx.const(np.uint64(1), u64, "intonly_one")
        return self.cast(self.op("BitShift", one, self.cast(exponent, u64), direction="LEFT"), _I64)

    def saturate(self, x: str, dt: DType, out: str) -> None:
        lo, hi = dt.int_range
        clipped = self.op("Clip", x, self.const(lo), self.const(hi))
        self.ctx.emit("Cast", [clipped], [out], to=dtype_to_onnx(dt), name=self._name("cast_out"))

    def row_max(self, x: str) -> str:
        if self.ctx.opset >= 18:
            return self.op("ReduceMax", x, self.const([-1]), keepdims=1)
        return self.op("ReduceMax", x, axes=[-1], keepdims=1)

    def row_sum(self, x: str) -> str:
        return self.op("ReduceSum", x, self.const([-1]), keepdims=1)


def _rank(node: Node, i: int = 0) -> int:
    rank = node.inputs[i].type.rank
    if rank is None:
        raise UnsupportedOpError(f"{node.label}: the ONNX lowering of {node.op} needs inputs of known rank")
    return rank


def _param(b: _Int64, node: Node, ins: list, i: int, rank: int, axis: int) -> str | None:
    """Parameter input `i` (one value or a vector along `axis`) as int64 that broadcasts
    against a rank-`rank` tensor; None when omitted."""
    if i >= len(ins) or ins[i] is None:
        return None
    v = node.inputs[i]
    p = b.cast(ins[i], _I64)
    per_tensor = v.type.shape is not None and all(d == 1 for d in v.type.shape)
    shape = [1] * rank
    if not per_tensor and rank:
        shape[axis % rank] = -1
    return b.op("Reshape", p, b.const(shape if rank else []))


def _rshift_round(b: _Int64, acc: str, shift: str) -> str:
    """floor((acc + 2^(shift-1)) / 2^shift), acc itself for shift 0: 2^shift // 2 is the half."""
    d = b.pow2(shift)
    return b.floor_div(b.add(acc, b.div_nonneg(d, b.const(2))), d)


@LOWERINGS.lowers("Requantize")
def _requantize(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    b = _Int64(ctx, node)
    rank, axis = _rank(node), int(node.attrs.get("axis", -1))
    mult, shift, offset = (_param(b, node, ins, i, rank, axis) for i in (1, 2, 3))
    acc = b.mul(b.cast(ins[0], _I64), mult)
    if offset is not None:
        acc = b.add(acc, offset)
    b.saturate(_rshift_round(b, acc, shift), node.outputs[0].dtype, outs[0])


@LOWERINGS.lowers("DyadicAdd")
def _dyadic_add(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    b = _Int64(ctx, node)
    rank, axis = node.outputs[0].type.rank, int(node.attrs.get("axis", -1))
    if rank is None:
        raise UnsupportedOpError(f"{node.label}: the ONNX lowering of DyadicAdd needs inputs of known rank")
    am, ash, bm, bsh, off = (_param(b, node, ins, i, rank, axis) for i in (1, 2, 4, 5, 6))
    a = _rshift_round(b, b.mul(b.cast(ins[0], _I64), am), ash)
    c = _rshift_round(b, b.mul(b.cast(ins[3], _I64), bm), bsh)
    y = b.add(a, c)
    if off is not None:
        y = b.add(y, off)
    b.saturate(y, node.outputs[0].dtype, outs[0])


@LOWERINGS.lowers("ILayerNorm")
def _ilayernorm(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    shape = node.inputs[0].type.shape
    n = shape[-1] if shape else None
    if not isinstance(n, int):
        raise UnsupportedOpError(f"{node.label}: the ONNX lowering of ILayerNorm needs a static last axis")
    b = _Int64(ctx, node)
    x = b.cast(ins[0], _I64)
    mean = b.floor_div(b.add(b.mul(b.row_sum(x), b.const(2)), b.const(n)), b.const(2 * n))
    y = b.sub(x, mean)
    var = b.row_sum(b.mul(y, y))
    k = b.const(int(node.attrs.get("k0", 2**16)))
    two, one = b.const(2), b.const(1)
    for _ in range(int(node.attrs.get("steps", 10))):  # var >= 0 and k >= 1: plain Div is the floor
        k = b.op("Max", b.div_nonneg(b.add(k, b.div_nonneg(var, k)), two), one)
    factor = b.div_nonneg(b.const(INT32_MAX), k)
    b.saturate(b.floor_div(b.mul(y, factor), two), dtypes.int32, outs[0])


# ----------------------------------------------------------------------------- exponentials


def _shift_exp(b: _Int64, d: str, x0: int, n: int) -> str:
    """I-ViT's ShiftExp of d <= 0 (requant.ir.ops.intonly.shift_exp)."""
    t = b.sub(b.add(d, b.floor_div(d, b.const(2))), b.floor_div(d, b.const(16)))
    t = b.op("Max", t, b.const(n * x0))
    q = b.floor_div(t, b.const(x0))
    r = b.sub(t, b.mul(b.const(x0), q))
    grown = b.mul(b.sub(r, b.const(2 * x0)), b.pow2(b.sub(b.const(n), q)))  # r - 2 x0 > 0
    return b.div_nonneg(grown, b.const(2))


def _poly_exp(b: _Int64, d: str, x0: int, bb: int, c: int, n: int) -> str:
    """I-BERT's i-exp of d <= 0 (requant.ir.ops.intonly.poly_exp); its value is > 0."""
    t = b.op("Max", d, b.const(n * x0))
    q = b.floor_div(t, b.const(x0))
    r = b.sub(t, b.mul(b.const(x0), q))
    z = b.add(b.mul(r, b.add(r, b.const(bb))), b.const(c))
    return b.div_nonneg(z, b.pow2(q))


def _softmax(ctx: EmitContext, node: Node, ins: list, outs: list, exp) -> None:
    b = _Int64(ctx, node)
    x = b.cast(ins[0], _I64)
    keep = ins[1] if len(ins) > 1 else None
    if keep is None:
        d = b.sub(x, b.row_max(x))
    else:
        low = b.const(_I64_MIN)
        m = b.row_max(b.op("Where", keep, x, low))
        m = b.op("Where", b.op("Equal", m, low), b.const(0), m)  # nothing kept: any value will do
        d = b.op("Min", b.sub(x, m), b.const(0))
    e = exp(b, d)
    if keep is not None:
        e = b.op("Where", keep, e, b.const(0))
    total = b.op("Min", b.row_sum(e), b.const(INT32_MAX))
    factor = b.div_nonneg(b.const(INT32_MAX), b.op("Max", total, b.const(1)))
    frac = int(node.attrs.get("frac_bits", 15))
    b.saturate(b.div_nonneg(b.mul(e, factor), b.const(2 ** (31 - frac))), node.outputs[0].dtype, outs[0])


@LOWERINGS.lowers("Shiftmax")
def _shiftmax(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    x0, n = int(node.attrs["x0"]), int(node.attrs.get("n", 15))
    _softmax(ctx, node, ins, outs, lambda b, d: _shift_exp(b, d, x0, n))


@LOWERINGS.lowers("PolySoftmax")
def _poly_softmax(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    a = node.attrs
    x0, bb, c, n = int(a["x0"]), int(a["b"]), int(a["c"]), int(a.get("n", 30))
    _softmax(ctx, node, ins, outs, lambda b, d: _poly_exp(b, d, x0, bb, c, n))


@LOWERINGS.lowers("ShiftGELU")
def _shift_gelu(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    b = _Int64(ctx, node)
    x0, n, frac = int(node.attrs["x0"]), int(node.attrs.get("n", 23)), int(node.attrs.get("frac_bits", 7))
    x = b.cast(ins[0], _I64)
    m = b.op("Max", x, b.const(0))
    e1 = _shift_exp(b, b.sub(x, m), x0, n)
    e2 = _shift_exp(b, b.op("Neg", m), x0, n)
    factor = b.div_nonneg(b.const(INT32_MAX), b.op("Min", b.add(e1, e2), b.const(INT32_MAX)))
    sig = b.div_nonneg(b.mul(e1, factor), b.const(2 ** (31 - frac)))
    b.saturate(b.mul(x, sig), dtypes.int32, outs[0])


@LOWERINGS.lowers("PolyGELU")
def _poly_gelu(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    b = _Int64(ctx, node)
    a = node.attrs
    bb, c, shift, one = int(a["b"]), int(a["c"]), int(a["shift"]), int(a["one"])
    x = b.cast(ins[0], _I64)
    clipped = b.add(b.op("Min", b.op("Abs", x), b.const(-bb)), b.const(bb))
    erf = b.mul(b.op("Sign", x), b.add(b.mul(clipped, clipped), b.const(c)))
    y = b.floor_div(erf, b.const(2**shift))
    b.saturate(b.mul(x, b.add(y, b.const(one))), dtypes.int32, outs[0])


@LOWERINGS.lowers("TanhGELU")
def _tanh_gelu(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    b = _Int64(ctx, node)
    a = node.attrs
    clip, frac = int(a["clip"]), int(a.get("frac_bits", 15))
    x = b.cast(ins[0], _I64)
    xc = b.op("Clip", x, b.const(-clip), b.const(clip))
    cube = _rshift_round(b, b.mul(b.mul(xc, xc), b.const(int(a["cube_mult"]))), b.const(int(a["cube_shift"])))
    z = _rshift_round(b, b.mul(xc, b.add(b.const(int(a["lin"])), cube)), b.const(int(a["z_shift"])))
    x0, bb, c, n = TANH_GELU_EXP
    e = _poly_exp(b, b.op("Neg", b.op("Abs", z)), x0, bb, c, n)
    sig = b.div_nonneg(b.const(c << frac), b.add(b.const(c), e))
    sig = b.op("Where", b.op("Less", z, b.const(0)), b.sub(b.const(1 << frac), sig), sig)
    b.saturate(b.mul(x, sig), dtypes.int32, outs[0])
