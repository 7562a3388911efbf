"""Lowerings of aten's tensor factories: arange, full / new_full, zeros / ones / empty
and their new_* forms, scalar_tensor, zeros_like / ones_like / empty_like / full_like.

Semantics particular to these lowerings:
- arange with static bounds and size is a constant, computed as torch does (start +
  i * step in double, then rounded to the dtype); otherwise a Range node.
- A filled tensor of static shape with at most 1024 elements is a constant; a larger
  or symbolic one is Expand(scalar, shape), so masks and zeros do not bloat the graph.
  A fill value torch computes at run time is always expanded.
- empty and empty_like are zeros (their contents are unspecified in torch).
- *_like tensors take the node's result dtype and x's shape (Shape(x) when symbolic).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from requant.frontends.torch_aten_common import Cx, filled, filled_like, static_shape
from requant.frontends.torch_lowering import lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


@lowers("aten.arange.start_step", "aten.arange.start", "aten.arange.default")
def arange(cx: Cx, *args: Any, **kwargs: Any) -> Value:
    numbers = [a for a in args if not isinstance(a, (torch.dtype, torch.device, torch.layout))]
    if len(numbers) == 1:
        start, end, step = 0, numbers[0], 1
    else:
        start, end, step = (list(numbers) + [1])[:3]
    dt = cx.out_dtype
    out_static = static_shape(cx.out.shape)
    values = [start, end, step]
    statics = [cx.static_int(a) if not isinstance(a, float) else a for a in values]
    if out_static is not None and all(s is not None for s in statics):
        s0, _, st = statics
        n = out_static[0]
        # torch computes start + i * step in double before rounding to the dtype
        return cx.const((s0 + np.arange(n, dtype=np.float64) * st).astype(dt.np) if dt.is_float
                        else (int(s0) + np.arange(n, dtype=np.int64) * int(st)).astype(dt.np))
    return cx.emit("Range", *[cx.tensor(a, dt) for a in values])


@lowers("aten.full.default", "aten.new_full.default")
def full(cx: Cx, *args: Any, **kwargs: Any) -> Value:
    if cx.meta["torch_op"].startswith("aten.new_full"):
        args = args[1:]
    size, fill = args[0], args[1]
    return filled(cx, list(size), fill, cx.out_dtype)


@lowers("aten.zeros.default", "aten.empty.memory_format", "aten.new_zeros.default", "aten.new_empty.default",
        "aten.ones.default", "aten.new_ones.default")
def zeros_or_ones(cx: Cx, *args: Any, **kwargs: Any) -> Value:
    op = cx.meta["torch_op"]
    size = args[1] if op.startswith("aten.new_") else args[0]
    return filled(cx, list(size), 1 if "ones" in op else 0, cx.out_dtype)


@lowers("aten.scalar_tensor.default")
def scalar_tensor(cx: Cx, value: Any, **kwargs: Any) -> Value:
    if isinstance(value, fx.Node):
        return cx.tensor(value, cx.out_dtype)
    return cx.const(np.asarray(value).astype(cx.out_dtype.np))


@lowers("aten.zeros_like.default", "aten.empty_like.default")
def zeros_like(cx: Cx, x: Any, **kwargs: Any) -> Value:
    return filled_like(cx, x, 0)


@lowers("aten.ones_like.default")
def ones_like(cx: Cx, x: Any, **kwargs: Any) -> Value:
    return filled_like(cx, x, 1)


@lowers("aten.full_like.default")
def full_like(cx: Cx, x: Any, fill_value: Any, **kwargs: Any) -> Value:
    return filled_like(cx, x, fill_value)
