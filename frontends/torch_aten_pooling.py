"""Lowerings of aten's pooling: max_pool{1,2,3}d(_with_indices) -> MaxPool,
avg_pool{1,2,3}d -> AveragePool, adaptive_avg_pool{1,2,3}d -> GlobalAveragePool or
AveragePool, adaptive_max_pool{1,2}d -> GlobalMaxPool.

Semantics particular to these lowerings:
- torch's one-number kernel / stride / padding / dilation lists repeat over the spatial
  axes; an empty stride means the kernel size (torch's default); symmetric padding
  becomes equal begin and end pads.
- The indices output (return_indices=True) is refused when something reads it.
- avg_pool with divisor_override is refused.
- adaptive average pooling to 1 per axis is GlobalAveragePool; to another size it is an
  AveragePool whose kernel and stride are input // output, only where the output size
  divides the static input size. Adaptive max pooling only to 1 per axis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from requant.frontends.torch_aten_common import Cx, static_shape
from requant.frontends.torch_lowering import NotLowerable, lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


def _pool_attrs(kernel: Sequence[int], stride: Sequence[int], padding: Any, spatial: int,
                ceil_mode: bool) -> dict[str, Any]:
    kernel = list(kernel) * (spatial // len(kernel))
    stride = list(stride) * (spatial // len(stride)) if stride else kernel
    pads = list(padding) if isinstance(padding, (list, tuple)) else [padding]
    pads = pads * (spatial // len(pads))
    return dict(kernel_shape=[int(k) for k in kernel], strides=[int(s) for s in stride],
                pads=[int(p) for p in pads] * 2, ceil_mode=int(bool(ceil_mode)))


@lowers("aten.max_pool1d_with_indices.default", "aten.max_pool2d_with_indices.default",
        "aten.max_pool3d_with_indices.default", "aten.max_pool2d.default")
def max_pool(cx: Cx, x: Any, kernel_size: Sequence[int], stride: Sequence[int] = (), padding: Any = 0,
             dilation: Any = 1, ceil_mode: bool = False) -> Any:
    spatial = cx.rank(x) - 2
    attrs = _pool_attrs(kernel_size, stride, padding, spatial, ceil_mode)
    dil = list(dilation) if isinstance(dilation, (list, tuple)) else [dilation]
    attrs["dilations"] = [int(d) for d in dil * (spatial // len(dil))]
    y = cx.emit("MaxPool", cx.value(x), **attrs)
    if not isinstance(cx.out, (list, tuple)):
        return y
    if 1 in cx.used_outputs():
        raise NotLowerable("max pooling indices (return_indices=True)")
    return (y, None)


@lowers("aten.avg_pool1d.default", "aten.avg_pool2d.default", "aten.avg_pool3d.default")
def avg_pool(cx: Cx, x: Any, kernel_size: Sequence[int], stride: Sequence[int] = (), padding: Any = 0,
             ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None) -> Value:
    if divisor_override is not None:
        raise NotLowerable("avg_pool with divisor_override")
    attrs = _pool_attrs(kernel_size, stride, padding, cx.rank(x) - 2, ceil_mode)
    return cx.emit("AveragePool", cx.value(x), count_include_pad=int(bool(count_include_pad)), **attrs)


@lowers("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default",
        "aten._adaptive_avg_pool3d.default", "aten.adaptive_avg_pool1d.default")
def adaptive_avg_pool(cx: Cx, x: Any, output_size: Sequence[int]) -> Value:
    out = [int(s) for s in output_size]
    if all(s == 1 for s in out):
        return cx.emit("GlobalAveragePool", cx.value(x))
    spatial = static_shape(cx.shape(x)[2:])
    if spatial is None or any(i % o for i, o in zip(spatial, out)):
        raise NotLowerable(f"adaptive average pooling to {out} from a size it does not divide")
    kernel = [i // o for i, o in zip(spatial, out)]
    return cx.emit("AveragePool", cx.value(x), kernel_shape=kernel, strides=kernel)


@lowers("aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool1d.default")
def adaptive_max_pool(cx: Cx, x: Any, output_size: Sequence[int]) -> tuple:
    if any(int(s) != 1 for s in output_size):
        raise NotLowerable(f"adaptive max pooling to {list(output_size)} (only 1 per axis)")
    if 1 in cx.used_outputs():
        raise NotLowerable("adaptive max pooling indices")
    return (cx.emit("GlobalMaxPool", cx.value(x)), None)
