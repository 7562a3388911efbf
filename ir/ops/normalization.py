"""Normalisation layers (ONNX semantics, inference only): LayerNormalization (opset 17),
RMSNormalization (opset 23), BatchNormalization (opset 15, training_mode=0 only),
InstanceNormalization, GroupNormalization (opset 21: per-channel scale and bias).

Floats only. LayerNormalization and RMSNormalization follow their ONNX function bodies:
statistics and the normalised value in the stash type (`stash_type` is an ONNX dtype
code: 1 = float32, 11 = float64), then a cast to X's dtype, then `* Scale (+ B)` in X's
dtype. LayerNormalization's optional outputs Mean and InvStdDev (shape X.shape[:axis]
followed by ones, dtype the stash type) exist only when the node asks for them
(`_outputs=3`). The other layers compute in float32 (float64 for f64) and round once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.ops._common import attr_float, attr_int, check_input, compute_dtype, opt
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.shapes import broadcast_shapes, normalize_axis, unify_dims
from requant.ir.types import TensorType

__all__: list[str] = []

_STASH = {1: dtypes.float32, 11: dtypes.float64}


def _stash(ctx: InferContext):
    code = attr_int(ctx, "stash_type")
    if code not in _STASH:
        raise ctx.fail(f"stash_type={code} is not supported (1 = float32, 11 = float64)")
    return _STASH[code]


def _check_param(ctx: InferContext, i: int, x: TensorType, axis: int | None) -> None:
    """Scale/B must share X's dtype and broadcast to X.shape[axis:]."""
    t = ctx.input(i)
    if t is None:
        return
    name = ctx.schema.inputs[i].name
    if t.dtype != x.dtype:
        raise ctx.fail(f"{name} has dtype {t.dtype}, X has {x.dtype}")
    if t.shape is None or x.shape is None or axis is None:
        return
    norm = tuple(x.shape[axis:])
    if len(t.shape) > len(x.shape):
        raise ctx.fail(f"{name} {t} has a higher rank than X {x}")
    out = broadcast_shapes([x.shape, t.shape], ctx.schema.name)
    for a, b in zip(out, x.shape):
        if isinstance(a, int) and isinstance(b, int) and a != b:
            raise ctx.fail(f"{name} {t} does not broadcast to the normalised shape {norm}")


def _infer_layer_norm(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "float")
    attr_float(ctx, "epsilon")
    stash = _stash(ctx)
    axis = attr_int(ctx, "axis")
    a = None if x.rank is None else normalize_axis(axis, x.rank, ctx.schema.name)
    _check_param(ctx, 1, x, a)
    _check_param(ctx, 2, x, a)
    n = 1 if ctx.num_outputs is None else ctx.num_outputs
    if not 1 <= n <= 3:
        raise ctx.fail(f"has 1 to 3 outputs, {n} asked for")
    stats_shape = None if a is None else tuple(x.shape[:a]) + (1,) * (x.rank - a)
    return [x] + [TensorType(stats_shape, stash)] * (n - 1)


def _layer_norm(ins: list, attrs: dict, outs: list) -> Any:
    x, scale, bias = ins[0], ins[1], opt(ins, 2)
    st = outs[1].dtype.np if len(outs) > 1 else _STASH[attrs["stash_type"]].np
    axis = attrs["axis"] % x.ndim if x.ndim else 0
    axes = tuple(range(axis, x.ndim))
    xs = x.astype(st)
    mean = np.mean(xs, axis=axes, keepdims=True)
    d = xs - mean
    var = np.mean(d * d, axis=axes, keepdims=True)
    inv = (1 / np.sqrt(var + st.type(attrs["epsilon"]))).astype(st)
    y = (d * inv).astype(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv][: len(outs)]


define_op(
    "LayerNormalization",
    inputs=("X", "Scale", "B?"),
    outputs=("Y", "Mean?", "InvStdDev?"),
    attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
    infer=_infer_layer_norm,
    kernel=_layer_norm,
)


def _infer_rms_norm(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "float")
    attr_float(ctx, "epsilon")
    _stash(ctx)
    axis = attr_int(ctx, "axis")
    a = None if x.rank is None else normalize_axis(axis, x.rank, ctx.schema.name)
    _check_param(ctx, 1, x, a)
    return [x]


def _rms_norm(ins: list, attrs: dict, outs: list) -> Any:
    x, scale = ins[0], ins[1]
    st = _STASH[attrs["stash_type"]].np
    axis = attrs["axis"] % x.ndim if x.ndim else 0
    xs = x.astype(st)
    ms = np.mean(xs * xs, axis=tuple(range(axis, x.ndim)), keepdims=True)
    y = (xs / np.sqrt(ms + st.type(attrs["epsilon"]))).astype(x.dtype)
    return y * scale


