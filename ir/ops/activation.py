"""Activation functions (ONNX semantics): Relu, LeakyRelu, PRelu, Elu, Selu, Celu,
ThresholdedRelu, Gelu (opset 20, approximate "none" | "tanh"), Sigmoid, HardSigmoid,
HardSwish, Softplus, Softsign, Swish (opset 24, `x * sigmoid(alpha * x)`; SiLU is
Swish with alpha=1), Mish, Clip, Softmax, LogSoftmax (opset 13: one axis).

Floats only, except Relu, PRelu (floats and signed ints), Clip (any number). Relu on
integers is max(x, 0); Clip on integers is exact. Float attributes are applied in the
compute dtype (float32 for f32/f16/bf16 inputs, float64 for f64). Sigmoid and Softplus
use overflow-free forms (Softplus(x) = logaddexp(0, x)); Softmax subtracts the max.
Clip with min > max gives max everywhere (ONNX).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir.ops._common import attr_float, attr_int, attr_str, check_input, compute_dtype, same_dtype
from requant.ir.ops.unary import erf
from requant.ir.registry import InferContext, define_op
from requant.ir.shapes import broadcast_shapes, normalize_axis
from requant.ir.types import TensorType

__all__ = ["sigmoid", "softmax"]


def _infer_float(*float_attrs: str):
    def infer(ctx: InferContext) -> list[TensorType]:
        for a in float_attrs:
            attr_float(ctx, a)
        return [check_input(ctx, 0, "float")]

    return infer


def _kernel(fn):
    """`fn(x, attrs)` on x in its compute dtype; the result is rounded to x's dtype."""

    def kernel(ins: list, attrs: dict, outs: list) -> Any:
        x = ins[0]
        with np.errstate(all="ignore"):
            return fn(x.astype(compute_dtype(x), copy=False), attrs).astype(x.dtype)

    return kernel


def _c(x: np.ndarray, v: float):
    return x.dtype.type(v)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function in x's dtype."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _relu_kernel(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    return np.maximum(x, np.zeros((), x.dtype))


define_op("Relu", inputs=("X",), infer=lambda ctx: [check_input(ctx, 0, "signed")], kernel=_relu_kernel)

define_op(
    "LeakyRelu",
    inputs=("X",),
    attrs={"alpha": 0.01},
    infer=_infer_float("alpha"),
    kernel=_kernel(lambda x, a: np.where(x >= 0, x, x * _c(x, a["alpha"]))),
)


def _infer_prelu(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "signed")
    check_input(ctx, 1, "signed")
    same_dtype(ctx, [0, 1])
    slope = ctx.inputs[1]
    if x.shape is not None and slope.shape is not None:
        out = broadcast_shapes([x.shape, slope.shape], "PRelu")
        if len(out) != len(x.shape) or any(isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(out, x.shape)):
            raise ctx.fail(f"slope {slope} does not broadcast to X {x}")
    return [x]


def _prelu(ins: list, attrs: dict, outs: list) -> Any:
    x, slope = ins
    if np.issubdtype(x.dtype, np.integer):
        with np.errstate(over="ignore"):
            return np.where(x < 0, x * slope, x)
    ct = compute_dtype(x)
    xc = x.astype(ct)
    return np.where(xc < 0, xc * slope.astype(ct), xc).astype(x.dtype)


define_op("PRelu", inputs=("X", "slope"), infer=_infer_prelu, kernel=_prelu)

