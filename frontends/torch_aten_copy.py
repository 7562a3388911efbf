"""Lowerings of the aten ops that copy, convert or check a tensor without computing
anything new.

- clone, alias, detach(_), contiguous, lift_fresh(_copy): no node, the input itself.
- the runtime assertions and size constraints (_assert_*, _functional_assert_*,
  sym_constrain_range*): nothing at all. torch.export checked them for the traced
  shapes; the IR's types carry the rest.
- dropout, native_dropout: the input in eval mode (or p = 0); training mode is refused.
  native_dropout's mask output is not produced.
- _to_copy, to.dtype(_layout), _to_dim_order_copy: Cast to the result dtype, no node
  when the dtype does not change.
- copy(dst, src): src cast to the result dtype, Expand-ed to dst's shape when the shapes differ.
"""

from __future__ import annotations

import logging
from typing import Any

from requant.frontends.torch_aten_common import Cx, same_shape
from requant.frontends.torch_lowering import NotLowerable, lowers
from requant.ir.graph import Value

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)


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
    if same_shape(cx.shape(src), cx.out.shape):
        return v
    return cx.emit("Expand", v, cx.shape_of(cx.value(dst)))
