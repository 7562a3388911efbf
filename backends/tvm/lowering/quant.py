"""Lowerings of the quantization family: QuantizeLinear and DequantizeLinear (per tensor,
per axis or blocked; integer and low-bit float formats), DynamicQuantizeLinear,
MatMulInteger, QLinearMatMul and FakeQuantize (incl. MXFP4 / NVFP4 blocks), and the
pieces ONNX Runtime's matmuls share with them (`quantize_values`, `dynamic_qparams`,
`int_accumulate`, `column_param`).

- Quantizing to an integer format rounds half to even, adds the zero point and
  saturates (NaN -> the lowest code); to a float format it rounds on the format's grid
  (`encode_float`).
- Integer matmuls subtract the zero points and accumulate in int32, wrapping as ONNX
  Runtime's kernels do.
- DynamicQuantizeLinear follows ONNX's spec (uint8, range including 0), with ONNX
  Runtime's scale 1 for an all-zero input.
- FakeQuantize mx/nv quantize-dequantize blocks along a static axis; a partial last
  block is padded with zeros, which change no block maximum.
"""

from __future__ import annotations

import logging
from typing import Any

from tvm import relax, tirx

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    align_to,
    as_dtype,
    constant,
    dims_of,
    elementwise_te,
    in_dtype,
    normalize_axis,
    optional_input,
    out_dtype,
    pad_width,
    rank_of,
    relax_dtype,
    requires,
    shaped_like,
    static_int,
)
from requant.backends.tvm.lowering.cast import encode_float, f64_exponent, pow2_f64
from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.graph import Node

__all__ = ["column_param", "dynamic_qparams", "int_accumulate", "quantize_values"]

logger = logging.getLogger(__name__)

R = relax.op


# ----------------------------------------------------------------------------- scales and zero points


def _is_scalar_param(v: Any) -> bool:
    return v.type.shape is not None and all(d == 1 for d in v.type.shape)


def _expand_param(ctx: LowerContext, p: relax.Expr, pv: Any, x: relax.Expr, axis: int, block: int) -> relax.Expr:
    """A scale / zero point in ONNX's layout, broadcastable to x (per tensor, per axis, blocked)."""
    if _is_scalar_param(pv):
        return ctx.emit(R.reshape(p, ()))
    dims = dims_of(x)
    rank = len(dims)
    axis = normalize_axis(axis, rank)
    if block <= 0:
        return align_to(ctx, ctx.emit(R.reshape(p, [1] * axis + [-1] + [1] * (rank - axis - 1))), x)
    rep = ctx.emit(R.repeat(p, block, axis=axis))
    return align_to(ctx, ctx.emit(R.strided_slice(rep, axes=[axis], begin=[0], end=[dims[axis]])), x)


def _row_param(ctx: LowerContext, p: relax.Expr | None, pv: Any, a_rank: int) -> relax.Expr | None:
    """A per-row parameter of A: [M] -> [M, 1]; scalars -> 0-d; N-D as given."""
    if p is None:
        return None
    if _is_scalar_param(pv):
        return ctx.emit(R.reshape(p, ()))
    if pv.type.rank == 1 and a_rank >= 2:
        return ctx.emit(R.reshape(p, [-1, 1]))
    return p


def column_param(ctx: LowerContext, p: relax.Expr | None, pv: Any) -> relax.Expr | None:
    """A per-column parameter of B: scalars -> 0-d, others as given (they broadcast along rows)."""
    if p is None:
        return None
    if _is_scalar_param(pv):
        return ctx.emit(R.reshape(p, ()))
    return p


# ----------------------------------------------------------------------------- Q/DQ


