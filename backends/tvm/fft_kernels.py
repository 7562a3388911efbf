"""requant's FFT kernels as TIR PrimFuncs, for the CPU (LLVM) and for CUDA.

What this module owns:
- `complex_fft_func`: batched complex FFTs of a power-of-two length N along the middle
  axis of planar [outer, N, inner] real and imaginary parts (sign -1 forward, +1
  inverse, unnormalised);
- `toeplitz_fft_func`: the fused Toeplitz product `Y = IRFFT(RFFT(X, L) * S, L)[:n]`
  along the middle axis of X [outer, n, inner], S one spectrum per outer index and/or per
  column;
- `toeplitz_low_rank_fft_func`: the fused `((P K^T) * T) @ V` of kernelized attention
  with relative positions, Y [outer, n, e];
- `twiddles(L, dtype)`: the table [2, L] = (cos, sin)(2 pi t / L) the kernels read;
- `RetargetFFTKernels("cuda")`: a module pass that swaps the CPU kernels the lowering
  emits for their CUDA forms (same signatures), for cuda.py's pipeline.

The algorithm: Stockham autosort FFT (Govindaraju et al., "High Performance Discrete
Fourier Transforms on Graphics Processors", SC 2008): stage s reads x[j + r N/R] for
r < R, multiplies by the twiddles exp(sign 2 pi i r k / (Ns R)) (k = j mod Ns), does an
R-point DFT and writes y[(j div Ns) Ns R + k + q Ns], Ns growing by R each stage: no bit
reversal, ping-pong between two buffers. Radix 4 stages (one radix 2 stage when log2 N
is odd). The batch runs across columns: every butterfly is one operation on `lanes`
adjacent columns (a vector on the CPU, the threads of a block on CUDA), so no shuffles
are needed and loads are contiguous/coalesced.

Real transforms pack two real columns into one complex one (x1 + i x2). For the
Toeplitz product with one spectrum S shared by both, `IFFT(S FFT(x1 + i x2)) = y1 + i
y2` needs nothing more; with a spectrum per column (S1, S2), the product spectrum is
`G[k] = (S1 + S2)/2 Z[k] + (S1 - S2)/2 conj(Z[L - k])` (Z = FFT(x1 + i x2)), whose
inverse is again y1 + i y2. So a pair of real Toeplitz products costs two complex FFTs,
in cache, and the circulant's zero padding never reaches memory.

Schedules: CPU, one parallel task per (outer index, block of 2 x lanes columns) with its
ping-pong buffers local to the task, butterflies vectorised over the lanes (16 float32 /
8 float64: one AVX-512 register; AVX2 splits it in two); CUDA, the same tasks as thread
blocks of one thread per lane (a grid-stride loop over as many blocks as 1 GiB of global
ping-pong scratch holds), each thread running its column's whole FFT (coalesced across
the block; no synchronisation needed, a thread only touches its own lane). Expressions are written out in full inside the lane loops: TVM 0.27's vectoriser
miscompiles Let bindings there.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

__all__ = [
    "KERNEL_ATTR",
    "CPU",
    "CUDA",
    "lanes_for",
    "twiddles",
    "is_power_of_two",
    "complex_fft_func",
    "toeplitz_fft_func",
    "toeplitz_low_rank_fft_func",
    "kernel_from_spec",
    "RetargetFFTKernels",
]

logger = logging.getLogger(__name__)

KERNEL_ATTR = "requant.fft_kernel"
"""PrimFunc attribute holding the kernel's spec (JSON): how to rebuild it for another target."""
CPU = "cpu"
CUDA = "cuda"
_CUDA_SCRATCH_BYTES = 1 << 30  # global ping-pong buffers of the CUDA blocks in flight


def lanes_for(dtype: str) -> int:
    """Columns per butterfly: one 512-bit vector on the CPU; the CUDA form keeps the
    same columns per block (one thread each), so both take the same padded operands."""
    return 8 if dtype == "float64" else 16


