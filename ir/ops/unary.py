"""One-operand elementwise math (ONNX semantics): Neg, Abs, Sign, Reciprocal, Exp, Log,
Sqrt, Erf, Tanh and the other trigonometric/hyperbolic functions, Floor, Ceil, Round,
IsNaN, IsInf, Not. Activations live in `activation.py`.

Integer semantics: Neg and Abs wrap (-(-128) and |-128| are -128 in i8, as in C and
ONNX Runtime); Sign works on every number. The transcendental functions take floats
only. Round is half-to-even (ONNX). Erf is computed in float64 and rounded once; the
other float functions compute in the input's dtype (f16/bf16 in float32).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.ops._common import check_input, compute_dtype
from requant.ir.registry import InferContext, define_op
from requant.ir.types import TensorType

__all__ = ["erf"]

try:  # scipy is optional; math.erf gives the same double-precision values, slower
    from scipy.special import erf as _scipy_erf
except ImportError:  # pragma: no cover - depends on the environment
    _scipy_erf = None

_vector_erf = np.vectorize(math.erf, otypes=[np.float64])


def erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (the caller rounds)."""
    x64 = np.asarray(x, dtype=np.float64)
    return _scipy_erf(x64) if _scipy_erf is not None else _vector_erf(x64)


def _same(cls: str):
    def infer(ctx: InferContext) -> list[TensorType]:
        return [check_input(ctx, 0, cls)]

    return infer


def _to_bool(cls: str):
    def infer(ctx: InferContext) -> list[TensorType]:
        return [check_input(ctx, 0, cls).with_dtype(dtypes.bool_)]

    return infer


def _float_fn(fn):
    def kernel(ins: list, attrs: dict, outs: list) -> Any:
        x = ins[0]
        with np.errstate(all="ignore"):
            return fn(x.astype(compute_dtype(x), copy=False)).astype(x.dtype)

    return kernel


def _int_ok(fn):
    def kernel(ins: list, attrs: dict, outs: list) -> Any:
        x = ins[0]
        if np.issubdtype(x.dtype, np.integer):
            with np.errstate(over="ignore"):
                return fn(x)
        with np.errstate(all="ignore"):
            return fn(x.astype(compute_dtype(x), copy=False)).astype(x.dtype)

    return kernel


define_op("Neg", inputs=("X",), infer=_same("signed"), kernel=_int_ok(np.negative))
define_op("Abs", inputs=("X",), infer=_same("numeric"), kernel=_int_ok(np.abs))
define_op("Sign", inputs=("input",), outputs=("output",), infer=_same("numeric"), kernel=_int_ok(np.sign))

_FLOAT_FNS = {
    "Exp": np.exp,
    "Log": np.log,
    "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal,
    "Tanh": np.tanh,
    "Sin": np.sin,
    "Cos": np.cos,
    "Tan": np.tan,
    "Asin": np.arcsin,
    "Acos": np.arccos,
    "Atan": np.arctan,
    "Sinh": np.sinh,
    "Cosh": np.cosh,
    "Asinh": np.arcsinh,
    "Acosh": np.arccosh,
    "Atanh": np.arctanh,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Round": np.round,
}
_XY = ("Sqrt", "Reciprocal", "Floor", "Ceil", "Round")  # ONNX names their operands X/Y
for _name, _fn in _FLOAT_FNS.items():
    _i, _o = ("X", "Y") if _name in _XY else ("input", "output")
    define_op(_name, inputs=(_i,), outputs=(_o,), infer=_same("float"), kernel=_float_fn(_fn))


def _erf(ins: list, attrs: dict, outs: list) -> Any:
    return erf(ins[0]).astype(ins[0].dtype)


define_op("Erf", inputs=("input",), outputs=("output",), infer=_same("float"), kernel=_erf)

define_op("IsNaN", inputs=("X",), infer=_to_bool("float"), kernel=lambda ins, a, o: np.isnan(ins[0].astype(np.float32) if ins[0].dtype.kind == "V" else ins[0]))


def _isinf(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    if x.dtype.kind == "V":
        x = x.astype(np.float32)
    out = np.zeros(x.shape, dtype=bool)
    if attrs["detect_positive"]:
        out |= np.isposinf(x)
    if attrs["detect_negative"]:
        out |= np.isneginf(x)
    return out


define_op(
    "IsInf",
    inputs=("X",),
    attrs={"detect_negative": 1, "detect_positive": 1},
    infer=_to_bool("float"),
    kernel=_isinf,
)
define_op("Not", inputs=("X",), infer=_same("bool"), kernel=lambda ins, a, o: np.logical_not(ins[0]))