def quantize_values(ctx: LowerContext, v: relax.Expr, zp: relax.Expr | None, dst: DType, saturate: bool) -> relax.Expr:
    """`v` = x / scale (float32) encoded in dst: integers round half to even, + zero point,
    saturate (NaN -> lowest code); float formats on their grid."""
    if not dst.is_integer:
        return encode_float(ctx, v, dst, saturate)
    lo, hi = dst.int_range
    r = ctx.emit(R.round(v))
    z = as_dtype(ctx, zp, "float32") if zp is not None else constant(0.0, "float32")
    lo_z = ctx.emit(R.subtract(constant(float(lo), "float32"), z))
    hi_z = ctx.emit(R.subtract(constant(float(hi), "float32"), z))
    # NaN -> lo_z without an isnan test: TVM's float max is select(a > b, a, b) on LLVM
    # and fmaxf on CUDA, both lo_z for max(NaN, lo_z) (operand order matters on LLVM).
    # An explicit where(isnan(r), ...) reads r twice, and once TVM inlines a chain of
    # quantize -> dequantize -> ... into one conv epilogue each quantize doubles the
    # expression: a quantized HardSwish after an int8 conv took 10x the conv.
    r = shaped_like(ctx, ctx.emit(R.minimum(R.maximum(r, lo_z), hi_z)), v)
    r = shaped_like(ctx, ctx.emit(R.add(r, z)), v)
    return ctx.emit(R.astype(r, relax_dtype(dst)))


