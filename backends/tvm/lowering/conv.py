"""Lowerings of Conv and ConvTranspose: 1-D, 2-D and 3-D windows in NC... layouts, with
groups, dilations, strides, pads / auto_pad and a bias. f16/bf16 compute in float32 and
round once.

ConvTranspose needs static spatial dims. Its geometry comes from the registry's
`conv_transpose_geometry`: pads reduce Relax's full output, output_padding and
output_shape extend it at the end; an output_padding Relax refuses (not below the
stride; ONNX allows it up to the dilation) becomes zero padding of the result, as those
positions get no contributions.
"""

from __future__ import annotations

import logging
from typing import Any

from tvm import relax

from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
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


@LOWERINGS.lowers("Conv")
@requires(static_spatial)
def _conv(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
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
