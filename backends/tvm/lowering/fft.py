"""TVM lowering of the FFT family (`requant.ir.ops.fft`) onto requant's own TIR kernels
(backends/tvm/fft_kernels.py), called with `call_tir`.

- RFFT / IRFFT: the transform axis becomes the middle of [outer, n, inner] (or of [1, n,
  columns], every other axis a column, when fewer than a vector of columns follow it); a
  power-of-two n runs the batched complex FFT kernel directly (RFFT with a zero
  imaginary part; IRFFT on the Hermitian spectrum rebuilt from its bins, imaginary parts
  of bins 0 and n/2 dropped, then 1/n); any other n goes through Bluestein's chirp-z
  identity, `X_k = w_k sum_t (x_t w_t) conj(w)_(k-t)` with `w_t = exp(sign pi i t^2 / n)`:
  a convolution computed with power-of-two FFTs of M >= 2n - 1 points (Bluestein, "A
  linear filtering approach to the computation of the discrete Fourier transform", 1970).
- ToeplitzMatMulFFT: the fused Toeplitz kernel on [outer, n, inner] (the axis in the
  middle), with the spectrum broadcast to one per outer index and/or per column; when
  fewer than two vectors of columns follow the axis (a long convolution over [batch,
  channels, n]), every other axis becomes a column ([1, n, batch * channels]) instead.
- ToeplitzLowRankMatMulFFT: the fused kernelized-attention kernel on [outer, n, m] /
  [outer, n, e], the feature axis zero-padded to whole vectors.

Columns are zero-padded to whole blocks of lanes and cut back after. f16/bf16 compute in
float32 and round once; f64 runs float64 kernels. The kernels are specialised to static
shapes (the TVM targets bind dims before building) and take power-of-two FFT sizes for
the fused Toeplitz products (the pass that makes those ops only uses such sizes).
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from typing import Any

import numpy as np
from tvm import relax

from requant.backends.tvm import fft_kernels
from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    LowerContext,
    compute_dtype,
    constant,
    from_compute,
    in_dtype,
    requires,
    to_compute,
)
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op

# per lowering context (one to_relax call): kernel spec -> GlobalVar, so equal kernels are added once
_KERNELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ----------------------------------------------------------------------------- checks


def _static_shapes(node: Node) -> str | None:
    for v in list(node.inputs) + list(node.outputs):
        if v is not None and (v.type.shape is None or not all(isinstance(d, int) for d in v.type.shape)):
            return (f"{node.op} needs static shapes in the TVM backend (its FFT kernels are specialised to them); "
                    f"the TVM targets bind dims to the example inputs by default")
    return None


def _power_of_two_fft(node: Node) -> str | None:
    n_fft = int(node.attrs["n_fft"])
    if not fft_kernels.is_power_of_two(n_fft) or n_fft < 2:
        return (f"{node.op} with n_fft={n_fft}: TVM's fused Toeplitz kernels take power-of-two FFT sizes >= 2 "
                f"(the toeplitz_fft pass only makes those)")
    return None


# ----------------------------------------------------------------------------- relax helpers


def _shape(x: relax.Expr) -> list[int]:
    return [int(d) for d in x.ty.shape.values]


def _prod(dims) -> int:
    return int(math.prod(dims))


def _kernel(ctx: LowerContext, func: Any) -> relax.GlobalVar:
    table = _KERNELS.setdefault(ctx, {})
    key = str(func.attrs[fft_kernels.KERNEL_ATTR])
    gv = table.get(key)
    if gv is None:
        spec = json.loads(key)
        gv = ctx.bb.add_func(func, f"requant_{spec['kind']}")
        table[key] = gv
    return gv


def _call(ctx: LowerContext, func: Any, args: list, outs: list[tuple[list[int], str]]) -> list[relax.Expr]:
    sinfo = [relax.TensorType(shape, dt) for shape, dt in outs]
    call = ctx.emit(relax.call_tir(_kernel(ctx, func), args, sinfo if len(sinfo) > 1 else sinfo[0]))
    if len(sinfo) == 1:
        return [call]
    return [ctx.emit(relax.TupleGetItem(call, i)) for i in range(len(sinfo))]


def _pad_axis(ctx: LowerContext, x: relax.Expr, axis: int, multiple: int) -> relax.Expr:
    """x zero-padded along `axis` to a multiple of `multiple`."""
    size = _shape(x)[axis]
    extra = -size % multiple
    if not extra:
        return x
    widths = [0] * (2 * len(_shape(x)))
    widths[2 * axis + 1] = extra
    return ctx.emit(R.nn.pad(x, widths, pad_mode="constant", pad_value=0.0))


def _take_first(ctx: LowerContext, x: relax.Expr, axis: int, count: int) -> relax.Expr:
    if _shape(x)[axis] == count:
        return x
    return ctx.emit(R.strided_slice(x, axes=[axis], begin=[0], end=[count]))


def _fit_length(ctx: LowerContext, x: relax.Expr, axis: int, length: int) -> relax.Expr:
    """x cut or zero-padded to `length` along `axis`."""
    size = _shape(x)[axis]
    if size >= length:
        return _take_first(ctx, x, axis, length)
    widths = [0] * (2 * len(_shape(x)))
    widths[2 * axis + 1] = length - size
    return ctx.emit(R.nn.pad(x, widths, pad_mode="constant", pad_value=0.0))


def _complex_parts(ctx: LowerContext, x: relax.Expr) -> tuple[relax.Expr, relax.Expr]:
    """(real, imaginary) of a tensor with a trailing complex axis."""
    shape = _shape(x)[:-1]
    parts = []
    for i in range(2):
        part = ctx.emit(R.strided_slice(x, axes=[len(shape)], begin=[i], end=[i + 1]))
        parts.append(ctx.emit(R.reshape(part, shape)))
    return parts[0], parts[1]


def _interleave(ctx: LowerContext, re: relax.Expr, im: relax.Expr) -> relax.Expr:
    """[..., 2] from the real and imaginary parts."""
    rank = len(_shape(re))
    return ctx.emit(R.concat([R.expand_dims(re, [rank]), R.expand_dims(im, [rank])], axis=rank))


def _cmul(ctx: LowerContext, ar, ai, br, bi) -> tuple[relax.Expr, relax.Expr]:
    re = ctx.emit(R.subtract(R.multiply(ar, br), R.multiply(ai, bi)))
    im = ctx.emit(R.add(R.multiply(ar, bi), R.multiply(ai, br)))
    return re, im


# ----------------------------------------------------------------------------- complex FFTs


def _pow2_fft(ctx: LowerContext, xr: relax.Expr, xi: relax.Expr, sign: int) -> tuple[relax.Expr, relax.Expr]:
    """The batched complex FFT kernel on [outer, N, inner] planes (N a power of two)."""
    dt = str(xr.ty.dtype)
    outer, length, inner = _shape(xr)
    lanes = fft_kernels.lanes_for(dt)
    xr_p, xi_p = _pad_axis(ctx, xr, 2, lanes), _pad_axis(ctx, xi, 2, lanes)
    padded = _shape(xr_p)[2]
    func = fft_kernels.complex_fft_func(outer, length, padded, sign, dt)
    tw = constant(fft_kernels.twiddles(length, dt), dt)
    yr, yi = _call(ctx, func, [xr_p, xi_p, tw], [([outer, length, padded], dt)] * 2)
    return _take_first(ctx, yr, 2, inner), _take_first(ctx, yi, 2, inner)


def _bluestein(ctx: LowerContext, xr: relax.Expr, xi: relax.Expr, sign: int) -> tuple[relax.Expr, relax.Expr]:
    """The DFT of any length N by Bluestein's chirp-z convolution (module docstring)."""
    dt = str(xr.ty.dtype)
    n = _shape(xr)[1]
    big = 1 << (2 * n - 2).bit_length()  # >= 2n - 1, a power of two
    t = np.arange(n, dtype=np.int64)
    angle = np.pi * ((t * t) % (2 * n)) / n  # t^2 mod 2n keeps the angle exact in float64
    chirp_r = np.cos(angle)[None, :, None]
    chirp_i = (sign * np.sin(angle))[None, :, None]
    ar, ai = _cmul(ctx, xr, xi, constant(chirp_r, dt), constant(chirp_i, dt))
    ar, ai = _fit_length(ctx, ar, 1, big), _fit_length(ctx, ai, 1, big)
    u = np.arange(big)
    lag = np.minimum(u, big - u)  # b_u = conj chirp at |u|, wrapped around the circle
    b = np.where(lag < n, np.exp(-sign * 1j * np.pi * ((lag * lag) % (2 * n)) / n), 0.0)
    b_hat = np.fft.fft(b)[None, :, None] / big  # the 1/M of the inverse folded in
    fr, fi = _pow2_fft(ctx, ar, ai, -1)
    gr, gi = _cmul(ctx, fr, fi, constant(b_hat.real, dt), constant(b_hat.imag, dt))
    cr, ci = _pow2_fft(ctx, gr, gi, 1)
    cr, ci = _take_first(ctx, cr, 1, n), _take_first(ctx, ci, 1, n)
    return _cmul(ctx, cr, ci, constant(chirp_r, dt), constant(chirp_i, dt))


