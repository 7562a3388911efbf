"""Lowerings of Conv and ConvTranspose: 1-D, 2-D and 3-D windows in NC... layouts, with
groups, dilations, strides, pads / auto_pad and a bias. f16/bf16 compute in float32 and
round once.

A 2-D Conv (groups = 1) that reads a DequantizeLinear of 8-bit activation codes (per
tensor) and a DequantizeLinear of constant int8 weight codes (per tensor or per output
channel, zero point 0) becomes an integer conv: the codes minus the activation zero
point, convolved with the int8 codes into int32 (exact), times s_x * s_w[o] (float32,
as ONNX Runtime's integer convs form it), plus the bias: what ONNX Runtime fuses
`DQ -> Conv` into, and what schedule_cpu packs into its int8 (VNNI) conv kernel. It
equals the float conv of the dequantized operands up to float32 rounding: the float
conv rounds every product and partial sum, the integer one rounds twice (int32 ->
float32, the scale product) and once more for the bias. The DequantizeLinear nodes
left unread are dropped by Relax.

ConvTranspose needs static spatial dims. Its geometry comes from the registry's
`conv_transpose_geometry`: pads reduce Relax's full output, output_padding and
output_shape extend it at the end; an output_padding Relax refuses (not below the
stride; ONNX allows it up to the dilation) becomes zero padding of the result, as those
positions get no contributions.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tvm import relax

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    constant,
    dims_of,
    from_compute,
    in_dtype,
    pad_width,
    rank_of,
    requires,
    static_int,
    to_compute,
)
from requant.backends.tvm.lowering._window import static_spatial, window_pads
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


_CONV = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}
_CONVT = {1: R.nn.conv1d_transpose, 2: R.nn.conv2d_transpose, 3: R.nn.conv3d_transpose}
_LAYOUTS = {1: ("NCW", "OIW", "IOW"), 2: ("NCHW", "OIHW", "IOHW"), 3: ("NCDHW", "OIDHW", "IODHW")}


def _scalar_const(v: Any) -> np.ndarray | None:
    return None if v is None or v.const is None or np.size(v.const) != 1 else np.asarray(v.const).reshape(())


def _integer_conv_operands(node: Node, attrs: dict[str, Any]) -> tuple[Node, Node] | None:
    """(activation DequantizeLinear, weight DequantizeLinear) of a float32 2-D Conv that
    runs as an integer conv (module docstring), else None."""
    x, w = node.inputs[0], node.inputs[1]
    if (attrs["group"] != 1 or node.outputs[0].type.dtype.name != "float32" or x.type.rank != 4
            or x.producer is None or w.producer is None):
        return None
    act, wdq = x.producer, w.producer
    if act.op != "DequantizeLinear" or wdq.op != "DequantizeLinear":
        return None
    codes, scale = act.inputs[0], act.inputs[1]
    zero = act.inputs[2] if len(act.inputs) > 2 else None
    if (codes.type.dtype.name not in ("uint8", "int8") or _scalar_const(scale) is None
            or (zero is not None and _scalar_const(zero) is None) or act.attrs.get("block_size", 0)):
        return None
    wcodes, wscale = wdq.inputs[0], wdq.inputs[1]
    wzero = wdq.inputs[2] if len(wdq.inputs) > 2 else None
    per_channel = wscale.const is not None and np.size(wscale.const) == wcodes.type.shape[0] and \
        int(wdq.attrs.get("axis", 1)) in (0, -4)
    if (wcodes.const is None or wcodes.type.dtype.name != "int8" or wdq.attrs.get("block_size", 0)
            or not (per_channel or _scalar_const(wscale) is not None)
            or (wzero is not None and (wzero.const is None or np.any(np.asarray(wzero.const))))):
        return None
    return act, wdq


def _integer_conv(ctx: LowerContext, node: Node, ins: list, act: Node, wdq: Node, attrs: dict[str, Any]) -> Any:
    codes = ctx.value(act.inputs[0])
    x = ctx.emit(R.astype(codes, "int32"))
    zero = _scalar_const(act.inputs[2]) if len(act.inputs) > 2 else None
    if zero is not None and int(zero):
        x = ctx.emit(R.subtract(x, constant(int(zero), "int32")))
    wcodes = np.asarray(wdq.inputs[0].const)
    kernel = list(wcodes.shape[2:])
    pads = window_pads(node, dims_of(x), kernel)
    acc = ctx.emit(R.nn.conv2d(x, constant(wcodes.astype(np.int32), "int32"), strides=list(attrs["strides"] or [1, 1]),
                               padding=pads, dilation=list(attrs["dilations"] or [1, 1]), groups=1,
                               data_layout="NCHW", kernel_layout="OIHW", out_dtype="int32"))
    out_channels = wcodes.shape[0]
    scale = (np.float32(_scalar_const(act.inputs[1])) * np.broadcast_to(
        np.asarray(wdq.inputs[1].const, np.float32).reshape(-1), (out_channels,))).astype(np.float32)
    y = ctx.emit(R.multiply(R.astype(acc, "float32"), constant(scale.reshape(1, -1, 1, 1), "float32")))
    if len(ins) > 2 and ins[2] is not None:
        y = ctx.emit(R.add(y, R.reshape(ins[2], [1, -1, 1, 1])))
    return y


@LOWERINGS.lowers("Conv")
@requires(static_spatial)
def _conv(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    integer = _integer_conv_operands(node, a)
    if integer is not None:
        return _integer_conv(ctx, node, ins, *integer, a)
    dt = in_dtype(node)
    x, w = (to_compute(ctx, v, dt) for v in ins[:2])
    n = rank_of(x) - 2
    kernel = [int(static_int(d)) for d in dims_of(w)[2:]]
    pads = window_pads(node, dims_of(x), kernel)
    dl, kl, _ = _LAYOUTS[n]
    y = ctx.emit(_CONV[n](
        x, w, strides=list(a["strides"] or [1] * n), padding=pads, dilation=list(a["dilations"] or [1] * n),
        groups=int(a["group"]), data_layout=dl, kernel_layout=kl))
    if len(ins) > 2 and ins[2] is not None:
        b = to_compute(ctx, ins[2], dt)
        y = ctx.emit(R.add(y, R.reshape(b, [1, -1] + [1] * n)))
    return from_compute(ctx, y, dt)


def _convt_check(node: Node) -> str | None:
    reason = static_spatial(node)
    if reason:
        return reason
    if not all(isinstance(d, int) for d in node.inputs[0].type.shape[2:]):
        return "ConvTranspose needs static spatial dims in the TVM backend"
    return None


@LOWERINGS.lowers("ConvTranspose")
@requires(_convt_check)
def _conv_transpose(ctx: LowerContext, node: Node, ins: list) -> Any:
    from requant.ir.ops.conv import conv_transpose_geometry

    a = ctx.attrs(node)
    dt = in_dtype(node)
    x, w = (to_compute(ctx, v, dt) for v in ins[:2])
    n = rank_of(x) - 2
    in_sp = [int(static_int(d)) for d in dims_of(x)[2:]]
    kernel = [int(static_int(d)) for d in dims_of(w)[2:]]
    geo = conv_transpose_geometry(in_sp, kernel, a.get, n)
    strides = list(a["strides"] or [1] * n)
    dilations = list(a["dilations"] or [1] * n)
    # padding reduces the full output; output_padding / output_shape add at the end
    pb = [g[0] for g in geo]
    full = [s * (d - 1) + (k - 1) * dl + 1 for d, k, s, dl in zip(in_sp, kernel, strides, dilations)]
    extra = [g[2] + g[0] - f for g, f in zip(geo, full)]  # out = full + extra - pb - pe
    pe = [max(-e, 0) for e in extra]
    opad = [max(e, 0) for e in extra]
    # Relax refuses an output_padding not below the stride (ONNX allows it up to the
    # dilation); the positions it adds get no contributions, so it can be zero padding of
    # the result instead
    pad_after = any(o >= s for o, s in zip(opad, strides))
    dl_, _, kl = _LAYOUTS[n]
    y = ctx.emit(_CONVT[n](x, w, strides=strides, padding=pb + pe, output_padding=[0] * n if pad_after else opad,
                           dilation=dilations, groups=int(a["group"]), data_layout=dl_, kernel_layout=kl))
    if pad_after:
        y = ctx.emit(R.nn.pad(y, pad_width([0, 0] + [0] * n, [0, 0] + opad), pad_mode="constant", pad_value=0.0))
    if len(ins) > 2 and ins[2] is not None:
        b = to_compute(ctx, ins[2], dt)
        y = ctx.emit(R.add(y, R.reshape(b, [1, -1] + [1] * n)))
    return from_compute(ctx, y, dt)
