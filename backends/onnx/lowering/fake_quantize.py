"""ONNX lowering of requant's FakeQuantize (`requant.ir.ops.quant`): QuantizeLinear +
DequantizeLinear where ONNX Runtime has kernels for the format (int8/uint8/int4/uint4,
fp8), an exact float emulation from basic ops otherwise (fp4_e2m1, FloatFormat, MXFP4,
NVFP4): the grid rounding runs in float64 exactly as the interpreter's
(`round_to_float_format`), scales are powers of two taken from tables (no Pow), so ONNX
Runtime's results are bit-identical.

Known ONNX Runtime difference: QuantizeLinear to fp8 with saturate=0 gives +-448 for e4m3
|x/scale| in [480, 496) and NaN for e5m2 |x/scale| in [61440, 65536), where ONNX's
reference and requant give NaN and +-inf (FakeQuantize always saturates)."""

from __future__ import annotations

import logging

from typing import Any

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, scalar_const
from requant.backends.onnx.lowering.quant import QDQ_FP8_DTYPES
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.graph import Node
from requant.ir.registry import get_schema

__all__: list[str] = []

logger = logging.getLogger(__name__)

def _fq_reduce_max(ctx: EmitContext, x: str, axes: list[int] | None, keepdims: int, name: str | None) -> str:
    if axes is None:
        return ctx.emit("ReduceMax", [x], keepdims=keepdims, name=name)[0]
    if ctx.opset >= 18:
        return ctx.emit("ReduceMax", [x, ctx.const(np.array(axes, np.int64), dtypes.int64, "fq_axes")],
                        keepdims=keepdims, name=name)[0]
    return ctx.emit("ReduceMax", [x], axes=axes, keepdims=keepdims, name=name)[0]


def _fq_grid_round(ctx: EmitContext, node: Node, v: str, fmt: Any, tag: str) -> str:
    """`round_to_float_format(v, fmt)` from ONNX ops in float64; returns the float64
    grid values (x-space). NaN -> +max, saturating at +-max, half to even."""
    from requant.ir.dtypes import FloatFormat

    n = lambda p: ctx.sub_name(node, f"{tag}_{p}")  # noqa: E731
    f64 = dtypes.float64
    if not isinstance(fmt, FloatFormat):
        fmt = FloatFormat(2, 1, 1.0)  # fp4_e2m1's grid
    e_bits, m_bits, bias = fmt.exp_bits, fmt.man_bits, float(fmt.bias)
    emax = 2**e_bits - 1
    top = (2.0 - 2.0**-m_bits) * 2.0**emax
    (y,) = ctx.emit("Cast", [v], to=dtype_to_onnx(f64), name=n("f64"))
    if bias != 0.0:
        (y,) = ctx.emit("Mul", [y, scalar_const(ctx, 2.0**bias, f64, "fq_bias")], name=n("bias"))
    (nan,) = ctx.emit("IsNaN", [y], name=n("isnan"))
    (y,) = ctx.emit("Where", [nan, scalar_const(ctx, np.inf, f64, "fq_inf"), y], name=n("nan_to_inf"))
    (a,) = ctx.emit("Abs", [y], name=n("abs"))
    if emax >= 2:
        thresholds = np.exp2(np.arange(2, emax + 1, dtype=np.float64))
        steps = np.exp2(np.arange(1, emax + 1, dtype=np.float64) - m_bits)
        (a1,) = ctx.emit("Unsqueeze", [a, ctx.const(np.array([-1], np.int64), dtypes.int64, "fq_last")],
                         name=n("unsqueeze"))
        (ge,) = ctx.emit("GreaterOrEqual", [a1, ctx.const(thresholds, f64, "fq_binades")], name=n("binades"))
        (cnt,) = ctx.emit("Cast", [ge], to=dtype_to_onnx(dtypes.int64), name=n("binade_i64"))
        (cnt,) = ctx.emit("ReduceSum", [cnt, ctx.const(np.array([-1], np.int64), dtypes.int64, "fq_last")],
                          keepdims=0, name=n("binade"))
        (step,) = ctx.emit("Gather", [ctx.const(steps, f64, "fq_steps"), cnt], axis=0, name=n("step"))
    else:
        step = scalar_const(ctx, 2.0 ** (1 - m_bits), f64, "fq_step")
    (t,) = ctx.emit("Div", [y, step], name=n("div_step"))
    (t,) = ctx.emit("Round", [t], name=n("round"))
    (t,) = ctx.emit("Mul", [t, step], name=n("mul_step"))
    (t,) = ctx.emit("Clip", [t, scalar_const(ctx, -top, f64, "fq_min"), scalar_const(ctx, top, f64, "fq_max")],
                    name=n("saturate"))
    if bias != 0.0:
        (t,) = ctx.emit("Div", [t, scalar_const(ctx, 2.0**bias, f64, "fq_bias")], name=n("unbias"))
    return t


