"""Resize (ONNX opset 19 semantics): nearest, linear and cubic interpolation over any set
of axes (`axes`), sized by `scales` or `sizes` (with `keep_aspect_ratio_policy`), every
coordinate transformation mode, antialiasing for linear/cubic downsampling, cubic's
`cubic_coeff_a` and `exclude_outside`, and tf_crop_and_resize's `roi` with
`extrapolation_value`.

Geometry, per resized axis of input extent `n_in` (this module's `axis_taps`):
- the output extent is floor(n_in * scale) for `scales`, the asked size for `sizes`;
  with `sizes` the scale is n_out / n_in, and under keep_aspect_ratio_policy
  not_larger / not_smaller one scale (the smallest / largest of the axes') serves every
  resized axis and the extent is round-half-up(scale * n_in);
- output index y maps to a source coordinate x by the mode: half_pixel
  (y + 0.5) / scale - 0.5; pytorch_half_pixel the same, or 0 for an output extent 1;
  half_pixel_symmetric that shifted so the output's centre meets the input's;
  align_corners y (n_in - 1) / (n_out - 1) (0 for one output); asymmetric y / scale;
  tf_crop_and_resize the roi window [start, end] stretched over the output (an x outside
  [0, n_in - 1] gives `extrapolation_value`). n_out is the output's integer extent, as
  ONNX's operator text, ONNX Runtime and torch (align_corners=True) have it; ONNX's
  reference implementation puts the fractional n_in * scale there (and -0.5 for
  pytorch_half_pixel), which differs where a scale does not give a whole extent;
- nearest picks round(x) by `nearest_mode` (ties to floor or ceil, or floor / ceil);
  linear and cubic weigh the inputs j near x by a kernel k(s (j - x)): the tent
  max(0, 1 - |t|) over 2 taps, Keys' cubic with a = cubic_coeff_a over 4 taps
  (Keys 1981, "Cubic convolution interpolation for digital image processing"). With
  antialias=1 and a downsampling scale, s = scale widens the kernel to cover 1/scale
  inputs per tap and the weights are divided by their sum (so a downscale averages, as
  PIL and torch's antialiased interpolation do); otherwise s = 1. Indices outside the
  input repeat the edge, or with exclude_outside=1 get weight 0 and the others are
  renormalised.

Interpolation is separable: the kernel resizes one axis after another, each as a gather
of `taps` inputs per output index and their weighted sum, computed in float64 and
rounded once to the output dtype (integers: round half to even, saturated), as ONNX's
reference does. Nearest copies values, exactly, in every dtype.

An empty `scales` (or `roi`) input counts as absent (ONNX 13's way to give `sizes`
alone). Output extents are inferred from constant scales / sizes; a symbolic extent
survives where its axis is not resized (scale exactly 1 or not among `axes`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from requant.ir import dtypes
from requant.ir.ops._common import (
    attr_float,
    attr_int,
    attr_ints,
    attr_str,
    check_input,
)
from requant.ir.registry import InferContext, define_op
from requant.ir.types import Dim, TensorType

__all__ = ["COORDINATE_MODES", "MODES", "NEAREST_MODES", "AxisTaps", "ResizeGeometry", "axis_taps", "resize_geometry"]

MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_POLICIES = ("stretch", "not_larger", "not_smaller")

_ATTRS = {
    "antialias": 0,
    "axes": None,
    "coordinate_transformation_mode": "half_pixel",
    "cubic_coeff_a": -0.75,
    "exclude_outside": 0,
    "extrapolation_value": 0.0,
    "keep_aspect_ratio_policy": "stretch",
    "mode": "nearest",
    "nearest_mode": "round_prefer_floor",
}


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class ResizeGeometry:
    """What a Resize does to each axis: the output shape, and per resized axis its
    scale and roi window (start, end) in normalised coordinates."""

    out_shape: tuple[int, ...]
    axes: tuple[int, ...]
    scales: tuple[float, ...]
    rois: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class AxisTaps:
    """One axis's interpolation: output index i reads input indices `index[i]` (clamped
    into the input) with `weight[i]` (None for nearest: one tap, weight 1); outputs
    where `extrapolate` is set are `extrapolation_value` instead."""

    index: np.ndarray  # (n_out, taps) int64
    weight: np.ndarray | None  # (n_out, taps) float64
    extrapolate: np.ndarray | None  # (n_out,) bool


def _norm_axes(axes: list[int] | None, rank: int) -> list[int]:
    if axes is None:
        return list(range(rank))
    out = [a + rank if a < 0 else a for a in axes]
    if any(not 0 <= a < rank for a in out) or len(set(out)) != len(out):
        raise ValueError(f"axes {axes} must be distinct axes of a rank-{rank} input")
    return out


def resize_geometry(in_shape: tuple[int, ...], attrs: dict, scales: np.ndarray | None, sizes: np.ndarray | None,
                    roi: np.ndarray | None) -> ResizeGeometry:
    """The output shape and per-axis scale / roi of a Resize on static `in_shape`, from
    its attributes and its scales / sizes / roi values (None or empty: absent)."""
    rank = len(in_shape)
    axes = _norm_axes(attrs.get("axes"), rank)
    scales = None if scales is None or np.asarray(scales).size == 0 else [float(s) for s in np.asarray(scales).ravel()]
    sizes = None if sizes is None or np.asarray(sizes).size == 0 else [int(s) for s in np.asarray(sizes).ravel()]
    if (scales is None) == (sizes is None):
        raise ValueError("give exactly one of scales and sizes (an empty tensor counts as absent)")
    given = scales if scales is not None else sizes
    if len(given) != len(axes):
        raise ValueError(f"{'scales' if scales is not None else 'sizes'} has {len(given)} values for {len(axes)} axes")
    roi_vals = None if roi is None or np.asarray(roi).size == 0 else [float(r) for r in np.asarray(roi).ravel()]
    if roi_vals is not None and len(roi_vals) not in (2 * len(axes), 2 * rank):
        raise ValueError(f"roi has {len(roi_vals)} values, expected {2 * len(axes)}")
    if roi_vals is not None and len(roi_vals) == 2 * rank and len(axes) != rank:
        roi_vals = [roi_vals[a] for a in axes] + [roi_vals[rank + a] for a in axes]
    rois = [(0.0, 1.0) if roi_vals is None else (roi_vals[i], roi_vals[len(axes) + i]) for i in range(len(axes))]
    out = list(in_shape)
    if scales is not None:
        if any(not s > 0 for s in scales):
            raise ValueError(f"scales {scales} must be positive")
        for a, s in zip(axes, scales):
            out[a] = math.floor(in_shape[a] * s)
        axis_scales = scales
    else:
        if any(s < 0 for s in sizes):
            raise ValueError(f"sizes {sizes} must not be negative")
        if any(in_shape[a] == 0 for a in axes):
            raise ValueError("cannot resize an axis of extent 0 to a size")
        ratios = [s / in_shape[a] for a, s in zip(axes, sizes)]
        policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            axis_scales = ratios
            for a, s in zip(axes, sizes):
                out[a] = s
        else:
            one = min(ratios) if policy == "not_larger" else max(ratios)
            axis_scales = [one] * len(axes)
            for a in axes:
                out[a] = int(one * in_shape[a] + 0.5)  # round half up, as ONNX states
    return ResizeGeometry(tuple(out), tuple(axes), tuple(axis_scales), tuple(rois))


def _source_coordinates(mode: str, n_in: int, n_out: int, scale: float, roi: tuple[float, float]) -> np.ndarray:
    y = np.arange(n_out, dtype=np.float64)
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return np.zeros(n_out) if n_out == 1 else (y + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / (scale * n_in))
        return offset + (y + 0.5) / scale - 0.5
    if mode == "align_corners":
        return np.zeros(n_out) if n_out == 1 else y * (n_in - 1) / (n_out - 1)
    if mode == "asymmetric":
        return y / scale
    # tf_crop_and_resize
    start, end = roi
    if n_out == 1:
        return np.full(n_out, (start + end) / 2 * (n_in - 1))
    return start * (n_in - 1) + y * (end - start) * (n_in - 1) / (n_out - 1)


def _nearest_index(x: np.ndarray, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":  # x.5 goes down
        return np.ceil(x - 0.5)
    if nearest_mode == "round_prefer_ceil":
        return np.floor(x + 0.5)
    return np.floor(x) if nearest_mode == "floor" else np.ceil(x)


def _keys_cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    inner = ((a + 2) * t - (a + 3)) * t * t + 1
    outer = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, inner, np.where(t < 2, outer, 0.0))


def axis_taps(n_in: int, n_out: int, scale: float, roi: tuple[float, float], attrs: dict) -> AxisTaps:
    """The gather indices and weights that resize one axis from `n_in` to `n_out`."""
    coord_mode = attrs["coordinate_transformation_mode"]
    x = _source_coordinates(coord_mode, n_in, n_out, scale, roi)
    extrapolate = ((x < 0) | (x > n_in - 1)) if coord_mode == "tf_crop_and_resize" else None
    mode = attrs["mode"]
    if mode == "nearest":
        index = _nearest_index(x, attrs["nearest_mode"]).astype(np.int64)
        return AxisTaps(np.clip(index, 0, max(n_in - 1, 0))[:, None], None, extrapolate)
    radius = 1 if mode == "linear" else 2
    s = min(scale, 1.0) if attrs["antialias"] else 1.0
    first = math.floor(-radius / s) + 1  # the leftmost tap, relative to floor(x)
    taps = 2 - 2 * first
    whole = x == np.floor(x)
    # the taps nearest x, ties to the smaller index (an integer x sits at the right of
    # its left neighbour's span)
    base = np.where(whole, x - 1, np.floor(x)).astype(np.int64) + first
    index = base[:, None] + np.arange(taps)[None, :]
    t = s * (index - x[:, None])
    weight = np.maximum(0.0, 1.0 - np.abs(t)) if mode == "linear" else _keys_cubic(t, float(attrs["cubic_coeff_a"]))
    if attrs["antialias"]:
        weight = weight / weight.sum(axis=1, keepdims=True)
    if attrs["exclude_outside"]:
        weight = np.where((index < 0) | (index >= n_in), 0.0, weight)
        total = weight.sum(axis=1, keepdims=True)
        weight = weight / np.where(total == 0, 1.0, total)
    return AxisTaps(np.clip(index, 0, max(n_in - 1, 0)), weight, extrapolate)


# ----------------------------------------------------------------------------- type rule


def _check_attrs(ctx: InferContext) -> None:
    mode = attr_str(ctx, "mode", MODES)
    attr_str(ctx, "coordinate_transformation_mode", COORDINATE_MODES)
    attr_str(ctx, "nearest_mode", NEAREST_MODES)
    attr_str(ctx, "keep_aspect_ratio_policy", _POLICIES)
    antialias = attr_int(ctx, "antialias", (0, 1))
    attr_int(ctx, "exclude_outside", (0, 1))
    attr_float(ctx, "cubic_coeff_a")
    attr_float(ctx, "extrapolation_value")
    if antialias and mode == "nearest":
        raise ctx.fail("antialias applies to linear and cubic interpolation, not nearest")


def _present(ctx: InferContext, i: int) -> TensorType | None:
    """Input `i` when given and not statically empty (an empty scales/roi is absent)."""
    t = ctx.input(i)
    if t is None or (t.shape is not None and t.shape == (0,)):
        return None
    return t


def _infer_resize(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "numeric")
    _check_attrs(ctx)
    roi, scales, sizes = _present(ctx, 1), _present(ctx, 2), _present(ctx, 3)
    for i, t, cls in ((1, roi, "float"), (2, scales, "float"), (3, sizes, "index")):
        if t is not None:
            check_input(ctx, i, cls)
            if t.rank is not None and t.rank != 1:
                raise ctx.fail(f"input {ctx.schema.inputs[i].name} must be 1-D, got {t}")
    if sizes is not None and sizes.dtype != dtypes.int64:
        raise ctx.fail(f"sizes must be i64, got {sizes.dtype}")
    if scales is not None and sizes is not None:
        raise ctx.fail("give scales or sizes, not both")
    if scales is None and sizes is None:
        raise ctx.fail("give scales or sizes (an empty scales tensor counts as absent)")
    if x.rank is None:
        return [TensorType(None, x.dtype)]
    try:
        axes = _norm_axes(attr_ints(ctx, "axes"), x.rank)
    except ValueError as exc:
        raise ctx.fail(str(exc)) from None
    given = scales if scales is not None else sizes
    n = given.shape[0] if given.shape is not None else None
    if isinstance(n, int) and n != len(axes):
        raise ctx.fail(f"{'scales' if scales is not None else 'sizes'} has {n} values for {len(axes)} axes")
    values = {i: ctx.const(i) for i in (1, 2, 3)}
    known = (scales is None or values[2] is not None) and (sizes is None or values[3] is not None)
    in_shape = x.shape
    if known and all(isinstance(d, int) for d in in_shape):
        try:
            geo = resize_geometry(tuple(in_shape), dict(ctx.attrs), values[2] if scales is not None else None,
                                  values[3] if sizes is not None else None, values[1] if roi is not None else None)
        except ValueError as exc:
            raise ctx.fail(str(exc)) from None
        return [TensorType(geo.out_shape, x.dtype)]
    return [TensorType(tuple(_symbolic_extent(ctx, in_shape, a, axes, values, scales is not None)
                             for a in range(x.rank)), x.dtype)]


def _symbolic_extent(ctx: InferContext, in_shape: tuple, axis: int, axes: list[int], values: dict,
                     by_scales: bool) -> Dim:
    """An output extent where the input's is unknown or symbolic."""
    d = in_shape[axis]
    if axis not in axes:
        return d
    k = axes.index(axis)
    if by_scales and values[2] is not None:
        s = float(np.asarray(values[2]).ravel()[k])
        cropped = ctx.attrs["coordinate_transformation_mode"] == "tf_crop_and_resize"
        if s == 1.0 and not cropped:
            return d
        return math.floor(d * s) if isinstance(d, int) else None
    if not by_scales and values[3] is not None and ctx.attrs["keep_aspect_ratio_policy"] == "stretch":
        return int(np.asarray(values[3]).ravel()[k])
    return None


