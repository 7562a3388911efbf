"""ONNX lowering of the activations (`requant.ir.ops.activation`): standard ONNX, and
for target opsets older than the op (Gelu 20, Mish 18, Swish 24) its decomposition into
older ONNX ops."""

from __future__ import annotations

import logging

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext, native_or, scalar_const, standard
from requant.ir.graph import Node

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers(
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid",
    "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Clip", "Softmax", "LogSoftmax"
)(standard)


def _gelu_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """0.5 x (1 + erf(x / sqrt 2)), or the tanh form for approximate="tanh"."""
    x = ins[0]
    dt = node.inputs[0].dtype
    n = lambda p: ctx.sub_name(node, p)  # noqa: E731
    half = scalar_const(ctx, 0.5, dt, "gelu_half")
    one = scalar_const(ctx, 1.0, dt, "gelu_one")
    if node.attrs.get("approximate", "none") == "tanh":
        c = scalar_const(ctx, float(np.sqrt(2.0 / np.pi)), dt, "gelu_c")
        k = scalar_const(ctx, 0.044715, dt, "gelu_k")
        (x3,) = ctx.emit("Mul", [x, x], name=n("sq"))
        (x3,) = ctx.emit("Mul", [x3, x], name=n("cube"))
        (t,) = ctx.emit("Mul", [x3, k], name=n("k"))
        (t,) = ctx.emit("Add", [x, t], name=n("inner"))
        (t,) = ctx.emit("Mul", [t, c], name=n("scale"))
        (t,) = ctx.emit("Tanh", [t], name=n("tanh"))
    else:
        r2 = scalar_const(ctx, float(np.sqrt(2.0)), dt, "gelu_sqrt2")
        (t,) = ctx.emit("Div", [x, r2], name=n("div"))
        (t,) = ctx.emit("Erf", [t], name=n("erf"))
    (t,) = ctx.emit("Add", [t, one], name=n("add1"))
    (t,) = ctx.emit("Mul", [x, t], name=n("mul"))
    ctx.emit("Mul", [t, half], outs, name=node.name or None)


LOWERINGS.add("Gelu", native_or(20, _gelu_decomposed))


def _swish_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """x * Sigmoid(alpha * x)."""
    x = ins[0]
    alpha = float(node.attrs.get("alpha", 1.0))
    s = x
    if alpha != 1.0:
        (s,) = ctx.emit("Mul", [x, scalar_const(ctx, alpha, node.inputs[0].dtype, "swish_alpha")], name=ctx.sub_name(node, "alpha"))
    (s,) = ctx.emit("Sigmoid", [s], name=ctx.sub_name(node, "sigmoid"))
    ctx.emit("Mul", [x, s], outs, name=node.name or None)


LOWERINGS.add("Swish", native_or(24, _swish_decomposed))


def _mish_decomposed(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """x * tanh(softplus(x))."""
    (t,) = ctx.emit("Softplus", [ins[0]], name=ctx.sub_name(node, "softplus"))
    (t,) = ctx.emit("Tanh", [t], name=ctx.sub_name(node, "tanh"))
    ctx.emit("Mul", [ins[0], t], outs, name=node.name or None)


LOWERINGS.add("Mish", native_or(18, _mish_decomposed))
