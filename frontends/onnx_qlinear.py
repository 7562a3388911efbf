"""ONNX models quantized in ONNX Runtime's operator format, read into requant's Q/DQ form:
each quantized operator becomes DequantizeLinear on its quantized operands, the float op,
and QuantizeLinear on its result, the form requant's passes and lowerings (lower_quant,
lower_integer, the TVM int8 kernels) start from, and the form ONNX Runtime's QDQ
transformers fuse back into these very operators.

- QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B?) ->
  Q(Conv(DQ(x), DQ(w), DQ(B)), y_scale, y_zp): w_scale / w_zp per output channel
  (axis 0) or one value; the int32 bias B is DQ'd with scale x_scale * w_scale, zero
  point 0 (its meaning in QLinearConv).
- QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp) ->
  Q(MatMul(DQ(a), DQ(b)), y_scale, y_zp): b's parameters one value or per column
  (the last axis).
- ConvInteger(x, w, x_zp?, w_zp?) -> Cast(Conv(DQ(x, 1, x_zp), DQ(w, 1, w_zp)), int32):
  the int32 accumulator, computed on dequantized codes with scale 1.
- ONNX Runtime's com.microsoft operators of the same format: QLinearAdd, QLinearMul,
  QLinearSigmoid, QLinearLeakyRelu, QLinearGlobalAveragePool, QLinearAveragePool (NCHW),
  QLinearConcat -> Q(op(DQ(x), ...)); QGemm -> Gemm on DQ'd operands (its int32 C at
  scale a_scale * b_scale), quantized when it has y_scale.

Scales of float16 / bfloat16 are read as float32, so the float ops between DQ and Q run
in float32 (as the quantized kernels compute).

What changes: the quantized operators accumulate in int32 and requantize once; the Q/DQ
form computes the same sums in float32. Every product of two codes and every partial
sum below 2^24 is exact in float32, so ConvInteger's result is exact while its sums stay
below 2^24 in magnitude (up to 258 taps of full-range u8 x i8 codes, any count of
typical ones); QLinearConv / QLinearMatMul multiply the scales in before summing, so a
value within float32 rounding of a half-way point between two codes may land on the
other code (one code step).

A model requant wrote keeps its QLinearMatMul nodes: requant's own lowering chose them,
and reading the file back gives the graph that was exported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from requant.errors import RequantError
from requant.ir import dtypes
from requant.ir.graph import Graph, Value

__all__ = ["EXPANSIONS", "expand", "expands"]

logger = logging.getLogger(__name__)

Namer = Callable[[str], str]


def _f32(g: Graph, scale: Value, fresh: Namer) -> Value:
    """A float16 / bfloat16 scale as float32 (what the quantized kernels compute in; the
    float ops between DQ and Q then run in float32 too)."""
    if scale is None or scale.dtype == dtypes.float32:
        return scale
    if scale.const is not None:
        return g.add_constant(np.asarray(scale.const).astype(np.float32), name=fresh(f"{scale.name}_f32"))
    return g.create_node("Cast", [scale], {"to": "f32"}, output_names=[fresh(f"{scale.name}_f32")]).outputs[0]


def _dq(g: Graph, x: Value, scale: Value, zp: Value | None, axis: int, name: str, fresh: Namer) -> Value:
    return g.create_node("DequantizeLinear", [x, _f32(g, scale, fresh), zp], {"axis": axis},
                         output_names=[name]).outputs[0]


def _q(g: Graph, y: Value, scale: Value, zp: Value | None, name: str, fresh: Namer) -> Value:
    return g.create_node("QuantizeLinear", [y, _f32(g, scale, fresh), zp], output_names=[name]).outputs[0]


def _per_axis(v: Value | None) -> bool:
    """A scale / zero point with more than one value (per channel)."""
    return v is not None and v.type.shape is not None and len(v.type.shape) == 1 and v.type.shape[0] != 1


def _ones_like(g: Graph, like: Value, fresh: Namer) -> Value:
    shape = like.type.shape if like.type.shape is not None else ()
    if any(not isinstance(d, int) for d in shape):
        raise RequantError(f"zero point %{like.name} needs a static shape")
    return g.add_constant(np.ones(shape, np.float32), name=fresh(f"{like.name}_unit_scale"))


def _bias_scale(g: Graph, x_scale: Value, w_scale: Value, fresh: Namer) -> Value:
    """x_scale * w_scale, folded when both are constants (QLinearConv's bias scale)."""
    x_scale, w_scale = _f32(g, x_scale, fresh), _f32(g, w_scale, fresh)
    if x_scale.const is not None and w_scale.const is not None:
        value = (np.asarray(x_scale.const, np.float32) * np.asarray(w_scale.const, np.float32)).reshape(-1)
        return g.add_constant(value.astype(np.float32), name=fresh("bias_scale"))
    prod = g.create_node("Mul", [x_scale, w_scale], output_names=[fresh("bias_scale")]).outputs[0]
    return g.create_node("Reshape", [prod, g.add_constant(np.array([-1], np.int64), name=fresh("flat"))],
                         output_names=[fresh("bias_scale_flat")]).outputs[0]


def _qlinear_conv(g: Graph, ins: list[Value | None], attrs: dict[str, Any], out: str, fresh: Namer) -> Value:
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = (ins + [None] * 8)[:8]
    bias = ins[8] if len(ins) > 8 else None
    if y_zp is None:
        raise RequantError("QLinearConv without y_zero_point: its output dtype is not stated")
    xf = _dq(g, x, x_s, x_zp, 1, fresh(f"{out}_x_dq"), fresh)
    wf = _dq(g, w, w_s, w_zp, 0, fresh(f"{out}_w_dq"), fresh)
    bf = None
    if bias is not None:
        bf = _dq(g, bias, _bias_scale(g, x_s, w_s, fresh), None, 0, fresh(f"{out}_bias_dq"), fresh)
    y = g.create_node("Conv", [xf, wf, bf], attrs, output_names=[fresh(f"{out}_float")]).outputs[0]
    return _q(g, y, y_s, y_zp, out, fresh)


def _qlinear_matmul(g: Graph, ins: list[Value | None], attrs: dict[str, Any], out: str, fresh: Namer) -> Value:
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = ins
    if _per_axis(a_s) or _per_axis(y_s):
        raise RequantError("QLinearMatMul with per-row scales of a or y has no Q/DQ form (DequantizeLinear "
                           "scales one axis of a tensor, a row scale would need the rows' axis)")
    af = _dq(g, a, a_s, a_zp, 1, fresh(f"{out}_a_dq"), fresh)
    b_axis = -1 if b.type.rank is None else b.type.rank - 1
    bf = _dq(g, b, b_s, b_zp, b_axis, fresh(f"{out}_b_dq"), fresh)
    y = g.create_node("MatMul", [af, bf], output_names=[fresh(f"{out}_float")]).outputs[0]
    return _q(g, y, y_s, y_zp, out, fresh)


def _conv_integer(g: Graph, ins: list[Value | None], attrs: dict[str, Any], out: str, fresh: Namer) -> Value:
    x, w = ins[0], ins[1]
    x_zp = ins[2] if len(ins) > 2 else None
    w_zp = ins[3] if len(ins) > 3 else None
    one = g.add_constant(np.float32(1.0), name=fresh("unit_scale"))
    xf = _dq(g, x, one, x_zp, 1, fresh(f"{out}_x_dq"), fresh)
    w_scale = _ones_like(g, w_zp, fresh) if _per_axis(w_zp) else one
    wf = _dq(g, w, w_scale, w_zp, 0, fresh(f"{out}_w_dq"), fresh)
    y = g.create_node("Conv", [xf, wf], attrs, output_names=[fresh(f"{out}_float")]).outputs[0]
    return g.create_node("Cast", [y], {"to": dtypes.int32.short}, output_names=[out]).outputs[0]


def _float_op(op: str, n_operands: int, kept: tuple[str, ...] = ()) -> Callable[..., Value]:
    """ONNX Runtime's com.microsoft QLinear<op>: operands (x_i, x_i_scale, x_i_zp) ...,
    then (y_scale, y_zp) -> Q(op(DQ(x_1), ...)); attributes in `kept` pass on to op."""

    def expand_op(g: Graph, ins: list[Value | None], attrs: dict[str, Any], out: str, fresh: Namer) -> Value:
        if attrs.get("channels_last", 0):
            raise RequantError(f"QLinear{op} with channels_last=1 is not supported; export NCHW")
        floats = [_dq(g, ins[3 * k], ins[3 * k + 1], ins[3 * k + 2], 1, fresh(f"{out}_x{k}_dq"), fresh)
                  for k in range(n_operands)]
        y_s, y_zp = ins[3 * n_operands], (ins[3 * n_operands + 1] if len(ins) > 3 * n_operands + 1 else None)
        y = g.create_node(op, floats, {k: v for k, v in attrs.items() if k in kept},
                          output_names=[fresh(f"{out}_float")]).outputs[0]
        return _q(g, y, y_s, y_zp, out, fresh)

    expand_op.__name__ = f"_qlinear_{op.lower()}"
    return expand_op


def _qlinear_concat(g: Graph, ins: list[Value | None], attrs: dict[str, Any], out: str, fresh: Namer) -> Value:
    """QLinearConcat(y_scale, y_zp, (x_i, x_i_scale, x_i_zp) ...) {axis}."""
    y_s, y_zp, rest = ins[0], ins[1], ins[2:]
    floats = [_dq(g, rest[k], rest[k + 1], rest[k + 2], 1, fresh(f"{out}_x{k // 3}_dq"), fresh)
              for k in range(0, len(rest), 3)]
    y = g.create_node("Concat", floats, {"axis": int(attrs["axis"])}, output_names=[fresh(f"{out}_float")]).outputs[0]
    return _q(g, y, y_s, y_zp, out, fresh)


def _qgemm(g: Graph, ins: list[Value | None], attrs: dict[str, Any], out: str, fresh: Namer) -> Value:
    """QGemm(A, a_scale, a_zp, B, b_scale, b_zp, C?, y_scale?, y_zp?) {alpha, transA,
    transB}: C is int32 at scale a_scale * b_scale; without y_scale the output is float."""
    a, a_s, a_zp, b, b_s, b_zp = ins[:6]
    c = ins[6] if len(ins) > 6 else None
    y_s = ins[7] if len(ins) > 7 else None
    y_zp = ins[8] if len(ins) > 8 else None
    af = _dq(g, a, a_s, a_zp, 1, fresh(f"{out}_a_dq"), fresh)
    trans_b = int(attrs.get("transB", 0))
    bf = _dq(g, b, b_s, b_zp, 0 if trans_b else 1, fresh(f"{out}_b_dq"), fresh)
    cf = None if c is None else _dq(g, c, _bias_scale(g, a_s, b_s, fresh), None, 0, fresh(f"{out}_c_dq"), fresh)
    gemm_attrs = {"alpha": float(attrs.get("alpha", 1.0)), "transA": int(attrs.get("transA", 0)), "transB": trans_b}
    name = out if y_s is None else fresh(f"{out}_float")
    y = g.create_node("Gemm", [af, bf, cf], gemm_attrs, output_names=[name]).outputs[0]
    if y_s is None:
        return y
    return _q(g, y, y_s, y_zp, out, fresh)


_MS = "com.microsoft"
_POOL_ATTRS = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")
EXPANSIONS: dict[tuple[str, str], Callable[..., Value]] = {
    ("", "QLinearConv"): _qlinear_conv,
    ("", "QLinearMatMul"): _qlinear_matmul,
    ("", "ConvInteger"): _conv_integer,
    (_MS, "QLinearAdd"): _float_op("Add", 2),
    (_MS, "QLinearMul"): _float_op("Mul", 2),
    (_MS, "QLinearSigmoid"): _float_op("Sigmoid", 1),
    (_MS, "QLinearLeakyRelu"): _float_op("LeakyRelu", 1, ("alpha",)),
    (_MS, "QLinearGlobalAveragePool"): _float_op("GlobalAveragePool", 1),
    (_MS, "QLinearAveragePool"): _float_op("AveragePool", 1, _POOL_ATTRS),
    (_MS, "QLinearConcat"): _qlinear_concat,
    (_MS, "QGemm"): _qgemm,
}
"""(domain, ONNX op type) -> how it becomes Q/DQ form: fn(graph, inputs, attrs, output
name, fresh name) -> output."""

_ATTRS = {
    "QLinearConv": ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"),
    "ConvInteger": ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"),
    "QLinearLeakyRelu": ("alpha",),
    "QLinearGlobalAveragePool": ("channels_last",),
    "QLinearAveragePool": (*_POOL_ATTRS, "channels_last"),
    "QLinearConcat": ("axis",),
    "QGemm": ("alpha", "transA", "transB"),
}


def _key(op_type: str, domain: str) -> tuple[str, str]:
    return ("" if domain in ("", "ai.onnx") else domain, op_type)


def expands(op_type: str, domain: str, producer: str) -> bool:
    """Whether the frontend reads this node through `expand` (QLinearMatMul of a model
    requant wrote stays as it is)."""
    if _key(op_type, domain) not in EXPANSIONS:
        return False
    return not (op_type == "QLinearMatMul" and producer == "requant")


def expand(g: Graph, op_type: str, domain: str, ins: list[Value | None], attrs: dict[str, Any], out: str,
           fresh: Namer) -> Value:
    """The Q/DQ form of one quantized operator, its result named `out`."""
    unknown = set(attrs) - set(_ATTRS.get(op_type, ()))
    if unknown:
        raise RequantError(f"{op_type}: attribute(s) {sorted(unknown)} are not supported in its Q/DQ form")
    return EXPANSIONS[_key(op_type, domain)](g, ins, dict(attrs), out, fresh)
