"""Lowerings of the activation family: Relu, LeakyRelu, PRelu, Elu, Selu, Celu,
ThresholdedRelu, Gelu (erf, or tanh with approximate="tanh"), Sigmoid, HardSigmoid,
HardSwish, Softplus, Softsign, Swish, Mish, Clip, Softmax, LogSoftmax.

Float activations compute in float32 for f16/bf16 and round once (`_act`); Relu and Clip
work on any dtype as it is, Clip's optional min/max inputs being 0-d or 1-element.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from tvm import relax

from requant.backends.tvm.lowering import _nan as nan_aware
from requant.backends.tvm.lowering._common import (
    LOWERINGS,
    Emitter,
    LowerContext,
    constant,
    dtype_of,
    from_compute,
    in_dtype,
    to_compute,
)
from requant.backends.tvm.schedule_cpu import constant_array
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

R = relax.op


def _act(fn: Callable[[LowerContext, relax.Expr, dict], relax.Expr]) -> Emitter:
    """`fn(ctx, x, attrs)` on x in its compute dtype; the result rounded to x's dtype."""

    def emit(ctx: LowerContext, node: Node, ins: list) -> Any:
        dt = in_dtype(node)
        x = to_compute(ctx, ins[0], dt)
        return from_compute(ctx, ctx.emit(fn(ctx, x, ctx.attrs(node))), dt)

    return emit


_ActivationFn = Callable[[LowerContext, relax.Expr, dict], relax.Expr]


def _activation(op: str) -> Callable[[_ActivationFn], _ActivationFn]:
    """Register `fn(ctx, x, attrs)` as the lowering of `op`, through `_act`."""

    def register(fn: _ActivationFn) -> _ActivationFn:
        LOWERINGS.add(op, _act(fn))
        return fn

    return register


@LOWERINGS.lowers("Relu")
def _relu(ctx: LowerContext, node: Node, ins: list) -> Any:
    return ctx.emit(nan_aware.maximum(ins[0], constant(0, dtype_of(ins[0]))))


@_activation("LeakyRelu")
def _leaky_relu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = dtype_of(x)
    return R.where(R.greater_equal(x, constant(0, dt)), x, R.multiply(x, constant(a["alpha"], dt)))


@LOWERINGS.lowers("PRelu")
def _prelu(ctx: LowerContext, node: Node, ins: list) -> Any:
    dt = in_dtype(node)
    x, slope = (to_compute(ctx, v, dt) for v in ins)
    y = R.where(R.less(x, constant(0, dtype_of(x))), R.multiply(x, slope), x)
    return from_compute(ctx, ctx.emit(y), dt)


def _expm1_neg(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    """exp(min(x, 0)) - 1."""
    dt = dtype_of(x)
    return R.subtract(R.exp(nan_aware.minimum(x, constant(0, dt))), constant(1, dt))


@_activation("Elu")
def _elu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = dtype_of(x)
    return R.where(R.greater_equal(x, constant(0, dt)), x, R.multiply(constant(a["alpha"], dt), _expm1_neg(ctx, x)))


@_activation("Selu")
def _selu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = dtype_of(x)
    inner = R.where(R.greater(x, constant(0, dt)), x, R.multiply(constant(a["alpha"], dt), _expm1_neg(ctx, x)))
    return R.multiply(constant(a["gamma"], dt), inner)


@_activation("Celu")
def _celu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = dtype_of(x)
    alpha = constant(a["alpha"], dt)
    neg = nan_aware.minimum(constant(0, dt), R.multiply(alpha, R.subtract(R.exp(R.divide(x, alpha)), constant(1, dt))))
    return R.add(nan_aware.maximum(x, constant(0, dt)), neg)


@_activation("ThresholdedRelu")
def _thresholded_relu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = dtype_of(x)
    return R.where(R.greater(x, constant(a["alpha"], dt)), x, constant(0, dt))


@_activation("Gelu")
def _gelu(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    return R.nn.gelu_tanh(x) if a["approximate"] == "tanh" else R.nn.gelu(x)


@_activation("Sigmoid")
def _sigmoid(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    return R.sigmoid(x)


def _clip01(x: relax.Expr, dt: str) -> relax.Expr:
    return nan_aware.clip(x, constant(0, dt), constant(1, dt))


@_activation("HardSigmoid")
def _hard_sigmoid(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    dt = dtype_of(x)
    return _clip01(R.add(R.multiply(constant(a["alpha"], dt), x), constant(a["beta"], dt)), dt)


@_activation("HardSwish")
def _hard_swish(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    # TVM's own clip: the product with x is NaN wherever x is, so the gate needs no NaN
    # test of its own (each one is more work in every fused conv epilogue)
    dt = dtype_of(x)
    gate = R.add(R.multiply(x, constant(1 / 6, dt)), constant(0.5, dt))
    return R.multiply(x, R.minimum(R.maximum(gate, constant(0, dt)), constant(1, dt)))


def _softplus_expr(ctx: LowerContext, x: relax.Expr) -> relax.Expr:
    return R.log_add_exp(ctx.emit(R.zeros_like(x)), x)


@_activation("Softplus")
def _softplus(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    return _softplus_expr(ctx, x)


@_activation("Softsign")
def _softsign(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    return R.divide(x, R.add(constant(1, dtype_of(x)), R.abs(x)))


@_activation("Swish")
def _swish(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    return R.multiply(x, R.sigmoid(R.multiply(constant(a["alpha"], dtype_of(x)), x)))


@_activation("Mish")
def _mish(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
    return R.multiply(x, R.tanh(ctx.emit(_softplus_expr(ctx, x))))


@LOWERINGS.lowers("Clip")
def _clip(ctx: LowerContext, node: Node, ins: list) -> Any:
    lo, hi = (_scalar(ins[i]) if len(ins) > i and ins[i] is not None else None for i in (1, 2))
    return ctx.emit(nan_aware.clip(ins[0], lo, hi, ctx.emit)) if lo is not None or hi is not None else ins[0]


def _scalar(bound: relax.Expr) -> relax.Expr:
    """Clip's 0-d / 1-element bound as a 0-d expression, a constant kept a constant (so
    the NaN-aware clip tests only x against it)."""
    value = constant_array(bound)
    if value is not None:
        return constant(value.reshape(()), dtype_of(bound))
    return R.reshape(bound, ())


def _softmax(log: bool) -> Emitter:
    def fn(ctx: LowerContext, x: relax.Expr, a: dict) -> relax.Expr:
        return (R.nn.log_softmax if log else R.nn.softmax)(x, axis=int(a["axis"]))

    return _act(fn)


LOWERINGS.add("Softmax", _softmax(False))
LOWERINGS.add("LogSoftmax", _softmax(True))