def _fq_static(node: Node, what: str) -> tuple[int, tuple]:
    shape = node.inputs[0].type.shape
    if shape is None:
        raise UnsupportedOpError(f"{node.label}: exporting {what} to ONNX needs the input's rank")
    return len(shape), tuple(shape)


def _fq_broadcast_scale(ctx: EmitContext, node: Node, scheme: Any, scale: str) -> str:
    """The scale made elementwise-broadcastable to X (tensor: a scalar; channel: [C, 1..];
    group: gathered to the axis length)."""
    i64 = lambda v, tag: ctx.const(np.asarray(v, np.int64), dtypes.int64, tag)  # noqa: E731
    if scheme.granularity == "tensor":
        return ctx.emit("Reshape", [scale, i64([], "fq_scalar")], name=ctx.sub_name(node, "scale_scalar"))[0]
    rank, shape = _fq_static(node, f"a per-{scheme.granularity} scale")
    axis = scheme.axis % rank
    if scheme.granularity == "channel":
        return ctx.emit("Reshape", [scale, i64([-1] + [1] * (rank - 1 - axis), "fq_channel")],
                        name=ctx.sub_name(node, "scale_channel"))[0]
    d = shape[axis]
    if not isinstance(d, int):
        raise UnsupportedOpError(f"{node.label}: exporting a per-group scale needs a static dim on axis {axis}")
    idx = i64(np.arange(d) // scheme.group_size, "fq_group_index")
    return ctx.emit("Gather", [scale, idx], axis=axis, name=ctx.sub_name(node, "scale_group"))[0]


def _fq_qdq(ctx: EmitContext, node: Node, scheme: Any, ins: list, outs: list) -> None:
    """Integer and fp8 formats: ONNX QuantizeLinear + DequantizeLinear."""
    dt = scheme.dtype
    need = 13
    if dt in QDQ_FP8_DTYPES:
        need = 19
    if dt in (dtypes.int4, dtypes.uint4) or scheme.granularity == "group":
        need = 21
    if ctx.opset < need:
        raise UnsupportedOpError(f"{node.label}: {scheme.describe()} needs ONNX QuantizeLinear of opset >= {need}; "
                                 f"target opset is {ctx.opset}")
    attrs: dict[str, Any] = {}
    if scheme.granularity != "tensor":
        attrs["axis"] = int(scheme.axis)
    if scheme.granularity == "group":
        attrs["block_size"] = int(scheme.group_size)
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    q_attrs = dict(attrs)
    if zp is None:
        if ctx.opset >= 21:
            q_attrs["output_dtype"] = dtype_to_onnx(dt)
        else:
            s_shape = node.inputs[1].type.shape
            if s_shape is None or not all(isinstance(d, int) for d in s_shape):
                raise UnsupportedOpError(f"{node.label}: before opset 21 a zero point is needed; give one or "
                                         f"a scale of static shape")
            zp = ctx.const(np.zeros(s_shape, dtype=dt.np), dt, "fq_zero_point")
    (q,) = ctx.emit("QuantizeLinear", [x, scale, zp], name=ctx.sub_name(node, "quantize"), **q_attrs)
    ctx.emit("DequantizeLinear", [q, scale, zp], outs, name=node.name or None, **attrs)


def _fq_to_blocks(ctx: EmitContext, node: Node, scheme: Any, x: str) -> tuple[str, Any]:
    """X with the block axis last, padded with zeros to whole blocks and reshaped to
    [..., nb, block]; returns it and a function undoing that on a result."""
    rank, shape = _fq_static(node, scheme.describe())
    if rank == 0:
        raise UnsupportedOpError(f"{node.label}: block formats need an input of rank >= 1")
    axis = scheme.axis % rank
    d = shape[axis]
    if not isinstance(d, int):
        raise UnsupportedOpError(f"{node.label}: exporting {scheme.describe()} needs a static dim on axis {axis}")
    i64 = lambda v, tag: ctx.const(np.asarray(v, np.int64), dtypes.int64, tag)  # noqa: E731
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    bs = int(scheme.group_size)
    nb = -(-d // bs)
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = perm != list(range(rank))
    if moved:
        (x,) = ctx.emit("Transpose", [x], perm=perm, name=n("axis_last"))
    if nb * bs != d:
        (x,) = ctx.emit("Pad", [x, i64([0] * (2 * rank - 1) + [nb * bs - d], "fq_pads")], name=n("pad"))
    (xb,) = ctx.emit("Reshape", [x, i64([0] * (rank - 1) + [nb, bs], "fq_blocks")], name=n("blocks"))

    def undo(yb: str, outs: list) -> None:
        steps: list[tuple[str, list, dict]] = [("Reshape", [i64([0] * (rank - 1) + [nb * bs], "fq_unblock")], {})]
        if nb * bs != d:
            steps.append(("Slice", [i64([0], "fq_0"), i64([d], "fq_len"), i64([-1], "fq_last")], {}))
        if moved:
            steps.append(("Transpose", [], {"perm": [int(i) for i in np.argsort(perm)]}))
        y = yb
        for i, (op, extra, attrs) in enumerate(steps):
            last = i == len(steps) - 1
            (y,) = ctx.emit(op, [y, *extra], outs if last else 1, name=(node.name or None) if last else n(op.lower()),
                            **attrs)

    return xb, undo


def _fq_mx(ctx: EmitContext, node: Node, scheme: Any, ins: list, outs: list) -> None:
    """MXFP4: E8M0 scale 2^max(floor(log2 amax) - 2, -127) per block (NaN for blocks with
    NaN/inf), floor(log2) exact via Log, a table of powers of two and a +-1 correction."""
    f32, f64, i64t = dtypes.float32, dtypes.float64, dtypes.int64
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    xb, undo = _fq_to_blocks(ctx, node, scheme, ins[0])
    (a,) = ctx.emit("Abs", [xb], name=n("abs"))
    (nan,) = ctx.emit("IsNaN", [xb], name=n("isnan"))
    (a,) = ctx.emit("Where", [nan, scalar_const(ctx, np.inf, f32, "fq_inf32"), a], name=n("nan_as_inf"))
    amax = _fq_reduce_max(ctx, a, [-1], 1, n("amax"))
    (bad,) = ctx.emit("IsInf", [amax], name=n("nonfinite"))
    (am,) = ctx.emit("Where", [bad, scalar_const(ctx, 1.0, f32, "fq_one32"), amax], name=n("finite_amax"))
    (am,) = ctx.emit("Max", [am, scalar_const(ctx, 2.0**-126, f32, "fq_tiny")], name=n("clamp_amax"))
    (a64,) = ctx.emit("Cast", [am], to=dtype_to_onnx(f64), name=n("amax_f64"))
    (e0,) = ctx.emit("Log", [a64], name=n("log"))
    (e0,) = ctx.emit("Mul", [e0, scalar_const(ctx, 1.0 / np.log(2.0), f64, "fq_inv_ln2")], name=n("log2"))
    (e0,) = ctx.emit("Floor", [e0], name=n("floor"))
    (e0,) = ctx.emit("Clip", [e0, scalar_const(ctx, -126.0, f64, "fq_emin"), scalar_const(ctx, 127.0, f64, "fq_emax")],
                     name=n("clip_exp"))
    pow2 = ctx.const(np.exp2(np.arange(-127, 128, dtype=np.float64)), f64, "fq_pow2")  # 2^-127 .. 2^127
    (idx,) = ctx.emit("Add", [e0, scalar_const(ctx, 127.0, f64, "fq_off")], name=n("exp_index"))
    (idx,) = ctx.emit("Cast", [idx], to=dtype_to_onnx(i64t), name=n("exp_index_i64"))
    (p,) = ctx.emit("Gather", [pow2, idx], axis=0, name=n("pow2"))
    (over,) = ctx.emit("Greater", [p, a64], name=n("too_big"))
    (p2,) = ctx.emit("Mul", [p, scalar_const(ctx, 2.0, f64, "fq_two")], name=n("pow2_next"))
    (under,) = ctx.emit("LessOrEqual", [p2, a64], name=n("too_small"))
    (over,) = ctx.emit("Cast", [over], to=dtype_to_onnx(f64), name=n("too_big_f64"))
    (under,) = ctx.emit("Cast", [under], to=dtype_to_onnx(f64), name=n("too_small_f64"))
    (e,) = ctx.emit("Sub", [e0, over], name=n("exp_fix_down"))
    (e,) = ctx.emit("Add", [e, under], name=n("exp_fix_up"))
    (shared,) = ctx.emit("Sub", [e, scalar_const(ctx, 2.0, f64, "fq_two")], name=n("shared_exp"))
    (shared,) = ctx.emit("Max", [shared, scalar_const(ctx, -127.0, f64, "fq_e8m0_min")], name=n("shared_clamp"))
    (idx,) = ctx.emit("Add", [shared, scalar_const(ctx, 127.0, f64, "fq_off")], name=n("scale_index"))
    (idx,) = ctx.emit("Cast", [idx], to=dtype_to_onnx(i64t), name=n("scale_index_i64"))
    (scale,) = ctx.emit("Gather", [pow2, idx], axis=0, name=n("scale"))
    (scale,) = ctx.emit("Where", [bad, scalar_const(ctx, np.nan, f64, "fq_nan"), scale], name=n("scale_nan"))
    (x64,) = ctx.emit("Cast", [xb], to=dtype_to_onnx(f64), name=n("x_f64"))
    (v,) = ctx.emit("Div", [x64, scale], name=n("scaled"))  # exact: a power-of-two scale
    q = _fq_grid_round(ctx, node, v, dtypes.fp4_e2m1, "e2m1")
    (y,) = ctx.emit("Mul", [q, scale], name=n("dequantize"))
    (y,) = ctx.emit("Cast", [y], to=dtype_to_onnx(f32), name=n("y_f32"))
    undo(y, outs)


def _fq_nv(ctx: EmitContext, node: Node, scheme: Any, ins: list, outs: list) -> None:
    """NVFP4: s_b = e4m3(amax_b / (6 s_t)), d = s_b * s_t, y = e2m1(x / d) * d (float32)."""
    if ctx.opset < 19:
        raise UnsupportedOpError(f"{node.label}: NVFP4 needs Cast to float8e4m3fn (opset >= 19); target {ctx.opset}")
    f32 = dtypes.float32
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731

    def nan_max(x: str, axes: list[int] | None, keepdims: int, tag: str) -> str:
        (a,) = ctx.emit("Abs", [x], name=n(f"{tag}_abs"))
        m = _fq_reduce_max(ctx, a, axes, keepdims, n(f"{tag}_max"))
        (isnan,) = ctx.emit("IsNaN", [x], name=n(f"{tag}_isnan"))
        (isnan,) = ctx.emit("Cast", [isnan], to=dtype_to_onnx(f32), name=n(f"{tag}_isnan_f32"))
        has = _fq_reduce_max(ctx, isnan, axes, keepdims, n(f"{tag}_has_nan"))
        (has,) = ctx.emit("Greater", [has, scalar_const(ctx, 0.0, f32, "fq_zero32")], name=n(f"{tag}_nan_flag"))
        return ctx.emit("Where", [has, scalar_const(ctx, np.nan, f32, "fq_nan32"), m], name=n(f"{tag}_amax"))[0]

    scale_in = ins[1] if len(ins) > 1 else None
    if scale_in is not None:
        (s_t,) = ctx.emit("Reshape", [scale_in, ctx.const(np.zeros(0, np.int64), dtypes.int64, "fq_scalar")],
                          name=n("tensor_scale"))
    else:
        at = nan_max(ins[0], None, 0, "tensor")
        (s_t,) = ctx.emit("Div", [at, scalar_const(ctx, 448.0 * 6.0, f32, "fq_nv_div")], name=n("tensor_scale"))
        (zero,) = ctx.emit("Equal", [s_t, scalar_const(ctx, 0.0, f32, "fq_zero32")], name=n("tensor_scale_zero"))
        (s_t,) = ctx.emit("Where", [zero, scalar_const(ctx, 1.0, f32, "fq_one32"), s_t], name=n("tensor_scale_guard"))
    xb, undo = _fq_to_blocks(ctx, node, scheme, ins[0])
    amax = nan_max(xb, [-1], 1, "block")
    (t,) = ctx.emit("Mul", [scalar_const(ctx, 6.0, f32, "fq_six"), s_t], name=n("six_s_t"))
    (r,) = ctx.emit("Div", [amax, t], name=n("ratio"))
    (s_b,) = ctx.emit("Cast", [r], to=dtype_to_onnx(dtypes.fp8_e4m3), saturate=1, name=n("scale_e4m3"))
    (s_b,) = ctx.emit("Cast", [s_b], to=dtype_to_onnx(f32), name=n("scale_f32"))
    (d,) = ctx.emit("Mul", [s_b, s_t], name=n("divisor"))
    (dz,) = ctx.emit("Equal", [d, scalar_const(ctx, 0.0, f32, "fq_zero32")], name=n("divisor_zero"))
    (dd,) = ctx.emit("Where", [dz, scalar_const(ctx, 1.0, f32, "fq_one32"), d], name=n("divisor_safe"))
    (v,) = ctx.emit("Div", [xb, dd], name=n("scaled"))
    (v,) = ctx.emit("Where", [dz, scalar_const(ctx, 0.0, f32, "fq_zero32"), v], name=n("scaled_zero"))
    q = _fq_grid_round(ctx, node, v, dtypes.fp4_e2m1, "e2m1")
    (q,) = ctx.emit("Cast", [q], to=dtype_to_onnx(f32), name=n("codes_f32"))
    (y,) = ctx.emit("Mul", [q, d], name=n("dequantize"))
    undo(y, outs)


def _fq_token(ctx: EmitContext, node: Node, scheme: Any, clip: float, ins: list, outs: list) -> None:
    """Per-token dynamic integers (`requant.ir.quant_formats.fake_quantize_tokens`):
    s = amax_row(|x|, NaN as 0) * m, 1 where 0; y = saturate(round(x / s)) * s, NaN -> the
    lowest code, all in float32 (ONNX Round is half to even)."""
    from requant.ir.quant_formats import token_multiplier

    f32 = dtypes.float32
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    x = ins[0]
    (isnan,) = ctx.emit("IsNaN", [x], name=n("isnan"))
    (a,) = ctx.emit("Abs", [x], name=n("abs"))
    zero = scalar_const(ctx, 0.0, f32, "fq_zero32")
    (a,) = ctx.emit("Where", [isnan, zero, a], name=n("abs_nan_zero"))
    amax = _fq_reduce_max(ctx, a, [int(scheme.axis)], 1, n("amax"))
    m = token_multiplier(scheme, clip)
    (scale,) = ctx.emit("Mul", [amax, scalar_const(ctx, float(m), f32, "fq_token_m")], name=n("scale"))
    (none,) = ctx.emit("Equal", [scale, zero], name=n("scale_zero"))
    (scale,) = ctx.emit("Where", [none, scalar_const(ctx, 1.0, f32, "fq_one32"), scale], name=n("scale_guard"))
    (v,) = ctx.emit("Div", [x, scale], name=n("scaled"))
    (v,) = ctx.emit("Round", [v], name=n("rounded"))
    qmin, qmax = scheme.dtype.int_range
    lo = scalar_const(ctx, float(qmin), f32, f"fq_q{qmin}")
    (v,) = ctx.emit("Clip", [v, lo, scalar_const(ctx, float(qmax), f32, f"fq_q{qmax}")], name=n("saturated"))
    (vnan,) = ctx.emit("IsNaN", [v], name=n("code_isnan"))
    (v,) = ctx.emit("Where", [vnan, lo, v], name=n("codes"))
    ctx.emit("Mul", [v, scale], outs, name=node.name or None)


@LOWERINGS.lowers("FakeQuantize")
def _fake_quantize(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """FakeQuantize: Q/DQ for int and fp8 formats, an exact emulation for the others."""
    from requant.ir.ops.quant import fake_quantize_scheme

    attrs = get_schema(node.op).fill_attrs(node.attrs)
    has_zp = len(ins) > 2 and ins[2] is not None
    scheme = fake_quantize_scheme(attrs, has_zp)
    if scheme.granularity == "mx":
        _fq_mx(ctx, node, scheme, ins, outs)
        return
    if scheme.granularity == "nv":
        _fq_nv(ctx, node, scheme, ins, outs)
        return
    if scheme.granularity == "token":
        _fq_token(ctx, node, scheme, float(attrs["clip"]), ins, outs)
        return
    if scheme.dtype.is_integer or scheme.dtype in QDQ_FP8_DTYPES:
        _fq_qdq(ctx, node, scheme, ins, outs)
        return
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    scale = _fq_broadcast_scale(ctx, node, scheme, ins[1])
    (v,) = ctx.emit("Div", [ins[0], scale], name=n("scaled"))
    q = _fq_grid_round(ctx, node, v, scheme.dtype, "grid")
    (q,) = ctx.emit("Cast", [q], to=dtype_to_onnx(dtypes.float32), name=n("codes_f32"))
    ctx.emit("Mul", [q, scale], outs, name=node.name or None)