# ----------------------------------------------------------------------------- kernel


def _resize_axis(data: np.ndarray, axis: int, taps: AxisTaps, extrapolation_value: float) -> np.ndarray:
    gathered = np.take(data, taps.index, axis=axis)  # the axis becomes (n_out, taps)
    if taps.weight is None:
        out = np.squeeze(gathered, axis=axis + 1)
    else:
        w = taps.weight.reshape((1,) * axis + taps.weight.shape + (1,) * (data.ndim - axis - 1))
        out = (gathered * w).sum(axis=axis + 1)
    if taps.extrapolate is not None and taps.extrapolate.any():
        mask = taps.extrapolate.reshape((1,) * axis + (-1,) + (1,) * (data.ndim - axis - 1))
        out = np.where(mask, np.asarray(extrapolation_value, out.dtype), out)
    return out


def _to_dtype(y: np.ndarray, dt: np.dtype) -> np.ndarray:
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return np.clip(np.round(y), info.min, info.max).astype(dt)
    return y.astype(dt)


def _resize(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    roi, scales, sizes = (ins[i] if i < len(ins) else None for i in (1, 2, 3))
    geo = resize_geometry(x.shape, attrs, scales, sizes, roi)
    nearest = attrs["mode"] == "nearest"
    y = x if nearest else x.astype(np.float64)
    for axis, scale, window in zip(geo.axes, geo.scales, geo.rois):
        n_in, n_out = y.shape[axis], geo.out_shape[axis]
        cropped = attrs["coordinate_transformation_mode"] == "tf_crop_and_resize" and window != (0.0, 1.0)
        if n_out == n_in and scale == 1.0 and not cropped:
            continue  # every mode maps this axis onto itself
        if n_out == 0 or n_in == 0:
            y = np.zeros(y.shape[:axis] + (n_out,) + y.shape[axis + 1:], y.dtype)
            continue
        fill = attrs["extrapolation_value"]
        if nearest and np.issubdtype(y.dtype, np.integer):
            fill = _to_dtype(np.asarray(fill, np.float64), y.dtype)
        y = _resize_axis(y, axis, axis_taps(n_in, n_out, scale, window, attrs), fill)
    return y if nearest and y.dtype == x.dtype else _to_dtype(np.asarray(y), x.dtype)


define_op("Resize", inputs=("X", "roi?", "scales?", "sizes?"), attrs=dict(_ATTRS), infer=_infer_resize,
          kernel=_resize)
