"""Convolutions (ONNX semantics, any number of spatial axes, NCHW layout): Conv and
ConvTranspose, with group, dilations, strides, pads and auto_pad (NOTSET, VALID,
SAME_UPPER, SAME_LOWER).

Floats only (integer convolution is requant's own op). The reference kernels compute in
float32 (float64 for f64) and round once. A symbolic spatial extent stays symbolic when
the output extent equals the input one (stride 1 with SAME padding or with
pads summing to dilation*(kernel-1)); the batch dim always carries over.

ConvTranspose's `output_shape` may be larger than the full transposed convolution: the
total padding is then negative and the output extends at the end with positions no input
reaches (zeros, plus the bias), as output_padding does; ONNX Runtime does so, and ONNX's
reference too without auto_pad (with SAME_* it splits the extension between both ends).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir.ops._common import attr_int, attr_ints, check_input, compute_dtype, opt, same_dtype
from requant.ir.ops._window import out_dims, runtime_geometry, window_attrs, windows
from requant.ir.registry import InferContext, define_op
from requant.ir.shapes import unify_dims
from requant.ir.types import Dim, TensorType

__all__ = ["conv_transpose_geometry"]

_CONV_ATTRS = {
    "auto_pad": "NOTSET",
    "dilations": None,
    "group": 1,
    "kernel_shape": None,
    "pads": None,
    "strides": None,
}


def _kernel_shape(ctx: InferContext, w_shape, n: int) -> list[int] | None:
    ks = attr_ints(ctx, "kernel_shape", n, lo=1)
    wk = None if w_shape is None else list(w_shape[2:])
    if ks is not None and wk is not None:
        for a, b in zip(ks, wk):
            if isinstance(b, int) and a != b:
                raise ctx.fail(f"kernel_shape {ks} does not match the weight's spatial dims {wk}")
    if ks is None and wk is not None and all(isinstance(d, int) for d in wk):
        ks = wk
    return ks


def _conv_operands(ctx: InferContext) -> tuple[TensorType, TensorType, Any, int, int | None]:
    """X, W, their dtype, `group` and the rank (None when neither rank is known), checked
    as Conv and ConvTranspose both need them."""
    x = check_input(ctx, 0, "float")
    w = check_input(ctx, 1, "float")
    dt = same_dtype(ctx, [0, 1, 2])
    group = attr_int(ctx, "group", lo=1)
    rank = x.rank if x.rank is not None else w.rank
    if rank is not None and rank < 3:
        raise ctx.fail(f"X must be (N, C, spatial...) with rank >= 3, got {x}")
    return x, w, dt, group, rank


def _infer_conv(ctx: InferContext) -> list[TensorType]:
    x, w, dt, group, rank = _conv_operands(ctx)
    if rank is None:
        return [TensorType(None, dt)]
    for t, name in ((x, "X"), (w, "W")):
        if t.rank is not None and t.rank != rank:
            raise ctx.fail(f"X {x} and W {w} must have the same rank")
    n = rank - 2
    ks = _kernel_shape(ctx, w.shape, n)
    wa = window_attrs(ctx, n, ks)
    xs = x.shape if x.shape is not None else (None,) * rank
    ws = w.shape if w.shape is not None else (None,) * rank
    if isinstance(xs[1], int) and isinstance(ws[1], int) and xs[1] != ws[1] * group:
        raise ctx.fail(f"X has {xs[1]} channels, W expects {ws[1]} x group {group}")
    m = ws[0]
    if isinstance(m, int) and m % group:
        raise ctx.fail(f"{m} output channels do not split into {group} groups")
    b = ctx.input(2)
    if b is not None and b.shape is not None:
        if b.rank != 1:
            raise ctx.fail(f"B must be 1-D, got {b}")
        m = unify_dims(m, b.shape[0], "Conv", "output channels of W and B")
    spatial = (None,) * n if wa is None else out_dims(ctx, tuple(xs[2:]), wa)
    return [TensorType((xs[0], m) + spatial, dt)]


def _pad_input(x: np.ndarray, pads, value=0.0) -> np.ndarray:
    width = [(0, 0), (0, 0)] + [(int(b), int(e)) for b, e in pads]
    return np.pad(x, width, mode="constant", constant_values=value)


def _conv(ins: list, attrs: dict, outs: list) -> Any:
    x, w, b = ins[0], ins[1], opt(ins, 2)
    ct = compute_dtype(x)
    g = attrs["group"]
    kernel = list(w.shape[2:])
    strides, dilations, pads, out = runtime_geometry(x.shape[2:], attrs, kernel)
    xp = _pad_input(x.astype(ct), pads)
    win = windows(xp, kernel, strides, dilations, out)  # (N, C, *O, *K)
    n_sp = len(kernel)
    N, C = x.shape[:2]
    M = w.shape[0]
    cg, mg = C // g, M // g
    n_out, n_k = int(np.prod(out, dtype=np.int64)), int(np.prod(kernel, dtype=np.int64))
    # im2col: (N, g, O, Cg*K) @ (g, Cg*K, Mg) -> (N, g, O, Mg), one BLAS call per group
    win = win.reshape((N, g, cg) + tuple(out) + tuple(kernel))
    perm = (0, 1) + tuple(range(3, 3 + n_sp)) + (2,) + tuple(range(3 + n_sp, 3 + 2 * n_sp))
    cols = np.ascontiguousarray(win.transpose(perm)).reshape(N, g, n_out, cg * n_k)
    wm = w.astype(ct).reshape(g, mg, cg * n_k).transpose(0, 2, 1)
    y = np.matmul(cols, wm)  # (N, g, O, Mg)
    y = np.moveaxis(y, 3, 2).reshape((N, M) + tuple(out))
    if b is not None:
        y = y + b.astype(ct).reshape((1, M) + (1,) * n_sp)
    return y.astype(x.dtype)


define_op("Conv", inputs=("X", "W", "B?"), attrs=dict(_CONV_ATTRS), infer=_infer_conv, kernel=_conv)


_CONVT_ATTRS = dict(_CONV_ATTRS, output_padding=None, output_shape=None)


def conv_transpose_geometry(in_sp, kernel, attrs_get, n):
    """Per-axis (pad_begin, pad_end, out) for ConvTranspose; dims may be symbolic."""
    strides = attrs_get("strides") or [1] * n
    dilations = attrs_get("dilations") or [1] * n
    out_pad = attrs_get("output_padding") or [0] * n
    out_shape = attrs_get("output_shape")
    auto_pad = attrs_get("auto_pad")
    pads = attrs_get("pads")
    res = []
    for i in range(n):
        d, k, s, dl, op = in_sp[i], kernel[i], strides[i], dilations[i], out_pad[i]
        span = (k - 1) * dl + 1
        if out_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            if out_shape is not None:
                target: Dim = out_shape[i]
            else:
                target = d * s if isinstance(d, int) else None
            if not isinstance(d, int) or not isinstance(target, int):
                res.append((None, None, target))
                continue
            total = s * (d - 1) + op + span - target
            if total < 0:  # output_shape past the full result: extends at the end
                res.append((0, total, target))
                continue
            small, big = total // 2, total - total // 2
            # ONNX: SAME_UPPER puts the odd cell at the end, SAME_LOWER and NOTSET at the start
            res.append((small, big, target) if auto_pad == "SAME_UPPER" else (big, small, target))
            continue
        if auto_pad == "VALID" or pads is None:
            pb, pe = 0, 0
        else:
            pb, pe = pads[i], pads[i + n]
        full = s * (d - 1) + op + span if isinstance(d, int) else None
        res.append((pb, pe, None if full is None else full - pb - pe))
    return res


def _infer_conv_transpose(ctx: InferContext) -> list[TensorType]:
    x, w, dt, group, rank = _conv_operands(ctx)
    if rank is None:
        return [TensorType(None, dt)]
    n = rank - 2
    ks = _kernel_shape(ctx, w.shape, n)
    window_attrs(ctx, n, ks)
    attr_ints(ctx, "output_padding", n, lo=0)
    attr_ints(ctx, "output_shape", n, lo=0)
    xs = x.shape if x.shape is not None else (None,) * rank
    ws = w.shape if w.shape is not None else (None,) * rank
    if isinstance(xs[1], int) and isinstance(ws[0], int) and xs[1] != ws[0]:
        raise ctx.fail(f"X has {xs[1]} channels, W has {ws[0]}")
    m = ws[1] * group if isinstance(ws[1], int) else None
    if ks is None:
        return [TensorType((xs[0], m) + (None,) * n, dt)]
    geo = conv_transpose_geometry(xs[2:], ks, ctx.attrs.get, n)
    for pb, pe, o in geo:
        if isinstance(o, int) and o < 0:
            raise ctx.fail("output extent would be negative")
    return [TensorType((xs[0], m) + tuple(o for _, _, o in geo), dt)]


def _conv_transpose(ins: list, attrs: dict, outs: list) -> Any:
    x, w, b = ins[0], ins[1], opt(ins, 2)
    ct = compute_dtype(x)
    g = attrs["group"]
    n = x.ndim - 2
    kernel = list(w.shape[2:])
    strides = attrs["strides"] or [1] * n
    dilations = attrs["dilations"] or [1] * n
    geo = conv_transpose_geometry(x.shape[2:], kernel, attrs.get, n)
    N, C = x.shape[:2]
    Mg = w.shape[1]
    out_pad = attrs["output_padding"] or [0] * n
    full = [s * (d - 1) + (k - 1) * dl + 1 + op for d, k, s, dl, op in zip(x.shape[2:], kernel, strides, dilations, out_pad)]
    y = np.zeros((N, g, Mg) + tuple(full), dtype=ct)
    xg = x.astype(ct).reshape((N, g, C // g) + x.shape[2:])
    wg = w.astype(ct).reshape((g, C // g, Mg) + w.shape[2:])
    for kpos in np.ndindex(*kernel):
        contrib = np.einsum("ngc...,gcm->ngm...", xg, wg[(slice(None), slice(None), slice(None)) + kpos])
        index = tuple(
            slice(kp * dl, kp * dl + s * (d - 1) + 1, s)
            for kp, dl, s, d in zip(kpos, dilations, strides, x.shape[2:])
        )
        y[(slice(None), slice(None), slice(None)) + index] += contrib
    y = _crop_or_extend(y.reshape((N, g * Mg) + tuple(full)), [(pb, o) for pb, _, o in geo])
    if b is not None:
        y = y + b.astype(ct).reshape((1, -1) + (1,) * n)
    return y.astype(x.dtype)


def _crop_or_extend(y: np.ndarray, windows: list[tuple[int, int]]) -> np.ndarray:
    """The spatial window [pb, pb + o) of the full result `y` per axis: positions outside
    the full result (a negative pb, or an `output_shape` past its end) are zeros."""
    out = np.zeros(y.shape[:2] + tuple(o for _, o in windows), dtype=y.dtype)
    src, dst = [slice(None)] * 2, [slice(None)] * 2
    for (pb, o), f in zip(windows, y.shape[2:]):
        lo, hi = max(pb, 0), min(pb + o, f)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - pb, hi - pb))
    out[tuple(dst)] = y[tuple(src)]
    return out


define_op(
    "ConvTranspose",
    inputs=("X", "W", "B?"),
    attrs=_CONVT_ATTRS,
    infer=_infer_conv_transpose,
    kernel=_conv_transpose,
)