def _cuda_grid(tasks: int, length: int, lanes: int, dtype: str) -> int:
    """CUDA blocks in flight (a grid-stride loop covers the tasks): as many as fit the
    scratch budget, each holding 2 x 2 x length x lanes values."""
    per_block = 4 * length * lanes * (8 if dtype == "float64" else 4)
    return max(1, min(tasks, _CUDA_SCRATCH_BYTES // per_block))


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def twiddles(length: int, dtype: str = "float32") -> np.ndarray:
    """[2, length]: cos and sin of 2 pi t / length, computed in float64."""
    t = np.arange(length, dtype=np.float64) * (2.0 * np.pi / length)
    return np.stack([np.cos(t), np.sin(t)]).astype(dtype)


# ----------------------------------------------------------------------------- butterflies


def _radix4(buf, slot, src, j, w, quarter, w1r, w1i, w2r, w2i, w3r, w3i, sign, q, part):
    """Output q (0..3), part (0 real, 1 imaginary) of the radix-4 butterfly reading
    buf[slot, src, :, j + r quarter, w] with twiddles w_r (sign: -1 forward, +1 inverse)."""
    a0r, a0i = buf[slot, src, 0, j, w], buf[slot, src, 1, j, w]
    x1r, x1i = buf[slot, src, 0, j + quarter, w], buf[slot, src, 1, j + quarter, w]
    x2r, x2i = buf[slot, src, 0, j + 2 * quarter, w], buf[slot, src, 1, j + 2 * quarter, w]
    x3r, x3i = buf[slot, src, 0, j + 3 * quarter, w], buf[slot, src, 1, j + 3 * quarter, w]
    a1r, a1i = x1r * w1r - x1i * w1i, x1r * w1i + x1i * w1r
    a2r, a2i = x2r * w2r - x2i * w2i, x2r * w2i + x2i * w2r
    a3r, a3i = x3r * w3r - x3i * w3i, x3r * w3i + x3i * w3r
    t0r, t0i = a0r + a2r, a0i + a2i
    t1r, t1i = a0r - a2r, a0i - a2i
    t2r, t2i = a1r + a3r, a1i + a3i
    # (a1 - a3) times sign * i: the 4-point DFT's odd outputs
    t3r, t3i = (a3i - a1i) * sign, (a1r - a3r) * sign
    outputs = ((t0r + t2r, t0i + t2i), (t1r + t3r, t1i + t3i), (t0r - t2r, t0i - t2i), (t1r - t3r, t1i - t3i))
    return outputs[q][part]


def _radix2(buf, slot, src, k, w, half, wr, wi, q, part):
    """Output q (0, 1), part of the radix-2 butterfly of buf rows k and k + half."""
    br = buf[slot, src, 0, k + half, w] * wr - buf[slot, src, 1, k + half, w] * wi
    bi = buf[slot, src, 0, k + half, w] * wi + buf[slot, src, 1, k + half, w] * wr
    a = buf[slot, src, part, k, w]
    b = br if part == 0 else bi
    return a + b if q == 0 else a - b


class _Plan:
    """The stage plan of one FFT length: radix-4 stages, then one radix-2 stage when
    log2 length is odd; which buffer ends up holding the result."""

    def __init__(self, length: int) -> None:
        if not is_power_of_two(length) or length < 2:
            raise ValueError(f"FFT kernels take power-of-two lengths >= 2, got {length}")
        log2 = int(math.log2(length))
        self.length = length
        self.radix4 = log2 // 2
        self.radix2 = log2 % 2
        self.flips = self.radix4 + self.radix2  # buffer swaps of one transform

    def result(self, first: int) -> int:
        """The ping-pong buffer holding the transform of what started in `first`."""
        return (first + self.flips) % 2


def _lane_loop(target: str) -> Callable[[int], Any]:
    if target == CUDA:
        return lambda extent: T.thread_binding(extent, thread="threadIdx.x")
    return T.vectorized


def _task_loop(target: str) -> Callable[[int], Any]:
    if target == CUDA:
        return lambda extent: T.thread_binding(extent, thread="blockIdx.x")
    return T.parallel


def _fft_macro(plan: _Plan, lanes: int, lane: Callable, first: int):
    """A TIR macro: the FFT (sign -1 / +1) of the transform in ping-pong buffer `first`
    of buf[slot, 2, 2 (re, im), L, lanes]; the result lands in plan.result(first)."""
    length = plan.length
    last4 = (plan.radix4 + first) % 2  # where the radix-4 stages leave it
    quarter = length // 4
    half = length // 2
    n_radix4 = plan.radix4
    has_radix2 = plan.radix2 == 1

    @T.macro
    def fft(buf, slot, tw, sign):
        for s in range(n_radix4):
            ns = T.shift_left(1, 2 * s)
            src = (s + first) % 2
            for g in range(quarter // ns):
                for k in range(ns):
                    step = quarter // ns * k
                    w1r = tw[0, step]
                    w1i = tw[1, step] * sign
                    w2r = tw[0, 2 * step]
                    w2i = tw[1, 2 * step] * sign
                    w3r = tw[0, 3 * step]
                    w3i = tw[1, 3 * step] * sign
                    j = g * ns + k
                    out = g * ns * 4 + k
                    for w in lane(lanes):
                        buf[slot, 1 - src, 0, out, w] = _radix4(buf, slot, src, j, w, quarter, w1r, w1i, w2r, w2i, w3r, w3i, sign, 0, 0)
                        buf[slot, 1 - src, 1, out, w] = _radix4(buf, slot, src, j, w, quarter, w1r, w1i, w2r, w2i, w3r, w3i, sign, 0, 1)
                        buf[slot, 1 - src, 0, out + ns, w] = _radix4(buf, slot, src, j, w, quarter, w1r, w1i, w2r, w2i, w3r, w3i, sign, 1, 0)
                        buf[slot, 1 - src, 1, out + ns, w] = _radix4(buf, slot, src, j, w, quarter, w1r, w1i, w2r, w2i, w3r, w3i, sign, 1, 1)
                        buf[slot, 1 - src, 0, out + 2 * ns, w] = _radix4(buf, slot, src, j, w, quarter, w1r, w1i, w2r, w2i, w3r, w3i, sign, 2, 0)
                        buf[slot, 1 - src, 1, out + 2 * ns, w] = _radix4(buf, slot, src, j, w, quarter, w1r, w1i, w2r, w2i, w3r, w3i, sign, 2, 1)
                        buf[slot, 1 - src, 0, out + 3 * ns, w] = _radix4(buf, slot, src, j, w, quarter, w1r, w1i, w2r, w2i, w3r, w3i, sign, 3, 0)
                        buf[slot, 1 - src, 1, out + 3 * ns, w] = _radix4(buf, slot, src, j, w, quarter, w1r, w1i, w2r, w2i, w3r, w3i, sign, 3, 1)
        if has_radix2:
            for k in range(half):
                wr = tw[0, k]
                wi = tw[1, k] * sign
                for w in lane(lanes):
                    buf[slot, 1 - last4, 0, k, w] = _radix2(buf, slot, last4, k, w, half, wr, wi, 0, 0)
                    buf[slot, 1 - last4, 1, k, w] = _radix2(buf, slot, last4, k, w, half, wr, wi, 0, 1)
                    buf[slot, 1 - last4, 0, k + half, w] = _radix2(buf, slot, last4, k, w, half, wr, wi, 1, 0)
                    buf[slot, 1 - last4, 1, k + half, w] = _radix2(buf, slot, last4, k, w, half, wr, wi, 1, 1)

    return fft


# ----------------------------------------------------------------------------- kernels


def _func_attrs(kernel, spec: dict) -> tirx.PrimFunc:
    return kernel.with_attr(KERNEL_ATTR, json.dumps(spec, sort_keys=True))


def complex_fft_func(outer: int, length: int, inner: int, sign: int, dtype: str = "float32",
                     target: str = CPU) -> tirx.PrimFunc:
    """(xr, xi [outer, length, inner], tw [2, length]) -> (yr, yi): the unnormalised DFT
    with exp(sign 2 pi i k t / length) along the middle axis; inner % lanes == 0."""
    lanes = lanes_for(dtype)
    if inner % lanes:
        raise ValueError(f"complex_fft_func: inner={inner} is not a multiple of {lanes} lanes")
    plan = _Plan(length)
    lane = _lane_loop(target)
    fft = _fft_macro(plan, lanes, lane, 0)
    result = plan.result(0)
    blocks = inner // lanes
    tasks = outer * blocks
    sign_value = float(sign)

    @T.macro
    def body(buf, slot, task, xr, xi, tw, yr, yi):
        o = task // blocks
        c0 = task % blocks * lanes
        for t in range(length):
            for w in lane(lanes):
                buf[slot, 0, 0, t, w] = xr[o, t, c0 + w]
                buf[slot, 0, 1, t, w] = xi[o, t, c0 + w]
        fft(buf, slot, tw, T.Cast(dtype, sign_value))
        for t in range(length):
            for w in lane(lanes):
                yr[o, t, c0 + w] = buf[slot, result, 0, t, w]
                yi[o, t, c0 + w] = buf[slot, result, 1, t, w]

    if target == CUDA:
        grid = _cuda_grid(tasks, length, lanes, dtype)
        rounds = -(-tasks // grid)

        @T.prim_func(private=True)
        def kernel(xr: T.Buffer((outer, length, inner), dtype), xi: T.Buffer((outer, length, inner), dtype),
                   tw: T.Buffer((2, length), dtype), yr: T.Buffer((outer, length, inner), dtype),
                   yi: T.Buffer((outer, length, inner), dtype)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            buf = T.alloc_buffer((grid, 2, 2, length, lanes), dtype)
            for bx in T.thread_binding(grid, thread="blockIdx.x"):
                for it in range(rounds):
                    if it * grid + bx < tasks:
                        body(buf, bx, it * grid + bx, xr, xi, tw, yr, yi)
    else:
        @T.prim_func(private=True)
        def kernel(xr: T.Buffer((outer, length, inner), dtype), xi: T.Buffer((outer, length, inner), dtype),
                   tw: T.Buffer((2, length), dtype), yr: T.Buffer((outer, length, inner), dtype),
                   yi: T.Buffer((outer, length, inner), dtype)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            for task in T.parallel(tasks):
                buf = T.alloc_buffer((1, 2, 2, length, lanes), dtype)
                body(buf, 0, task, xr, xi, tw, yr, yi)

    spec = {"kind": "complex_fft", "outer": outer, "length": length, "inner": inner, "sign": sign, "dtype": dtype}
    return _func_attrs(kernel, spec)


def toeplitz_fft_func(outer: int, n: int, inner: int, length: int, s_outer: int, s_inner: int,
                      dtype: str = "float32", target: str = CPU) -> tirx.PrimFunc:
    """(x [outer, n, inner], s [s_outer, length//2 + 1, s_inner, 2], tw [2, length]) ->
    y [outer, n, inner]: `y = IRFFT(RFFT(x, length) * s, length)[:n]` along the middle
    axis, s_outer in {1, outer}, s_inner in {1, inner}; inner % (2 lanes) == 0."""
    lanes = lanes_for(dtype)
    if inner % (2 * lanes):
        raise ValueError(f"toeplitz_fft_func: inner={inner} is not a multiple of {2 * lanes}")
    if n > length:
        raise ValueError(f"toeplitz_fft_func: n={n} > FFT length {length}")
    plan = _Plan(length)
    lane = _lane_loop(target)
    forward = _fft_macro(plan, lanes, lane, 0)
    spectral = plan.result(0)
    product = 1 - spectral
    inverse = _fft_macro(plan, lanes, lane, product)
    result = plan.result(product)
    half = length // 2
    bins = half + 1
    blocks = inner // (2 * lanes)
    tasks = outer * blocks
    per_column = s_inner > 1
    scale = 1.0 / length

    @T.macro
    def body(buf, slot, task, x, s, tw, y):
        o = task // blocks
        so = o % s_outer
        c0 = task % blocks * (2 * lanes)
        for t in range(length):
            for w in lane(lanes):
                buf[slot, 0, 0, t, w] = T.if_then_else(t < n, x[o, T.min(t, n - 1), c0 + w], T.Cast(dtype, 0))
                buf[slot, 0, 1, t, w] = T.if_then_else(t < n, x[o, T.min(t, n - 1), c0 + lanes + w], T.Cast(dtype, 0))
        forward(buf, slot, tw, T.Cast(dtype, -1.0))
        if per_column:
            # G[t] = (S1 + S2)/2 Z[t] + (S1 - S2)/2 conj(Z[length - t]): columns c0 + w and
            # c0 + lanes + w travel as the real and imaginary parts of one complex column
            for t in range(length):
                for w in lane(lanes):
                    buf[slot, product, 0, t, w] = _per_column_product(buf, slot, spectral, s, so, c0, w, lanes, t, half, length, 0)
                    buf[slot, product, 1, t, w] = _per_column_product(buf, slot, spectral, s, so, c0, w, lanes, t, half, length, 1)
        else:
            for t in range(length):
                sr = s[so, T.if_then_else(t <= half, t, length - t), 0, 0]
                si = s[so, T.if_then_else(t <= half, t, length - t), 0, 1] * T.if_then_else(t <= half, T.Cast(dtype, 1.0), T.Cast(dtype, -1.0))
                for w in lane(lanes):
                    buf[slot, product, 0, t, w] = buf[slot, spectral, 0, t, w] * sr - buf[slot, spectral, 1, t, w] * si
                    buf[slot, product, 1, t, w] = buf[slot, spectral, 0, t, w] * si + buf[slot, spectral, 1, t, w] * sr
        inverse(buf, slot, tw, T.Cast(dtype, 1.0))
        for t in range(n):
            for w in lane(lanes):
                y[o, t, c0 + w] = buf[slot, result, 0, t, w] * T.Cast(dtype, scale)
                y[o, t, c0 + lanes + w] = buf[slot, result, 1, t, w] * T.Cast(dtype, scale)

    if target == CUDA:
        grid = _cuda_grid(tasks, length, lanes, dtype)
        rounds = -(-tasks // grid)

        @T.prim_func(private=True)
        def kernel(x: T.Buffer((outer, n, inner), dtype), s: T.Buffer((s_outer, bins, s_inner, 2), dtype),
                   tw: T.Buffer((2, length), dtype), y: T.Buffer((outer, n, inner), dtype)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            buf = T.alloc_buffer((grid, 2, 2, length, lanes), dtype)
            for bx in T.thread_binding(grid, thread="blockIdx.x"):
                for it in range(rounds):
                    if it * grid + bx < tasks:
                        body(buf, bx, it * grid + bx, x, s, tw, y)
    else:
        @T.prim_func(private=True)
        def kernel(x: T.Buffer((outer, n, inner), dtype), s: T.Buffer((s_outer, bins, s_inner, 2), dtype),
                   tw: T.Buffer((2, length), dtype), y: T.Buffer((outer, n, inner), dtype)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            for task in T.parallel(tasks):
                buf = T.alloc_buffer((1, 2, 2, length, lanes), dtype)
                body(buf, 0, task, x, s, tw, y)

    spec = {"kind": "toeplitz_fft", "outer": outer, "n": n, "inner": inner, "length": length, "s_outer": s_outer,
            "s_inner": s_inner, "dtype": dtype}
    return _func_attrs(kernel, spec)


def _per_column_product(buf, slot, spectral, s, so, c0, w, lanes, t, half, length, part):
    """Part (0 re, 1 im) of G[t] = A Z[t] + B conj(Z[length - t]) with A = (S1 + S2)/2,
    B = (S1 - S2)/2, S1 / S2 the full spectra of columns c0 + w / c0 + lanes + w."""
    bin_index = T.if_then_else(t <= half, t, length - t)
    conj = T.if_then_else(t <= half, 1.0, -1.0).astype(s.dtype)
    s1r, s1i = s[so, bin_index, c0 + w, 0], s[so, bin_index, c0 + w, 1] * conj
    s2r, s2i = s[so, bin_index, c0 + lanes + w, 0], s[so, bin_index, c0 + lanes + w, 1] * conj
    half_ = T.Cast(s.dtype, 0.5)
    ar, ai = (s1r + s2r) * half_, (s1i + s2i) * half_
    br, bi = (s1r - s2r) * half_, (s1i - s2i) * half_
    mirror = (length - t) % length
    zr, zi = buf[slot, spectral, 0, t, w], buf[slot, spectral, 1, t, w]
    mr, mi = buf[slot, spectral, 0, mirror, w], -buf[slot, spectral, 1, mirror, w]
    if part == 0:
        return ar * zr - ai * zi + br * mr - bi * mi
    return ar * zi + ai * zr + br * mi + bi * mr


def toeplitz_low_rank_fft_func(outer: int, n: int, m: int, e: int, length: int, s_outer: int,
                               dtype: str = "float32", target: str = CPU) -> tirx.PrimFunc:
    """(p, k [outer, n, m], v [outer, n, e], s [s_outer, length//2 + 1, 2], tw [2, length])
    -> y [outer, n, e]: `y_i = sum_j (p_i . k_j) T[i, j] v_j`, T the Toeplitz part of the
    circulant with spectrum s. One task per (outer, value column): the 2 x lanes feature
    columns k_j[r] v_j[col] of a block go through the FFT product together and are
    contracted with p_i into per-lane sums, which one reduction adds up;
    m % (2 lanes) == 0."""
    lanes = lanes_for(dtype)
    if m % (2 * lanes):
        raise ValueError(f"toeplitz_low_rank_fft_func: m={m} is not a multiple of {2 * lanes}")
    plan = _Plan(length)
    lane = _lane_loop(target)
    forward = _fft_macro(plan, lanes, lane, 0)
    spectral = plan.result(0)
    product = 1 - spectral
    inverse = _fft_macro(plan, lanes, lane, product)
    result = plan.result(product)
    half = length // 2
    bins = half + 1
    rblocks = m // (2 * lanes)
    tasks = outer * e
    scale = 1.0 / length

    @T.macro
    def body(buf, acc, slot, task, p, k, v, s, tw):
        o = task // e
        col = task % e
        so = o % s_outer
        for t in range(n):
            for w in lane(lanes):
                acc[slot, t, w] = T.Cast(dtype, 0)
        for rb in range(rblocks):
            for t in range(length):
                for w in lane(lanes):
                    buf[slot, 0, 0, t, w] = T.if_then_else(
                        t < n, k[o, T.min(t, n - 1), rb * 2 * lanes + w] * v[o, T.min(t, n - 1), col], T.Cast(dtype, 0))
                    buf[slot, 0, 1, t, w] = T.if_then_else(
                        t < n, k[o, T.min(t, n - 1), rb * 2 * lanes + lanes + w] * v[o, T.min(t, n - 1), col],
                        T.Cast(dtype, 0))
            forward(buf, slot, tw, T.Cast(dtype, -1.0))
            for t in range(length):
                sr = s[so, T.if_then_else(t <= half, t, length - t), 0]
                si = s[so, T.if_then_else(t <= half, t, length - t), 1] * T.if_then_else(t <= half, T.Cast(dtype, 1.0), T.Cast(dtype, -1.0))
                for w in lane(lanes):
                    buf[slot, product, 0, t, w] = buf[slot, spectral, 0, t, w] * sr - buf[slot, spectral, 1, t, w] * si
                    buf[slot, product, 1, t, w] = buf[slot, spectral, 0, t, w] * si + buf[slot, spectral, 1, t, w] * sr
            inverse(buf, slot, tw, T.Cast(dtype, 1.0))
            for t in range(n):
                for w in lane(lanes):
                    acc[slot, t, w] = acc[slot, t, w] + p[o, t, rb * 2 * lanes + w] * buf[slot, result, 0, t, w] \
                        + p[o, t, rb * 2 * lanes + lanes + w] * buf[slot, result, 1, t, w]

    if target == CUDA:
        grid = _cuda_grid(tasks, length, lanes, dtype)
        rounds = -(-tasks // grid)
        total = outer * n * e
        threads = 128

        @T.prim_func(private=True)
        def kernel(p: T.Buffer((outer, n, m), dtype), k: T.Buffer((outer, n, m), dtype),
                   v: T.Buffer((outer, n, e), dtype), s: T.Buffer((s_outer, bins, 2), dtype),
                   tw: T.Buffer((2, length), dtype), y: T.Buffer((outer, n, e), dtype)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            buf = T.alloc_buffer((grid, 2, 2, length, lanes), dtype)
            acc = T.alloc_buffer((tasks, n, lanes), dtype)
            for bx in T.thread_binding(grid, thread="blockIdx.x"):
                for it in range(rounds):
                    if it * grid + bx < tasks:
                        body(buf, acc, it * grid + bx, it * grid + bx, p, k, v, s, tw)
            # the lanes' partial sums belong to different threads: a second kernel adds them
            for bx in T.thread_binding((total + threads - 1) // threads, thread="blockIdx.x"):
                for tx in T.thread_binding(threads, thread="threadIdx.x"):
                    if bx * threads + tx < total:
                        y[(bx * threads + tx) // (n * e), (bx * threads + tx) // e % n, (bx * threads + tx) % e] = T.Cast(dtype, 0)
                        for w in range(lanes):
                            y[(bx * threads + tx) // (n * e), (bx * threads + tx) // e % n, (bx * threads + tx) % e] = (
                                y[(bx * threads + tx) // (n * e), (bx * threads + tx) // e % n, (bx * threads + tx) % e]
                                + acc[(bx * threads + tx) // (n * e) * e + (bx * threads + tx) % e,
                                      (bx * threads + tx) // e % n, w] * T.Cast(dtype, scale))
    else:
        @T.prim_func(private=True)
        def kernel(p: T.Buffer((outer, n, m), dtype), k: T.Buffer((outer, n, m), dtype),
                   v: T.Buffer((outer, n, e), dtype), s: T.Buffer((s_outer, bins, 2), dtype),
                   tw: T.Buffer((2, length), dtype), y: T.Buffer((outer, n, e), dtype)):
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            for task in T.parallel(tasks):
                buf = T.alloc_buffer((1, 2, 2, length, lanes), dtype)
                acc = T.alloc_buffer((1, n, lanes), dtype)
                body(buf, acc, 0, task, p, k, v, s, tw)
                for t in range(n):
                    y[task // e, t, task % e] = T.Cast(dtype, 0)
                    for w in range(lanes):
                        y[task // e, t, task % e] = y[task // e, t, task % e] + acc[0, t, w] * T.Cast(dtype, scale)

    spec = {"kind": "toeplitz_low_rank_fft", "outer": outer, "n": n, "m": m, "e": e, "length": length,
            "s_outer": s_outer, "dtype": dtype}
    return _func_attrs(kernel, spec)


_BUILDERS: dict[str, Callable[..., tirx.PrimFunc]] = {
    "complex_fft": complex_fft_func,
    "toeplitz_fft": toeplitz_fft_func,
    "toeplitz_low_rank_fft": toeplitz_low_rank_fft_func,
}


def kernel_from_spec(spec: dict, target: str) -> tirx.PrimFunc:
    """The kernel a spec (KERNEL_ATTR) describes, built for `target` (same signature)."""
    args = {k: v for k, v in spec.items() if k != "kind"}
    return _BUILDERS[spec["kind"]](**args, target=target)


@tvm.transform.module_pass(opt_level=0, name="RetargetFFTKernels")
class RetargetFFTKernels:
    """Replace every FFT kernel of the module (PrimFuncs carrying KERNEL_ATTR) by its
    build for `target` ("cuda"): the TVM lowering emits the CPU forms; cuda.py runs this
    before its GPU schedules (which skip these already scheduled kernels)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tirx.PrimFunc) and func.attrs is not None and KERNEL_ATTR in func.attrs:
                spec = json.loads(str(func.attrs[KERNEL_ATTR]))
                rebuilt = kernel_from_spec(spec, self.target)
                for key, value in func.attrs.items():  # global_symbol and the like, as the lowering set them
                    if key not in rebuilt.attrs:
                        rebuilt = rebuilt.with_attr(key, value)
                mod[gv] = rebuilt
        return mod
