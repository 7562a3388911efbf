"""Quantization schemes and the exact codecs of requant's number formats.

What it owns:
- `QuantScheme`: a dtype plus a granularity ("tensor", "channel", "group", "mx", "nv",
  "token"),
  the channel/group/block axis, the group size and the symmetry; `to_attrs`/`from_attrs`
  give the JSON-able form kept in `Value.meta["quant"]`, `op_attrs`/`from_op_attrs` the
  attributes of the `FakeQuantize` op. Named schemes: `INT8_PER_TENSOR`, `MXFP4`, ...,
  `parse_scheme("int4-g32")`.
- Element codecs (`encode`): a float already divided by its scale -> the format's
  storage, rounding half to even and saturating:
  - int8/uint8/int4/uint4 (int4/uint4 stored widened in int8/uint8): NaN -> the lowest
    code (what ONNX Runtime's MLAS and ONNX's reference give), +-inf -> the ends;
  - fp8_e4m3 (E4M3FN: bias 7, max 448, no inf, NaN = S.1111.111) and fp8_e5m2 (bias 15,
    max 57344, inf and NaN): NaN stays NaN; with saturate (the default) +-inf and values
    past max become +-max, without it e4m3 overflow is NaN and e5m2 overflow +-inf;
  - fp4_e2m1 (+-{0, .5, 1, 1.5, 2, 3, 4, 6}) and `FloatFormat` (no inf/NaN): saturating,
    NaN -> +max (as `requant.ir.ops.cast.cast_to`, which does the rounding).
- Bit codes: `to_bits`/`from_bits` between storage and the raw 2**bits codes, and
  `decode_bits`, the value of each code computed from the format's definition alone.
- ONNX's linear quantization (`quantize_linear`/`dequantize_linear`: scalar, per-axis
  and blocked scales with ONNX's layouts, division x / scale in float32 as ONNX Runtime
  does) which the QuantizeLinear/DequantizeLinear ops and the scheme codecs share.
- Scheme codecs: `tensor_ranges`, `choose_qparams`, `quantize`, `dequantize`,
  `fake_quantize`, and the block formats `quantize_blocks`/`dequantize_blocks`:
  - MXFP4 (OCP MX v1.0): blocks of 32 E2M1 values along the axis share an E8M0 scale
    2^(floor(log2 amax) - 2), clamped below at 2^-127, stored as the uint8 biased
    exponent (code = exponent + 127); a block holding NaN or +-inf gets the NaN scale
    (code 255) and decodes to NaN throughout.
  - per-token dynamic integers (`fake_quantize_tokens`; QuaRot's activation
    quantizer): each row along the axis (a token's features for a linear's input) gets
    its own symmetric scale from the data, s = amax_row * m with m = float32(clip / q)
    (q = 2^(bits-1) - 1; `clip` in (0, 1] shrinks the range, values past it saturate),
    amax_row ignoring NaN, s = 1 for an all-zero row; then codes = rint(x / s) in
    float32, saturated to the dtype's range (NaN -> the lowest code, as QuantizeLinear),
    and y = codes * s.
  - NVFP4: blocks of 16 E2M1 values share an fp8_e4m3 scale s_b = e4m3(amax_b / (6 s_t))
    (saturating), with one float32 tensor scale s_t = amax_tensor / (448 * 6) (1 when
    the tensor is all zero, or given, e.g. from calibration). With d = f32(s_b) * s_t:
    code = e2m1(x / d) (0 where d == 0), value = f32(code) * d, all in float32.
  A partial last block (axis length not a multiple of the block) is a shorter block.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from requant.ir import dtypes
from requant.ir.dtypes import DType, FloatFormat
from requant.ir.ops.cast import cast_to, round_to_float_format

__all__ = [
    "GRANULARITIES",
    "INTEGER_FORMATS",
    "FLOAT_FORMATS",
    "QuantScheme",
    "BlockQuantized",
    "INT8_PER_TENSOR",
    "UINT8_PER_TENSOR",
    "FP8_E4M3_PER_TENSOR",
    "FP8_E5M2_PER_TENSOR",
    "MXFP4",
    "NVFP4",
    "int8_per_channel",
    "int4_per_group",
    "uint4_per_group",
    "fp8_per_channel",
    "parse_scheme",
    "is_quant_dtype",
    "format_max",
    "encode",
    "to_bits",
    "from_bits",
    "decode_bits",
    "expand_param",
    "quantize_linear",
    "dequantize_linear",
    "tensor_ranges",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
    "quantize_blocks",
    "dequantize_blocks",
    "e8m0_decode",
    "NVFP4_TENSOR_DIVISOR",
    "fake_quantize_tokens",
    "token_multiplier",
]

logger = logging.getLogger(__name__)

GRANULARITIES = ("tensor", "channel", "group", "mx", "nv", "token")
INTEGER_FORMATS = frozenset({dtypes.int8, dtypes.uint8, dtypes.int4, dtypes.uint4, dtypes.int16, dtypes.uint16})
FLOAT_FORMATS = frozenset({dtypes.fp8_e4m3, dtypes.fp8_e5m2, dtypes.fp4_e2m1})

_BLOCK_DEFAULTS = {"mx": 32, "nv": 16}
_FP4_EMAX = 2  # exponent of E2M1's largest binade: 6 = 1.5 * 2^2
NVFP4_TENSOR_DIVISOR = 448.0 * 6.0
"""NVFP4's tensor scale is amax_tensor / NVFP4_TENSOR_DIVISOR (e4m3 max times e2m1 max)."""


