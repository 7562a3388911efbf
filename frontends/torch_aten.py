"""The aten -> requant lowering table, one module per op family. Importing this module
imports every family, and each family's `@lowers(...)` decorators fill
`torch_lowering.LOWERINGS` beside the lowerings they register.

The families (mirroring `requant/ir/ops/` where the ops fall the same way):
- `torch_aten_copy`: no-ops, assertions, dropout, dtype conversions, copy.
- `torch_aten_elementwise`: arithmetic, comparisons, logic, where, masked_fill, clamp.
- `torch_aten_unary`: one-operand math (neg, exp, sqrt, trig, round, isnan, ...).
- `torch_aten_activation`: relu, gelu, silu, sigmoid, softplus, ..., the softmaxes.
- `torch_aten_normalization`: layer_norm, rms_norm, batch norm, group_norm.
- `torch_aten_linalg`: linear, matmul / mm / bmm, addmm, baddbmm.
- `torch_aten_conv`: convolution. `torch_aten_pooling`: max / average / adaptive pools.
- `torch_aten_resize`: the upsample ops (interpolate) -> Resize.
- `torch_aten_scatter`: slice_scatter, select_scatter (slice assignment).
- `torch_aten_strided`: as_strided.
- `torch_aten_attention`: scaled_dot_product_attention.
- `torch_aten_reduce`: sum, mean, max / min, argmax, any / all, var / std, norms,
  cumsum, topk.
- `torch_aten_shape_ops`: view / reshape, flatten, permute, transpose, squeeze,
  unsqueeze, expand.
- `torch_aten_indexing`: cat, stack, split, slice, select, flip, pad, tril / triu,
  embedding, gather, index.
- `torch_aten_creation`: arange, full, zeros / ones / empty, the *_like factories.
- `torch_aten_symbolic`: size arithmetic under dynamic dims (operator.*, torch.sym_*),
  operator.getitem, item.
`torch_aten_common` holds the helpers more than one family uses.

Across families: the high-level ops kept out of decomposition (see
`torch_frontend.KEPT_OPS`) keep one IR node each where the IR has the op
(LayerNormalization, Softmax, Gelu, MatMul, ScaledDotProductAttention, ...), and
no-ops (clone, detach, eval-mode dropout, same-dtype conversions, full-range slices,
same-shape views and expands) produce no node; assertions produce nothing at all.
A new lowering goes into the module of its family, or a new `torch_aten_<family>.py`
imported below.
"""

from __future__ import annotations

import logging

# each import registers that family's lowerings in LOWERINGS
from requant.frontends import (  # noqa: F401
    torch_aten_activation,
    torch_aten_attention,
    torch_aten_conv,
    torch_aten_copy,
    torch_aten_creation,
    torch_aten_elementwise,
    torch_aten_indexing,
    torch_aten_linalg,
    torch_aten_normalization,
    torch_aten_pooling,
    torch_aten_reduce,
    torch_aten_resize,
    torch_aten_scatter,
    torch_aten_shape_ops,
    torch_aten_strided,
    torch_aten_symbolic,
    torch_aten_unary,
)

__all__: list[str] = []  # the lowerings are reached through LOWERINGS

logger = logging.getLogger(__name__)
