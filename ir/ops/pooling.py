"""Pooling (ONNX semantics, NCHW, any number of spatial axes): MaxPool (opset 12+:
dilations, ceil_mode, the optional Indices output), AveragePool (opset 19: dilations,
count_include_pad, ceil_mode), GlobalAveragePool, GlobalMaxPool.

MaxPool takes floats and i8/u8 (ONNX); the others floats only. With ceil_mode=1 a
window that would start in the end padding is dropped (ONNX, PyTorch). AveragePool's
divisor counts the input elements in the window (count_include_pad=0) or those plus
the explicit padding, never the extra cells a ceil_mode window hangs over the edge.
MaxPool's Indices are flat indices into X (row-major over N, C and the spatial axes;
storage_order=1 makes the spatial part column-major); ties pick the first element.
Averages compute in float32 (float64 for f64) and round once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.ops._common import attr_int, attr_ints, check_input, compute_dtype
from requant.ir.ops._window import out_dims, runtime_geometry, window_attrs, windows
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.types import TensorType

__all__: list[str] = []

_POOL_ATTRS = {
    "auto_pad": "NOTSET",
    "ceil_mode": 0,
    "dilations": None,
    "kernel_shape": REQUIRED,
    "pads": None,
    "strides": None,
}


def _infer_pool(ctx: InferContext, cls: str, two_outputs: bool = False) -> list[TensorType]:
    x = check_input(ctx, 0, cls)
    if x.rank is not None and x.rank < 3:
        raise ctx.fail(f"X must be (N, C, spatial...) with rank >= 3, got {x}")
    ks = attr_ints(ctx, "kernel_shape", lo=1)
    if x.rank is not None and len(ks) != x.rank - 2:
        raise ctx.fail(f"kernel_shape {ks} has {len(ks)} values, X {x} has {x.rank - 2} spatial axes")
    n = len(ks)
    wa = window_attrs(ctx, n, ks)
    if x.shape is None:
        shape = None
    else:
        shape = tuple(x.shape[:2]) + out_dims(ctx, tuple(x.shape[2:]), wa)
    out = [TensorType(shape, x.dtype)]
    if two_outputs:
        n_out = 1 if ctx.num_outputs is None else ctx.num_outputs
        if n_out not in (1, 2):
            raise ctx.fail(f"has 1 or 2 outputs, {n_out} asked for")
        if n_out == 2:
            out.append(TensorType(shape, dtypes.int64))
    return out


def _maxpool_dtype_ok(ctx: InferContext) -> str:
    t = ctx.input(0)
    return "int" if t is not None and t.dtype in (dtypes.int8, dtypes.uint8) else "float"


def _infer_maxpool(ctx: InferContext) -> list[TensorType]:
    attr_int(ctx, "storage_order", (0, 1))
    return _infer_pool(ctx, _maxpool_dtype_ok(ctx), two_outputs=True)


def _padded_geometry(x: np.ndarray, attrs: dict):
    kernel = list(attrs["kernel_shape"])
    strides, dilations, pads, out = runtime_geometry(x.shape[2:], attrs, kernel)
    # extra cells at the end so ceil_mode windows stay inside the padded array
    width = []
    for d, k, s, dl, (pb, pe), o in zip(x.shape[2:], kernel, strides, dilations, pads, out):
        need = (o - 1) * s + (k - 1) * dl + 1 if o > 0 else 0
        extra = max(0, need - (d + pb + pe))
        width.append((pb, pe, extra))
    return kernel, strides, dilations, width, out


def _pad(x: np.ndarray, width, value) -> np.ndarray:
    return np.pad(x, [(0, 0), (0, 0)] + [(pb, pe + ex) for pb, pe, ex in width], constant_values=value)


def _maxpool(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    kernel, strides, dilations, width, out = _padded_geometry(x, attrs)
    xc = x.astype(compute_dtype(x)) if x.dtype.kind == "V" or x.dtype == np.float16 else x
    low = -np.inf if np.issubdtype(xc.dtype, np.floating) else np.iinfo(xc.dtype).min
    win = windows(_pad(xc, width, low), kernel, strides, dilations, out)
    n = len(kernel)
    flat = win.reshape(win.shape[: 2 + n] + (-1,))
    y = flat.max(axis=-1).astype(x.dtype)
    if len(outs) == 1:
        return y
    arg = flat.argmax(axis=-1)
    k_coords = np.unravel_index(arg, kernel)
    spatial = x.shape[2:]
    idx = np.zeros(arg.shape, dtype=np.int64)
    mult = 1
    order = range(n) if attrs["storage_order"] else reversed(range(n))
    for i in order:
        o_coord = np.arange(out[i]).reshape((1, 1) + tuple(out[i] if j == i else 1 for j in range(n)))
        coord = o_coord * strides[i] - width[i][0] + k_coords[i] * dilations[i]
        idx += coord * mult
        mult *= spatial[i]
    N, C = x.shape[:2]
    base = (np.arange(N).reshape(N, 1) * C + np.arange(C).reshape(1, C)) * mult
    return y, idx + base.reshape((N, C) + (1,) * n)


define_op(
    "MaxPool",
    inputs=("X",),
    outputs=("Y", "Indices?"),
    attrs=dict(_POOL_ATTRS, storage_order=0),
    infer=_infer_maxpool,
    kernel=_maxpool,
)


def _infer_avgpool(ctx: InferContext) -> list[TensorType]:
    attr_int(ctx, "count_include_pad", (0, 1))
    return _infer_pool(ctx, "float")


def _avgpool(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    ct = compute_dtype(x)
    kernel, strides, dilations, width, out = _padded_geometry(x, attrs)
    win = windows(_pad(x.astype(ct), width, 0), kernel, strides, dilations, out)
    n = len(kernel)
    axes = tuple(range(2 + n, 2 + 2 * n))
    total = win.sum(axis=axes)
    ones = np.ones((1, 1) + x.shape[2:], dtype=ct)
    if attrs["count_include_pad"]:
        mask = np.pad(ones, [(0, 0), (0, 0)] + [(pb, pe) for pb, pe, _ in width], constant_values=1)
        mask = np.pad(mask, [(0, 0), (0, 0)] + [(0, ex) for _, _, ex in width], constant_values=0)
    else:
        mask = _pad(ones, width, 0)
    count = windows(mask, kernel, strides, dilations, out).sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(x.dtype)


define_op(
    "AveragePool",
    inputs=("X",),
    attrs=dict(_POOL_ATTRS, count_include_pad=0),
    infer=_infer_avgpool,
    kernel=_avgpool,
)


def _infer_global(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "float")
    if x.shape is None:
        return [x]
    if x.rank < 3:
        raise ctx.fail(f"X must be (N, C, spatial...) with rank >= 3, got {x}")
    return [x.with_shape(tuple(x.shape[:2]) + (1,) * (x.rank - 2))]


def _global(fn):
    def kernel(ins: list, attrs: dict, outs: list) -> Any:
        x = ins[0]
        axes = tuple(range(2, x.ndim))
        return fn(x.astype(compute_dtype(x)), axis=axes, keepdims=True).astype(x.dtype)

    return kernel


define_op("GlobalAveragePool", inputs=("X",), infer=_infer_global, kernel=_global(np.mean))
define_op("GlobalMaxPool", inputs=("X",), infer=_infer_global, kernel=_global(np.max))