define_op(
    "Elu",
    inputs=("X",),
    attrs={"alpha": 1.0},
    infer=_infer_float("alpha"),
    kernel=_kernel(lambda x, a: np.where(x >= 0, x, _c(x, a["alpha"]) * np.expm1(np.minimum(x, 0)))),
)
define_op(
    "Selu",
    inputs=("X",),
    attrs={"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875},
    infer=_infer_float("alpha", "gamma"),
    kernel=_kernel(
        lambda x, a: _c(x, a["gamma"])
        * np.where(x > 0, x, _c(x, a["alpha"]) * np.expm1(np.minimum(x, 0)))
    ),
)
define_op(
    "Celu",
    inputs=("X",),
    attrs={"alpha": 1.0},
    infer=_infer_float("alpha"),
    kernel=_kernel(
        lambda x, a: np.maximum(x, 0) + np.minimum(0, _c(x, a["alpha"]) * np.expm1(x / _c(x, a["alpha"])))
    ),
)
define_op(
    "ThresholdedRelu",
    inputs=("X",),
    attrs={"alpha": 1.0},
    infer=_infer_float("alpha"),
    kernel=_kernel(lambda x, a: np.where(x > _c(x, a["alpha"]), x, 0)),
)


def _infer_gelu(ctx: InferContext) -> list[TensorType]:
    attr_str(ctx, "approximate", ("none", "tanh"))
    return [check_input(ctx, 0, "float")]


def _gelu(x: np.ndarray, a) -> np.ndarray:
    half, one = _c(x, 0.5), _c(x, 1.0)
    if a["approximate"] == "tanh":
        inner = _c(x, np.sqrt(2.0 / np.pi)) * (x + _c(x, 0.044715) * x * x * x)
        return half * x * (one + np.tanh(inner))
    return half * x * (one + erf(x / _c(x, np.sqrt(2.0))).astype(x.dtype))


define_op("Gelu", inputs=("X",), attrs={"approximate": "none"}, infer=_infer_gelu, kernel=_kernel(_gelu))
define_op("Sigmoid", inputs=("X",), infer=_infer_float(), kernel=_kernel(lambda x, a: sigmoid(x)))
define_op(
    "HardSigmoid",
    inputs=("X",),
    attrs={"alpha": 0.2, "beta": 0.5},
    infer=_infer_float("alpha", "beta"),
    kernel=_kernel(lambda x, a: np.clip(_c(x, a["alpha"]) * x + _c(x, a["beta"]), 0, 1)),
)
define_op(
    "HardSwish",
    inputs=("X",),
    infer=_infer_float(),
    kernel=_kernel(lambda x, a: x * np.clip(x * _c(x, 1 / 6) + _c(x, 0.5), 0, 1)),
)
define_op("Softplus", inputs=("X",), infer=_infer_float(), kernel=_kernel(lambda x, a: np.logaddexp(_c(x, 0), x)))
define_op(
    "Softsign", inputs=("input",), outputs=("output",), infer=_infer_float(), kernel=_kernel(lambda x, a: x / (1 + np.abs(x)))
)
define_op(
    "Swish",
    inputs=("X",),
    attrs={"alpha": 1.0},
    infer=_infer_float("alpha"),
    kernel=_kernel(lambda x, a: x * sigmoid(_c(x, a["alpha"]) * x)),
)
define_op(
    "Mish",
    inputs=("X",),
    infer=_infer_float(),
    kernel=_kernel(lambda x, a: x * np.tanh(np.logaddexp(_c(x, 0), x))),
)


def _infer_clip(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "numeric")
    for i in (1, 2):
        t = ctx.input(i)
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise ctx.fail(f"{('min', 'max')[i - 1]} has dtype {t.dtype}, input has {x.dtype}")
        if t.shape is not None and not (t.rank == 0 or (t.rank == 1 and t.shape[0] in (1, None))):
            raise ctx.fail(f"{('min', 'max')[i - 1]} must be a scalar, got {t}")
    return [x]


def _clip(ins: list, attrs: dict, outs: list) -> Any:
    x = ins[0]
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    y = x
    if lo is not None:
        y = np.maximum(y, lo.reshape(()))
    if hi is not None:
        y = np.minimum(y, hi.reshape(()))
    return y


define_op("Clip", inputs=("input", "min?", "max?"), outputs=("output",), infer=_infer_clip, kernel=_clip)


def _infer_softmax(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "float")
    axis = attr_int(ctx, "axis")
    if x.rank is not None:
        normalize_axis(axis, x.rank, ctx.schema.name)
    return [x]


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax in x's dtype (pass a compute dtype)."""
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


define_op(
    "Softmax",
    inputs=("input",),
    outputs=("output",),
    attrs={"axis": -1},
    infer=_infer_softmax,
    kernel=_kernel(lambda x, a: softmax(x, a["axis"])),
)
define_op(
    "LogSoftmax",
    inputs=("input",),
    outputs=("output",),
    attrs={"axis": -1},
    infer=_infer_softmax,
    kernel=_kernel(lambda x, a: _log_softmax(x, a["axis"])),
)
