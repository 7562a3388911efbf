"""Lowering of aten.convolution: Conv, or ConvTranspose when `transposed`, with any
number of spatial axes.

torch's symmetric per-axis padding becomes the IR's begin and end pads (the same list
twice), the kernel shape is read from the weight, and output_padding carries over to
ConvTranspose. A padding list that does not match the number of spatial axes is
refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from requant.frontends.torch_aten_common import Cx
from requant.frontends.torch_lowering import NotLowerable, lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


@lowers("aten.convolution.default")
def convolution(cx: Cx, x: Any, weight: Any, bias: Any, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], transposed: bool, output_padding: Sequence[int], groups: int) -> Value:
    w = cx.value(weight)
    spatial = len(stride)
    attrs: dict[str, Any] = dict(
        kernel_shape=[int(k) for k in w.shape[2:]],
        strides=[int(s) for s in stride],
        pads=[int(p) for p in padding] * 2,
        dilations=[int(d) for d in dilation],
        group=int(groups),
    )
    if len(attrs["pads"]) != 2 * spatial:
        raise NotLowerable(f"convolution padding {list(padding)} for {spatial} spatial axes")
    if transposed:
        attrs["output_padding"] = [int(p) for p in output_padding]
        return cx.emit("ConvTranspose", cx.value(x), w, cx.maybe_value(bias), **attrs)
    return cx.emit("Conv", cx.value(x), w, cx.maybe_value(bias), **attrs)
