"""What one op case is: `Case` (one node: op id, operands, attributes, the tolerance per
dtype, the oracle, and what each backend is expected to do with it), its operands (`In`,
built with `I` for a graph input and `C` for a constant), the tolerances (`Tol`,
`FLOAT_TOL`, `EXACT`), the seeded operand draws (`Draws`), the per-family list a family
module fills (`CaseList`), and `build_case`, the one-node graph every test runs.

The tolerance of a case holds for every comparison it drives (interpreter against the
oracle, ONNX Runtime against the interpreter, TVM against the interpreter): the
implementations compute the same formula, so they differ by rounding only, and the
bound says how much. Dtypes without an entry (integers, bools, fp8/fp4/FloatFormat
codes) compare exactly, and so do floats under `EXACT`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from requant.ir import Builder, Graph, dtypes, tensor_type

__all__ = [
    "OPSET", "INT_MAX", "UNKNOWN_RANK", "QDQ_OPSET", "OLD_OPSETS", "BACKENDS", "ORACLES",
    "ORT_NO_BF16", "Tol", "FLOAT_TOL", "EXACT", "In", "Case", "CaseList", "Draws", "I", "C", "i64", "with_specials", "build_case",
]

OPSET = 23
"""Opset of the one-node ONNX model the oracle runs, unless a case says otherwise."""
INT_MAX = 2**63 - 1
UNKNOWN_RANK = "unknown rank"  # In.shape marker: declare the input with shape None
QDQ_OPSET = "qdq"
"""An export opset marker: the newest opset at which ONNX Runtime has QuantizeLinear /
DequantizeLinear kernels (resolved by the ONNX test; to_onnx's default can be newer)."""
OLD_OPSETS = (None, 13, 17, 18, 21, 23)
"""to_onnx's default and the older opsets where the ONNX backend decomposes ops."""
BACKENDS = ("onnx", "onnx_round_trip", "onnxruntime", "tvm")
"""Keys of `Case.refused` / `Case.known_failures`: the ONNX export (`to_onnx`), the
exported model read back by `from_onnx`, ONNX Runtime running it, the TVM build. A
known failure at one export opset only is keyed "onnx_round_trip@13"."""
ORT_NO_BF16 = {"onnxruntime": "ONNX Runtime's CPU provider has no bfloat16 kernel for this op"}
ORACLES = ("reference", "ort", "numpy", "none")
"""onnx.reference's ReferenceEvaluator, ONNX Runtime, the hand-written numpy reference
in tests/op_references.py (requant-domain ops), or none (requant defines what ONNX
leaves open: the backends are still checked against the interpreter, and a special
test in tests/ir states the values)."""


@dataclass(frozen=True)
class Tol:
    """|got - want| <= atol * s + rtol * |want|, elementwise, with s = 1, or with s =
    max(1, max|want|) under `scale_atol` (sums whose rounding error grows with the size
    of the whole output, not of each element); NaN where NaN, infinities equal."""

    rtol: float
    atol: float
    scale_atol: bool = False


FLOAT_TOL: Mapping[str, Tol] = {
    "f64": Tol(1e-12, 1e-12),
    "f32": Tol(1e-5, 1e-6),  # summation order and libm/SIMD approximations: ~80 ulps
    "f16": Tol(2.0**-10, 2.0**-10),  # one f16 ulp: both sides compute in f32 and round once
    "bf16": Tol(2.0**-7, 2.0**-7),  # one bf16 ulp, likewise
}
EXACT: Mapping[str, Tol] = {}
"""Every output bit for bit (NaN where NaN): integer semantics, or float formulas that
every implementation evaluates in the same order (the quantization ops)."""


@dataclass
class In:
    """One operand: a graph input (declared `shape` may hold symbols) or a constant."""

    value: np.ndarray
    const: bool = False
    dtype: str | None = None
    shape: tuple | str | None = None

    @property
    def dt(self) -> str:
        return self.dtype or dtypes.from_numpy(self.value.dtype).short


@dataclass(eq=False)
class Case:
    """One node and what every op test needs to run it (module docstring)."""

    op: str
    inputs: list[In | None]
    attrs: dict[str, Any] = field(default_factory=dict)
    n_out: int | None = None
    label: str = ""
    expect: tuple | None = None  # inferred shape of output 0, exactly
    oracle: str = "reference"  # one of ORACLES
    oracle_opset: int = OPSET
    tol: Mapping[str, Tol] = field(default_factory=lambda: FLOAT_TOL)
    export_opsets: tuple = (None,)  # to_onnx(opset=...) checked at each; None is its default
    refused: Mapping[str, str] = field(default_factory=dict)  # backend -> why it refuses this node on purpose
    known_failures: Mapping[str, str] = field(default_factory=dict)  # backend[@opset] -> a known bug (strict xfail)

    def __post_init__(self) -> None:
        if self.oracle not in ORACLES:
            raise ValueError(f"{self}: oracle {self.oracle!r} is not one of {ORACLES}")
        for what in (self.refused, self.known_failures):
            unknown = {key.split("@")[0] for key in what} - set(BACKENDS)
            if unknown:
                raise ValueError(f"{self}: unknown backends {sorted(unknown)}; expected {BACKENDS}")

    def __str__(self) -> str:
        return f"{self.op}{'-' + self.label if self.label else ''}"


class CaseList(list):
    """A family's cases; `add(...)` takes `Case`'s arguments, with the family's defaults
    (e.g. `tol=EXACT` for the quantization ops) unless the case gives its own."""

    def __init__(self, **defaults: Any) -> None:
        super().__init__()
        self.defaults = defaults

    def add(self, *args: Any, **kw: Any) -> Case:
        case = Case(*args, **{**self.defaults, **kw})
        self.append(case)
        return case


class Draws:
    """Seeded operand draws: one generator per family module, so adding a case to one
    family leaves every other family's values as they were."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def r(self, *shape: int, dt: str = "f32", lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
        """Uniform floats in [lo, hi)."""
        return self.rng.uniform(lo, hi, size=shape).astype(dtypes.dtype(dt).np)

    def ri(self, *shape: int, dt: str = "i32", lo: int = -10, hi: int = 10) -> np.ndarray:
        """Uniform integers in [lo, hi]."""
        return self.rng.integers(lo, hi, size=shape, endpoint=True).astype(dtypes.dtype(dt).np)

    def ints(self, *shape: int, dt: str = "u8", lo: int | None = None, hi: int | None = None) -> np.ndarray:
        """Uniform integers over the dtype's whole range unless bounded."""
        d = dtypes.dtype(dt)
        a, b = d.int_range
        return self.ri(*shape, dt=dt, lo=a if lo is None else lo, hi=b if hi is None else hi)

    def rq(self, *shape: int, dt: str = "f32") -> np.ndarray:
        """Multiples of 1/8 in [-2, 2]: products and sums of a few thousand of them are
        exact in f32, so accumulating ops compare exactly whatever their summation order."""
        return (self.rng.integers(-16, 16, size=shape, endpoint=True) / 8).astype(dtypes.dtype(dt).np)

    def ties(self, *shape: int) -> np.ndarray:
        """Multiples of 1/8 in [-20, 20]: divided by 0.25 many land exactly on .5."""
        return (self.rng.integers(-160, 161, size=shape) / 8).astype(np.float32)

    def rb(self, *shape: int) -> np.ndarray:
        return self.rng.random(shape) < 0.5


def I(value: Any, dtype: str | None = None, shape: tuple | str | None = None) -> In:  # noqa: E743
    """A graph input; `shape` declares it (symbols allowed), else the value's shape."""
    return In(np.asarray(value), False, dtype, shape)


def C(value: Any, dtype: str | None = None) -> In:
    """A constant operand."""
    return In(np.asarray(value), True, dtype)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def with_specials(x: np.ndarray) -> np.ndarray:
    """A copy of `x` whose first five elements are NaN, +inf, -inf, 0 and -0."""
    x = np.array(x, copy=True)
    x.flat[:5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    return x


def build_case(case: Case, widen: Mapping[str, str] | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
    """The one-node graph of `case` (inputs x0, x1, ... or constants c0, c1, ...; the
    node's outputs are the graph's) and the feed of its graph inputs.

    `widen` ({narrow dtype: wide dtype}) moves graph inputs and outputs of a narrow dtype
    into the wide one with a Cast inside the graph, for a runtime that cannot pass the
    narrow dtype across its API (ONNX Runtime's Python API and int4)."""
    widen = widen or {}
    g = Graph("case")
    b = Builder(g)
    values, feed = [], {}
    for i, x in enumerate(case.inputs):
        if x is None:
            values.append(None)
        elif x.const:
            values.append(b.const(x.value, name=f"c{i}", dtype=dtypes.dtype(x.dt)))
        else:
            shape = None if x.shape == UNKNOWN_RANK else x.shape if x.shape is not None else x.value.shape
            if x.dt in widen:
                wide = b.input(f"x{i}", tensor_type(widen[x.dt], shape))
                values.append(b.Cast(wide, to=x.dt))
                feed[f"x{i}"] = x.value.astype(dtypes.dtype(widen[x.dt]).np)
            else:
                values.append(b.input(f"x{i}", tensor_type(x.dt, shape)))
                feed[f"x{i}"] = x.value
    node = b.node(case.op, *values, _outputs=case.n_out, **case.attrs)
    g.outputs = [b.Cast(o, to=widen[o.dtype.short]) if o.dtype.short in widen else o for o in node.outputs]
    return g, feed
