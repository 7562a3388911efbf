"""The aten -> requant lowering table: one small function per torch op (or per family
of overloads), registered with `@lowers`. Importing this module fills `LOWERINGS`.

What the IR gets for the high-level ops kept out of decomposition (see
`torch_frontend.KEPT_OPS`):
- linear(x, W, b) -> MatMul(x, Transpose(W)) (+ Add(b)). The weight constant keeps
  torch's [out, in] layout and its state_dict name; constant folding turns the Transpose
  of a constant into a plain [in, out] constant.
- scaled_dot_product_attention on 4-D Q/K/V -> requant's ScaledDotProductAttention
  (the same semantics: bool or additive mask, is_causal, GQA, fully masked rows give 0),
  one node per attention; passes that need the Softmax inside expand it. Other ranks ->
  MatMul(Q, Transpose(K)) * scale, the mask (bool: Where(mask, s, -inf); float: Add),
  Softmax(axis=-1) guarded to give 0 on fully masked rows, MatMul(., V).
- layer_norm -> LayerNormalization, group_norm -> GroupNormalization, rms_norm ->
  RMSNormalization, gelu -> Gelu(approximate), silu -> Mul(x, Sigmoid(x)), softmax ->
  Softmax, log_softmax -> LogSoftmax, matmul -> MatMul.
No-ops (clone, alias, detach, contiguous, lift_fresh_copy, eval-mode dropout, dtype
conversions to the same dtype, full-range slices, same-shape views/expands) produce no
node; assertions produce nothing at all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from requant.ir import dtypes
from requant.ir.registry import is_registered
from requant.ir.dtypes import DType
from requant.ir.graph import Value
from requant.frontends.torch_lowering import (
    INT64_MAX,
    LoweringContext,
    NotLowerable,
    ir_dtype,
    lowers,
)

__all__: list[str] = []

logger = logging.getLogger(__name__)

Cx = LoweringContext

# Above this many elements a constant-filled tensor becomes Expand(scalar, shape) rather
# than a materialised constant, so masks and zeros do not bloat the graph.
_MATERIALISE_MAX_ELEMENTS = 1024


# -- helpers -----------------------------------------------------------------------------


def _stand_in(cx: Cx, arg: Any) -> Any:
    """Something `torch.result_type` promotes exactly like `arg` (0-d tensors rank
    below dimensioned ones, Python numbers below both)."""
    val = cx.val(arg)
    if isinstance(val, torch.Tensor):
        return torch.empty((1,) * val.dim(), dtype=val.dtype)
    if isinstance(val, torch.SymBool):
        return True
    if isinstance(val, torch.SymInt):
        return 1
    if isinstance(val, torch.SymFloat):
        return 1.0
    return val


def _common_dtype(cx: Cx, *args: Any) -> DType:
    ins = [_stand_in(cx, a) for a in args]
    dt = torch.result_type(ins[0], ins[1]) if len(ins) > 1 else torch.result_type(ins[0], ins[0])
    for other in ins[2:]:
        dt = torch.result_type(torch.empty((1,), dtype=dt), other)
    return ir_dtype(dt)


def _is_number(arg: Any, value: float) -> bool:
    return isinstance(arg, (int, float)) and not isinstance(arg, bool) and arg == value


def _dim_of(cx: Cx, item: Any) -> Any:
    """A size argument as an int or a SymInt (for comparing with torch's shapes)."""
    if isinstance(item, fx.Node):
        return item.meta.get("val")
    return item


def _same_dim(a: Any, b: Any) -> bool:
    """Two extents are provably equal: equal ints, or SymInts with one expression."""
    ea = a.node.expr if isinstance(a, torch.SymInt) else a
    eb = b.node.expr if isinstance(b, torch.SymInt) else b
    try:
        return bool(ea == eb)
    except TypeError:
        return False


def _same_shape(a: Sequence[Any], b: Sequence[Any]) -> bool:
    return len(a) == len(b) and all(_same_dim(x, y) for x, y in zip(a, b))


def _static_shape(shape: Sequence[Any]) -> list[int] | None:
    out = [LoweringContext.static_int(d) for d in shape]
    return None if any(d is None for d in out) else out


def _norm_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _norm_dims(dims: Any, rank: int) -> list[int]:
    if dims is None:
        return []
    if isinstance(dims, int):
        dims = [dims]
    return [_norm_dim(int(d), rank) for d in dims]


def _filled(cx: Cx, shape_items: Sequence[Any], fill: Any, dt: DType) -> Value:
    """A tensor of `shape_items` (ints, SymInts or 0-d values) filled with `fill`."""
    if isinstance(fill, fx.Node):  # a fill value torch computes at run time
        return cx.emit("Expand", cx.tensor(fill, dt), cx.int_vector(shape_items))
    static = cx.static_ints(shape_items)
    scalar = np.asarray(fill).astype(dt.np)
    if static is not None and int(np.prod(static, dtype=np.int64)) <= _MATERIALISE_MAX_ELEMENTS:
        return cx.const(np.full(static, scalar, dtype=dt.np))
    return cx.emit("Expand", cx.const(scalar), cx.int_vector(shape_items))


def _like(cx: Cx, x: Any, fill: Any) -> Value:
    """A tensor shaped like `x` filled with `fill`, in the node's output dtype."""
    dt = cx.out_dtype
    shape = cx.shape(x)
    if _static_shape(shape) is not None:
        return _filled(cx, shape, fill, dt)
    return cx.emit("Expand", cx.const(np.asarray(fill).astype(dt.np)), cx.shape_of(cx.value(x)))


def _binary(op: str):
    """Elementwise `op` computed in torch's promoted (= output) dtype."""

    def lower(cx: Cx, a: Any, b: Any) -> Value:
        dt = cx.out_dtype
        return cx.emit(op, cx.tensor(a, dt), cx.tensor(b, dt))

    lower.__name__ = f"lower_{op.lower()}"
    return lower


def _unary(op: str, **attrs: Any):
    def lower(cx: Cx, x: Any) -> Value:
        return cx.emit(op, cx.tensor(x, cx.out_dtype), **attrs)

    lower.__name__ = f"lower_{op.lower()}"
    return lower


def _passthrough_type(cx: Cx, x: Any) -> bool:
    """The node's result has exactly `x`'s dtype and shape."""
    xv = cx.val(x)
    return (
        isinstance(xv, torch.Tensor)
        and isinstance(cx.out, torch.Tensor)
        and xv.dtype == cx.out.dtype
        and _same_shape(xv.shape, cx.out.shape)
    )


# -- no-ops and assertions --------------------------------------------------------------


@lowers(
    "aten.clone.default",
    "aten.alias.default",
    "aten.detach.default",
    "aten.detach_.default",
    "aten.lift_fresh_copy.default",
    "aten.contiguous.default",
    "aten.lift_fresh.default",
)
def identity(cx: Cx, x: Any, *args: Any, **kwargs: Any) -> Value:
    return cx.value(x)


@lowers(
    "aten._assert_tensor_metadata.default",
    "aten._assert_async.default",
    "aten._assert_async.msg",
    "aten._assert_scalar.default",
    "aten._functional_assert_async.msg",
    "aten._functional_assert_scalar.default",
    "aten.sym_constrain_range.default",
    "aten.sym_constrain_range_for_size.default",
    "aten._functional_sym_constrain_range.default",
    "aten._functional_sym_constrain_range_for_size.default",
)
def assertion(cx: Cx, *args: Any, **kwargs: Any) -> None:
    # torch.export already checked these for the traced shapes; the IR's types carry the rest
    return None


@lowers("aten.dropout.default")
def dropout(cx: Cx, x: Any, p: float, train: bool | None) -> Value:
    if train and p > 0:
        raise NotLowerable("dropout in training mode (call model.eval())")
    return cx.value(x)


@lowers("aten.native_dropout.default")
def native_dropout(cx: Cx, x: Any, p: float, train: bool | None) -> tuple:
    if train and p > 0:
        raise NotLowerable("dropout in training mode (call model.eval())")
    return (cx.value(x), None)


@lowers("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten._to_dim_order_copy.default")
def to_copy(cx: Cx, x: Any, *args: Any, **kwargs: Any) -> Value:
    return cx.cast(cx.value(x), cx.out_dtype)


@lowers("aten.copy.default")
def copy(cx: Cx, dst: Any, src: Any, non_blocking: bool = False) -> Value:
    v = cx.cast(cx.value(src), cx.out_dtype)
    if _same_shape(cx.shape(src), cx.out.shape):
        return v
    return cx.emit("Expand", v, cx.shape_of(cx.value(dst)))


# -- elementwise arithmetic ---------------------------------------------------------------


@lowers("aten.add.Tensor", "aten.add.Scalar")
def add(cx: Cx, a: Any, b: Any, *, alpha: Any = 1) -> Value:
    if _is_number(b, 0) and _passthrough_type(cx, a):
        return cx.value(a)
    dt = cx.out_dtype
    if dt == dtypes.bool_:
        return cx.emit("Or", cx.tensor(a, dt), cx.tensor(b, dt))
    y = cx.tensor(b, dt)
    if alpha != 1:
        y = cx.emit("Mul", y, cx.tensor(alpha, dt))
    return cx.emit("Add", cx.tensor(a, dt), y)


@lowers("aten.sub.Tensor", "aten.sub.Scalar")
def sub(cx: Cx, a: Any, b: Any, *, alpha: Any = 1) -> Value:
    if _is_number(b, 0) and _passthrough_type(cx, a):
        return cx.value(a)
    dt = cx.out_dtype
    y = cx.tensor(b, dt)
    if alpha != 1:
        y = cx.emit("Mul", y, cx.tensor(alpha, dt))
    return cx.emit("Sub", cx.tensor(a, dt), y)


@lowers("aten.rsub.Scalar", "aten.rsub.Tensor")
def rsub(cx: Cx, a: Any, b: Any, alpha: Any = 1) -> Value:
    dt = cx.out_dtype
    x = cx.tensor(a, dt)
    if alpha != 1:
        x = cx.emit("Mul", x, cx.tensor(alpha, dt))
    return cx.emit("Sub", cx.tensor(b, dt), x)


@lowers("aten.mul.Tensor", "aten.mul.Scalar")
def mul(cx: Cx, a: Any, b: Any) -> Value:
    if _is_number(b, 1) and _passthrough_type(cx, a):
        return cx.value(a)
    dt = cx.out_dtype
    if dt == dtypes.bool_:
        return cx.emit("And", cx.tensor(a, dt), cx.tensor(b, dt))
    return cx.emit("Mul", cx.tensor(a, dt), cx.tensor(b, dt))


def _floor_div(cx: Cx, x: Value, y: Value) -> Value:
    if x.dtype.is_float:
        return cx.emit("Floor", cx.emit("Div", x, y))
    # (x - x mod y) is an exact multiple of y, so the truncating Div is exact there
    return cx.emit("Div", cx.emit("Sub", x, cx.emit("Mod", x, y, fmod=0)), y)


def _trunc(cx: Cx, x: Value) -> Value:
    negative = cx.emit("Less", x, cx.const(np.zeros((), x.dtype.np)))
    return cx.emit("Where", negative, cx.emit("Ceil", x), cx.emit("Floor", x))


@lowers("aten.div.Tensor", "aten.div.Scalar", "aten.true_divide.Tensor")
def div(cx: Cx, a: Any, b: Any) -> Value:
    if _is_number(b, 1) and _passthrough_type(cx, a):
        return cx.value(a)
    dt = cx.out_dtype
    return cx.emit("Div", cx.tensor(a, dt), cx.tensor(b, dt))


@lowers("aten.div.Tensor_mode", "aten.div.Scalar_mode")
def div_mode(cx: Cx, a: Any, b: Any, *, rounding_mode: str | None = None) -> Value:
    dt = cx.out_dtype
    x, y = cx.tensor(a, dt), cx.tensor(b, dt)
    if rounding_mode is None:
        return cx.emit("Div", x, y)
    if rounding_mode == "floor":
        return _floor_div(cx, x, y)
    q = cx.emit("Div", x, y)
    return _trunc(cx, q) if dt.is_float else q


@lowers("aten.floor_divide.default", "aten.floor_divide.Scalar")
def floor_divide(cx: Cx, a: Any, b: Any) -> Value:
    dt = cx.out_dtype
    return _floor_div(cx, cx.tensor(a, dt), cx.tensor(b, dt))


@lowers("aten.remainder.Tensor", "aten.remainder.Scalar", "aten.remainder.Scalar_Tensor")
def remainder(cx: Cx, a: Any, b: Any) -> Value:
    dt = cx.out_dtype
    x, y = cx.tensor(a, dt), cx.tensor(b, dt)
    if not dt.is_float:
        return cx.emit("Mod", x, y, fmod=0)
    return cx.emit("Sub", x, cx.emit("Mul", cx.emit("Floor", cx.emit("Div", x, y)), y))


@lowers("aten.fmod.Tensor", "aten.fmod.Scalar")
def fmod(cx: Cx, a: Any, b: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Mod", cx.tensor(a, dt), cx.tensor(b, dt), fmod=1)


@lowers("aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor", "aten.pow.Scalar")
def pow_(cx: Cx, a: Any, b: Any) -> Value:
    dt = cx.out_dtype
    if _is_number(b, 1) and _passthrough_type(cx, a):
        return cx.value(a)
    return cx.emit("Pow", cx.tensor(a, dt), cx.tensor(b, dt))


for _target, _op in {
    "aten.maximum.default": "Max",
    "aten.minimum.default": "Min",
    "aten.fmax.default": "Max",
    "aten.fmin.default": "Min",
}.items():
    lowers(_target)(_binary(_op))


# -- comparisons and logic --------------------------------------------------------------

_ORDERED = {"Less", "LessOrEqual", "Greater", "GreaterOrEqual"}


def _compare(op: str, negate: bool = False):
    def lower(cx: Cx, a: Any, b: Any) -> Value:
        dt = _common_dtype(cx, a, b)
        if dt == dtypes.bool_ and op in _ORDERED:
            dt = dtypes.int64  # the IR orders numbers only; False < True as 0 < 1
        out = cx.emit(op, cx.tensor(a, dt), cx.tensor(b, dt))
        return cx.emit("Not", out) if negate else out

    lower.__name__ = f"lower_{op.lower()}"
    return lower


for _name, (_op, _neg) in {
    "eq": ("Equal", False),
    "ne": ("Equal", True),
    "lt": ("Less", False),
    "le": ("LessOrEqual", False),
    "gt": ("Greater", False),
    "ge": ("GreaterOrEqual", False),
}.items():
    lowers(f"aten.{_name}.Tensor", f"aten.{_name}.Scalar")(_compare(_op, _neg))


def _logical(op: str):
    def lower(cx: Cx, a: Any, b: Any) -> Value:
        return cx.emit(op, cx.tensor(a, dtypes.bool_), cx.tensor(b, dtypes.bool_))

    lower.__name__ = f"lower_{op.lower()}"
    return lower


def _bitwise(bool_op: str, int_op: str):
    def lower(cx: Cx, a: Any, b: Any) -> Value:
        dt = cx.out_dtype
        return cx.emit(bool_op if dt == dtypes.bool_ else int_op, cx.tensor(a, dt), cx.tensor(b, dt))

    lower.__name__ = f"lower_{bool_op.lower()}"
    return lower


for _name, _op in {"and": "And", "or": "Or", "xor": "Xor"}.items():
    lowers(f"aten.logical_{_name}.default")(_logical(_op))
    lowers(f"aten.bitwise_{_name}.Tensor", f"aten.bitwise_{_name}.Scalar")(
        _bitwise(_op, f"Bitwise{_op}")
    )


@lowers("aten.logical_not.default")
def logical_not(cx: Cx, x: Any) -> Value:
    return cx.emit("Not", cx.tensor(x, dtypes.bool_))


@lowers("aten.bitwise_not.default")
def bitwise_not(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    return cx.emit("Not" if v.dtype == dtypes.bool_ else "BitwiseNot", v)


@lowers("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def where(cx: Cx, cond: Any, a: Any, b: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Where", cx.tensor(cond, dtypes.bool_), cx.tensor(a, dt), cx.tensor(b, dt))


@lowers("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def masked_fill(cx: Cx, x: Any, mask: Any, value: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Where", cx.tensor(mask, dtypes.bool_), cx.tensor(value, dt), cx.tensor(x, dt))


@lowers("aten.clamp.default", "aten.clip.default", "aten.hardtanh.default")
def clamp(cx: Cx, x: Any, min: Any = None, max: Any = None) -> Value:
    dt = cx.out_dtype
    lo = None if min is None else cx.tensor(min, dt)
    hi = None if max is None else cx.tensor(max, dt)
    return cx.emit("Clip", cx.tensor(x, dt), lo, hi)


@lowers("aten.clamp.Tensor", "aten.clip.Tensor")
def clamp_tensor(cx: Cx, x: Any, min: Any = None, max: Any = None) -> Value:
    dt = cx.out_dtype
    v = cx.tensor(x, dt)
    if min is not None:
        v = cx.emit("Max", v, cx.tensor(min, dt))
    if max is not None:
        v = cx.emit("Min", v, cx.tensor(max, dt))
    return v


@lowers("aten.clamp_min.default", "aten.clamp_min.Tensor")
def clamp_min(cx: Cx, x: Any, min: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Max", cx.tensor(x, dt), cx.tensor(min, dt))


@lowers("aten.clamp_max.default", "aten.clamp_max.Tensor")
def clamp_max(cx: Cx, x: Any, max: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Min", cx.tensor(x, dt), cx.tensor(max, dt))


# -- unary math and activations ---------------------------------------------------------

for _name, _op in {
    "neg": "Neg",
    "abs": "Abs",
    "sign": "Sign",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "reciprocal": "Reciprocal",
    "sin": "Sin",
    "cos": "Cos",
    "tan": "Tan",
    "tanh": "Tanh",
    "asin": "Asin",
    "acos": "Acos",
    "atan": "Atan",
    "sinh": "Sinh",
    "cosh": "Cosh",
    "erf": "Erf",
    "floor": "Floor",
    "ceil": "Ceil",
    "sigmoid": "Sigmoid",
    "relu": "Relu",
    "hardswish": "HardSwish",
    "mish": "Mish",
}.items():
    lowers(f"aten.{_name}.default")(_unary(_op))


@lowers("aten.isnan.default", "aten.isinf.default")
def isnan_isinf(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    if not v.dtype.is_float:
        return _like(cx, x, False)
    return cx.emit("IsNaN" if cx.meta["torch_op"] == "aten.isnan.default" else "IsInf", v)


@lowers("aten.round.default")
def round_(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    return v if not v.dtype.is_float else cx.emit("Round", v)


@lowers("aten.trunc.default")
def trunc(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    return v if not v.dtype.is_float else _trunc(cx, v)


@lowers("aten.rsqrt.default")
def rsqrt(cx: Cx, x: Any) -> Value:
    return cx.emit("Reciprocal", cx.emit("Sqrt", cx.tensor(x, cx.out_dtype)))


@lowers("aten.log1p.default")
def log1p(cx: Cx, x: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Log", cx.emit("Add", cx.tensor(x, dt), cx.const(np.ones((), dt.np))))


@lowers("aten.expm1.default")
def expm1(cx: Cx, x: Any) -> Value:
    dt = cx.out_dtype
    return cx.emit("Sub", cx.emit("Exp", cx.tensor(x, dt)), cx.const(np.ones((), dt.np)))


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


def _safe_softmax(cx: Cx, x: Value, axis: int) -> Value:
    """Softmax that gives 0 instead of NaN along rows that are all -inf (fully masked),
    as torch's attention and `_safe_softmax` do."""
    probs = cx.emit("Softmax", x, axis=axis)
    row_max = cx.emit("ReduceMax", x, cx.axes([axis]), keepdims=1)
    dead = cx.emit("Equal", row_max, cx.const(np.asarray(-np.inf, x.dtype.np)))
    return cx.emit("Where", dead, cx.const(np.zeros((), x.dtype.np)), probs)


@lowers("aten._safe_softmax.default")
def safe_softmax(cx: Cx, x: Any, dim: int, *args: Any, **kwargs: Any) -> Value:
    return _safe_softmax(cx, cx.tensor(x, cx.out_dtype), int(dim))


@lowers("aten.log_softmax.int", "aten._log_softmax.default")
def log_softmax(cx: Cx, x: Any, dim: int, *args: Any, **kwargs: Any) -> Value:
    return cx.emit("LogSoftmax", cx.tensor(x, cx.out_dtype), axis=int(dim))


# -- normalisation ------------------------------------------------------------------------


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


# -- matrix products, convolution, pooling --------------------------------------------------


@lowers("aten.linear.default")
def linear(cx: Cx, x: Any, weight: Any, bias: Any = None) -> Value:
    w = cx.value(weight)
    y = cx.emit("MatMul", cx.value(x), cx.emit("Transpose", w, perm=[1, 0]) if w.type.rank == 2 else w)
    if bias is not None:
        y = cx.emit("Add", y, cx.value(bias))
    return y


@lowers("aten.matmul.default", "aten.mm.default", "aten.bmm.default")
def matmul(cx: Cx, a: Any, b: Any) -> Value:
    return cx.emit("MatMul", cx.value(a), cx.value(b))


@lowers("aten.addmm.default")
def addmm(cx: Cx, bias: Any, a: Any, b: Any, *, beta: float = 1, alpha: float = 1) -> Value:
    return cx.emit("Gemm", cx.value(a), cx.value(b), cx.value(bias), alpha=float(alpha), beta=float(beta))


@lowers("aten.baddbmm.default")
def baddbmm(cx: Cx, bias: Any, a: Any, b: Any, *, beta: float = 1, alpha: float = 1) -> Value:
    dt = cx.out_dtype
    prod = cx.emit("MatMul", cx.value(a), cx.value(b))
    if alpha != 1:
        prod = cx.emit("Mul", prod, cx.tensor(alpha, dt))
    if beta == 0:
        return prod
    base = cx.value(bias)
    if beta != 1:
        base = cx.emit("Mul", base, cx.tensor(beta, dt))
    return cx.emit("Add", base, prod)


@lowers("aten.convolution.default")
def convolution(cx: Cx, x: Any, weight: Any, bias: Any, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], transposed: bool, output_padding: Sequence[int], groups: int) -> Value:
    w = cx.value(weight)
    spatial = len(stride)
    attrs: dict[str, Any] = dict(
        kernel_shape=[int(k) for k in w.shape[2:]],
        strides=[int(s) for s in stride],
        pads=[int(p) for p in padding] * 2,
        dilations=[int(d) for d in dilation],
        group=int(groups),
    )
    if len(attrs["pads"]) != 2 * spatial:
        raise NotLowerable(f"convolution padding {list(padding)} for {spatial} spatial axes")
    if transposed:
        attrs["output_padding"] = [int(p) for p in output_padding]
        return cx.emit("ConvTranspose", cx.value(x), w, cx.maybe_value(bias), **attrs)
    return cx.emit("Conv", cx.value(x), w, cx.maybe_value(bias), **attrs)


def _pool_attrs(kernel: Sequence[int], stride: Sequence[int], padding: Any, spatial: int,
                ceil_mode: bool) -> dict[str, Any]:
    kernel = list(kernel) * (spatial // len(kernel))
    stride = list(stride) * (spatial // len(stride)) if stride else kernel
    pads = list(padding) if isinstance(padding, (list, tuple)) else [padding]
    pads = pads * (spatial // len(pads))
    return dict(kernel_shape=[int(k) for k in kernel], strides=[int(s) for s in stride],
                pads=[int(p) for p in pads] * 2, ceil_mode=int(bool(ceil_mode)))


@lowers("aten.max_pool1d_with_indices.default", "aten.max_pool2d_with_indices.default",
        "aten.max_pool3d_with_indices.default", "aten.max_pool2d.default")
def max_pool(cx: Cx, x: Any, kernel_size: Sequence[int], stride: Sequence[int] = (), padding: Any = 0,
             dilation: Any = 1, ceil_mode: bool = False) -> Any:
    spatial = cx.rank(x) - 2
    attrs = _pool_attrs(kernel_size, stride, padding, spatial, ceil_mode)
    dil = list(dilation) if isinstance(dilation, (list, tuple)) else [dilation]
    attrs["dilations"] = [int(d) for d in dil * (spatial // len(dil))]
    y = cx.emit("MaxPool", cx.value(x), **attrs)
    if not isinstance(cx.out, (list, tuple)):
        return y
    if 1 in cx.used_outputs():
        raise NotLowerable("max pooling indices (return_indices=True)")
    return (y, None)


@lowers("aten.avg_pool1d.default", "aten.avg_pool2d.default", "aten.avg_pool3d.default")
def avg_pool(cx: Cx, x: Any, kernel_size: Sequence[int], stride: Sequence[int] = (), padding: Any = 0,
             ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None) -> Value:
    if divisor_override is not None:
        raise NotLowerable("avg_pool with divisor_override")
    attrs = _pool_attrs(kernel_size, stride, padding, cx.rank(x) - 2, ceil_mode)
    return cx.emit("AveragePool", cx.value(x), count_include_pad=int(bool(count_include_pad)), **attrs)


@lowers("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default",
        "aten._adaptive_avg_pool3d.default", "aten.adaptive_avg_pool1d.default")
def adaptive_avg_pool(cx: Cx, x: Any, output_size: Sequence[int]) -> Value:
    out = [int(s) for s in output_size]
    if all(s == 1 for s in out):
        return cx.emit("GlobalAveragePool", cx.value(x))
    spatial = _static_shape(cx.shape(x)[2:])
    if spatial is None or any(i % o for i, o in zip(spatial, out)):
        raise NotLowerable(f"adaptive average pooling to {out} from a size it does not divide")
    kernel = [i // o for i, o in zip(spatial, out)]
    return cx.emit("AveragePool", cx.value(x), kernel_shape=kernel, strides=kernel)


@lowers("aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool1d.default")
def adaptive_max_pool(cx: Cx, x: Any, output_size: Sequence[int]) -> tuple:
    if any(int(s) != 1 for s in output_size):
        raise NotLowerable(f"adaptive max pooling to {list(output_size)} (only 1 per axis)")
    if 1 in cx.used_outputs():
        raise NotLowerable("adaptive max pooling indices")
    return (cx.emit("GlobalMaxPool", cx.value(x)), None)


# -- attention -----------------------------------------------------------------------------


def _repeat_heads(cx: Cx, kv: Value, rep: int) -> Value:
    """(..., H, S, E) -> (..., H*rep, S, E), each head repeated `rep` times in place."""
    rank = kv.type.rank
    x = cx.emit("Unsqueeze", kv, cx.axes([rank - 2]))
    x = cx.emit("Expand", x, cx.const(np.array([1] * (rank - 2) + [rep, 1, 1], dtype=np.int64)))
    heads = kv.shape[rank - 3] * rep
    target = [0] * (rank - 3) + [heads, -1, kv.shape[-1]]
    return cx.emit("Reshape", x, cx.const(np.array(target, dtype=np.int64)))


def _causal_mask(cx: Cx, q: Any, k: Any) -> Value:
    length, source = cx.shape(q)[-2], cx.shape(k)[-2]
    static = _static_shape([length, source])
    if static is not None:
        return cx.const(np.tril(np.ones(static, dtype=bool)))
    ones = cx.emit("Expand", cx.const(np.array(True)), cx.int_vector([
        _size_value(cx, q, -2), _size_value(cx, k, -2)]))
    return cx.emit("Trilu", ones, upper=0)


def _size_value(cx: Cx, x: Any, dim: int) -> Value:
    v = cx.value(x)
    return cx.dim_size(v, _norm_dim(dim, v.type.rank))


@lowers("aten.scaled_dot_product_attention.default")
def scaled_dot_product_attention(cx: Cx, q: Any, k: Any, v: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, *, scale: float | None = None,
                                 enable_gqa: bool = False) -> Value:
    if dropout_p:
        raise NotLowerable("attention dropout (dropout_p > 0; call model.eval())")
    dt = cx.out_dtype
    mask = None
    if attn_mask is not None:
        mask = cx.value(attn_mask)
        mask = mask if mask.dtype == dtypes.bool_ else cx.cast(mask, dt)
    if all(cx.rank(t) == 4 for t in (q, k, v)) and is_registered("ScaledDotProductAttention"):
        # one op with torch's exact semantics (GQA, causal, fully masked rows -> 0)
        attrs: dict[str, Any] = {"is_causal": int(bool(is_causal))}
        if scale is not None:
            attrs["scale"] = float(scale)
        inputs = [cx.value(q), cx.value(k), cx.value(v)] + ([mask] if mask is not None else [])
        return cx.emit("ScaledDotProductAttention", *inputs, **attrs)
    return _attention_decomposed(cx, q, k, v, mask, is_causal, scale, enable_gqa)


def _attention_decomposed(cx: Cx, q: Any, k: Any, v: Any, mask: Value | None, is_causal: bool,
                          scale: float | None, enable_gqa: bool) -> Value:
    """Attention as standard ops, for the ranks the fused op does not take."""
    dt = cx.out_dtype
    qv, kv, vv = cx.value(q), cx.value(k), cx.value(v)
    head_dim = cx.static_int(cx.shape(q)[-1])
    if scale is None:
        if head_dim is None:
            raise NotLowerable("attention with a symbolic head dimension and no explicit scale")
        scale = 1.0 / math.sqrt(head_dim)
    if enable_gqa and cx.rank(q) >= 3:
        q_heads, kv_heads = cx.static_int(cx.shape(q)[-3]), cx.static_int(cx.shape(k)[-3])
        if q_heads is None or kv_heads is None:
            raise NotLowerable("grouped-query attention with symbolic head counts")
        if q_heads != kv_heads:
            kv, vv = _repeat_heads(cx, kv, q_heads // kv_heads), _repeat_heads(cx, vv, q_heads // kv_heads)
    rank = kv.type.rank
    perm = list(range(rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    scores = cx.emit("MatMul", qv, cx.emit("Transpose", kv, perm=perm))
    scores = cx.emit("Mul", scores, cx.const(np.asarray(scale, dt.np)))
    minus_inf = cx.const(np.asarray(-np.inf, dt.np))
    if is_causal:
        scores = cx.emit("Where", _causal_mask(cx, q, k), scores, minus_inf)
    if mask is not None:
        if mask.dtype == dtypes.bool_:
            scores = cx.emit("Where", mask, scores, minus_inf)
        else:
            scores = cx.emit("Add", scores, mask)
    # a mask can hide every key of a query (left padding); torch then gives zeros, not NaN
    probs = cx.emit("Softmax", scores, axis=-1) if mask is None else _safe_softmax(cx, scores, -1)
    return cx.emit("MatMul", probs, vv)


# -- reductions ----------------------------------------------------------------------------


def _reduce(cx: Cx, op: str, x: Any, dims: Any, keepdim: bool, dt: DType | None = None) -> Value:
    """`op` over `dims` (all axes when empty or None) of a torch argument or IR value."""
    dt = dt or cx.out_dtype
    v = cx.cast(x, dt) if isinstance(x, Value) else cx.tensor(x, dt)
    axes = _norm_dims(dims, max(v.type.rank, 1))
    if not axes or v.type.rank == 0:
        return cx.emit(op, v, keepdims=int(bool(keepdim)))
    return cx.emit(op, v, cx.axes(axes), keepdims=int(bool(keepdim)))


def _reduction(op: str):
    def lower(cx: Cx, x: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Value:
        return _reduce(cx, op, x, dim, keepdim)

    lower.__name__ = f"lower_{op.lower()}"
    return lower


for _targets, _op in (
    (("aten.sum.dim_IntList", "aten.sum.default"), "ReduceSum"),
    (("aten.mean.dim", "aten.mean.default"), "ReduceMean"),
    (("aten.amax.default",), "ReduceMax"),
    (("aten.amin.default",), "ReduceMin"),
    (("aten.prod.dim_int", "aten.prod.default"), "ReduceProd"),
    (("aten.logsumexp.default",), "ReduceLogSumExp"),
):
    lowers(*_targets)(_reduction(_op))


def _reduce_with_index(value_op: str, index_op: str):
    def lower(cx: Cx, x: Any, dim: int, keepdim: bool = False) -> tuple:
        used = cx.used_outputs()
        v = cx.value(x)
        axis = _norm_dim(int(dim), max(v.type.rank, 1))
        values = _reduce(cx, value_op, x, [axis], keepdim) if 0 in used else None
        indices = cx.emit(index_op, v, axis=axis, keepdims=int(bool(keepdim))) if 1 in used else None
        return (values, indices)

    lower.__name__ = f"lower_{value_op.lower()}_with_index"
    return lower


lowers("aten.max.dim")(_reduce_with_index("ReduceMax", "ArgMax"))
lowers("aten.min.dim")(_reduce_with_index("ReduceMin", "ArgMin"))


@lowers("aten.max.default")
def max_all(cx: Cx, x: Any) -> Value:
    return _reduce(cx, "ReduceMax", x, None, False)


@lowers("aten.min.default")
def min_all(cx: Cx, x: Any) -> Value:
    return _reduce(cx, "ReduceMin", x, None, False)


@lowers("aten.max.other")
def max_other(cx: Cx, a: Any, b: Any) -> Value:
    return _binary("Max")(cx, a, b)


@lowers("aten.min.other")
def min_other(cx: Cx, a: Any, b: Any) -> Value:
    return _binary("Min")(cx, a, b)


def _arg_reduce(op: str):
    def lower(cx: Cx, x: Any, dim: int | None = None, keepdim: bool = False) -> Value:
        v = cx.value(x)
        if dim is None:
            flat = cx.emit("Reshape", v, cx.const(np.array([-1], dtype=np.int64)))
            out = cx.emit(op, flat, axis=0, keepdims=0)
            if keepdim:
                out = cx.emit("Reshape", out, cx.const(np.ones(v.type.rank, dtype=np.int64)))
            return out
        return cx.emit(op, v, axis=_norm_dim(int(dim), max(v.type.rank, 1)), keepdims=int(bool(keepdim)))

    lower.__name__ = f"lower_{op.lower()}"
    return lower


lowers("aten.argmax.default")(_arg_reduce("ArgMax"))
lowers("aten.argmin.default")(_arg_reduce("ArgMin"))


def _bool_reduction(op: str):
    def lower(cx: Cx, x: Any, dim: Any = None, keepdim: bool = False) -> Value:
        as_int = cx.cast(cx.tensor(x, dtypes.bool_), dtypes.int64)
        return cx.cast(_reduce(cx, op, as_int, dim, keepdim, dtypes.int64), dtypes.bool_)

    lower.__name__ = f"lower_bool_{op.lower()}"
    return lower


lowers("aten.any.dim", "aten.any.dims", "aten.any.default")(_bool_reduction("ReduceMax"))
lowers("aten.all.dim", "aten.all.dims", "aten.all.default")(_bool_reduction("ReduceMin"))


def _count(cx: Cx, v: Value, axes: list[int]) -> Value:
    """Number of elements reduced over `axes`, as a 0-d value of v's dtype."""
    dims = [v.shape[a] for a in axes]
    if all(isinstance(d, int) for d in dims):
        return cx.const(np.asarray(int(np.prod(dims)), v.dtype.np))
    sizes = [cx.dim_size(v, a) for a in axes]
    total = sizes[0]
    for s in sizes[1:]:
        total = cx.emit("Mul", total, s)
    return cx.cast(total, v.dtype)


@lowers("aten.var.correction", "aten.std.correction", "aten.var.dim", "aten.std.dim")
def var(cx: Cx, x: Any, dim: Any = None, unbiased: Any = None, keepdim: bool = False, *,
        correction: Any = None) -> Value:
    v = cx.tensor(x, cx.out_dtype)
    axes = _norm_dims(dim, v.type.rank) or list(range(v.type.rank))
    if correction is None:
        correction = 1 if unbiased is None or unbiased is True else 0
    ax = cx.axes(axes)
    centred = cx.emit("Sub", v, cx.emit("ReduceMean", v, ax, keepdims=1))
    squares = cx.emit("ReduceSum", cx.emit("Mul", centred, centred), ax, keepdims=int(bool(keepdim)))
    n = _count(cx, v, axes)
    denom = cx.emit("Max", cx.emit("Sub", n, cx.const(np.asarray(correction, v.dtype.np))),
                    cx.const(np.zeros((), v.dtype.np)))
    out = cx.emit("Div", squares, denom)
    return cx.emit("Sqrt", out) if "std" in cx.meta["torch_op"] else out


@lowers("aten.linalg_vector_norm.default")
def vector_norm(cx: Cx, x: Any, ord: float = 2, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Value:
    if ord == 2:
        return _reduce(cx, "ReduceL2", x, dim, keepdim)
    if ord == 1:
        return _reduce(cx, "ReduceL1", x, dim, keepdim)
    if ord == math.inf:
        return _reduce(cx, "ReduceMax", cx.emit("Abs", cx.value(x)), dim, keepdim)
    raise NotLowerable(f"vector norm of order {ord}")


@lowers("aten.cumsum.default")
def cumsum(cx: Cx, x: Any, dim: int, *, dtype: Any = None) -> Value:
    v = cx.tensor(x, cx.out_dtype)
    return cx.emit("CumSum", v, cx.const(np.asarray(_norm_dim(int(dim), v.type.rank), np.int64)))


@lowers("aten.topk.default")
def topk(cx: Cx, x: Any, k: Any, dim: int = -1, largest: bool = True, sorted: bool = True) -> tuple:
    v = cx.value(x)
    kv = cx.emit("Unsqueeze", cx.scalar_i64(k), cx.axes([0]))
    return cx.emit("TopK", v, kv, axis=_norm_dim(int(dim), v.type.rank), largest=int(bool(largest)),
                   sorted=1, _outputs=2)


# -- shapes and layout ---------------------------------------------------------------------


def _reshape_to(cx: Cx, v: Value, items: list[Any], in_shape: Sequence[Any]) -> Value:
    """Reshape `v` to the torch size list `items` (ints, SymInt nodes, 0-d values).

    Static results get a constant shape. Otherwise an item equal to the input's extent
    at the same position becomes 0 (ONNX: copy that extent) and a single remaining
    unknown becomes -1, so the usual transformer views still get a constant shape; what
    is left goes through Shape/Gather/Concat."""
    out_static = _static_shape(cx.out.shape)
    if out_static is not None:
        if list(v.shape or ()) == out_static and v.type.is_static:
            return v
        return cx.emit("Reshape", v, cx.const(np.array(out_static, dtype=np.int64)))
    if _same_shape(in_shape, cx.out.shape):
        return v
    statics = [cx.static_int(i) if not isinstance(i, Value) else None for i in items]
    if 0 not in statics:
        for i, item in enumerate(items):
            if statics[i] is None and i < len(in_shape) and not isinstance(item, Value) \
                    and _same_dim(_dim_of(cx, item), in_shape[i]):
                items[i], statics[i] = 0, 0
    unknown = [i for i, s in enumerate(statics) if s is None]
    if len(unknown) == 1 and -1 not in statics:
        items[unknown[0]] = -1
    return cx.emit("Reshape", v, cx.int_vector(items))


@lowers("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.view_copy.default")
def view(cx: Cx, x: Any, size: Sequence[Any]) -> Value:
    return _reshape_to(cx, cx.value(x), list(size), cx.shape(x))


@lowers("aten.flatten.using_ints")
def flatten(cx: Cx, x: Any, start_dim: int = 0, end_dim: int = -1) -> Value:
    v = cx.value(x)
    rank = v.type.rank
    if rank == 0:
        return cx.emit("Reshape", v, cx.const(np.array([1], dtype=np.int64)))
    start, end = _norm_dim(start_dim, rank), _norm_dim(end_dim, rank)
    in_shape = cx.shape(x)
    items: list[Any] = [d if cx.static_int(d) is not None else cx.dim_size(v, i) for i, d in enumerate(in_shape)]
    items = items[:start] + [-1] + items[end + 1:]
    return _reshape_to(cx, v, items, in_shape)


@lowers("aten.permute.default", "aten.permute_copy.default")
def permute(cx: Cx, x: Any, dims: Sequence[int]) -> Value:
    v = cx.value(x)
    perm = _norm_dims(list(dims), v.type.rank)
    if perm == sorted(perm):
        return v
    return cx.emit("Transpose", v, perm=perm)


@lowers("aten.transpose.int")
def transpose(cx: Cx, x: Any, dim0: int, dim1: int) -> Value:
    v = cx.value(x)
    rank = v.type.rank
    perm = list(range(rank))
    a, b = _norm_dim(dim0, rank), _norm_dim(dim1, rank)
    if a == b:
        return v
    perm[a], perm[b] = perm[b], perm[a]
    return cx.emit("Transpose", v, perm=perm)


@lowers("aten.t.default", "aten.numpy_T.default")
def t(cx: Cx, x: Any) -> Value:
    v = cx.value(x)
    if v.type.rank < 2:
        return v
    return cx.emit("Transpose", v, perm=list(reversed(range(v.type.rank))))


@lowers("aten.unsqueeze.default", "aten.unsqueeze_copy.default")
def unsqueeze(cx: Cx, x: Any, dim: int) -> Value:
    v = cx.value(x)
    return cx.emit("Unsqueeze", v, cx.axes([_norm_dim(int(dim), v.type.rank + 1)]))


@lowers("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default", "aten.squeeze_copy.dims")
def squeeze(cx: Cx, x: Any, dims: Any = None) -> Value:
    v = cx.value(x)
    shape = cx.shape(x)
    candidates = range(len(shape)) if dims is None else _norm_dims(dims, max(len(shape), 1))
    # torch leaves an axis whose extent is not 1 alone instead of failing as ONNX does
    axes = [d for d in candidates if d < len(shape) and cx.static_int(shape[d]) == 1]
    if not axes:
        return v
    return cx.emit("Squeeze", v, cx.axes(axes))


@lowers("aten.expand.default", "aten.expand_copy.default")
def expand(cx: Cx, x: Any, size: Sequence[Any], *, implicit: bool = False) -> Value:
    v = cx.value(x)
    in_shape = cx.shape(x)
    if _same_shape(in_shape, cx.out.shape):
        return v
    new = len(size) - len(in_shape)
    items: list[Any] = []
    for i, item in enumerate(size):
        j = i - new
        # ONNX Expand broadcasts: a 1 keeps the input's extent, like torch's -1
        keep = cx.static_int(item) == -1 or (j >= 0 and _same_dim(_dim_of(cx, item), in_shape[j]))
        items.append(1 if keep else item)
    return cx.emit("Expand", v, cx.int_vector(items))


@lowers("aten.repeat.default")
def repeat(cx: Cx, x: Any, repeats: Sequence[Any]) -> Value:
    v = cx.value(x)
    extra = len(repeats) - v.type.rank
    if extra > 0:
        v = cx.emit("Unsqueeze", v, cx.axes(list(range(extra))))
    return cx.emit("Tile", v, cx.int_vector(list(repeats)))


@lowers("aten.cat.default", "aten.concat.default")
def cat(cx: Cx, tensors: Sequence[Any], dim: int = 0) -> Value:
    dt = cx.out_dtype
    rank = cx.out.dim()
    # torch.cat still accepts (and skips) legacy empty 1-D tensors next to higher ranks
    parts = [t for t in tensors if not (cx.rank(t) == 1 and cx.static_int(cx.shape(t)[0]) == 0 and rank > 1)]
    values = [cx.tensor(t, dt) for t in parts]
    if len(values) == 1:
        return values[0]
    return cx.emit("Concat", *values, axis=_norm_dim(int(dim), rank))


@lowers("aten.stack.default")
def stack(cx: Cx, tensors: Sequence[Any], dim: int = 0) -> Value:
    dt = cx.out_dtype
    axis = _norm_dim(int(dim), cx.out.dim())
    values = [cx.emit("Unsqueeze", cx.tensor(t, dt), cx.axes([axis])) for t in tensors]
    return values[0] if len(values) == 1 else cx.emit("Concat", *values, axis=axis)


def _split(cx: Cx, x: Any, sizes: list[int], dim: int) -> tuple:
    v = cx.value(x)
    axis = _norm_dim(int(dim), v.type.rank)
    if len(sizes) == 1:
        return (v,)
    return cx.emit("Split", v, cx.const(np.array(sizes, dtype=np.int64)), axis=axis, _outputs=len(sizes))


def _output_sizes(cx: Cx, dim: int) -> list[int]:
    sizes = [cx.static_int(t.shape[_norm_dim(dim, t.dim())]) for t in cx.out]
    if any(s is None for s in sizes):
        raise NotLowerable("split of a symbolic extent")
    return sizes


@lowers("aten.split_with_sizes.default", "aten.split_with_sizes_copy.default")
def split_with_sizes(cx: Cx, x: Any, split_sizes: Sequence[Any], dim: int = 0) -> tuple:
    return _split(cx, x, _output_sizes(cx, int(dim)), dim)


@lowers("aten.split.Tensor", "aten.split_copy.Tensor")
def split(cx: Cx, x: Any, split_size: Any, dim: int = 0) -> tuple:
    return _split(cx, x, _output_sizes(cx, int(dim)), dim)


@lowers("aten.unbind.int", "aten.unbind_copy.int")
def unbind(cx: Cx, x: Any, dim: int = 0) -> tuple:
    axis = _norm_dim(int(dim), cx.rank(x))
    parts = _split(cx, x, [1] * len(cx.out), axis)
    return tuple(cx.emit("Squeeze", p, cx.axes([axis])) for p in parts)


@lowers("aten.slice.Tensor", "aten.slice_copy.Tensor")
def slice_(cx: Cx, x: Any, dim: int = 0, start: Any = None, end: Any = None, step: Any = 1) -> Value:
    v = cx.value(x)
    axis = _norm_dim(int(dim), v.type.rank)
    start = 0 if start is None else start
    end = INT64_MAX if end is None else end
    s_start, s_end, s_step = cx.static_int(start), cx.static_int(end), cx.static_int(step)
    extent = cx.static_int(cx.shape(x)[axis])
    whole = s_start == 0 and s_step == 1 and s_end is not None and (
        s_end >= INT64_MAX or (extent is not None and s_end >= extent))
    if whole or _passthrough_type(cx, x) and s_start == 0 and s_step == 1:
        return v
    return cx.emit("Slice", v, cx.int_vector([start]), cx.int_vector([end]), cx.axes([axis]),
                   cx.int_vector([step]))


@lowers("aten.narrow.default")
def narrow(cx: Cx, x: Any, dim: int, start: Any, length: Any) -> Value:
    v = cx.value(x)
    axis = _norm_dim(int(dim), v.type.rank)
    begin = cx.scalar_i64(start)
    stop = cx.emit("Add", begin, cx.scalar_i64(length))
    one = cx.axes([0])
    return cx.emit("Slice", v, cx.emit("Unsqueeze", begin, one), cx.emit("Unsqueeze", stop, one), cx.axes([axis]))


@lowers("aten.select.int", "aten.select_copy.int")
def select(cx: Cx, x: Any, dim: int, index: Any) -> Value:
    v = cx.value(x)
    return cx.emit("Gather", v, cx.scalar_i64(index), axis=_norm_dim(int(dim), v.type.rank))


@lowers("aten.flip.default")
def flip(cx: Cx, x: Any, dims: Sequence[int]) -> Value:
    v = cx.value(x)
    axes = _norm_dims(list(dims), v.type.rank)
    n = len(axes)
    return cx.emit("Slice", v, cx.const(np.full(n, -1, np.int64)), cx.const(np.full(n, -INT64_MAX - 1, np.int64)),
                   cx.axes(axes), cx.const(np.full(n, -1, np.int64)))


@lowers("aten.constant_pad_nd.default")
def constant_pad_nd(cx: Cx, x: Any, pad: Sequence[Any], value: float = 0) -> Value:
    v = cx.value(x)
    rank = v.type.rank
    pairs = len(pad) // 2
    axes = [rank - 1 - i for i in range(pairs)]
    begins, ends = list(pad[0::2]), list(pad[1::2])
    return cx.emit("Pad", v, cx.int_vector(begins + ends), cx.const(np.asarray(value, v.dtype.np)), cx.axes(axes),
                   mode="constant")


@lowers("aten.tril.default", "aten.triu.default")
def trilu(cx: Cx, x: Any, diagonal: Any = 0) -> Value:
    upper = int(cx.meta["torch_op"].startswith("aten.triu"))
    return cx.emit("Trilu", cx.value(x), cx.scalar_i64(diagonal), upper=upper)


# -- gathering -----------------------------------------------------------------------------


@lowers("aten.embedding.default")
def embedding(cx: Cx, weight: Any, indices: Any, padding_idx: int = -1, scale_grad_by_freq: bool = False,
              sparse: bool = False) -> Value:
    return cx.emit("Gather", cx.value(weight), cx.value(indices), axis=0)


@lowers("aten.index_select.default")
def index_select(cx: Cx, x: Any, dim: int, index: Any) -> Value:
    v = cx.value(x)
    return cx.emit("Gather", v, cx.value(index), axis=_norm_dim(int(dim), v.type.rank))


@lowers("aten.gather.default")
def gather(cx: Cx, x: Any, dim: int, index: Any, *, sparse_grad: bool = False) -> Value:
    v = cx.value(x)
    return cx.emit("GatherElements", v, cx.value(index), axis=_norm_dim(int(dim), v.type.rank))


def _broadcast_indices(cx: Cx, indices: list[Value], vals: list[Any]) -> list[Value]:
    """Index tensors broadcast against each other, as advanced indexing does."""
    shapes = [tuple(val.shape) for val in vals]
    if all(_same_shape(s, shapes[0]) for s in shapes):
        return indices
    statics = [_static_shape(s) for s in shapes]
    if all(s is not None for s in statics):
        target = list(np.broadcast_shapes(*[tuple(s) for s in statics]))
        shape = cx.const(np.array(target, dtype=np.int64))
        return [i if list(s) == target else cx.emit("Expand", i, shape) for i, s in zip(indices, statics)]
    # symbolic extents: adding zeros shaped like every operand broadcasts to the common shape
    zero = cx.const(np.zeros((), np.int64))
    total = cx.emit("Mul", indices[0], zero)
    for i in indices[1:]:
        total = cx.emit("Add", total, cx.emit("Mul", i, zero))
    return [cx.emit("Add", i, total) for i in indices]


@lowers("aten.index.Tensor", "aten._unsafe_index.Tensor")
def index(cx: Cx, x: Any, indices: Sequence[Any]) -> Value:
    v = cx.value(x)
    dims = [d for d, i in enumerate(indices) if i is not None]
    vals = [cx.val(indices[d]) for d in dims]
    if any(val.dtype == torch.bool for val in vals):
        raise NotLowerable("boolean-mask indexing (its result size depends on the data)")
    idx = [cx.cast(cx.value(indices[d]), dtypes.int64) for d in dims]
    if len(dims) == 1:
        return cx.emit("Gather", v, idx[0], axis=dims[0])
    idx = _broadcast_indices(cx, idx, vals)
    n_b = max(val.dim() for val in vals)
    stacked = cx.emit("Concat", *[cx.emit("Unsqueeze", i, cx.axes([-1])) for i in idx], axis=-1)
    rest = [d for d in range(v.type.rank) if d not in dims]
    perm = dims + rest
    data = v if perm == list(range(v.type.rank)) else cx.emit("Transpose", v, perm=perm)
    out = cx.emit("GatherND", data, stacked)
    adjacent = dims == list(range(dims[0], dims[0] + len(dims)))
    if adjacent and dims[0] > 0:
        # torch keeps adjacent indexed axes in place; GatherND put them first
        before = dims[0]
        back = [n_b + i for i in range(before)] + list(range(n_b)) + \
            [n_b + before + j for j in range(len(rest) - before)]
        out = cx.emit("Transpose", out, perm=back)
    return out


# -- creating tensors ----------------------------------------------------------------------


@lowers("aten.arange.start_step", "aten.arange.start", "aten.arange.default")
def arange(cx: Cx, *args: Any, **kwargs: Any) -> Value:
    numbers = [a for a in args if not isinstance(a, (torch.dtype, torch.device, torch.layout))]
    if len(numbers) == 1:
        start, end, step = 0, numbers[0], 1
    else:
        start, end, step = (list(numbers) + [1])[:3]
    dt = cx.out_dtype
    out_static = _static_shape(cx.out.shape)
    values = [start, end, step]
    statics = [cx.static_int(a) if not isinstance(a, float) else a for a in values]
    if out_static is not None and all(s is not None for s in statics):
        s0, _, st = statics
        n = out_static[0]
        # torch computes start + i * step in double before rounding to the dtype
        return cx.const((s0 + np.arange(n, dtype=np.float64) * st).astype(dt.np) if dt.is_float
                        else (int(s0) + np.arange(n, dtype=np.int64) * int(st)).astype(dt.np))
    return cx.emit("Range", *[cx.tensor(a, dt) for a in values])


@lowers("aten.full.default", "aten.new_full.default")
def full(cx: Cx, *args: Any, **kwargs: Any) -> Value:
    if cx.meta["torch_op"].startswith("aten.new_full"):
        args = args[1:]
    size, fill = args[0], args[1]
    return _filled(cx, list(size), fill, cx.out_dtype)


@lowers("aten.zeros.default", "aten.empty.memory_format", "aten.new_zeros.default", "aten.new_empty.default",
        "aten.ones.default", "aten.new_ones.default")
def zeros_or_ones(cx: Cx, *args: Any, **kwargs: Any) -> Value:
    op = cx.meta["torch_op"]
    size = args[1] if op.startswith("aten.new_") else args[0]
    return _filled(cx, list(size), 1 if "ones" in op else 0, cx.out_dtype)


@lowers("aten.scalar_tensor.default")
def scalar_tensor(cx: Cx, value: Any, **kwargs: Any) -> Value:
    if isinstance(value, fx.Node):
        return cx.tensor(value, cx.out_dtype)
    return cx.const(np.asarray(value).astype(cx.out_dtype.np))


@lowers("aten.zeros_like.default", "aten.empty_like.default")
def zeros_like(cx: Cx, x: Any, **kwargs: Any) -> Value:
    return _like(cx, x, 0)


@lowers("aten.ones_like.default")
def ones_like(cx: Cx, x: Any, **kwargs: Any) -> Value:
    return _like(cx, x, 1)


@lowers("aten.full_like.default")
def full_like(cx: Cx, x: Any, fill_value: Any, **kwargs: Any) -> Value:
    return _like(cx, x, fill_value)


# -- symbolic sizes ------------------------------------------------------------------------


@lowers("aten.sym_size.int")
def sym_size(cx: Cx, x: Any, dim: int) -> Value:
    v = cx.value(x)
    return cx.dim_size(v, _norm_dim(int(dim), v.type.rank))


@lowers("aten.sym_numel.default")
def sym_numel(cx: Cx, x: Any) -> Value:
    return cx.emit("Size", cx.value(x))


def _symbolic_result(cx: Cx) -> Value | None:
    """A constant when torch already knows the SymInt's value."""
    known = cx.static_int(cx.node)
    return None if known is None else cx.const(np.asarray(known, np.int64))


def _sym_scalar(cx: Cx, arg: Any, dt: DType) -> Value:
    if isinstance(arg, fx.Node):
        return cx.cast(cx.value(arg), dt)
    return cx.const(np.asarray(arg, dt.np))


def _sym_dtype(cx: Cx) -> DType:
    val = cx.out
    if isinstance(val, (torch.SymFloat, float)):
        return dtypes.float32
    if isinstance(val, (torch.SymBool, bool)):
        return dtypes.bool_
    return dtypes.int64


def _sym_binary(op: str):
    def lower(cx: Cx, a: Any, b: Any) -> Value:
        known = _symbolic_result(cx)
        if known is not None:
            return known
        dt = _sym_dtype(cx)
        x, y = _sym_scalar(cx, a, dt), _sym_scalar(cx, b, dt)
        if op == "FloorDiv":
            return _floor_div(cx, x, y)
        if op == "Mod":
            return cx.emit("Mod", x, y, fmod=0 if not dt.is_float else 1)
        return cx.emit(op, x, y)

    lower.__name__ = f"lower_sym_{op.lower()}"
    return lower


for _name, _op in {"add": "Add", "sub": "Sub", "mul": "Mul", "floordiv": "FloorDiv", "mod": "Mod",
                   "truediv": "Div"}.items():
    lowers(f"operator.{_name}")(_sym_binary(_op))
lowers("torch.sym_max")(_sym_binary("Max"))
lowers("torch.sym_min")(_sym_binary("Min"))


def _sym_compare(op: str, negate: bool = False):
    def lower(cx: Cx, a: Any, b: Any) -> Value:
        x, y = _sym_scalar(cx, a, dtypes.int64), _sym_scalar(cx, b, dtypes.int64)
        out = cx.emit(op, x, y)
        return cx.emit("Not", out) if negate else out

    lower.__name__ = f"lower_sym_{op.lower()}"
    return lower


for _name, (_op, _neg) in {"eq": ("Equal", False), "ne": ("Equal", True), "lt": ("Less", False),
                           "le": ("LessOrEqual", False), "gt": ("Greater", False),
                           "ge": ("GreaterOrEqual", False)}.items():
    lowers(f"operator.{_name}")(_sym_compare(_op, _neg))


@lowers("operator.neg")
def sym_neg(cx: Cx, a: Any) -> Value:
    known = _symbolic_result(cx)
    return known if known is not None else cx.emit("Neg", cx.value(a))


@lowers("torch.sym_float")
def sym_float(cx: Cx, a: Any) -> Value:
    return _sym_scalar(cx, a, dtypes.float32)


@lowers("torch.sym_not")
def sym_not(cx: Cx, a: Any) -> Value:
    return cx.emit("Not", _sym_scalar(cx, a, dtypes.bool_))


@lowers("math.ceil", "math.floor", "torch.sym_ite")
def sym_round(cx: Cx, *args: Any) -> Value:
    known = _symbolic_result(cx)
    if known is not None:
        return known
    op = cx.meta["torch_op"]
    if op == "torch.sym_ite":
        raise NotLowerable("symbolic if-then-else on sizes")
    x = _sym_scalar(cx, args[0], dtypes.float32)
    return cx.cast(cx.emit("Ceil" if op == "math.ceil" else "Floor", x), dtypes.int64)


@lowers("operator.getitem")
def getitem(cx: Cx, seq: Any, i: int) -> Any:
    items = cx.env[seq]
    if not isinstance(items, (list, tuple)):
        raise NotLowerable(f"indexing a {type(items).__name__} result")
    item = items[i]
    if item is None:
        raise NotLowerable(f"output {i} of {seq.target} (only its main result is supported)")
    return item


@lowers("aten._local_scalar_dense.default", "aten.item.default")
def item(cx: Cx, x: Any) -> Value:
    raise NotLowerable(".item() (a data-dependent Python scalar)")
