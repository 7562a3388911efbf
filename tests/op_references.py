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

__all__ = ["NUMPY_REFERENCES", "scaled_dot_product_attention", "fake_quantize"]


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


def fake_quantize(x, scale=None, zero_point=None, *, dtype: str, granularity: str = "tensor", axis: int = -1,
                  group_size: int = 0) -> np.ndarray:
    """FakeQuantize(X, scale?, zero_point?): float32 quantize-dequantize in the format
    `dtype` ("tensor" / "channel" / "group" with the given scale; "mx" and "nv" blocks
    of group_size, default 32 and 16, with their scales computed from the data)."""
    x = np.asarray(x)
    ax = axis % x.ndim if x.ndim else 0
    if granularity == "mx":
        return _mx(x, ax, group_size or 32)
    if granularity == "nv":
        return _nv(x, scale, ax, group_size or 16)
    block = group_size if granularity == "group" else 0
    return _linear(x, scale, zero_point, dtype, ax, block)


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
}