def _complex_fft(ctx: LowerContext, xr: relax.Expr, xi: relax.Expr, sign: int) -> tuple[relax.Expr, relax.Expr]:
    n = _shape(xr)[1]
    if n == 1:
        return xr, xi
    if fft_kernels.is_power_of_two(n):
        return _pow2_fft(ctx, xr, xi, sign)
    return _bluestein(ctx, xr, xi, sign)


def _around_axis(shape: list[int], axis: int) -> tuple[int, int]:
    return _prod(shape[:axis]), _prod(shape[axis + 1:])


# ----------------------------------------------------------------------------- emitters


def _as_columns(ctx: LowerContext, x: relax.Expr, axis: int, trailing: int = 0):
    """x as [outer, length, inner] around `axis` (its last `trailing` axes kept at the end,
    e.g. the complex axis), or as [1, length, columns] with every other axis a column when
    fewer than a vector of columns follow the axis; returns (x3, restore), restore(y3)
    giving y3 [o, new length, i, (its own trailing axes)] back in x's layout."""
    shape = _shape(x)
    core = shape[:len(shape) - trailing]
    tail = shape[len(shape) - trailing:]
    outer, inner = _around_axis(core, axis)
    lanes = fft_kernels.lanes_for(str(x.ty.dtype))
    if inner >= lanes or outer == 1:
        def restore(y: relax.Expr) -> relax.Expr:
            out = list(core)
            out[axis] = _shape(y)[1]
            return ctx.emit(R.reshape(y, out + _shape(y)[3:]))

        return ctx.emit(R.reshape(x, [outer, core[axis], inner] + tail)), restore
    perm = [axis] + [d for d in range(len(core)) if d != axis]
    moved = ctx.emit(R.permute_dims(x, perm + list(range(len(core), len(shape)))))

    def restore_moved(y: relax.Expr) -> relax.Expr:
        length, y_tail = _shape(y)[1], _shape(y)[3:]
        y = ctx.emit(R.reshape(y, [length] + [core[d] for d in perm[1:]] + y_tail))
        back = perm + list(range(len(core), len(core) + len(y_tail)))
        return ctx.emit(R.permute_dims(y, [back.index(d) for d in range(len(back))]))

    return ctx.emit(R.reshape(moved, [1, core[axis], outer * inner] + tail)), restore_moved


