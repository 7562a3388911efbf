"""Hand-written numpy references of requant's own ops (domain "requant"), the oracle of
their op cases where neither ONNX's reference nor ONNX Runtime has the op.

Written from the ops' specifications (the docstrings of requant.ir.ops.attention,
requant.ir.ops.quant and requant.ir.quant_formats), without calling requant: a
reference that shared code with the kernel would agree with it by construction. Float
formats are rounded on a grid of their values enumerated from (exponent bits, mantissa
bits, bias), not through ml_dtypes or requant's codecs.

`NUMPY_REFERENCES[op](inputs, attrs)` gives the op's outputs for the node's inputs
(None for an omitted optional input) and its attributes as the case gives them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

__all__ = ["NUMPY_REFERENCES", "scaled_dot_product_attention", "fake_quantize", "hadamard",
           "requantize", "dyadic_add", "i_layernorm", "shiftmax", "poly_softmax", "shift_gelu", "poly_gelu",
           "tanh_gelu"]


# ----------------------------------------------------------------------------- attention


def scaled_dot_product_attention(q, k, v, mask=None, *, scale: float = 0.0, is_causal: int = 0) -> np.ndarray:
    """softmax(Q K^T * scale + mask) V per head, in float64, rounded once to Q's dtype.
    Grouped-query: query head h reads key/value head h // (H / Hkv). A bool mask keeps
    True; a float mask is added; is_causal drops key t > query s; a row with no key left
    gives zeros."""
    h, hkv = q.shape[1], k.shape[1]
    kv_of_head = np.arange(h) // (h // hkv)
    q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
    k64, v64 = k64[:, kv_of_head], v64[:, kv_of_head]
    factor = scale if scale else 1.0 / math.sqrt(q.shape[-1])
    scores = np.einsum("bhsd,bhtd->bhst", q64, k64) * factor
    s_len, t_len = scores.shape[-2:]
    keep = np.ones(scores.shape, bool)
    if mask is not None:
        if mask.dtype == np.bool_:
            keep &= np.broadcast_to(mask, scores.shape)
        else:
            scores = scores + mask.astype(np.float64)
    if is_causal:
        keep &= np.tril(np.ones((s_len, t_len), bool))
    scores = np.where(keep, scores, -np.inf)
    top = scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
    total = weights.sum(axis=-1, keepdims=True)
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)
    return np.einsum("bhst,bhtd->bhsd", weights, v64).astype(q.dtype)


# ----------------------------------------------------------------------------- number formats

# short name -> (exponent bits, mantissa bits, bias, NaN / inf codes at the top exponent)
_FLOAT_FORMATS = {
    "fp8_e4m3": (4, 3, 7.0, "fn"),  # E4M3FN: only S.1111.111 is NaN, max 448
    "fp8_e5m2": (5, 2, 15.0, "ieee"),  # the top exponent holds inf and NaN, max 57344
    "fp4_e2m1": (2, 1, 1.0, "none"),  # +-{0, .5, 1, 1.5, 2, 3, 4, 6}
}
_INT_RANGES = {"i8": (-128, 127), "u8": (0, 255), "i4": (-8, 7), "u4": (0, 15), "i16": (-(2**15), 2**15 - 1),
               "u16": (0, 2**16 - 1)}


def _float_layout(name: str) -> tuple[int, int, float, str]:
    """(exponent bits, mantissa bits, bias, specials) of fp8/fp4 or "ff_e<E>m<M>_b<bias>"."""
    if name in _FLOAT_FORMATS:
        return _FLOAT_FORMATS[name]
    bits, bias = name.removeprefix("ff_e").split("_b")
    e_bits, m_bits = bits.split("m")
    return int(e_bits), int(m_bits), float(bias), "none"


@lru_cache(maxsize=None)
def _positive_grid(name: str) -> np.ndarray:
    """Every finite non-negative value of the format, increasing, in float64; position i
    is code i, so an even position is an even mantissa."""
    e_bits, m_bits, bias, specials = _float_layout(name)
    values = []
    for e in range(2**e_bits):
        for m in range(2**m_bits):
            if specials == "ieee" and e == 2**e_bits - 1:
                continue
            if specials == "fn" and e == 2**e_bits - 1 and m == 2**m_bits - 1:
                continue
            frac = m / 2**m_bits
            values.append((frac * 2.0 ** (1 - bias)) if e == 0 else (1 + frac) * 2.0 ** (e - bias))
    return np.array(values)


def round_to_format(v: np.ndarray, name: str) -> np.ndarray:
    """`v` rounded to the nearest value of the float format, ties to the even code,
    saturating at +-max. NaN stays NaN in fp8 and becomes +max in fp4 and FloatFormat
    (they have no NaN). float64 values of the grid."""
    grid = _positive_grid(name)
    v = np.asarray(v, dtype=np.float64)
    nan = np.isnan(v)
    mag = np.minimum(np.abs(np.where(nan, 0.0, v)), grid[-1])
    hi = np.clip(np.searchsorted(grid, mag), 1, len(grid) - 1)
    lo = hi - 1
    below, above = mag - grid[lo], grid[hi] - mag
    pick = np.where(below < above, lo, np.where(above < below, hi, np.where(lo % 2 == 0, lo, hi)))
    out = np.copysign(grid[pick], v)
    if _float_layout(name)[3] == "none":
        return np.where(nan, grid[-1], out)
    return np.where(nan, np.nan, out)


def _param_along(p: np.ndarray, shape: tuple, axis: int, block: int) -> np.ndarray:
    """A scale / zero point laid out as ONNX does (one value, 1-D along `axis`, or one per
    block of `block` along `axis`) expanded to `shape`."""
    p = np.asarray(p)
    if p.size == 1:
        return np.broadcast_to(p.reshape(()), shape)
    if block:
        p = np.repeat(p, block, axis=axis)
        p = np.take(p, np.arange(shape[axis]), axis=axis)
        return p
    dims = [1] * len(shape)
    dims[axis] = shape[axis]
    return np.broadcast_to(p.reshape(dims), shape)


def _blocks(shape: tuple, axis: int, block: int) -> np.ndarray:
    """The block number of each position along `axis`, broadcastable to `shape`."""
    dims = [1] * len(shape)
    dims[axis] = shape[axis]
    return (np.arange(shape[axis]) // block).reshape(dims)


def _block_amax(x: np.ndarray, axis: int, block: int) -> np.ndarray:
    """max |x| of each block along `axis` (NaN if the block holds one), repeated back over
    the block's positions."""
    ids = np.broadcast_to(_blocks(x.shape, axis, block), x.shape)
    out = np.zeros(x.shape, np.float64)
    for b in range(-(-x.shape[axis] // block)):
        sel = ids == b
        amax = np.max(np.abs(np.where(sel, x, 0.0)), axis=axis, keepdims=True)
        out = np.where(sel, np.broadcast_to(amax, x.shape), out)
    return out


# ----------------------------------------------------------------------------- FakeQuantize


def _linear(x, scale, zero_point, fmt: str, axis: int, block: int) -> np.ndarray:
    """quantize then dequantize with a given scale (ONNX's linear quantization): v = x /
    scale in float32; integers round half to even, add the zero point and saturate (NaN
    -> the lowest code), and come back as (q - zp) * scale in float32; float formats
    round on their grid and come back as q * scale."""
    x32 = np.asarray(x, np.float32)
    s = _param_along(np.asarray(scale, np.float32), x32.shape, axis, block).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = x32 / s
    if fmt in _INT_RANGES:
        lo, hi = _INT_RANGES[fmt]
        zp = 0 if zero_point is None else _param_along(np.asarray(zero_point).astype(np.int64), x32.shape, axis, block)
        with np.errstate(invalid="ignore"):
            q = np.where(np.isnan(v), lo, np.clip(np.round(v.astype(np.float64)) + zp, lo, hi))
        return ((q - zp).astype(np.float32) * s).astype(np.float32)
    q = round_to_format(v, fmt).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return (q * s).astype(np.float32)


def _mx(x: np.ndarray, axis: int, block: int) -> np.ndarray:
    """OCP MX: each block of `block` along `axis` shares the scale 2^(floor(log2 amax) -
    2) (2 = the exponent of E2M1's top binade), at least 2^-127; the block's values are
    rounded to E2M1 on that scale. A block holding NaN or inf is NaN throughout."""
    x64 = np.asarray(x, np.float32).astype(np.float64)
    amax = _block_amax(x64, axis, block)
    finite = np.isfinite(amax)
    safe = np.where(finite & (amax > 0), amax, 1.0)
    exponent = np.where(amax > 0, np.floor(np.log2(safe)) - 2, -127)
    scale = 2.0 ** np.maximum(exponent, -127)
    y = round_to_format(x64 / scale, "fp4_e2m1") * scale
    return np.where(finite, y, np.nan).astype(np.float32)


def _nv(x: np.ndarray, tensor_scale, axis: int, block: int) -> np.ndarray:
    """NVFP4: a float32 tensor scale s_t (given, else amax / (448 * 6), 1 for an all-zero
    tensor); each block of `block` gets s_b = e4m3(amax_b / (6 * s_t)) (saturating), and
    with d = s_b * s_t (float32) a value is e2m1(x / d) * d (0 where d is 0)."""
    x32 = np.asarray(x, np.float32)
    if tensor_scale is None:
        s_t = np.float32(np.max(np.abs(x32)) / np.float32(448.0 * 6.0)) if x32.size else np.float32(0)
        s_t = np.float32(1.0) if s_t == 0 else s_t
    else:
        s_t = np.float32(np.asarray(tensor_scale).reshape(()))
    amax = _block_amax(x32, axis, block).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s_b = round_to_format(amax / (np.float32(6.0) * s_t), "fp8_e4m3").astype(np.float32)
        d = (s_b * s_t).astype(np.float32)
        v = np.where(d == 0, np.float32(0), x32 / np.where(d == 0, np.float32(1), d))
        return (round_to_format(v, "fp4_e2m1").astype(np.float32) * d).astype(np.float32)


def _token(x: np.ndarray, fmt: str, axis: int, clip: float) -> np.ndarray:
    """Per-token: each row along `axis` has the scale amax_row * clip / qmax (amax over
    the row's non-NaN |x|; 1 when that is 0), then linear quantization with it."""
    x32 = np.asarray(x, np.float32)
    lo, hi = _INT_RANGES[fmt]
    amax = np.nanmax(np.abs(np.where(np.isnan(x32), 0, x32)), axis=axis, keepdims=True)
    s = (amax * np.float32(clip / hi)).astype(np.float32)
    s[s == 0] = 1
    with np.errstate(invalid="ignore"):
        v = x32 / s
        q = np.where(np.isnan(v), lo, np.clip(np.round(v.astype(np.float64)), lo, hi))
        return (q.astype(np.float32) * s).astype(np.float32)


def fake_quantize(x, scale=None, zero_point=None, *, dtype: str, granularity: str = "tensor", axis: int = -1,
                  group_size: int = 0, clip: float = 1.0) -> np.ndarray:
    """FakeQuantize(X, scale?, zero_point?): float32 quantize-dequantize in the format
    `dtype` ("tensor" / "channel" / "group" with the given scale; "mx" and "nv" blocks
    of group_size, default 32 and 16, with their scales computed from the data)."""
    x = np.asarray(x)
    ax = axis % x.ndim if x.ndim else 0
    if granularity == "mx":
        return _mx(x, ax, group_size or 32)
    if granularity == "nv":
        return _nv(x, scale, ax, group_size or 16)
    if granularity == "token":
        return _token(x, dtype, ax, clip)
    block = group_size if granularity == "group" else 0
    return _linear(x, scale, zero_point, dtype, ax, block)


# ----------------------------------------------------------------------------- rotations


def _legendre(a: int, q: int) -> int:
    """The quadratic character of a mod prime q (Euler's criterion): 0, 1 or -1."""
    a %= q
    return 0 if a == 0 else (1 if pow(a, (q - 1) // 2, q) == 1 else -1)


def _paley(q: int) -> np.ndarray:
    """Paley's Hadamard matrix for a prime q: order q + 1 (q = 3 mod 4, I + [[0, 1], [-1, Q]])
    or 2(q + 1) (q = 1 mod 4, [[0, 1], [1, Q]] (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]),
    with Q[i, j] the character of j - i."""
    jac = np.array([[_legendre(j - i, q) for j in range(q)] for i in range(q)])
    core = np.zeros((q + 1, q + 1), np.int64)
    core[0, 1:] = 1
    core[1:, 0] = -1 if q % 4 == 3 else 1
    core[1:, 1:] = jac
    if q % 4 == 3:
        return np.eye(q + 1, dtype=np.int64) + core
    return np.kron(core, [[1, 1], [1, -1]]) + np.kron(np.eye(q + 1, dtype=np.int64), [[1, -1], [-1, -1]])


def _hadamard_matrix(n: int) -> np.ndarray:
    """Sylvester's matrix for n = 2^m; else H_K (x) H_(2^m), K = 4 x the odd part of n, K from
    Paley with a prime q (the cases only use such orders)."""
    odd = n
    while odd % 2 == 0:
        odd //= 2
    k = 4 * odd if odd > 1 else 1
    syl = np.ones((1, 1), np.int64)
    while syl.shape[0] < n // k:
        syl = np.block([[syl, syl], [syl, -syl]])
    if k == 1:
        return syl
    q = k - 1 if (k - 1) % 4 == 3 and all((k - 1) % d for d in range(2, k - 1)) else k // 2 - 1
    return np.kron(_paley(q), syl)


def hadamard(x, *, axis: int = -1, block: int = 0) -> np.ndarray:
    """Hadamard(X): X @ H_n / sqrt(n) along `axis` as one dense product in float64, rounded
    once to X's dtype; with `block` b, X @ (I_(n/b) (x) H_b / sqrt(b)) built with np.kron."""
    x = np.asarray(x)
    moved = np.moveaxis(x.astype(np.float64), axis, -1)
    n = moved.shape[-1]
    b = block or n
    y = moved @ np.kron(np.eye(n // b), _hadamard_matrix(b) / math.sqrt(b))
    return np.moveaxis(y, -1, axis).astype(x.dtype)


def _hadamard_node(inputs: list, attrs: dict) -> list[np.ndarray]:
    return [hadamard(inputs[0], **attrs)]


# ----------------------------------------------------------------------------- integer-only ops
#
# Written from the I-ViT reference model's formulas (zkkli/I-ViT, IntSoftmax / IntGELU /
# IntLayerNorm: floor() of real quotients, r/2 - x0 computed as a fraction) and I-BERT's
# (kssteven418/I-BERT, int_exp / int_erf), evaluated element by element in exact rational
# arithmetic (Python ints and fractions.Fraction), not with the shifts of requant's kernels.

_I32_MAX = 2**31 - 1
_OUT_RANGES = {"i8": (-128, 127), "int8": (-128, 127), "u8": (0, 255), "uint8": (0, 255),
               "i16": (-(2**15), 2**15 - 1), "int16": (-(2**15), 2**15 - 1),
               "i32": (-(2**31), 2**31 - 1), "int32": (-(2**31), 2**31 - 1)}
_OUT_NP = {"i8": np.int8, "int8": np.int8, "u8": np.uint8, "uint8": np.uint8, "i16": np.int16, "int16": np.int16,
           "i32": np.int32, "int32": np.int32}


def _floor(v) -> int:
    from fractions import Fraction

    return math.floor(Fraction(v))


def _round_half_up(num: int, den: int) -> int:
    """round(num / den), halves up, exactly."""
    from fractions import Fraction

    return math.floor(Fraction(num, den) + Fraction(1, 2))


def _clip(v: int, to: str) -> int:
    lo, hi = _OUT_RANGES[to]
    return min(max(v, lo), hi)


def _param(p, shape: tuple, axis: int) -> np.ndarray:
    """A per-tensor or per-channel parameter broadcast to `shape` as Python ints."""
    if p is None:
        return np.zeros(shape, dtype=object)
    p = np.asarray(p).astype(object)
    if p.size == 1 or not shape:
        return np.full(shape, int(p.reshape(-1)[0]), dtype=object)
    view = [1] * len(shape)
    view[axis % len(shape)] = -1
    return np.broadcast_to(p.reshape(view), shape)


def _dyadic_term(x: int, mult: int, shift: int, offset: int = 0) -> int:
    """round((x * mult + offset) / 2^shift), halves up."""
    return _round_half_up(x * mult + offset, 2**shift)


def requantize(x, multiplier, shift, offset=None, *, to: str, axis: int = -1) -> np.ndarray:
    x = np.asarray(x)
    m, s, o = (_param(p, x.shape, axis) for p in (multiplier, shift, offset))
    out = [_clip(_dyadic_term(int(a), int(b), int(c), int(d)), to)
           for a, b, c, d in zip(x.reshape(-1), m.reshape(-1), s.reshape(-1), o.reshape(-1))]
    return np.array(out, dtype=_OUT_NP[to]).reshape(x.shape)


def dyadic_add(a, a_multiplier, a_shift, b, b_multiplier, b_shift, offset=None, *, to: str, axis: int = -1):
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    a, b = np.broadcast_to(np.asarray(a), shape), np.broadcast_to(np.asarray(b), shape)
    ps = [_param(p, shape, axis) for p in (a_multiplier, a_shift, b_multiplier, b_shift, offset)]
    out = []
    for va, vb, am, ash, bm, bsh, off in zip(a.reshape(-1), b.reshape(-1), *(p.reshape(-1) for p in ps)):
        v = _dyadic_term(int(va), int(am), int(ash)) + _dyadic_term(int(vb), int(bm), int(bsh)) + int(off)
        out.append(_clip(v, to))
    return np.array(out, dtype=_OUT_NP[to]).reshape(shape)


def i_layernorm(x, *, steps: int = 10, k0: int = 2**16) -> np.ndarray:
    """I-ViT's IntLayerNorm without gamma/beta, row by row (mean rounded half up; the
    Newton iterate kept >= 1, as the op states)."""
    x = np.asarray(x)
    rows = x.reshape(-1, x.shape[-1])
    out = np.zeros(rows.shape, np.int32)
    n = rows.shape[1]
    for i, row in enumerate(rows):
        vals = [int(v) for v in row]
        mean = _round_half_up(sum(vals), n)
        y = [v - mean for v in vals]
        var = sum(v * v for v in y)
        k = k0
        for _ in range(steps):
            k = max(_floor((k + _floor(var / k)) / 2), 1)
        factor = _floor(_I32_MAX / k)
        out[i] = [_clip(_floor(v * factor / 2), "i32") for v in y]
    return out.reshape(x.shape)


def _ivit_shift_exp(x_int: int, x0: int, n: int) -> int:
    """I-ViT's int_exp_shift: floor steps on real quotients, r/2 - x0 as a fraction."""
    from fractions import Fraction

    x_int = x_int + _floor(Fraction(x_int, 2)) - _floor(Fraction(x_int, 16))
    x_int = max(x_int, n * x0)
    q = _floor(Fraction(x_int, x0))
    r = x_int - x0 * q
    exp_int = Fraction(r, 2) - x0
    return max(_floor(exp_int * Fraction(2) ** (n - q)), 0)


def _ibert_poly_exp(x_int: int, x0: int, b: int, c: int, n: int) -> int:
    """I-BERT's int_exp: z = r (r + b) + c on r = x - x0 floor(x / x0), then * 2^-q."""
    from fractions import Fraction

    x_int = max(x_int, n * x0)
    q = _floor(Fraction(x_int, x0))
    r = x_int - x0 * q
    z = r * (r + b) + c
    return max(_floor(Fraction(z) / Fraction(2) ** q), 0)


def _softmax_rows(x, mask, exp, frac_bits: int, to: str) -> np.ndarray:
    x = np.asarray(x)
    keep = np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape)
    rows, keeps = x.reshape(-1, x.shape[-1]), keep.reshape(-1, x.shape[-1])
    out = np.zeros(rows.shape, _OUT_NP[to])
    for i, (row, kept) in enumerate(zip(rows, keeps)):
        kept_vals = [int(v) for v, k in zip(row, kept) if k]
        if not kept_vals:
            continue
        top = max(kept_vals)
        e = [exp(int(v) - top) if k else 0 for v, k in zip(row, kept)]
        total = min(sum(e), _I32_MAX)
        factor = _floor(_I32_MAX / total)
        out[i] = [_clip(_floor(v * factor / 2 ** (31 - frac_bits)), to) for v in e]
    return out.reshape(x.shape)


def shiftmax(x, mask=None, *, x0: int, n: int = 15, frac_bits: int = 15, to: str = "int16") -> np.ndarray:
    return _softmax_rows(x, mask, lambda d: _ivit_shift_exp(d, x0, n), frac_bits, to)


def poly_softmax(x, mask=None, *, x0: int, b: int, c: int, n: int = 30, frac_bits: int = 15,
                 to: str = "int16") -> np.ndarray:
    return _softmax_rows(x, mask, lambda d: _ibert_poly_exp(d, x0, b, c, n), frac_bits, to)


def shift_gelu(x, *, x0: int, n: int = 23, frac_bits: int = 7) -> np.ndarray:
    """I-ViT's IntGELU with the subtracted max taken per element, max(x, 0) (the op's
    stated deviation from I-ViT's row max)."""
    out = []
    for v in (int(a) for a in np.asarray(x).reshape(-1)):
        top = max(v, 0)
        e, e_top = _ivit_shift_exp(v - top, x0, n), _ivit_shift_exp(-top, x0, n)
        factor = _floor(_I32_MAX / min(e + e_top, _I32_MAX))
        sig = _floor(e * factor / 2 ** (31 - frac_bits))
        out.append(_clip(v * sig, "i32"))
    return np.array(out, np.int32).reshape(np.shape(x))


def poly_gelu(x, *, b: int, c: int, shift: int, one: int) -> np.ndarray:
    """I-BERT's IntGELU: int_erf, then x * (erf + 1), all in integers."""
    x = np.asarray(x)
    out = []
    for v in (int(a) for a in x.reshape(-1)):
        sign = (v > 0) - (v < 0)
        y = _floor((sign * ((min(abs(v), -b) + b) ** 2 + c)) / 2**shift)
        out.append(_clip(v * (y + one), "i32"))
    return np.array(out, np.int32).reshape(x.shape)


def tanh_gelu(x, *, clip: int, lin: int, cube_mult: int, cube_shift: int, z_shift: int,
              frac_bits: int = 15) -> np.ndarray:
    """GELU's tanh form x * sigmoid(z), z = x (lin + x^2 cube) at scale 2^-10, the sigmoid
    1 / (1 + exp(-|z|)) with I-BERT's int_exp at that scale (x0 = floor(-0.6931 * 2^10),
    b, c as I-BERT's int_polynomial), mirrored for z < 0."""
    from fractions import Fraction

    x0 = _floor(Fraction(-6931, 10000) * 2**10)
    b = _floor(Fraction(96963238, 35815147) * 2**10)
    c = _floor(Fraction(100000000, 35815147) * 2**20)
    out = []
    for v in (int(a) for a in np.asarray(x).reshape(-1)):
        xc = min(max(v, -clip), clip)
        w = lin + _round_half_up(xc * xc * cube_mult, 2**cube_shift)
        z = _round_half_up(xc * w, 2**z_shift)
        e = _ibert_poly_exp(-abs(z), x0, b, c, 30)
        sig = _floor(Fraction(c * 2**frac_bits, c + e))
        if z < 0:
            sig = 2**frac_bits - sig
        out.append(_clip(v * sig, "i32"))
    return np.array(out, np.int32).reshape(np.shape(x))


def _sdpa_node(inputs: list, attrs: dict) -> list[np.ndarray]:
    q, k, v = inputs[:3]
    mask = inputs[3] if len(inputs) > 3 else None
    return [scaled_dot_product_attention(q, k, v, mask, scale=attrs.get("scale", 0.0), is_causal=attrs.get("is_causal", 0))]


def _fake_quantize_node(inputs: list, attrs: dict) -> list[np.ndarray]:
    x, scale, zp = (inputs + [None, None])[:3]
    return [fake_quantize(x, scale, zp, **attrs)]


NUMPY_REFERENCES: dict[str, Callable[[list, dict], list[np.ndarray]]] = {
    "ScaledDotProductAttention": _sdpa_node,
    "FakeQuantize": _fake_quantize_node,
    "Requantize": lambda ins, attrs: [requantize(*ins, **attrs)],
    "DyadicAdd": lambda ins, attrs: [dyadic_add(*ins, **attrs)],
    "ILayerNorm": lambda ins, attrs: [i_layernorm(*ins, **attrs)],
    "Shiftmax": lambda ins, attrs: [shiftmax(*ins, **attrs)],
    "PolySoftmax": lambda ins, attrs: [poly_softmax(*ins, **attrs)],
    "ShiftGELU": lambda ins, attrs: [shift_gelu(*ins, **attrs)],
    "PolyGELU": lambda ins, attrs: [poly_gelu(*ins, **attrs)],
    "TanhGELU": lambda ins, attrs: [tanh_gelu(*ins, **attrs)],
    "Hadamard": _hadamard_node,
}


# ----------------------------------------------------------------------------- FFT family
# Dense DFT matrices and materialised Toeplitz/circulant products in float64: no FFT
# algorithm and no requant code, so a wrong twiddle, bin or offset shows.


def _dft_matrix(n_out: int, n_in: int, sign: float) -> np.ndarray:
    """[n_out, n_in] complex: exp(sign 2 pi i k t / n_in) for output k, input t."""
    k = np.arange(n_out)[:, None]
    t = np.arange(n_in)[None, :]
    return np.exp(sign * 2j * np.pi * (k * t % n_in) / n_in)


def _along(x: np.ndarray, axis: int, matrix: np.ndarray) -> np.ndarray:
    """matrix [n_out, n_in] applied along `axis` of x."""
    moved = np.moveaxis(x, axis, -1)
    return np.moveaxis(moved @ matrix.T, -1, axis)


def rfft(x, *, n: int = 0, axis: int = -1) -> np.ndarray:
    """The n//2 + 1 first DFT bins of x zero-padded / truncated to n along axis."""
    x64 = np.moveaxis(x.astype(np.float64), axis, -1)
    n = n or x64.shape[-1]
    fitted = np.zeros(x64.shape[:-1] + (n,))
    keep = min(n, x64.shape[-1])
    fitted[..., :keep] = x64[..., :keep]
    z = np.moveaxis(fitted @ _dft_matrix(n // 2 + 1, n, -1.0).T, -1, axis)
    return np.stack([z.real, z.imag], axis=-1).astype(x.dtype)


def irfft(x, *, n: int = 0, axis: int = -1) -> np.ndarray:
    """n real samples of the Hermitian spectrum whose first bins x gives: the full
    spectrum is rebuilt (bin k and bin n - k conjugate; the imaginary parts of bin 0 and
    of bin n/2 dropped), inverse DFT, 1/n."""
    z = x[..., 0].astype(np.float64) + 1j * x[..., 1].astype(np.float64)
    z = np.moveaxis(z, axis, -1)
    bins = z.shape[-1]
    n = n or 2 * (bins - 1)
    full = np.zeros(z.shape[:-1] + (n,), complex)
    half = n // 2 + 1
    full[..., : min(half, bins)] = z[..., : min(half, bins)]
    full[..., 0] = full[..., 0].real
    if n % 2 == 0:
        full[..., n // 2] = full[..., n // 2].real
    for k in range(1, (n + 1) // 2):
        full[..., n - k] = np.conj(full[..., k])
    out = (full @ _dft_matrix(n, n, 1.0).T).real / n
    return np.moveaxis(out, -1, axis).astype(x.dtype)


def _circulant_from_spectrum(s: np.ndarray, n: int, n_fft: int) -> np.ndarray:
    """[..., n, n] Toeplitz blocks T[i, j] = h[(i - j) mod n_fft] of the circulants whose
    first columns h have the spectra s [..., bins, 2] (last complex axis = bins)."""
    h = irfft(s.astype(np.float64), n=n_fft, axis=-1)
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    return h[..., (i - j) % n_fft]


def toeplitz_matmul_fft(x, s, *, n_fft: int, axis: int = -2) -> np.ndarray:
    """T @ X along axis with T materialised from the spectrum (S right-aligned with X)."""
    from_end = (axis % x.ndim) - x.ndim
    n = x.shape[from_end]
    s_bins_last = np.moveaxis(s.astype(np.float64), from_end - 1, -2)  # [..., bins, 2]
    t = _circulant_from_spectrum(s_bins_last, n, n_fft)  # [..., n, n] per broadcast position
    x64 = np.moveaxis(x.astype(np.float64), from_end, -1)[..., None, :]  # [..., 1, n]
    y = np.sum(t * x64, axis=-1)  # [..., n]: row i = sum_j T[i, j] x_j
    return np.moveaxis(y, -1, from_end).astype(x.dtype)


def toeplitz_low_rank_matmul_fft(p, k, v, s, *, n_fft: int) -> np.ndarray:
    """((P K^T) * T) @ V with the n x n matrices materialised."""
    n = p.shape[-2]
    t = _circulant_from_spectrum(s.astype(np.float64), n, n_fft)
    scores = p.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2)
    return ((scores * t) @ v.astype(np.float64)).astype(p.dtype)


NUMPY_REFERENCES.update({
    "RFFT": lambda inputs, attrs: [rfft(inputs[0], **attrs)],
    "IRFFT": lambda inputs, attrs: [irfft(inputs[0], **{**attrs, "axis": attrs.get("axis", -1) % (inputs[0].ndim - 1)})],
    "ToeplitzMatMulFFT": lambda inputs, attrs: [toeplitz_matmul_fft(*inputs, **attrs)],
    "ToeplitzLowRankMatMulFFT": lambda inputs, attrs: [toeplitz_low_rank_matmul_fft(*inputs, **attrs)],
})
