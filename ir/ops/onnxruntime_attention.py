"""ONNX Runtime's fused quantized self-attention: `com.microsoft.QAttention` (CPU kernel
`contrib_ops/cpu/quantization/attention_quant.cc`, checked against onnxruntime 1.32).

    QKV = f32(acc) * f32(input_scale * weight_scale) + bias        acc = (input - izp) @ (weight - wzp)
    Q, K, V = QKV[..., :N], QKV[..., N:2N], QKV[..., 2N:]           each [B, S, N] -> [B, H, S, N/H]
    Y = softmax(Q @ K^T * scale + M) @ V                            -> [B, S, N]

Inputs:
- input uint8 [B, S, Din] (ORT has no int8-input kernel), input_scale and
  input_zero_point (uint8) one value each (per tensor);
- weight uint8 / int8 [Din, 3N]: the Q, K and V projections side by side, head h of
  each in columns [h*D, (h+1)*D) of its third (D = N / num_heads); weight_scale and
  weight_zero_point one value or [3N] (per column); bias float32 [3N] (required);
- mask_index int32, optional: 2-D [B, T] or 3-D [B, S, T] raw masks, T = S (no past):
  a value > 0 attends. ORT's other forms (1-D key lengths, 4-D Megatron) and `past` /
  `present` are not declared.
Attributes: num_heads (required), scale (0.0: 1 / sqrt(D)), mask_filter_value
(-10000.0), unidirectional (only 0 is declared: ORT's causal masking is not modelled).

Masking, as ORT's CPU kernel: M = 0 where the mask attends and `mask_filter_value`
where it does not, *added* to the scaled scores (not a -inf select). So a masked key
gets weight exp(s - 10000 - max) = 0 in float32 unless its score exceeds the row's
best attended score by more than ~9900; but a query row whose keys are *all* masked
gets softmax(s - 10000) = softmax(s), attention over every key, where requant's
ScaledDotProductAttention gives 0 for such a row. The projection is exact integer
arithmetic rounded as MatMulIntegerToFloat; the attention is float32 (ORT's float GEMMs
sum in another order: agreement to float32 rounding, not bit for bit).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.ops._common import attr_float, attr_int, opt
from requant.ir.ops.onnxruntime import ORT_DOMAIN
from requant.ir.ops.quant import scaled_int_matmul
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.shapes import unify_dims
from requant.ir.types import TensorType

__all__ = ["qattention_reference"]

_OP = "QAttention"


def _one_value(ctx: InferContext, i: int) -> None:
    t = ctx.input(i)
    if t is not None and t.shape is not None and not all(d == 1 for d in t.shape):
        raise ctx.fail(f"{ctx.schema.inputs[i].name} must hold one value (per tensor), got shape {t.shape}")


def _per_column(ctx: InferContext, i: int, n3: Any) -> None:
    t = ctx.input(i)
    if t is None or t.shape is None or all(d == 1 for d in t.shape):
        return
    name = ctx.schema.inputs[i].name
    if len(t.shape) != 1 or (isinstance(n3, int) and isinstance(t.shape[0], int) and t.shape[0] != n3):
        raise ctx.fail(f"{name} must be one value or [3N] = [{n3}] (per column), got shape {t.shape}")


def _expect(ctx: InferContext, i: int, allowed: tuple[dtypes.DType, ...]) -> TensorType | None:
    t = ctx.input(i)
    name = ctx.schema.inputs[i].name
    if t is None:
        return None
    if t.dtype not in allowed:
        raise ctx.fail(f"{name} has dtype {t.dtype}, expected {' or '.join(d.short for d in allowed)}")
    return t


def _infer_qattention(ctx: InferContext) -> list[TensorType]:
    heads = attr_int(ctx, "num_heads", lo=1)
    attr_int(ctx, "unidirectional", (0,))
    attr_float(ctx, "scale")
    attr_float(ctx, "mask_filter_value")
    x = _expect(ctx, 0, (dtypes.uint8,))
    w = _expect(ctx, 1, (dtypes.uint8, dtypes.int8))
    bias = _expect(ctx, 2, (dtypes.float32,))
    for i in (3, 4):
        _expect(ctx, i, (dtypes.float32,))
    _expect(ctx, 6, (dtypes.uint8,))
    wz = _expect(ctx, 7, (dtypes.uint8, dtypes.int8))
    if x is None or w is None or bias is None or ctx.input(3) is None or ctx.input(4) is None:
        raise ctx.fail("input, weight, bias, input_scale and weight_scale are required")
    if wz is not None and wz.dtype != w.dtype:
        raise ctx.fail(f"weight_zero_point has dtype {wz.dtype}, weight is {w.dtype}")
    if x.rank is not None and x.rank != 3:
        raise ctx.fail(f"input must be 3-D [batch, seq, hidden], got {x}")
    if w.rank is not None and w.rank != 2:
        raise ctx.fail(f"weight must be 2-D [hidden_in, 3 * hidden], got {w}")
    n3 = None if w.shape is None else w.shape[1]
    if isinstance(n3, int) and (n3 % 3 or (n3 // 3) % heads):
        raise ctx.fail(f"weight has {n3} columns: not 3 * hidden with hidden a multiple of num_heads={heads}")
    if x.shape is not None and w.shape is not None:
        unify_dims(x.shape[2], w.shape[0], _OP, "input hidden size and weight rows")
    if bias.shape is not None:
        nb = bias.shape[0] if len(bias.shape) == 1 else None
        if len(bias.shape) != 1 or (isinstance(nb, int) and isinstance(n3, int) and nb != n3):
            raise ctx.fail(f"bias must be [3N] = [{n3}], got shape {bias.shape}")
    _one_value(ctx, 3)
    _one_value(ctx, 6)
    _per_column(ctx, 4, n3)
    _per_column(ctx, 7, n3)
    mask = _expect(ctx, 5, (dtypes.int32,))
    b, s = (None, None) if x.shape is None else (x.shape[0], x.shape[1])
    if mask is not None and mask.shape is not None:
        if mask.rank == 2:
            want = (b, s)
        elif mask.rank == 3:
            want = (b, s, s)
        else:
            raise ctx.fail(f"mask_index must be 2-D [batch, seq] or 3-D [batch, seq, seq] (raw 0/1), got {mask}")
        for got, exp in zip(mask.shape, want):
            if isinstance(got, int) and isinstance(exp, int) and got != exp:
                raise ctx.fail(f"mask_index {mask} does not fit batch {b}, sequence {s}")
    n = None if not isinstance(n3, int) else n3 // 3
    return [TensorType((b, s, n), dtypes.float32)]


def qattention_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray, x_scale: Any, w_scale: Any,
                         mask: np.ndarray | None, x_zp: Any, w_zp: Any, num_heads: int, scale: float = 0.0,
                         mask_filter_value: float = -10000.0) -> np.ndarray:
    """The numpy reference: see the module docstring."""
    f32 = np.float32
    qkv = scaled_int_matmul(x, x_zp, x_scale, w, w_zp, w_scale, bias)  # [B, S, 3N] float32
    b, s, n3 = qkv.shape
    n = n3 // 3
    d = n // num_heads
    q, k, v = (qkv[..., i * n:(i + 1) * n].reshape(b, s, num_heads, d).transpose(0, 2, 1, 3) for i in range(3))
    alpha = f32(scale if scale != 0.0 else 1.0 / math.sqrt(d))
    scores = (np.matmul(q, np.swapaxes(k, -1, -2)) * alpha).astype(f32)
    if mask is not None:
        m = np.asarray(mask)
        m = m[:, None, None, :] if m.ndim == 2 else m[:, None]
        scores = scores + np.where(m > 0, f32(0), f32(mask_filter_value))
    with np.errstate(over="ignore", under="ignore"):
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = (e / e.sum(axis=-1, keepdims=True)).astype(f32)
    out = np.matmul(probs, v)
    return out.transpose(0, 2, 1, 3).reshape(b, s, n).astype(f32)


def _qattention_kernel(ins: list, attrs: dict, outs: list) -> Any:
    return qattention_reference(ins[0], ins[1], ins[2], ins[3], ins[4], opt(ins, 5), opt(ins, 6), opt(ins, 7),
                                int(attrs["num_heads"]), float(attrs["scale"]), float(attrs["mask_filter_value"]))


define_op(
    _OP,
    inputs=("input", "weight", "bias", "input_scale", "weight_scale", "mask_index?", "input_zero_point?",
            "weight_zero_point?"),
    attrs={"num_heads": REQUIRED, "unidirectional": 0, "scale": 0.0, "mask_filter_value": -10000.0},
    infer=_infer_qattention,
    kernel=_qattention_kernel,
    domain=ORT_DOMAIN,
    doc="ONNX Runtime's quantized Q/K/V projection + self-attention; masked scores get mask_filter_value added",
)
