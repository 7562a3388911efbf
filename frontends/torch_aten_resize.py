"""Lowerings of aten's interpolation (what `F.interpolate` / `nn.Upsample` export to) to
Resize over the spatial axes (attribute `axes`, so the batch and channel dims stay as
they are, symbolic or not):

| aten op | Resize mode | coordinate transformation |
|---|---|---|
| upsample_nearest{1,2,3}d | nearest, nearest_mode floor | asymmetric: src = floor(dst / scale) |
| _upsample_nearest_exact{1,2,3}d | nearest, nearest_mode round_prefer_ceil | half_pixel: src = floor((dst + 0.5) / scale) |
| upsample_linear1d, upsample_bilinear2d, upsample_trilinear3d | linear | half_pixel, or align_corners |
| upsample_bicubic2d | cubic, cubic_coeff_a -0.75 | half_pixel, or align_corners |
| _upsample_bilinear2d_aa | linear, antialias, exclude_outside | half_pixel |
| _upsample_bicubic2d_aa | cubic, antialias, exclude_outside, cubic_coeff_a -0.5 | half_pixel |

torch maps an output index through 1 / scale_factor when the call gave scale factors
(and did not ask to recompute them), else through in / out: the lowering passes the
scale factors as Resize's `scales` in the first case and the output sizes as `sizes` in
the second, which is what Resize computes with. torch's linear interpolation clamps a
negative source coordinate to 0 where Resize repeats the edge input: the same value.
Its antialiased kernels truncate the window at the input's edges and renormalise
(exclude_outside=1) and use a = -0.5 for the cubic (as PIL does). Antialiasing with
align_corners=True is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from requant.frontends.torch_aten_common import Cx
from requant.frontends.torch_lowering import NotLowerable, lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


def _resize(cx: Cx, x: Any, scales: Sequence[float | None] | None, **attrs: Any) -> Value:
    """Resize over the spatial axes of `x` to the result's extents: by `scales` when
    torch had every scale factor, else by the output sizes."""
    v = cx.value(x)
    rank = v.type.rank
    spatial = list(range(2, rank))
    given = list(scales) if scales is not None else []
    if len(given) == len(spatial) and all(s is not None for s in given):
        by = dict(scales=cx.const(np.array([float(s) for s in given], np.float32)))
    else:
        by = dict(sizes=cx.int_vector(list(cx.out.shape)[2:]))
    return cx.emit("Resize", v, None, by.get("scales"), by.get("sizes"), axes=spatial, **attrs)


def _default_scales(rank_spatial: int, args: Sequence[Any]) -> list[float | None]:
    """The trailing scales_d / scales_h / scales_w arguments of the .default overloads."""
    out = list(args)[:rank_spatial]
    return out + [None] * (rank_spatial - len(out))


@lowers("aten.upsample_nearest1d.vec", "aten.upsample_nearest2d.vec", "aten.upsample_nearest3d.vec")
def upsample_nearest_vec(cx: Cx, x: Any, output_size: Any, scale_factors: Any) -> Value:
    return _resize(cx, x, scale_factors, mode="nearest", coordinate_transformation_mode="asymmetric",
                   nearest_mode="floor")


@lowers("aten.upsample_nearest1d.default", "aten.upsample_nearest2d.default", "aten.upsample_nearest3d.default")
def upsample_nearest(cx: Cx, x: Any, output_size: Any, *scales: Any) -> Value:
    return _resize(cx, x, _default_scales(cx.rank(x) - 2, scales), mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")


@lowers("aten._upsample_nearest_exact1d.vec", "aten._upsample_nearest_exact2d.vec",
        "aten._upsample_nearest_exact3d.vec")
def upsample_nearest_exact_vec(cx: Cx, x: Any, output_size: Any, scale_factors: Any) -> Value:
    return _resize(cx, x, scale_factors, mode="nearest", coordinate_transformation_mode="half_pixel",
                   nearest_mode="round_prefer_ceil")


@lowers("aten._upsample_nearest_exact1d.default", "aten._upsample_nearest_exact2d.default",
        "aten._upsample_nearest_exact3d.default")
def upsample_nearest_exact(cx: Cx, x: Any, output_size: Any, *scales: Any) -> Value:
    return _resize(cx, x, _default_scales(cx.rank(x) - 2, scales), mode="nearest",
                   coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")


def _interpolating(mode: str, align_corners: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = dict(mode=mode, coordinate_transformation_mode="align_corners" if align_corners
                                 else "half_pixel")
    if mode == "cubic":
        attrs["cubic_coeff_a"] = -0.75
    return attrs


@lowers("aten.upsample_linear1d.vec", "aten.upsample_bilinear2d.vec", "aten.upsample_trilinear3d.vec")
def upsample_linear_vec(cx: Cx, x: Any, output_size: Any, align_corners: bool, scale_factors: Any) -> Value:
    return _resize(cx, x, scale_factors, **_interpolating("linear", bool(align_corners)))


@lowers("aten.upsample_linear1d.default", "aten.upsample_bilinear2d.default", "aten.upsample_trilinear3d.default")
def upsample_linear(cx: Cx, x: Any, output_size: Any, align_corners: bool, *scales: Any) -> Value:
    return _resize(cx, x, _default_scales(cx.rank(x) - 2, scales), **_interpolating("linear", bool(align_corners)))


@lowers("aten.upsample_bicubic2d.vec")
def upsample_bicubic_vec(cx: Cx, x: Any, output_size: Any, align_corners: bool, scale_factors: Any) -> Value:
    return _resize(cx, x, scale_factors, **_interpolating("cubic", bool(align_corners)))


@lowers("aten.upsample_bicubic2d.default")
def upsample_bicubic(cx: Cx, x: Any, output_size: Any, align_corners: bool, *scales: Any) -> Value:
    return _resize(cx, x, _default_scales(2, scales), **_interpolating("cubic", bool(align_corners)))


def _antialiased(cx: Cx, x: Any, scales: Any, align_corners: bool) -> Value:
    if align_corners:
        raise NotLowerable("antialiased interpolation with align_corners=True")
    cubic = "bicubic" in cx.meta["torch_op"]
    return _resize(cx, x, scales, mode="cubic" if cubic else "linear", coordinate_transformation_mode="half_pixel",
                   antialias=1, exclude_outside=1, **({"cubic_coeff_a": -0.5} if cubic else {}))


@lowers("aten._upsample_bilinear2d_aa.vec", "aten._upsample_bicubic2d_aa.vec")
def upsample_aa_vec(cx: Cx, x: Any, output_size: Any, align_corners: bool, scale_factors: Any) -> Value:
    return _antialiased(cx, x, scale_factors, bool(align_corners))


@lowers("aten._upsample_bilinear2d_aa.default", "aten._upsample_bicubic2d_aa.default")
def upsample_aa(cx: Cx, x: Any, output_size: Any, align_corners: bool, *scales: Any) -> Value:
    return _antialiased(cx, x, _default_scales(2, scales), bool(align_corners))
