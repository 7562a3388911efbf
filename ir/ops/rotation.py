"""Online rotations, domain "requant": `Hadamard(X) {axis=-1, block=0}` computes
Y = X @ H_n / sqrt(n) along `axis` (n = the axis's length, which must be static), with
H_n the canonical Hadamard matrix of requant.ir.hadamard: Sylvester's for n = 2^m, else
H_K (x) H_(2^m) with H_K built by Paley's constructions. With `block` b > 0 (b dividing
n, itself an order with a matrix) it is the block-diagonal Y = X @ (I_(n/b) (x) H_b /
sqrt(b)): each run of b consecutive elements along the axis rotated on its own. Either
matrix is orthogonal, so the op is exactly undone by its transpose, which the rotation
passes fold into the weights that read Y.

The reference kernel is the fast transform (butterflies for the 2^m factor, a dense
K x K product for the other), O(n log n + n K) per row; f16/bf16 compute in float32 and
round once, f32 in f32, f64 in f64. Orders without a construction here (not a multiple
of 4 above 2, or a base order Paley does not reach, e.g. 156 and 172) are refused at type
inference with the reason (at run time when the size is symbolic there). The
backends need the size static when they build the graph.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from requant.ir.hadamard import apply_hadamard, block_hadamard_problem
from requant.ir.ops._common import attr_int, check_input, compute_dtype
from requant.ir.registry import InferContext, define_op
from requant.ir.shapes import normalize_axis
from requant.ir.types import TensorType

__all__: list[str] = []

logger = logging.getLogger(__name__)


def _infer_hadamard(ctx: InferContext) -> list[TensorType]:
    x = check_input(ctx, 0, "float")
    axis = attr_int(ctx, "axis")
    block = attr_int(ctx, "block", lo=0)
    if x.shape is None:
        return [x]  # the kernel checks the order of the arrays it gets
    if not x.shape:
        raise ctx.fail("input X must have rank >= 1")
    n = x.shape[normalize_axis(axis, len(x.shape), ctx.schema.id)]
    if isinstance(n, int):
        reason = block_hadamard_problem(n, block)
        if reason is not None:
            raise ctx.fail(reason)
    return [x]


def _hadamard(ins: list, attrs: dict, outs: list) -> Any:
    x = np.asarray(ins[0])
    y = apply_hadamard(x.astype(compute_dtype(x), copy=False), int(attrs["axis"]), int(attrs.get("block", 0)))
    return y.astype(x.dtype, copy=False)


define_op(
    "Hadamard",
    inputs=("X",),
    attrs={"axis": -1, "block": 0},
    infer=_infer_hadamard,
    kernel=_hadamard,
    domain="requant",
    doc="X @ H_n / sqrt(n) along axis (n static, a Hadamard order: 2^m or K * 2^m with K built by Paley); "
        "block b > 0: X @ (I_(n/b) (x) H_b / sqrt(b)), b dividing n",
)