def is_quant_dtype(dt: DType) -> bool:
    """Whether `dt` is a format the codecs quantize to."""
    return dt in INTEGER_FORMATS or dt in FLOAT_FORMATS or isinstance(dt, FloatFormat)


def format_max(dt: DType) -> float:
    """Largest finite value of a float format (448, 57344, 6, `FloatFormat.max_value`)."""
    if isinstance(dt, FloatFormat):
        return dt.max_value
    if dt in FLOAT_FORMATS:
        import ml_dtypes

        return float(ml_dtypes.finfo(dt.np).max)
    raise ValueError(f"{dt} is not a float format")


# ----------------------------------------------------------------------------- schemes


@dataclass(frozen=True)
class QuantScheme:
    """How a tensor is quantized: its format and which elements share a scale.

    granularity: "tensor" (one scale), "channel" (one per index of `axis`), "group"
    (blocks of `group_size` consecutive elements along `axis`, ONNX's blocked layout),
    "mx" (MXFP4: E2M1 blocks of 32 with E8M0 scales) or "nv" (NVFP4: E2M1 blocks of 16
    with E4M3 scales and a float32 tensor scale) or "token" (signed integers, one
    symmetric scale per row along `axis` computed from the data at run time: dynamic
    per-token activations). For MatMul weights [K, N] the channel axis is 1 (per output
    column) and the group axis 0 (groups along K). "channel" and "group" need an axis;
    "mx"/"nv"/"token" default to the last axis ("mx"/"nv" to their block sizes). Float
    formats are symmetric (no zero point)."""

    dtype: DType
    granularity: str = "tensor"
    axis: int | None = None
    group_size: int | None = None
    symmetric: bool = True

    def __post_init__(self) -> None:
        dt = dtypes.dtype(self.dtype)
        object.__setattr__(self, "dtype", dt)
        g = self.granularity
        if g not in GRANULARITIES:
            raise ValueError(f"granularity {g!r} is not one of {', '.join(GRANULARITIES)}")
        if not is_quant_dtype(dt):
            raise ValueError(f"{dt} is not a quantization format (int8/uint8/int4/uint4/fp8/fp4/FloatFormat)")
        if g in ("mx", "nv"):
            if dt != dtypes.fp4_e2m1:
                raise ValueError(f"granularity {g!r} holds fp4_e2m1 elements, not {dt}")
            object.__setattr__(self, "axis", -1 if self.axis is None else int(self.axis))
            object.__setattr__(self, "group_size", self.group_size or _BLOCK_DEFAULTS[g])
        elif g == "token":
            if dt.kind != "int" or not dt.is_integer:
                raise ValueError(f"granularity 'token' takes signed integer formats (int4, int8), not {dt}")
            if not self.symmetric:
                raise ValueError("granularity 'token' is symmetric (its scale comes from each row's amax)")
            object.__setattr__(self, "axis", -1 if self.axis is None else int(self.axis))
        elif g in ("channel", "group"):
            if self.axis is None:
                raise ValueError(f"granularity {g!r} needs an axis")
            object.__setattr__(self, "axis", int(self.axis))
        if g == "group" and (self.group_size is None or int(self.group_size) < 1):
            raise ValueError("granularity 'group' needs group_size >= 1")
        if g in ("tensor", "channel", "token") and self.group_size is not None:
            raise ValueError(f"granularity {g!r} takes no group_size")
        if g == "tensor" and self.axis is not None:
            object.__setattr__(self, "axis", None)
        if self.group_size is not None:
            object.__setattr__(self, "group_size", int(self.group_size))
        if not self.symmetric and not dt.is_integer:
            raise ValueError(f"{dt} is symmetric only (float formats have no zero point)")
        object.__setattr__(self, "symmetric", bool(self.symmetric))

    @property
    def is_block_format(self) -> bool:
        """MX / NV: scales come from the data (`quantize_blocks`)."""
        return self.granularity in ("mx", "nv")

    @property
    def block_size(self) -> int:
        """ONNX's block_size for this scheme (0 unless blocked)."""
        return self.group_size if self.granularity in ("group", "mx", "nv") else 0

    def describe(self) -> str:
        """e.g. "int8 per-channel(axis=1) sym", "int4 per-group(axis=0, size=32) asym", "mxfp4(axis=-1, block=32)"."""
        if self.is_block_format:
            return f"{self.granularity}fp4(axis={self.axis}, block={self.group_size})"
        name = self.dtype.name
        if self.granularity == "tensor":
            where = "per-tensor"
        elif self.granularity == "channel":
            where = f"per-channel(axis={self.axis})"
        elif self.granularity == "token":
            return f"{name} per-token(axis={self.axis}) dynamic"
        else:
            where = f"per-group(axis={self.axis}, size={self.group_size})"
        sym = (" sym" if self.symmetric else " asym") if self.dtype.is_integer else ""
        return f"{name} {where}{sym}"

    def __str__(self) -> str:
        return self.describe()

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able description (for `Value.meta["quant"]`); `from_attrs` inverts it."""
        out: dict[str, Any] = {"dtype": self.dtype.short, "granularity": self.granularity}
        if self.axis is not None:
            out["axis"] = self.axis
        if self.group_size is not None:
            out["group_size"] = self.group_size
        out["symmetric"] = self.symmetric
        return out

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> QuantScheme:
        return cls(
            dtypes.dtype(attrs["dtype"]),
            attrs.get("granularity", "tensor"),
            attrs.get("axis"),
            attrs.get("group_size"),
            bool(attrs.get("symmetric", True)),
        )

    def op_attrs(self) -> dict[str, Any]:
        """Attributes of a `FakeQuantize` node simulating this scheme (dtype, granularity,
        axis, group_size; the zero point input says whether it is asymmetric)."""
        out: dict[str, Any] = {"dtype": self.dtype.short, "granularity": self.granularity}
        if self.axis is not None:
            out["axis"] = self.axis
        if self.group_size is not None:
            out["group_size"] = self.group_size
        return out

    @classmethod
    def from_op_attrs(cls, attrs: dict[str, Any], symmetric: bool = True) -> QuantScheme:
        g = attrs.get("granularity", "tensor")
        gs = int(attrs.get("group_size", 0) or 0)
        axis = attrs.get("axis")
        return cls(
            dtypes.dtype(attrs["dtype"]),
            g,
            None if g == "tensor" else (-1 if axis is None else int(axis)),
            gs if gs > 0 and g != "channel" and g != "tensor" else None,
            symmetric,
        )


INT8_PER_TENSOR = QuantScheme(dtypes.int8, "tensor")
UINT8_PER_TENSOR = QuantScheme(dtypes.uint8, "tensor", symmetric=False)
FP8_E4M3_PER_TENSOR = QuantScheme(dtypes.fp8_e4m3, "tensor")
FP8_E5M2_PER_TENSOR = QuantScheme(dtypes.fp8_e5m2, "tensor")
MXFP4 = QuantScheme(dtypes.fp4_e2m1, "mx")
NVFP4 = QuantScheme(dtypes.fp4_e2m1, "nv")


def int8_per_channel(axis: int = 1, symmetric: bool = True) -> QuantScheme:
    return QuantScheme(dtypes.int8, "channel", axis, symmetric=symmetric)


def int4_per_group(group_size: int = 32, axis: int = 0, symmetric: bool = True) -> QuantScheme:
    return QuantScheme(dtypes.int4, "group", axis, group_size, symmetric)


def uint4_per_group(group_size: int = 32, axis: int = 0) -> QuantScheme:
    return QuantScheme(dtypes.uint4, "group", axis, group_size, symmetric=False)


def fp8_per_channel(axis: int = 1, dtype: DType = dtypes.fp8_e4m3) -> QuantScheme:
    return QuantScheme(dtype, "channel", axis)


def parse_scheme(text: str, *, channel_axis: int = 1, group_axis: int = 0) -> QuantScheme:
    """A scheme from a short name: "<dtype>[-channel|-g<size>|-token][-axis<n>][-sym|-asym]"
    (dtype: int8, uint8, int4, uint4, fp8_e4m3, fp8_e5m2, fp4_e2m1, ff_e<E>m<M>_b<bias>),
    or "mxfp4" / "nvfp4" [-axis<n>]. Unsigned integers default to asymmetric."""
    parts = text.strip().lower().split("-")
    head, rest = parts[0], parts[1:]
    axis: int | None = None
    gran, group, sym = "tensor", None, None
    if head in ("mxfp4", "nvfp4"):
        gran, dt = head[:2], dtypes.fp4_e2m1
    else:
        try:
            dt = dtypes.dtype(head)
        except ValueError as exc:
            raise ValueError(f"scheme {text!r}: {exc}") from None
    for p in rest:
        if p == "tensor":
            gran = "tensor"
        elif p in ("channel", "token"):
            gran = p
        elif p.startswith("g") and p[1:].isdigit():
            gran, group = "group", int(p[1:])
        elif p.startswith("axis") and p[4:].lstrip("-").isdigit():
            axis = int(p[4:])
        elif p in ("sym", "asym"):
            sym = p == "sym"
        else:
            raise ValueError(f"scheme {text!r}: unknown part {p!r}")
    if gran == "channel" and axis is None:
        axis = channel_axis
    if gran == "group" and axis is None:
        axis = group_axis
    if sym is None:
        sym = dt.kind != "uint"
    return QuantScheme(dt, gran, axis, group, sym)


# ----------------------------------------------------------------------------- element codecs


def encode(v: np.ndarray, dt: DType, saturate: bool = True) -> np.ndarray:
    """`v` (already divided by its scale) in `dt`'s storage: round half to even,
    saturate, NaN per the module docstring. No zero point."""
    dt = dtypes.dtype(dt)
    v = np.asarray(v)
    if dt.is_integer:
        lo, hi = dt.int_range
        r = np.rint(v.astype(np.float64))
        r = np.where(np.isnan(r), float(lo), np.clip(r, lo, hi))
        return r.astype(dt.np)
    if isinstance(dt, FloatFormat):
        return round_to_float_format(v, dt)
    if dt in FLOAT_FORMATS:
        return cast_to(v, dt, saturate)
    raise ValueError(f"{dt} is not a quantization format")


def _float_layout(dt: DType) -> tuple[int, int, float, str]:
    """(exponent bits, mantissa bits, bias, special-value rule) of a float format."""
    if isinstance(dt, FloatFormat):
        return dt.exp_bits, dt.man_bits, dt.bias, "none"
    if dt == dtypes.fp8_e4m3:
        return 4, 3, 7.0, "fn"  # finite, NaN = all ones
    if dt == dtypes.fp8_e5m2:
        return 5, 2, 15.0, "ieee"  # inf and NaN at the top exponent
    if dt == dtypes.fp4_e2m1:
        return 2, 1, 1.0, "none"
    raise ValueError(f"{dt} is not a float format")


def decode_bits(codes: np.ndarray, dt: DType) -> np.ndarray:
    """The value of each raw code (0 .. 2**bits - 1) from the format's definition:
    integers two's complement (int4: 8..15 -> -8..-1); floats sign/exponent/mantissa
    with subnormals at exponent field 0, inf/NaN per format. float64 (FloatFormat's
    values are rounded to float32 first, as they are stored)."""
    dt = dtypes.dtype(dt)
    c = np.asarray(codes).astype(np.int64)
    if dt.is_integer:
        if dt.kind == "int":
            return (c - ((c >> (dt.bits - 1)) & 1) * (1 << dt.bits)).astype(np.float64)
        return c.astype(np.float64)
    e_bits, m_bits, bias, rule = _float_layout(dt)
    sign = np.where((c >> (e_bits + m_bits)) & 1, -1.0, 1.0)
    e = (c >> m_bits) & ((1 << e_bits) - 1)
    m = c & ((1 << m_bits) - 1)
    frac = m / float(1 << m_bits)
    grid = np.where(e == 0, frac * 2.0, (1.0 + frac) * np.exp2(e.astype(np.float64)))  # value * 2^bias
    if isinstance(dt, FloatFormat):
        value = (grid / 2.0**bias).astype(np.float32).astype(np.float64)
    else:
        value = grid / 2.0**bias
    value = sign * value
    top = (1 << e_bits) - 1
    nan = np.copysign(np.nan, sign)  # NaNs keep their sign bit, as ml_dtypes' do
    if rule == "fn":
        value = np.where((e == top) & (m == (1 << m_bits) - 1), nan, value)
    elif rule == "ieee":
        value = np.where(e == top, np.where(m == 0, sign * np.inf, nan), value)
    return value


def to_bits(q: np.ndarray, dt: DType) -> np.ndarray:
    """Raw codes (uint8 for formats of <= 8 bits, else uint16) of values in `dt`'s storage."""
    dt = dtypes.dtype(dt)
    q = np.asarray(q)
    mask = (1 << dt.bits) - 1
    if dt.is_integer:
        return (q.astype(np.int64) & mask).astype(np.uint8 if dt.bits <= 8 else np.uint16)
    if isinstance(dt, FloatFormat):
        return _float_format_bits(q, dt)
    return (q.view(np.uint8) & mask).astype(np.uint8)