define_op(
    "RMSNormalization",
    inputs=("X", "scale"),
    attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
    infer=_infer_rms_norm,
    kernel=_rms_norm,
)


def _infer_channel_params(ctx: InferContext, params: range, what: str) -> TensorType:
    """X is (N, C, ...); each input in `params` is a 1-D (C,) tensor of X's dtype."""
    x = check_input(ctx, 0, "float")
    if x.rank is not None and x.rank < 2:
        raise ctx.fail(f"X must have rank >= 2 (N, C, ...), got {x}")
    c = None if x.shape is None else x.shape[1]
    for i in params:
        t = ctx.input(i)
        name = ctx.schema.inputs[i].name
        if t.dtype != x.dtype:
            raise ctx.fail(f"{name} has dtype {t.dtype}, X has {x.dtype}")
        if t.rank is not None:
            if t.rank != 1:
                raise ctx.fail(f"{name} must be 1-D ({what}), got {t}")
            c = unify_dims(c, t.shape[0], ctx.schema.name, f"{what} sizes")
    return x


def _infer_batch_norm(ctx: InferContext) -> list[TensorType]:
    if attr_int(ctx, "training_mode") != 0:
        raise ctx.fail("training_mode=1 is not supported: requant runs inference only (use training_mode=0)")
    attr_float(ctx, "epsilon")
    attr_float(ctx, "momentum")
    x = _infer_channel_params(ctx, range(1, 5), "channel")
    if ctx.num_outputs not in (None, 1):
        raise ctx.fail("in inference mode has one output (running mean/var exist only in training)")
    return [x]


def _channel_view(p: np.ndarray, ndim: int, ct) -> np.ndarray:
    return p.astype(ct).reshape((1, -1) + (1,) * (ndim - 2))


def _batch_norm(ins: list, attrs: dict, outs: list) -> Any:
    x, scale, b, mean, var = ins
    ct = compute_dtype(x)
    v = lambda p: _channel_view(p, x.ndim, ct)  # noqa: E731
    inv = 1 / np.sqrt(v(var) + ct.type(attrs["epsilon"]))
    return ((x.astype(ct) - v(mean)) * inv * v(scale) + v(b)).astype(x.dtype)


define_op(
    "BatchNormalization",
    inputs=("X", "scale", "B", "input_mean", "input_var"),
    attrs={"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0},
    infer=_infer_batch_norm,
    kernel=_batch_norm,
)


def _infer_instance_norm(ctx: InferContext) -> list[TensorType]:
    attr_float(ctx, "epsilon")
    return [_infer_channel_params(ctx, range(1, 3), "channel")]


def _instance_norm(ins: list, attrs: dict, outs: list) -> Any:
    x, scale, b = ins
    ct = compute_dtype(x)
    xs = x.astype(ct)
    axes = tuple(range(2, x.ndim))
    mean = np.mean(xs, axis=axes, keepdims=True)
    var = np.mean((xs - mean) ** 2, axis=axes, keepdims=True)
    y = (xs - mean) / np.sqrt(var + ct.type(attrs["epsilon"]))
    return (y * _channel_view(scale, x.ndim, ct) + _channel_view(b, x.ndim, ct)).astype(x.dtype)


define_op(
    "InstanceNormalization",
    inputs=("input", "scale", "B"),
    outputs=("output",),
    attrs={"epsilon": 1e-5},
    infer=_infer_instance_norm,
    kernel=_instance_norm,
)


def _infer_group_norm(ctx: InferContext) -> list[TensorType]:
    attr_float(ctx, "epsilon")
    _stash(ctx)
    g = attr_int(ctx, "num_groups", lo=1)
    x = _infer_channel_params(ctx, range(1, 3), "channel")
    c = None if x.shape is None else x.shape[1]
    if isinstance(c, int) and c % g:
        raise ctx.fail(f"{c} channels do not split into {g} groups")
    return [x]


def _group_norm(ins: list, attrs: dict, outs: list) -> Any:
    x, scale, b = ins
    st = _STASH[attrs["stash_type"]].np
    g = attrs["num_groups"]
    n, c = x.shape[:2]
    xs = x.astype(st).reshape((n, g, -1))
    mean = np.mean(xs, axis=2, keepdims=True)
    var = np.mean((xs - mean) ** 2, axis=2, keepdims=True)
    y = ((xs - mean) / np.sqrt(var + st.type(attrs["epsilon"]))).reshape(x.shape).astype(x.dtype)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return y * scale.reshape(shape) + b.reshape(shape)


define_op(
    "GroupNormalization",
    inputs=("X", "scale", "bias"),
    attrs={"epsilon": 1e-5, "num_groups": REQUIRED, "stash_type": 1},
    infer=_infer_group_norm,
    kernel=_group_norm,
)
