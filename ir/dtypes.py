"""Element types of the IR, the low-bit float formats among them.

A `DType` knows its name, its short text spelling, its bit width and the numpy dtype the
interpreter stores its values in. Sub-byte integers are stored widened (int4 in int8,
uint4 in uint8) with their range enforced by the ops that produce them; fp8/fp4 use
ml_dtypes' exact types. `FloatFormat(exp_bits, man_bits, bias)` is the parametric float
of LLM-FP4 (Liu et al., EMNLP 2023): its values are stored in float32 and lie on its grid.
Block formats (MXFP4, NVFP4, int4 groups) are quantization schemes, not dtypes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "DType",
    "FloatFormat",
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "int4",
    "uint64",
    "uint32",
    "uint16",
    "uint8",
    "uint4",
    "bool_",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp4_e2m1",
    "dtype",
    "from_numpy",
    "all_dtypes",
]


@dataclass(frozen=True)
class DType:
    """An element type. Compare with `==`; dtypes are value objects."""

    name: str
    short: str
    bits: int
    kind: str  # "float", "int", "uint" or "bool"
    storage: str  # name of the numpy / ml_dtypes type holding the values

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_integer(self) -> bool:
        return self.kind in ("int", "uint")

    @property
    def is_signed(self) -> bool:
        return self.kind in ("int", "float")

    @property
    def np(self) -> np.dtype:
        """The numpy dtype the interpreter keeps this type's values in."""
        return _numpy_dtype(self.storage)

    @property
    def int_range(self) -> tuple[int, int]:
        """Smallest and largest value of an integer type."""
        if self.kind == "int":
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        if self.kind == "uint":
            return 0, (1 << self.bits) - 1
        raise TypeError(f"{self.name} is not an integer type")

    def __str__(self) -> str:
        return self.short

    def __repr__(self) -> str:
        return f"dtype({self.short!r})"

    def __hash__(self) -> int:  # names are unique per dtype; cheaper than hashing all fields
        return hash(self.name)


@dataclass(frozen=True, repr=False)
class FloatFormat(DType):
    """A parametric float with `exp_bits` exponent bits, `man_bits` mantissa bits, a sign
    bit and a real exponent `bias` (LLM-FP4). Subnormals below exponent 1, no inf/NaN.

    Values are held in float32; the formats' grids are exactly representable there for
    every width requant uses (<= 8 bits)."""

    exp_bits: int = 2
    man_bits: int = 1
    bias: float = 1.0

    def __init__(self, exp_bits: int, man_bits: int, bias: float) -> None:
        if exp_bits < 1 or man_bits < 0 or exp_bits + man_bits > 15:
            raise ValueError(f"unsupported float format e{exp_bits}m{man_bits}")
        bias = float(bias)
        short = f"ff_e{exp_bits}m{man_bits}_b{_format_bias(bias)}"
        object.__setattr__(self, "name", short)
        object.__setattr__(self, "short", short)
        object.__setattr__(self, "bits", 1 + exp_bits + man_bits)
        object.__setattr__(self, "kind", "float")
        object.__setattr__(self, "storage", "float32")
        object.__setattr__(self, "exp_bits", exp_bits)
        object.__setattr__(self, "man_bits", man_bits)
        object.__setattr__(self, "bias", bias)

    @property
    def max_value(self) -> float:
        """`(2 - 2^-M) * 2^(2^E - 1 - b)`: the largest value (M mantissa bits, E exponent bits, bias b)."""
        return (2.0 - 2.0 ** -self.man_bits) * 2.0 ** (2**self.exp_bits - 1 - self.bias)


def _format_bias(bias: float) -> str:
    return str(int(bias)) if bias == int(bias) else repr(bias)


@lru_cache(maxsize=None)
def _numpy_dtype(storage: str) -> np.dtype:
    if hasattr(np, storage) and storage not in ("float8_e4m3fn", "float8_e5m2", "bfloat16", "float4_e2m1fn"):
        return np.dtype(getattr(np, storage))
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, storage))


float64 = DType("float64", "f64", 64, "float", "float64")
float32 = DType("float32", "f32", 32, "float", "float32")
float16 = DType("float16", "f16", 16, "float", "float16")
bfloat16 = DType("bfloat16", "bf16", 16, "float", "bfloat16")
int64 = DType("int64", "i64", 64, "int", "int64")
int32 = DType("int32", "i32", 32, "int", "int32")
int16 = DType("int16", "i16", 16, "int", "int16")
int8 = DType("int8", "i8", 8, "int", "int8")
int4 = DType("int4", "i4", 4, "int", "int8")
uint64 = DType("uint64", "u64", 64, "uint", "uint64")
uint32 = DType("uint32", "u32", 32, "uint", "uint32")
uint16 = DType("uint16", "u16", 16, "uint", "uint16")
uint8 = DType("uint8", "u8", 8, "uint", "uint8")
uint4 = DType("uint4", "u4", 4, "uint", "uint8")
bool_ = DType("bool", "bool", 8, "bool", "bool")
fp8_e4m3 = DType("fp8_e4m3", "fp8_e4m3", 8, "float", "float8_e4m3fn")
fp8_e5m2 = DType("fp8_e5m2", "fp8_e5m2", 8, "float", "float8_e5m2")
fp4_e2m1 = DType("fp4_e2m1", "fp4_e2m1", 4, "float", "float4_e2m1fn")

_FIXED = (
    float64, float32, float16, bfloat16,
    int64, int32, int16, int8, int4,
    uint64, uint32, uint16, uint8, uint4,
    bool_, fp8_e4m3, fp8_e5m2, fp4_e2m1,
)
_BY_NAME: dict[str, DType] = {}
for _d in _FIXED:
    _BY_NAME[_d.name] = _d
    _BY_NAME[_d.short] = _d

_FLOAT_FORMAT = re.compile(r"ff_e(\d+)m(\d+)_b(-?[0-9.]+(?:e-?\d+)?)$")


def all_dtypes() -> tuple[DType, ...]:
    """Every fixed dtype (FloatFormat instances are made on demand)."""
    return _FIXED


def dtype(spec: str | DType | np.dtype | type) -> DType:
    """Look a dtype up by long or short name (`"float32"`, `"f32"`, `"ff_e2m1_b1.5"`),
    or convert a numpy dtype."""
    if isinstance(spec, DType):
        return spec
    if isinstance(spec, str):
        found = _BY_NAME.get(spec)
        if found is not None:
            return found
        m = _FLOAT_FORMAT.match(spec)
        if m:
            return FloatFormat(int(m.group(1)), int(m.group(2)), float(m.group(3)))
        raise ValueError(f"unknown dtype {spec!r}; known: {', '.join(d.short for d in _FIXED)}, ff_e<E>m<M>_b<bias>")
    return from_numpy(np.dtype(spec))


_FROM_NUMPY = {
    "float64": float64, "float32": float32, "float16": float16, "bfloat16": bfloat16,
    "int64": int64, "int32": int32, "int16": int16, "int8": int8,
    "uint64": uint64, "uint32": uint32, "uint16": uint16, "uint8": uint8, "bool": bool_,
    "float8_e4m3fn": fp8_e4m3, "float8_e5m2": fp8_e5m2, "float4_e2m1fn": fp4_e2m1,
    "int4": int4, "uint4": uint4,
}


def from_numpy(np_dtype: np.dtype) -> DType:
    """The IR dtype whose storage is `np_dtype` (int8 storage maps to int8, not int4)."""
    found = _FROM_NUMPY.get(np.dtype(np_dtype).name)
    if found is None:
        raise ValueError(f"numpy dtype {np_dtype} has no requant equivalent")
    return found