def from_bits(codes: np.ndarray, dt: DType) -> np.ndarray:
    """Values in `dt`'s storage from raw codes."""
    dt = dtypes.dtype(dt)
    c = np.asarray(codes).astype(np.int64) & ((1 << dt.bits) - 1)
    if dt.is_integer:
        return decode_bits(c, dt).astype(dt.np)
    if isinstance(dt, FloatFormat):
        return decode_bits(c, dt).astype(np.float32)
    return c.astype(np.uint8).view(dt.np)


def _float_format_bits(q: np.ndarray, fmt: FloatFormat) -> np.ndarray:
    half = 1 << (fmt.exp_bits + fmt.man_bits)
    positive = decode_bits(np.arange(half), fmt).astype(np.float32)  # increasing
    mag = np.abs(q.astype(np.float32))
    idx = np.clip(np.searchsorted(positive, mag), 0, half - 1)
    if not np.array_equal(positive[idx], mag):
        raise ValueError(f"values not on the grid of {fmt}")
    return (idx + np.where(np.signbit(q), half, 0)).astype(np.uint8 if fmt.bits <= 8 else np.uint16)


# ----------------------------------------------------------------------------- ONNX linear quantization


def expand_param(p: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int = 0) -> np.ndarray:
    """A scale or zero point in ONNX's layout made broadcastable to `shape`: one element
    (per tensor), a 1-D array along `axis` (block_size 0), or blocks of `block_size`
    along `axis` (same rank as x, that dim ceil(D / block_size), a short last block)."""
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(())
    rank = len(shape)
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    axis %= rank
    d = shape[axis]
    if block_size <= 0:
        if p.ndim != 1 or p.shape[0] != d:
            raise ValueError(f"per-axis parameter of shape {p.shape} does not match dim {d} of axis {axis} of {shape}")
        dims = [1] * rank
        dims[axis] = d
        return p.reshape(dims)
    want = list(shape)
    want[axis] = -(-d // block_size)
    if list(p.shape) != want:
        raise ValueError(f"blocked parameter has shape {p.shape}, expected {tuple(want)} for {shape} "
                         f"with block_size {block_size} on axis {axis}")
    return np.repeat(p, block_size, axis=axis).take(np.arange(d), axis=axis)


def _out_dtype(zero_point: np.ndarray | None, dtype: DType | str | None) -> DType:
    if dtype is not None:
        return dtypes.dtype(dtype)
    if zero_point is not None:
        return dtypes.from_numpy(np.asarray(zero_point).dtype)
    return dtypes.uint8


def quantize_linear(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    dtype: DType | str | None = None,
    saturate: bool = True,
) -> np.ndarray:
    """ONNX QuantizeLinear: v = x / scale in float32 (x and scale converted to float32
    first, as ONNX Runtime does for f16), then integers: round half to even, + zero
    point, saturate (NaN -> lowest code); floats: `encode` (zero point must be 0).
    `dtype` defaults to the zero point's, else uint8 (int4 zero points: pass dtype)."""
    dt = _out_dtype(zero_point, dtype)
    x32 = np.asarray(x).astype(np.float32, copy=False)
    s = expand_param(np.asarray(scale).astype(np.float32, copy=False), x32.shape, axis, block_size)
    if not dt.is_integer:
        if zero_point is not None and np.any(np.asarray(zero_point).astype(np.float32) != 0):
            raise ValueError(f"a {dt} zero point must be 0")
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return encode(x32 / s, dt, saturate)
    zp = np.float64(0.0) if zero_point is None else expand_param(
        np.asarray(zero_point).astype(np.float64), x32.shape, axis, block_size)
    rows = x32.shape[0] if x32.ndim else 1
    step = max(1, _QUANTIZE_CHUNK // max(1, x32.size // max(rows, 1)))
    if rows <= step:
        return _quantize_integers(x32, s, zp, dt)
    # a large weight (an LM head) in slices of rows: the float64 intermediates of one
    # slice, not several copies of the whole tensor at once; elementwise, so exact
    out = np.empty(x32.shape, dt.np)
    for start in range(0, rows, step):
        part = slice(start, start + step)
        out[part] = _quantize_integers(x32[part], _rows_of(s, part, rows), _rows_of(zp, part, rows), dt)
    return out


_QUANTIZE_CHUNK = 1 << 22
"""Elements `quantize_linear` rounds at once (its float64 intermediates: 32 MB each)."""


def _rows_of(p: np.ndarray, part: slice, rows: int) -> np.ndarray:
    """The rows `part` of a parameter expanded against x (0-d or x's rank, leading dim
    `rows` or 1)."""
    return p[part] if p.ndim and p.shape[0] == rows and rows > 1 else p


def _quantize_integers(x32: np.ndarray, s: np.ndarray, zp: np.ndarray, dt: DType) -> np.ndarray:
    lo, hi = dt.int_range
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = x32 / s
    r = np.rint(v.astype(np.float64))
    r = np.where(np.isnan(r), lo - zp, np.clip(r, lo - zp, hi - zp)) + zp
    return r.astype(dt.np)


def dequantize_linear(
    q: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    out_dtype: Any = np.float32,
) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero point) as float32, times the scale in float32,
    converted to `out_dtype`. Float codes (fp8/fp4 storage, FloatFormat values) take no
    zero point."""
    q = np.asarray(q)
    s = expand_param(np.asarray(scale).astype(np.float32, copy=False), q.shape, axis, block_size)
    if q.dtype.kind in "iu":
        d = q.astype(np.int64)
        if zero_point is not None:
            d = d - expand_param(np.asarray(zero_point).astype(np.int64), q.shape, axis, block_size)
        d = d.astype(np.float32)
    else:
        if zero_point is not None and np.any(np.asarray(zero_point).astype(np.float32) != 0):
            raise ValueError(f"a zero point for {q.dtype} codes must be 0")
        d = q.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        y = d * s
    return y.astype(out_dtype, copy=False)


# ----------------------------------------------------------------------------- scheme codecs


def _axis_block(scheme: QuantScheme, ndim: int) -> tuple[int, int]:
    if scheme.granularity == "tensor":
        return 1, 0
    axis = scheme.axis if scheme.axis is not None else -1
    if not -ndim <= axis < ndim:
        raise ValueError(f"{scheme.describe()}: axis {axis} out of range for rank {ndim}")
    return axis % ndim, scheme.block_size


def _block_reduce(a: np.ndarray, ufunc: np.ufunc, axis: int, block: int) -> np.ndarray:
    starts = np.arange(0, a.shape[axis], block)
    return ufunc.reduceat(a, starts, axis=axis)


def tensor_ranges(x: np.ndarray, scheme: QuantScheme) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) of `x` in the layout of the scheme's scales: 0-d per tensor (and for
    "nv", whose tensor scale comes from them), 1-D along the axis per channel, blocked
    per group. "mx" scales come from the data (`quantize_blocks`)."""
    x = np.asarray(x).astype(np.float32, copy=False)
    g = scheme.granularity
    if g in ("tensor", "nv"):
        return np.asarray(x.min(), np.float32), np.asarray(x.max(), np.float32)
    if g in ("mx", "token"):
        raise ValueError(f"{g} scales come from the data: use fake_quantize")
    axis, block = _axis_block(scheme, x.ndim)
    if g == "channel":
        others = tuple(i for i in range(x.ndim) if i != axis)
        return x.min(axis=others), x.max(axis=others)
    return _block_reduce(x, np.minimum, axis, block), _block_reduce(x, np.maximum, axis, block)


def choose_qparams(scheme: QuantScheme, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale (float32) and zero point (in the dtype's storage; None for float formats)
    for ranges [lo, hi] given per tensor / channel / group (any shape; the result has
    their broadcast shape). Computed in float32 like ONNX's DynamicQuantizeLinear:

    - symmetric integers: amax = max(|lo|, |hi|), scale = amax / q with q = 2^(bits-1) - 1
      (127, 7); zero point 0, or 2^(bits-1) for unsigned (codes zp +- q);
    - asymmetric integers: the range widened to include 0, scale = (hi - lo) /
      (qmax - qmin), zero point = round_half_even(clip(qmin - lo / scale, qmin, qmax));
    - float formats: scale = amax / max (448, 57344, 6, FloatFormat.max_value);
    - "nv": the tensor scale amax / (448 * 6).
    A zero range gives scale 1 (as DynamicQuantizeLinear); a scale that underflows to 0
    becomes the smallest normal float32. Non-finite ranges raise ValueError."""
    lo32 = np.asarray(lo, dtype=np.float32)
    hi32 = np.asarray(hi, dtype=np.float32)
    if not (np.all(np.isfinite(lo32)) and np.all(np.isfinite(hi32))):
        raise ValueError(f"{scheme.describe()}: quantization ranges must be finite")
    if np.any(lo32 > hi32):
        raise ValueError(f"{scheme.describe()}: a range has lo > hi")
    if scheme.granularity in ("mx", "token"):
        raise ValueError(f"{scheme.granularity} scales come from the data: use fake_quantize")
    dt = scheme.dtype
    amax = np.maximum(np.abs(lo32), np.abs(hi32))
    zero = np.float32(0)
    if scheme.granularity == "nv":
        return _guard_scale(amax / np.float32(NVFP4_TENSOR_DIVISOR), amax == zero), None
    if not dt.is_integer:
        return _guard_scale(amax / np.float32(format_max(dt)), amax == zero), None
    qmin, qmax = dt.int_range
    if scheme.symmetric:
        q = np.float32((1 << (dt.bits - 1)) - 1)
        scale = _guard_scale(amax / q, amax == zero)
        zp_value = 0 if dt.kind == "int" else 1 << (dt.bits - 1)
        return scale, np.full(scale.shape, zp_value, dtype=dt.np)
    lo_z = np.minimum(lo32, zero)
    hi_z = np.maximum(hi32, zero)
    scale = _guard_scale((hi_z - lo_z) / np.float32(qmax - qmin), hi_z == lo_z)
    initial = np.float32(qmin) - lo_z / scale
    zp = np.rint(np.clip(initial, np.float32(qmin), np.float32(qmax)))
    return scale, zp.astype(dt.np)


def _guard_scale(scale: np.ndarray, empty: np.ndarray) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float32)
    scale = np.where(empty, np.float32(1.0), scale)
    return np.where(scale == 0, np.finfo(np.float32).tiny, scale).astype(np.float32)


def quantize(x: np.ndarray, scheme: QuantScheme, scale: np.ndarray, zero_point: np.ndarray | None = None) -> np.ndarray:
    """Codes of `x` in the scheme's dtype storage (ml_dtypes types for fp8/fp4, int8 /
    uint8 for int4 / uint4, float32 grid values for FloatFormat), with scales (and zero
    points) in the scheme's layout. Block formats: `quantize_blocks`."""
    if scheme.is_block_format:
        raise ValueError(f"{scheme.describe()}: block formats compute their scales, use quantize_blocks")
    x = np.asarray(x)
    axis, block = _axis_block(scheme, x.ndim)
    return quantize_linear(x, scale, zero_point, axis=axis, block_size=block, dtype=scheme.dtype)


def dequantize(q: np.ndarray, scheme: QuantScheme, scale: np.ndarray, zero_point: np.ndarray | None = None) -> np.ndarray:
    """float32 values of codes `q` (the inverse layout of `quantize`)."""
    if scheme.is_block_format:
        raise ValueError(f"{scheme.describe()}: block formats decode with dequantize_blocks")
    q = np.asarray(q)
    axis, block = _axis_block(scheme, q.ndim)
    return dequantize_linear(q, scale, zero_point, axis=axis, block_size=block)


def fake_quantize(
    x: np.ndarray, scheme: QuantScheme, scale: np.ndarray | None = None, zero_point: np.ndarray | None = None,
    clip: float = 1.0,
) -> np.ndarray:
    """dequantize(quantize(x)) in float32. "mx" and "token" take no scale ("token" takes
    its `clip`); for "nv" `scale` is the optional float32 tensor scale (computed from `x`
    when None)."""
    if scheme.granularity == "token":
        if scale is not None or zero_point is not None:
            raise ValueError("token computes its scales from the data: pass no scale or zero point")
        return fake_quantize_tokens(x, scheme, clip)
    if clip != 1.0:
        raise ValueError(f"clip applies to per-token quantization only, not {scheme.describe()}")
    if scheme.granularity == "mx":
        if scale is not None or zero_point is not None:
            raise ValueError("mx computes its scales from the data: pass no scale or zero point")
        return dequantize_blocks(quantize_blocks(x, scheme), scheme)
    if scheme.granularity == "nv":
        if zero_point is not None:
            raise ValueError("nv takes no zero point")
        return dequantize_blocks(quantize_blocks(x, scheme, tensor_scale=scale), scheme)
    if scale is None:
        raise ValueError(f"{scheme.describe()}: fake_quantize needs a scale")
    return dequantize(quantize(x, scheme, scale, zero_point), scheme, scale, zero_point)


def token_multiplier(scheme: QuantScheme, clip: float = 1.0) -> np.float32:
    """m of a per-token scale s = amax_row * m: float32(clip / (2^(bits-1) - 1))."""
    if not 0.0 < float(clip) <= 1.0:
        raise ValueError(f"clip must be in (0, 1], got {clip}")
    return np.float32(float(clip) / ((1 << (scheme.dtype.bits - 1)) - 1))


def fake_quantize_tokens(x: np.ndarray, scheme: QuantScheme, clip: float = 1.0) -> np.ndarray:
    """Per-token dynamic symmetric quantize-dequantize along `scheme.axis` (module
    docstring), float32."""
    if scheme.granularity != "token":
        raise ValueError(f"{scheme.describe()} is not per-token")
    x32 = np.asarray(x).astype(np.float32, copy=False)
    if x32.ndim == 0:
        raise ValueError("per-token quantization needs a tensor of rank >= 1")
    axis, _ = _axis_block(scheme, x32.ndim)
    if x32.shape[axis] == 0:
        return x32.copy()
    amax = np.max(np.where(np.isnan(x32), np.float32(0), np.abs(x32)), axis=axis, keepdims=True)
    scale = amax * token_multiplier(scheme, clip)
    scale = np.where(scale == 0, np.float32(1), scale).astype(np.float32)
    qmin, qmax = scheme.dtype.int_range
    with np.errstate(invalid="ignore"):
        v = x32 / scale
        codes = np.where(np.isnan(v), np.float32(qmin), np.clip(np.rint(v), qmin, qmax)).astype(np.float32)
        return (codes * scale).astype(np.float32)


# ----------------------------------------------------------------------------- MX / NV blocks


class BlockQuantized(NamedTuple):
    """Codes (fp4_e2m1 storage, x's shape), per-block scales (mx: uint8 E8M0 codes; nv:
    fp8_e4m3 storage; shape of x with the axis dim -> ceil(D / block)), and the nv
    float32 tensor scale (0-d; None for mx)."""

    codes: np.ndarray
    scales: np.ndarray
    tensor_scale: np.ndarray | None


def e8m0_decode(codes: np.ndarray) -> np.ndarray:
    """E8M0 scale codes -> float32: 2^(code - 127), code 255 -> NaN (exact: 2^-127 is a
    float32 subnormal)."""
    c = np.asarray(codes).astype(np.int64)
    return np.where(c == 255, np.nan, np.exp2((c - 127).astype(np.float64))).astype(np.float32)


def _mx_block_exponents(amax: np.ndarray) -> np.ndarray:
    """E8M0 codes: floor(log2 amax) - emax(E2M1), clamped to >= -127, + 127; 255 for a
    non-finite amax. frexp is exact: amax = f * 2^e with f in [0.5, 1)."""
    a = np.asarray(amax, dtype=np.float64)
    finite = np.isfinite(a)
    _, e = np.frexp(np.where(finite & (a > 0), a, 1.0))
    shared = np.where(a > 0, e - 1 - _FP4_EMAX, -127)
    shared = np.maximum(shared, -127)
    return np.where(finite, shared + 127, 255).astype(np.uint8)


def quantize_blocks(x: np.ndarray, scheme: QuantScheme, tensor_scale: np.ndarray | float | None = None) -> BlockQuantized:
    """MXFP4 / NVFP4 codes and scales computed from `x` (module docstring)."""
    if not scheme.is_block_format:
        raise ValueError(f"{scheme.describe()} is not a block format")
    x32 = np.asarray(x).astype(np.float32, copy=False)
    if x32.ndim == 0:
        raise ValueError("block formats need a tensor of rank >= 1")
    axis, block = _axis_block(scheme, x32.ndim)
    amax = _block_reduce(np.abs(x32), np.maximum, axis, block)
    if scheme.granularity == "mx":
        if tensor_scale is not None:
            raise ValueError("mx has no tensor scale")
        scales = _mx_block_exponents(amax)
        factor = expand_param(e8m0_decode(scales).astype(np.float64), x32.shape, axis, block)
        with np.errstate(invalid="ignore"):
            codes = cast_to(x32.astype(np.float64) / factor, dtypes.fp4_e2m1)
        return BlockQuantized(codes, scales, None)
    s_t = _nv_tensor_scale(x32, tensor_scale)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = amax / (np.float32(6.0) * s_t)
    s_b = cast_to(ratio.astype(np.float32), dtypes.fp8_e4m3, saturate=True)
    d = _nv_divisor(s_b, s_t, x32.shape, axis, block)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = np.where(d == 0, np.float32(0), x32 / np.where(d == 0, np.float32(1), d))
    return BlockQuantized(cast_to(v, dtypes.fp4_e2m1), s_b, s_t)


def _nv_tensor_scale(x32: np.ndarray, given: np.ndarray | float | None) -> np.ndarray:
    if given is not None:
        s = np.asarray(given, dtype=np.float32)
        if s.size != 1:
            raise ValueError(f"the nv tensor scale must be one value, got shape {s.shape}")
        return s.reshape(())
    amax = np.max(np.abs(x32)) if x32.size else np.float32(0)
    s = np.float32(amax) / np.float32(NVFP4_TENSOR_DIVISOR)
    return np.asarray(np.float32(1.0) if s == 0 else s, dtype=np.float32)


def _nv_divisor(s_b: np.ndarray, s_t: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray:
    d = s_b.astype(np.float32) * np.float32(s_t)
    return expand_param(d.astype(np.float32), shape, axis, block)


def dequantize_blocks(bq: BlockQuantized, scheme: QuantScheme) -> np.ndarray:
    """float32 values of MXFP4 / NVFP4 codes (module docstring)."""
    codes = np.asarray(bq.codes)
    axis, block = _axis_block(scheme, codes.ndim)
    q = codes.astype(np.float32)
    if scheme.granularity == "mx":
        factor = expand_param(e8m0_decode(bq.scales).astype(np.float64), codes.shape, axis, block)
        return (q.astype(np.float64) * factor).astype(np.float32)
    if bq.tensor_scale is None:
        raise ValueError("nv codes need their tensor scale")
    d = _nv_divisor(np.asarray(bq.scales), np.asarray(bq.tensor_scale, np.float32), codes.shape, axis, block)
    with np.errstate(over="ignore", invalid="ignore"):
        return (q * d).astype(np.float32)
