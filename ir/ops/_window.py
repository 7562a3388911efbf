"""Sliding-window machinery shared by Conv and the pooling ops: reading the
kernel_shape/strides/dilations/pads/auto_pad attributes, the output extents, and the
numpy window view of a padded input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from requant.ir.ops._common import attr_int, attr_ints, attr_str
from requant.ir.registry import InferContext
from requant.ir.shapes import resolve_pads, window_out_dim
from requant.ir.types import Dim

__all__ = ["WindowAttrs", "window_attrs", "out_dims", "runtime_geometry", "windows"]

AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


@dataclass(frozen=True)
class WindowAttrs:
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[int] | None
    auto_pad: str
    ceil_mode: bool


def window_attrs(ctx: InferContext, n: int, kernel: list[int] | None) -> WindowAttrs | None:
    """Validated window attributes for `n` spatial axes (None when the kernel extent is
    not known statically)."""
    auto_pad = attr_str(ctx, "auto_pad", AUTO_PADS)
    strides = attr_ints(ctx, "strides", n, lo=1) or [1] * n
    dilations = attr_ints(ctx, "dilations", n, lo=1) if "dilations" in ctx.attrs else None
    dilations = dilations or [1] * n
    pads = attr_ints(ctx, "pads", 2 * n, lo=0)
    if pads is not None and auto_pad != "NOTSET":
        if any(pads):
            raise ctx.fail(f"pads {pads} given with auto_pad={auto_pad}")
    ceil_mode = bool(attr_int(ctx, "ceil_mode", (0, 1))) if "ceil_mode" in ctx.attrs else False
    if kernel is None:
        return None
    return WindowAttrs(kernel, strides, dilations, pads, auto_pad, ceil_mode)


def out_dims(ctx: InferContext, spatial: tuple[Dim, ...], w: WindowAttrs) -> tuple[Dim, ...]:
    pads = resolve_pads(spatial, w.kernel, w.strides, w.dilations, w.pads, w.auto_pad, ctx.schema.name)
    out = []
    for i, d in enumerate(spatial):
        try:
            out.append(window_out_dim(d, w.kernel[i], w.strides[i], w.dilations[i], pads[i], w.auto_pad, w.ceil_mode))
        except Exception as exc:
            raise ctx.fail(str(exc)) from None
    return tuple(out)


def runtime_geometry(spatial: tuple[int, ...], attrs: dict, kernel: list[int]):
    """(strides, dilations, [(pad_begin, pad_end)], output extents) at run time."""
    n = len(spatial)
    strides = list(attrs.get("strides") or [1] * n)
    dilations = list(attrs.get("dilations") or [1] * n)
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    pads = resolve_pads(spatial, kernel, strides, dilations, attrs.get("pads"), attrs["auto_pad"])
    outs = [
        window_out_dim(d, k, s, dl, p, attrs["auto_pad"], ceil_mode)
        for d, k, s, dl, p in zip(spatial, kernel, strides, dilations, pads)
    ]
    return strides, dilations, pads, outs


def windows(xp: np.ndarray, kernel, strides, dilations, outs) -> np.ndarray:
    """View of shape (N, C, *outs, *kernel) over the padded input `xp` (N, C, *S)."""
    n = len(kernel)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    v = np.lib.stride_tricks.sliding_window_view(xp, spans, axis=tuple(range(2, 2 + n)))
    index = (slice(None), slice(None))
    index += tuple(slice(0, (o - 1) * s + 1, s) if o > 0 else slice(0, 0) for o, s in zip(outs, strides))
    index += tuple(slice(None, None, d) for d in dilations)
    return v[index]
