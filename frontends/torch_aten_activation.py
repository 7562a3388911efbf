"""Lowerings of aten's activation functions and softmaxes: sigmoid, relu, hardswish,
mish, gelu, silu, hardsigmoid, leaky_relu, elu, softplus, softmax / _softmax,
_safe_softmax, log_softmax / _log_softmax.

Semantics particular to these lowerings:
- gelu keeps torch's `approximate` ("none" | "tanh") as Gelu's attribute.
- silu (kept whole by the frontend's decomposition table) is Mul(x, Sigmoid(x)).
- hardsigmoid is HardSigmoid(alpha=1/6, beta=0.5), torch's relu6(x + 3) / 6.
- elu with scale or input_scale other than 1 (the selu / celu forms) is refused.
- softplus ignores `threshold` (torch returns x above it, where softplus(x) differs
  from x by < 2e-9); beta != 1 is Softplus(beta * x) / beta.
- _safe_softmax gives 0 instead of NaN on rows that are all -inf (fully masked):
  Where(ReduceMax(x) == -inf, 0, Softmax(x)).
- softmax / log_softmax take torch's `dim` as the IR's single `axis`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from requant.frontends.torch_aten_common import Cx, emit_safe_softmax, unary_lowering
from requant.frontends.torch_lowering import NotLowerable, lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


for _name, _op in {
    "sigmoid": "Sigmoid",
    "relu": "Relu",
    "hardswish": "HardSwish",
    "mish": "Mish",
}.items():
    lowers(f"aten.{_name}.default")(unary_lowering(_op))


@lowers("aten.gelu.default")
def gelu(cx: Cx, x: Any, *, approximate: str = "none") -> Value:
    return cx.emit("Gelu", cx.value(x), approximate=approximate)


@lowers("aten.silu.default")
def silu(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    return cx.emit("Mul", v, cx.emit("Sigmoid", v))


@lowers("aten.hardsigmoid.default")
def hardsigmoid(cx: Cx, x: Any) -> Value:
    return cx.emit("HardSigmoid", cx.value(x), alpha=1.0 / 6.0, beta=0.5)


@lowers("aten.leaky_relu.default")
def leaky_relu(cx: Cx, x: Any, negative_slope: float = 0.01) -> Value:
    return cx.emit("LeakyRelu", cx.value(x), alpha=float(negative_slope))


@lowers("aten.elu.default")
def elu(cx: Cx, x: Any, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> Value:
    if scale != 1.0 or input_scale != 1.0:
        raise NotLowerable("elu with scale or input_scale other than 1 (selu/celu forms)")
    return cx.emit("Elu", cx.value(x), alpha=float(alpha))


@lowers("aten.softplus.default")
def softplus(cx: Cx, x: Any, beta: float = 1.0, threshold: float = 20.0) -> Value:
    # torch returns x itself above `threshold`; softplus(x) differs from x there by < 2e-9
    v = cx.value(x)
    if beta == 1:
        return cx.emit("Softplus", v)
    b = cx.const(np.asarray(beta, v.dtype.np))
    return cx.emit("Div", cx.emit("Softplus", cx.emit("Mul", v, b)), b)


@lowers("aten.softmax.int", "aten._softmax.default")
def softmax(cx: Cx, x: Any, dim: int, *args: Any, **kwargs: Any) -> Value:
    return cx.emit("Softmax", cx.tensor(x, cx.out_dtype), axis=int(dim))


@lowers("aten._safe_softmax.default")
def safe_softmax(cx: Cx, x: Any, dim: int, *args: Any, **kwargs: Any) -> Value:
    return emit_safe_softmax(cx, cx.tensor(x, cx.out_dtype), int(dim))


@lowers("aten.log_softmax.int", "aten._log_softmax.default")
def log_softmax(cx: Cx, x: Any, dim: int, *args: Any, **kwargs: Any) -> Value:
    return cx.emit("LogSoftmax", cx.tensor(x, cx.out_dtype), axis=int(dim))