@LOWERINGS.lowers("QuantizeLinear")
def _quantize_linear(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dst = out_dtype(node)
    axis, block = int(a["axis"]), int(a["block_size"])
    x = as_dtype(ctx, ins[0], "float32")
    s = as_dtype(ctx, _expand_param(ctx, ins[1], node.inputs[1], x, axis, block), "float32")
    v = shaped_like(ctx, ctx.emit(R.divide(x, s)), x)
    zp = None
    if len(ins) > 2 and ins[2] is not None and dst.is_integer:
        zp = _expand_param(ctx, ins[2], node.inputs[2], x, axis, block)
    return quantize_values(ctx, v, zp, dst, bool(a["saturate"]))


def _dequantize_values(ctx: LowerContext, q: relax.Expr, q_dt: DType, zp: relax.Expr | None,
                       s: relax.Expr) -> relax.Expr:
    if q_dt.is_integer:
        d = as_dtype(ctx, q, "int64")
        if zp is not None:
            d = ctx.emit(R.subtract(d, as_dtype(ctx, zp, "int64")))
        d = as_dtype(ctx, d, "float32")
    else:
        d = as_dtype(ctx, q, "float32")
    return ctx.emit(R.multiply(d, as_dtype(ctx, s, "float32")))


@LOWERINGS.lowers("DequantizeLinear")
def _dequantize_linear(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    axis, block = int(a["axis"]), int(a["block_size"])
    x = ins[0]
    s = _expand_param(ctx, ins[1], node.inputs[1], x, axis, block)
    zp = None
    if len(ins) > 2 and ins[2] is not None and in_dtype(node).is_integer:
        zp = _expand_param(ctx, ins[2], node.inputs[2], x, axis, block)
    y = shaped_like(ctx, _dequantize_values(ctx, x, in_dtype(node), zp, s), x)
    return as_dtype(ctx, y, relax_dtype(out_dtype(node)))


def dynamic_qparams(ctx: LowerContext, x: relax.Expr) -> tuple[relax.Expr, relax.Expr]:
    """DynamicQuantizeLinear's float32 scale and zero point (0-d), ONNX's spec + ORT's
    scale 1 for an all-zero input."""
    f = "float32"
    zero = constant(0.0, f)
    hi = ctx.emit(R.maximum(R.max(x), zero))
    lo = ctx.emit(R.minimum(R.min(x), zero))
    scale = ctx.emit(R.where(R.equal(hi, lo), constant(1.0, f), R.divide(R.subtract(hi, lo), constant(255.0, f))))
    initial = ctx.emit(R.subtract(zero, R.divide(lo, scale)))
    zp = ctx.emit(R.round(R.minimum(R.maximum(initial, zero), constant(255.0, f))))
    return scale, zp


@LOWERINGS.lowers("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx: LowerContext, node: Node, ins: list) -> Any:
    x = ins[0]
    scale, zp_f = dynamic_qparams(ctx, x)
    y = quantize_values(ctx, ctx.emit(R.divide(x, scale)), zp_f, dtypes.uint8, True)
    return [y, scale, ctx.emit(R.astype(zp_f, "uint8"))]


# ----------------------------------------------------------------------------- integer matmuls


def int_accumulate(ctx: LowerContext, a: relax.Expr, a_zp: relax.Expr | None, b: relax.Expr,
                   b_zp: relax.Expr | None) -> relax.Expr:
    """(A - a_zp) @ (B - b_zp) with an int32 accumulator (wrapping, like ORT's)."""
    a32 = as_dtype(ctx, a, "int32")
    b32 = as_dtype(ctx, b, "int32")
    if a_zp is not None:
        a32 = ctx.emit(R.subtract(a32, as_dtype(ctx, a_zp, "int32")))
    if b_zp is not None:
        b32 = ctx.emit(R.subtract(b32, as_dtype(ctx, b_zp, "int32")))
    return ctx.emit(R.matmul(a32, b32, out_dtype="int32"))


@LOWERINGS.lowers("MatMulInteger")
def _matmul_integer(ctx: LowerContext, node: Node, ins: list) -> Any:
    a, b = ins[0], ins[1]
    a_zp, a_zpv = optional_input(ins, node, 2)
    b_zp, b_zpv = optional_input(ins, node, 3)
    return int_accumulate(ctx, a, _row_param(ctx, a_zp, a_zpv, rank_of(a)), b, column_param(ctx, b_zp, b_zpv))


@LOWERINGS.lowers("QLinearMatMul")
def _qlinear_matmul(ctx: LowerContext, node: Node, ins: list) -> Any:
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = ins
    v = node.inputs
    ra = rank_of(a)
    acc = int_accumulate(ctx, a, _row_param(ctx, a_zp, v[2], ra), b, column_param(ctx, b_zp, v[5]))
    mult = ctx.emit(R.multiply(_row_param(ctx, a_s, v[1], ra), column_param(ctx, b_s, v[4])))
    mult = ctx.emit(R.divide(mult, _row_param(ctx, y_s, v[6], ra)))
    val = ctx.emit(R.multiply(R.astype(acc, "float32"), mult))
    zp = _row_param(ctx, y_zp, v[7], ra)
    return quantize_values(ctx, val, zp, out_dtype(node), True)


# ----------------------------------------------------------------------------- FakeQuantize


def _blocks_check(node: Node) -> str | None:
    if node.attrs.get("granularity") in ("mx", "nv"):
        t = node.inputs[0].type
        if t.shape is None:
            return "FakeQuantize mx/nv needs an input of known rank in the TVM backend"
        axis = int(node.attrs.get("axis", -1)) % max(t.rank, 1)
        if not isinstance(t.shape[axis], int):
            return "FakeQuantize mx/nv needs a static block axis in the TVM backend"
    return None


@LOWERINGS.lowers("FakeQuantize")
@requires(_blocks_check)
def _fake_quantize(ctx: LowerContext, node: Node, ins: list) -> Any:
    from requant.ir.ops.quant import fake_quantize_scheme

    a = ctx.attrs(node)
    zp, zpv = optional_input(ins, node, 2)
    scheme = fake_quantize_scheme(a, zp is not None)
    x = ins[0]
    if scheme.granularity in ("mx", "nv"):
        return _fake_quantize_blocks(ctx, node, x, scheme, ins[1] if len(ins) > 1 else None)
    rank = rank_of(x)
    if scheme.granularity == "token":
        return _fake_quantize_tokens(ctx, x, scheme, float(a["clip"]), normalize_axis(int(scheme.axis), rank))
    if scheme.granularity == "tensor":
        axis, block = 1, 0
    else:
        axis, block = normalize_axis(int(scheme.axis), rank), scheme.block_size
    s = _expand_param(ctx, ins[1], node.inputs[1], x, axis, block)
    z = _expand_param(ctx, zp, zpv, x, axis, block) if zp is not None else None
    v = shaped_like(ctx, ctx.emit(R.divide(x, s)), x)
    q = quantize_values(ctx, v, z, scheme.dtype, True)
    return shaped_like(ctx, _dequantize_values(ctx, q, scheme.dtype, z, s), x)


def _fake_quantize_tokens(ctx: LowerContext, x: relax.Expr, scheme: Any, clip: float, axis: int) -> Any:
    """Per-token dynamic integers (`requant.ir.quant_formats.fake_quantize_tokens`): the
    row's amax with NaN as 0, s = amax * m (1 where 0), codes as QuantizeLinear's."""
    from requant.ir.quant_formats import token_multiplier

    f = "float32"
    a = ctx.emit(R.where(R.isnan(x), constant(0.0, f), R.abs(x)))
    amax = ctx.emit(R.max(a, [axis], True))
    s = ctx.emit(R.multiply(amax, constant(float(token_multiplier(scheme, clip)), f)))
    s = ctx.emit(R.where(R.equal(s, constant(0.0, f)), constant(1.0, f), s))
    v = shaped_like(ctx, ctx.emit(R.divide(x, s)), x)
    q = quantize_values(ctx, v, None, scheme.dtype, True)
    return shaped_like(ctx, _dequantize_values(ctx, q, scheme.dtype, None, s), x)


def _fake_quantize_blocks(ctx: LowerContext, node: Node, x: relax.Expr, scheme: Any, tensor_scale: Any) -> Any:
    """MXFP4 / NVFP4 quantize-dequantize: blocks along the axis (a partial last block is
    padded with zeros, which change no block maximum)."""
    dims = dims_of(x)
    rank = len(dims)
    axis = normalize_axis(int(scheme.axis), rank)
    block = int(scheme.group_size)
    d = int(static_int(dims[axis]))
    nb = -(-d // block)
    perm = [i for i in range(rank) if i != axis] + [axis]
    inv = [perm.index(i) for i in range(rank)]
    xt = ctx.emit(R.permute_dims(x, perm)) if axis != rank - 1 else x
    if nb * block != d:
        xt = ctx.emit(R.nn.pad(xt, pad_width([0] * rank, [0] * (rank - 1) + [nb * block - d]), pad_mode="constant",
                               pad_value=0.0))
    lead = dims_of(xt)[:-1]
    xb = ctx.emit(R.reshape(xt, lead + [nb, block]))
    amax = ctx.emit(R.max(R.abs(xb), [rank], True))
    fp4 = dtypes.fp4_e2m1
    if scheme.granularity == "mx":
        def mx_factor(m: Any) -> Any:
            v = m.astype("float64")
            e = f64_exponent(v) - tirx.const(2, "int64")  # fp4_e2m1's largest exponent is 2
            e = tirx.Select(v > tirx.const(0.0, "float64"), e, tirx.const(-127, "int64"))
            e = tirx.max(e, tirx.const(-127, "int64"))
            p = pow2_f64(e)  # exact: 2^-127 is a normal float64
            return tirx.Select(tirx.isfinite(v), p, tirx.const(float("nan"), "float64"))

        factor = elementwise_te(ctx, mx_factor, [amax], "float64", "mx_scale")
        xd = ctx.emit(R.divide(R.astype(xb, "float64"), factor))
        codes = encode_float(ctx, xd, fp4, True)
        y = ctx.emit(R.astype(R.multiply(R.astype(codes, "float64"), factor), "float32"))
    else:
        f = "float32"
        if tensor_scale is not None:
            s_t = ctx.emit(R.reshape(as_dtype(ctx, tensor_scale, f), ()))
        else:
            tmax = ctx.emit(R.max(R.abs(x)))
            s = ctx.emit(R.divide(tmax, constant(448.0 * 6.0, f)))
            s_t = ctx.emit(R.where(R.equal(s, constant(0.0, f)), constant(1.0, f), s))
        ratio = ctx.emit(R.divide(amax, R.multiply(constant(6.0, f), s_t)))
        s_b = encode_float(ctx, ratio, dtypes.fp8_e4m3, True)
        dd = ctx.emit(R.multiply(s_b, s_t))
        zero = ctx.emit(R.equal(dd, constant(0.0, f)))
        v = ctx.emit(R.where(zero, constant(0.0, f), R.divide(xb, R.where(zero, constant(1.0, f), dd))))
        codes = encode_float(ctx, v, fp4, True)
        y = ctx.emit(R.multiply(codes, dd))
    y = ctx.emit(R.reshape(y, lead + [nb * block]))
    if nb * block != d:
        y = ctx.emit(R.strided_slice(y, axes=[rank - 1], begin=[0], end=[d]))
    return ctx.emit(R.permute_dims(y, inv)) if axis != rank - 1 else y