@LOWERINGS.lowers("RFFT")
@requires(_static_shapes)
def _rfft(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = in_dtype(node)
    x = to_compute(ctx, ins[0], dt)
    shape = _shape(x)
    axis = int(a["axis"]) % len(shape)
    n = int(a["n"]) or shape[axis]
    x, restore = _as_columns(ctx, x, axis)
    x = _fit_length(ctx, x, 1, n)
    zeros = ctx.emit(R.zeros(_shape(x), compute_dtype(dt)))
    yr, yi = _complex_fft(ctx, x, zeros, -1)
    bins = n // 2 + 1
    y = _interleave(ctx, _take_first(ctx, yr, 1, bins), _take_first(ctx, yi, 1, bins))
    return from_compute(ctx, restore(y), dt)


@LOWERINGS.lowers("IRFFT")
@requires(_static_shapes)
def _irfft(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = in_dtype(node)
    x = to_compute(ctx, ins[0], dt)
    shape = _shape(x)[:-1]
    axis = int(a["axis"]) % len(shape)
    bins = shape[axis]
    n = int(a["n"]) or 2 * (bins - 1)
    x, restore = _as_columns(ctx, x, axis, trailing=1)
    re, im = _complex_parts(ctx, x)
    # the Hermitian spectrum of n points from the bins: X[n - k] = conj(X[k]); bins past the
    # ones given are 0; bins 0 and n/2 are real
    k = np.arange(n)
    source = np.where(k <= n // 2, k, n - k)
    present = source < bins
    real_bin = (k == 0) | ((n % 2 == 0) & (k == n // 2))
    im_sign = np.where(k <= n // 2, 1.0, -1.0) * present * ~real_bin
    cdt = compute_dtype(dt)
    index = relax.const(np.minimum(source, bins - 1).astype(np.int64), "int64")
    full_r = ctx.emit(R.multiply(R.take(re, index, axis=1), constant(present.astype(float)[None, :, None], cdt)))
    full_i = ctx.emit(R.multiply(R.take(im, index, axis=1), constant(im_sign[None, :, None], cdt)))
    yr, _ = _complex_fft(ctx, full_r, full_i, 1)
    y = ctx.emit(R.multiply(yr, constant(1.0 / n, cdt)))
    return from_compute(ctx, restore(y), dt)


def _spectrum_for(ctx: LowerContext, s: relax.Expr, out: list[int], axis: int) -> tuple[relax.Expr, int, int]:
    """S [..., bins (at the output's axis), ..., 2] as [s_outer, bins, s_inner, 2] with
    s_outer in {1, outer} and s_inner in {1, inner}; returns (S, s_outer, s_inner)."""
    cs = _shape(s)[:-1]
    cs = [1] * (len(out) - len(cs)) + cs
    s = ctx.emit(R.reshape(s, cs + [2]))
    bins = cs[axis]
    before = [1] * axis if all(d == 1 for d in cs[:axis]) else out[:axis]
    after = [1] * (len(out) - axis - 1) if all(d == 1 for d in cs[axis + 1:]) else out[axis + 1:]
    target = before + [bins] + after + [2]
    if cs + [2] != target:
        s = ctx.emit(R.broadcast_to(s, target))
    s_outer, s_inner = _prod(before), _prod(after)
    return ctx.emit(R.reshape(s, [s_outer, bins, s_inner, 2])), s_outer, s_inner


@LOWERINGS.lowers("ToeplitzMatMulFFT")
@requires(_power_of_two_fft)
@requires(_static_shapes)
def _toeplitz(ctx: LowerContext, node: Node, ins: list) -> Any:
    a = ctx.attrs(node)
    dt = in_dtype(node)
    cdt = compute_dtype(dt)
    out = [int(d) for d in node.outputs[0].type.shape]
    x = to_compute(ctx, ins[0], dt)
    axis = int(a["axis"]) % len(_shape(x)) + len(out) - len(_shape(x))
    if _shape(x) != out:
        x = ctx.emit(R.broadcast_to(x, out))
    n_fft = int(a["n_fft"])
    n = out[axis]
    s = to_compute(ctx, ins[1], dt)
    lanes = fft_kernels.lanes_for(cdt)
    outer, inner = _around_axis(out, axis)
    if inner >= 2 * lanes or outer == 1:
        s, s_outer, s_inner = _spectrum_for(ctx, s, out, axis)
        x = ctx.emit(R.reshape(x, [outer, n, inner]))
        y = _fused_toeplitz(ctx, x, s, s_outer, s_inner, n_fft, cdt)
        return from_compute(ctx, ctx.emit(R.reshape(y, out)), dt)
    # a sequence axis with few columns after it (a long conv over [batch, channels, n]): every
    # other axis becomes a column, so that the kernel's vectors are full
    perm = [axis] + [d for d in range(len(out)) if d != axis]
    inverse = [perm.index(d) for d in range(len(out))]
    moved = [out[d] for d in perm]
    x = ctx.emit(R.reshape(R.permute_dims(x, perm), [1, n, outer * inner]))
    s, s_outer, s_inner = _spectrum_for(ctx, s, out, axis)  # [s_outer, bins, s_inner, 2]
    bins = _shape(s)[1]
    if s_outer > 1 or s_inner > 1:  # one spectrum per column, in the columns' order
        s = ctx.emit(R.reshape(s, [s_outer, bins, s_inner, 2]))
        s = ctx.emit(R.broadcast_to(s, [outer, bins, inner, 2]))
        s = ctx.emit(R.reshape(R.permute_dims(s, [1, 0, 2, 3]), [1, bins, outer * inner, 2]))
    y = _fused_toeplitz(ctx, x, s, 1, outer * inner if (s_outer > 1 or s_inner > 1) else 1, n_fft, cdt)
    y = ctx.emit(R.permute_dims(R.reshape(y, moved), inverse))
    return from_compute(ctx, y, dt)


def _fused_toeplitz(ctx: LowerContext, x: relax.Expr, s: relax.Expr, s_outer: int, s_inner: int, n_fft: int,
                    cdt: str) -> relax.Expr:
    """The fused Toeplitz kernel on x [outer, n, inner] and s [s_outer, bins, s_inner, 2],
    columns padded to whole pairs of vectors and cut back."""
    outer, n, inner = _shape(x)
    lanes = fft_kernels.lanes_for(cdt)
    x = _pad_axis(ctx, x, 2, 2 * lanes)
    padded = _shape(x)[2]
    if s_inner > 1:
        s = _pad_axis(ctx, s, 2, 2 * lanes)
        s_inner = padded
    func = fft_kernels.toeplitz_fft_func(outer, n, padded, n_fft, s_outer, s_inner, cdt)
    (y,) = _call(ctx, func, [x, s, constant(fft_kernels.twiddles(n_fft, cdt), cdt)], [([outer, n, padded], cdt)])
    return _take_first(ctx, y, 2, inner)


@LOWERINGS.lowers("ToeplitzLowRankMatMulFFT")
@requires(_power_of_two_fft)
@requires(_static_shapes)
def _toeplitz_low_rank(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = in_dtype(node)
    cdt = compute_dtype(dt)
    out = [int(d) for d in node.outputs[0].type.shape]
    lead, n, e = out[:-2], out[-2], out[-1]
    outer = _prod(lead)
    p, k, v, s = (to_compute(ctx, x, dt) for x in ins[:4])
    m = _shape(p)[-1]
    lanes = fft_kernels.lanes_for(cdt)
    flat = []
    for x, width in ((p, m), (k, m), (v, e)):
        if _shape(x) != lead + [n, width]:
            x = ctx.emit(R.broadcast_to(x, lead + [n, width]))
        flat.append(ctx.emit(R.reshape(x, [outer, n, width])))
    p, k, v = flat
    p, k = _pad_axis(ctx, p, 2, 2 * lanes), _pad_axis(ctx, k, 2, 2 * lanes)
    padded = _shape(p)[2]
    bins = _shape(s)[-2]
    s_lead = _shape(s)[:-2]
    if all(d == 1 for d in s_lead):
        s_outer = 1
        s = ctx.emit(R.reshape(s, [1, bins, 2]))
    else:
        s_outer = outer
        s_lead = [1] * (len(lead) - len(s_lead)) + s_lead
        s = ctx.emit(R.reshape(s, s_lead + [bins, 2]))
        if s_lead != lead:
            s = ctx.emit(R.broadcast_to(s, lead + [bins, 2]))
        s = ctx.emit(R.reshape(s, [outer, bins, 2]))
    n_fft = int(node.attrs["n_fft"])
    func = fft_kernels.toeplitz_low_rank_fft_func(outer, n, padded, e, n_fft, s_outer, cdt)
    (y,) = _call(ctx, func, [p, k, v, s, constant(fft_kernels.twiddles(n_fft, cdt), cdt)], [([outer, n, e], cdt)])
    return from_compute(ctx, ctx.emit(R.reshape(y, out)), dt)
