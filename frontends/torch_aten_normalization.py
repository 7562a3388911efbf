"""Lowerings of aten's normalisation layers, inference only: layer_norm and
native_layer_norm -> LayerNormalization, rms_norm -> RMSNormalization,
_native_batch_norm_legit_no_training -> BatchNormalization, group_norm and
native_group_norm -> GroupNormalization. layer_norm, rms_norm and group_norm reach the
IR whole because the frontend's decomposition table keeps them.

Semantics particular to these lowerings:
- A missing weight becomes a constant of ones, a missing batch/group-norm bias a
  constant of zeros (the IR ops take scale as a required input); LayerNormalization
  leaves its bias out instead.
- normalized_shape of length n normalises over the last n axes (axis=-n).
- rms_norm with eps=None uses torch's default, the input dtype's machine epsilon.
- The mean / rstd outputs of native_layer_norm and native_group_norm (training
  graphs) are refused when something reads them; batch norm in training mode is
  refused outright.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from requant.frontends.torch_aten_common import Cx
from requant.frontends.torch_lowering import NotLowerable, lowers
from requant.ir.dtypes import DType
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


def _param_or(cx: Cx, arg: Any, shape: Sequence[int], fill: float, dt: DType) -> Value:
    if arg is not None:
        return cx.tensor(arg, dt)
    return cx.const(np.full(list(shape), fill, dtype=dt.np))


@lowers("aten.layer_norm.default")
def layer_norm(cx: Cx, x: Any, normalized_shape: Sequence[int], weight: Any = None, bias: Any = None,
               eps: float = 1e-5, cudnn_enable: bool = True) -> Value:
    dt = cx.dtype_of(x)
    scale = _param_or(cx, weight, normalized_shape, 1.0, dt)
    return cx.emit("LayerNormalization", cx.value(x), scale, cx.maybe_value(bias),
                   axis=-len(normalized_shape), epsilon=float(eps))


@lowers("aten.native_layer_norm.default")
def native_layer_norm(cx: Cx, x: Any, normalized_shape: Sequence[int], weight: Any, bias: Any, eps: float) -> tuple:
    if cx.used_outputs() - {0}:
        raise NotLowerable("native_layer_norm's mean/rstd outputs (training graphs)")
    return (layer_norm(cx, x, normalized_shape, weight, bias, eps), None, None)


@lowers("aten.rms_norm.default")
def rms_norm(cx: Cx, x: Any, normalized_shape: Sequence[int], weight: Any = None, eps: float | None = None) -> Value:
    dt = cx.dtype_of(x)
    if eps is None:
        eps = float(torch.finfo(cx.val(x).dtype).eps)
    scale = _param_or(cx, weight, normalized_shape, 1.0, dt)
    return cx.emit("RMSNormalization", cx.value(x), scale, axis=-len(normalized_shape), epsilon=float(eps))


@lowers("aten._native_batch_norm_legit_no_training.default")
def batch_norm_inference(cx: Cx, x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any,
                         momentum: float, eps: float) -> tuple:
    dt = cx.dtype_of(x)
    channels = [cx.static_int(cx.shape(x)[1])]
    y = cx.emit(
        "BatchNormalization",
        cx.value(x),
        _param_or(cx, weight, channels, 1.0, dt),
        _param_or(cx, bias, channels, 0.0, dt),
        cx.tensor(running_mean, dt),
        cx.tensor(running_var, dt),
        epsilon=float(eps),
    )
    return (y, None, None)


@lowers("aten._native_batch_norm_legit.default", "aten._native_batch_norm_legit.no_stats",
        "aten._native_batch_norm_legit_functional.default")
def batch_norm_training(cx: Cx, *args: Any, **kwargs: Any) -> tuple:
    raise NotLowerable("batch norm in training mode (call model.eval() before from_torch)")


@lowers("aten.group_norm.default")
def group_norm(cx: Cx, x: Any, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5,
               cudnn_enabled: bool = True) -> Value:
    dt = cx.dtype_of(x)
    channels = [cx.static_int(cx.shape(x)[1])]
    return cx.emit("GroupNormalization", cx.value(x), _param_or(cx, weight, channels, 1.0, dt),
                   _param_or(cx, bias, channels, 0.0, dt), num_groups=int(num_groups), epsilon=float(eps))


@lowers("aten.native_group_norm.default")
def native_group_norm(cx: Cx, x: Any, weight: Any, bias: Any, n: Any, c: Any, hxw: Any, group: int,
                      eps: float) -> tuple:
    if cx.used_outputs() - {0}:
        raise NotLowerable("native_group_norm's mean/rstd outputs (training graphs)")
    return (group_norm(cx, x, group, weight, bias, eps), None, None)
