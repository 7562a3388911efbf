"""Pass "lower_quant": quantize/dequantize patterns -> the kernels ONNX Runtime runs fast
on x86 CPUs, its com.microsoft quantized kernels first. Exact: the lowered graph
computes what the Q/DQ graph computes, up to float32 rounding (bound in
passes/lower_integer.py), except QAttention's masking (below).

It extends the standard lowering (passes/lower_integer.py: operand readers, the
MatMulInteger form, embedding tables, QLinearMatMul) with ONNX Runtime's own ops
(ir/ops/onnxruntime.py), chosen per layer by `kernel`:
- "integer_to_float": `MatMul(DQ(a_q, a_s, a_zp), DQ(W_q, w_s[, w_zp]))` [+ Add(bias)]
  -> `com.microsoft.MatMulIntegerToFloat(a_q, W_q, a_s, w_s, a_zp, w_zp, bias)`, int8
  activations re-quantized to uint8 (zero point + 128, exact) as in lower_integer;
  int4 weights per output channel (W4A8) keep int4 codes in the file (half of int8's
  bytes) and reach the kernel through `Cast(W_q, int8)`, which ONNX Runtime folds into an
  int8 initializer when the session loads (same kernel, same speed as int8 weights);
- "dynamic": the same with `a_q, a_s, a_zp = DynamicQuantizeLinear(x)` ->
  `com.microsoft.DynamicQuantizeMatMul(x, W_q, w_s, w_zp, bias)`;
- "nbits": `MatMul(x, DQ(W_q int4/uint4, scales[K/G, N], zp) {axis=0, block_size=G})`
  [+ bias] -> `com.microsoft.MatMulNBits(x, packed, scales, zp) {bits=4, block_size=G,
  accuracy_level=0}` (ORT's packing: uint8 [N, K/G, G/2], low nibble first); int8
  weight-only per column -> MatMulNBits bits=8 (blocks of 128 along K sharing the
  column's scale). `accuracy_level` 0 (the default) computes in float32 (exact); 4
  quantizes the activation to int8 inside the kernel, per row and block of K (ORT's
  W4A8 path; the interpreter's kernel, the oracle, still computes in float32, so the
  accuracy report is not what ORT computes);
- "integer", "qlinear": the standard forms of lower_integer;
- "qdq": nothing (ONNX Runtime's own QDQ transformers see the Q/DQ graph);
- "auto" (what cpu-int8 uses): static activations -> integer_to_float; a
  DynamicQuantizeLinear with one reader -> dynamic, with several (Q/K/V reading one
  input) -> integer_to_float on its outputs, so they quantize it once; weight-only ->
  nbits; then self-attention on those kernels is fused: three MatMulIntegerToFloat of
  the same static uint8 activation (same codes, scale, zero point) -> Reshape
  [B, S, H, D] -> Transpose [0, 2, 1, 3] into a non-causal ScaledDotProductAttention's
  Q, K, V, its output Transpose [0, 2, 1, 3] -> Reshape [B, S, H*D] -> one
  `com.microsoft.QAttention(a_q, [W_q|W_k|W_v], [b_q|b_k|b_v], a_s, w_s, mask_index,
  a_zp, w_zp) {num_heads=H, scale}`; SDPA's bool mask [B, 1, 1, S] or [B, 1, S, S] (or
  an additive Where(mask, 0, c <= -10000)) becomes mask_index
  `Squeeze(Cast(mask, int32))` [B, S] or [B, S, S].

Which kernel "auto" picks, and why, is measured by `python -m
requant.tools.bench.matmul_kernels` (README: "Integer kernels on ONNX Runtime"): the
u8 x s8 MatMulIntegerToFloat is the fastest exact form on x86 (ORT's s8 x s8 path is
far slower, hence the u8 re-quantization), ORT does not fuse a float-output DQ ->
MatMul into an integer kernel (so "qdq" gains nothing on CPU), and its own DQ(W) ->
MatMul fusion to MatMulNBits uses accuracy_level 4, which is not exact.

QAttention's masking differs in kind from SDPA's: ORT *adds* mask_filter_value = -10000
to masked scores where SDPA selects -inf, so a masked key still gets
exp(s - 10000 - max), 0 in float32 unless its score beats the row's best attended one
by > ~9900; and a query row with *every* key masked gets softmax over all keys (the
-10000 cancels) where SDPA gives 0. The rule cannot see the mask's values, so it does
not refuse such masks; tests hold the attention to 1e-5 * max(1, max|y|) elsewhere.
"""

from __future__ import annotations

import logging

import numpy as np

from requant.errors import RequantError
from requant.ir import dtypes
from requant.ir.builder import Builder
from requant.ir.graph import Graph, Value
from requant.ir.ops.onnxruntime import ORT_DOMAIN
from requant.ir.pattern import Match, OpPattern, Var, op
from requant.ir.rewrite import Rule
from requant.ir.types import Dim
from requant.passes.lower_integer import IntegerLowering, QuantLinear, lower_with
from requant.passes.conditions import QUANTIZED
from requant.passes.manager import PassResult, graph_pass

__all__ = ["lower_quant", "OrtLowering", "KERNELS", "pack_nbits"]

logger = logging.getLogger(__name__)

KERNELS = ("auto", "qdq", "integer_to_float", "integer", "dynamic", "qlinear", "nbits")
NBITS8_BLOCK = 128
_MS = ORT_DOMAIN + "."


class OrtLowering(IntegerLowering):
    """The standard lowering plus ONNX Runtime's com.microsoft kernels (module docstring)."""

    pass_name = "lower_quant"
    kernels = KERNELS
    created_ops = IntegerLowering.created_ops + tuple(
        _MS + name for name in ("MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits", "QAttention"))

    def __init__(self, graph: Graph, kernel: str, accuracy_level: int = 0) -> None:
        super().__init__(graph, kernel)
        if accuracy_level not in (0, 1, 2, 3, 4):
            raise RequantError(f"lower_quant: accuracy_level must be 0..4 (MatMulNBits), got {accuracy_level}")
        self.accuracy_level = accuracy_level

    def choose(self, lin: QuantLinear) -> str:
        k = self.kernel
        if lin.act is None:
            if k in ("auto", "nbits"):
                return "nbits"
            return f"!weight-only layer: kernel '{k}' needs a quantized activation (use 'nbits' or 'auto')"
        if lin.weight.dtype in (dtypes.int4, dtypes.uint4) and not lin.weight.block and \
                k in ("auto", "integer_to_float"):
            return "integer_to_float"  # int4 codes, cast to int8 when ORT loads the model
        if lin.weight.dtype not in (dtypes.int8, dtypes.uint8) or lin.weight.block:
            return "!group-quantized weights with quantized activations have no integer kernel"
        if k == "auto":
            # one DynamicQuantizeLinear read by several layers (Q/K/V) quantizes once for
            # all of them, as ORT's quantize_dynamic does; a lone reader takes the fused op
            shared = len(lin.act.codes.uses) > 1
            return "dynamic" if lin.act.source == "dynamic" and not shared else "integer_to_float"
        if k == "dynamic" and lin.act.source != "dynamic":
            return "!kernel 'dynamic' needs DynamicQuantizeLinear activations (quantize(dynamic=True))"
        if k == "nbits":
            return "!kernel 'nbits' does not apply to this MatMul (it is for weight-only layers)"
        return super().choose(lin)

    def emit(self, b: Builder, lin: QuantLinear, kernel: str) -> Value:
        if kernel == "integer":
            return super().emit(b, lin, kernel)
        bias = self.bias_value(b, lin)
        if kernel == "nbits":
            return self._nbits(b, lin, bias)
        wq, ws, wz = self.weight_values(b, lin)
        if lin.weight.dtype in (dtypes.int4, dtypes.uint4):
            wide = "int8" if lin.weight.dtype == dtypes.int4 else "uint8"
            wq = b.Cast(wq, to=wide)
            wz = None if wz is None else b.Cast(wz, to=wide)
        act = lin.act
        assert act is not None
        if kernel == "dynamic":
            return b[_MS + "DynamicQuantizeMatMul"](act.x, wq, ws, wz, bias)
        codes, zp = self.unsigned(b, act)
        return b[_MS + "MatMulIntegerToFloat"](codes, wq, act.scale, ws, zp, wz, bias)

    def _nbits(self, b: Builder, lin: QuantLinear, bias: Value | None) -> Value:
        w = lin.weight
        k, n = w.codes.shape
        bits = 8 if w.dtype in (dtypes.int8, dtypes.uint8) else 4
        block = w.block or NBITS8_BLOCK
        packed, scales, zps = pack_nbits(w.codes, w.dtype, w.scale, w.zero_point, bits, block)
        zp_v = None if zps is None else b.const(zps)
        return b.node(_MS + "MatMulNBits", lin.a, b.const(packed), b.const(scales), zp_v, None, bias,
                      K=k, N=n, bits=bits, block_size=block, accuracy_level=self.accuracy_level).output

    def after_rules(self) -> list[Rule]:
        """With "auto": Q/K/V kernels + attention -> QAttention, on what the linear rules made."""
        return _qattention_rules() if self.kernel == "auto" else []


def pack_nbits(codes: np.ndarray, dt: dtypes.DType, scale: np.ndarray, zero_point: np.ndarray | None,
               bits: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ORT MatMulNBits operands for codes [K, N]: packed uint8 [N, K/block, block*bits/8]
    (unsigned codes, low bits first), scales [N * K/block] float32, zero points packed
    like the codes ([N, ceil(K/block * bits / 8)]) or None when they are all the
    default 2^(bits-1). Signed codes are stored + 2^(bits-1) with the zero point
    shifted alike, so (code - zp) * scale is unchanged. Per-column scales (block 0
    input) are repeated over the blocks of their column; K is padded to whole blocks
    with codes equal to the zero point (weights 0, never read: MatMulNBits knows K)."""
    from requant.ir.ops.onnxruntime import pack_low_first

    k, n = codes.shape
    k_blocks = -(-k // block)
    offset = (1 << (bits - 1)) if dt.kind == "int" else 0
    s = np.asarray(scale, np.float32)
    s = np.broadcast_to(s.reshape(1, -1) if s.ndim <= 1 else s, (1 if s.ndim <= 1 else s.shape[0], n))
    s = np.repeat(s, k_blocks // s.shape[0], axis=0) if s.shape[0] == 1 else s  # [k_blocks, N]
    if zero_point is None:
        z = np.zeros((k_blocks, n), np.int64)
    else:
        z = np.asarray(zero_point).astype(np.int64)
        z = np.broadcast_to(z.reshape(1, -1) if z.ndim <= 1 else z, s.shape) if z.ndim <= 1 else z
    z = z + offset  # unsigned zero points [k_blocks, N]
    u = codes.astype(np.int64) + offset
    pad = k_blocks * block - k
    if pad:
        z_rows = np.repeat(z, block, axis=0)[k:k + pad]
        u = np.concatenate([u, z_rows], axis=0)
    packed = pack_low_first(u.T.reshape(n, k_blocks, block).astype(np.uint8), bits)
    scales = np.ascontiguousarray(s.T).reshape(-1).astype(np.float32)
    if np.all(z == (1 << (bits - 1))):
        return packed, scales, None
    return packed, scales, pack_low_first(np.ascontiguousarray(z.T).astype(np.uint8), bits)


# -- QAttention ---------------------------------------------------------------------------------

_HEADS_FIRST = [0, 2, 1, 3]
_MASK_FLOOR = -10000.0  # an additive mask this negative masks out as QAttention's does


def _projection(t: str) -> OpPattern:
    """Transpose(Reshape(com.microsoft.MatMulIntegerToFloat(a, W_t, ...), shape) -> [B, S, H, D], heads first)."""
    mm = op[_MS + "MatMulIntegerToFloat"](Var("a"), Var(f"w_{t}"), Var("a_scale"), Var(f"ws_{t}"),
                                 Var("a_zp", optional=True), Var(f"wz_{t}", optional=True),
                                 Var(f"bias_{t}", optional=True), _bind=f"mm_{t}")
    return op.Transpose(op.Reshape(mm, Var(f"shape_{t}"), _bind=f"split_{t}"), perm=_HEADS_FIRST)


def _attention_mask(mask: Value | None, batch: Dim, seq: Dim) -> Value | str | None:
    """The bool mask [B, 1, 1 or S, T=S] QAttention's mask_index is made from: SDPA's
    own bool mask, or the condition of an additive Where(cond, 0, c <= -10000) mask."""
    if mask is None:
        return None
    if mask.dtype != dtypes.bool_:
        w = mask.producer
        ok = w is not None and w.op == "Where" and w.inputs[0].dtype == dtypes.bool_ and \
            w.inputs[1].const is not None and w.inputs[2].const is not None and \
            not np.any(w.inputs[1].const) and bool(np.all(w.inputs[2].const <= _MASK_FLOOR))
        if not ok:
            return "the additive float mask is not Where(bool, 0, c <= -10000): mask_index is a 0/1 mask"
        if w.inputs[0].type.shape is None or w.outputs[0].type.shape != w.inputs[0].type.shape:
            return "the additive mask's condition does not have the mask's shape"
        mask = w.inputs[0]
    shape = mask.type.shape
    if shape is None or len(shape) != 4 or shape[1] != 1 or shape[3] != seq or shape[2] not in (1, seq) \
            or shape[0] != batch:
        return (f"mask {mask.type} is not [B, 1, 1, S] or [B, 1, S, S] with B = {batch}, S = {seq} "
                f"(QAttention takes a [B, S] or [B, S, S] mask_index)")
    return mask


def _attention_parts(m: Match) -> dict | str:
    """What the QAttention node needs, read off the match, or why it cannot be made."""
    sdpa = m.sdpa
    if int(sdpa.attrs.get("is_causal", 0)):
        return "causal attention is not mapped to QAttention's unidirectional"
    a = m.a
    src = a.producer
    if a.dtype != dtypes.uint8 or src is None or src.op != "QuantizeLinear":
        return f"activation %{a.name} is not uint8 codes of a QuantizeLinear (static)"
    if m.a_scale.type.numel != 1 or (m.a_zp is not None and m.a_zp.type.numel != 1):
        return "activation is not quantized per tensor"
    if a.type.shape is None or len(a.type.shape) != 3:
        return f"activation %{a.name} is not 3-D [batch, seq, hidden]"
    batch, seq = a.type.shape[0], a.type.shape[1]
    heads_dim = None
    weights = []
    for t in "qkv":
        w, ws, wz, bias = (_stored(m[f"w_{t}"]), _stored(m[f"ws_{t}"]), _stored(m[f"wz_{t}"]),
                           _stored(m[f"bias_{t}"]))
        if any(v is not None and v.const is None for v in (w, ws, wz, bias)):
            return f"the {t} projection's weight, scales, zero points or bias are not constants"
        if w.type.rank != 2 or w.dtype not in (dtypes.int8, dtypes.uint8, dtypes.int4, dtypes.uint4):
            return f"the {t} projection's weight is not 2-D 8-bit (or 4-bit stored)"
        split = m[f"split_{t}"].outputs[0].type.shape
        if split is None or len(split) != 4 or tuple(split[:2]) != (batch, seq) \
                or not all(isinstance(d, int) for d in split[2:]) or split[2] * split[3] != w.type.shape[1]:
            return f"the {t} projection is not reshaped to [B, S, heads, head_size]"
        if heads_dim not in (None, tuple(split[2:])):
            return "q, k and v do not have the same heads and head size"
        heads_dim = tuple(split[2:])
        weights.append((w, ws, wz, bias))
    if len({w.dtype for w, *_ in weights}) != 1 or len({w.type.shape for w, *_ in weights}) != 1:
        return "q, k and v weights differ in dtype or shape"
    heads, size = heads_dim
    out = m.root.outputs[0].type.shape
    if out is None or tuple(out) != (batch, seq, heads * size):
        return f"the attention output is not merged back to [B, S, {heads * size}]"
    mask = _attention_mask(m.mask if "mask" in m.bindings else None, batch, seq)
    if isinstance(mask, str):
        return mask
    scale = float(sdpa.attrs.get("scale", 0.0) or 0.0)
    return {"weights": weights, "heads": heads, "size": size, "mask": mask, "scale": scale}


def _stored(v: Value | None) -> Value | None:
    """The constant behind a weight operand: itself, or the int4 codes a Cast widens."""
    if v is not None and v.const is None and v.producer is not None and v.producer.op == "Cast":
        src = v.producer.inputs[0]
        if src is not None and src.const is not None and src.dtype in (dtypes.int4, dtypes.uint4):
            return src
    return v


def _concat_columns(parts: list[np.ndarray | None], n: int, dtype: np.dtype, fill: float = 0) -> np.ndarray:
    """Three per-column (or per-tensor, or absent) vectors of N side by side: [3N]."""
    cols = [np.full(n, fill, dtype) if p is None else np.broadcast_to(np.asarray(p).reshape(-1), (n,)) for p in parts]
    return np.concatenate(cols).astype(dtype)


def _qattention_rules() -> list[Rule]:
    """Three MatMulIntegerToFloat of one static uint8 activation, split into heads,
    into a non-causal ScaledDotProductAttention whose output is merged back to [B, S, N]
    -> one com.microsoft.QAttention (mask -> Cast int32 + Squeeze mask_index). Masking
    differs where a query row has every key masked (module docstring)."""

    def check(m: Match) -> str | None:
        parts = _attention_parts(m)
        return parts if isinstance(parts, str) else None

    def replace(b: Builder, m: Match) -> Value:
        parts = _attention_parts(m)
        assert not isinstance(parts, str)
        weights = parts["weights"]
        w_dt = weights[0][0].dtype
        n = weights[0][0].type.shape[1]
        codes = np.concatenate([np.asarray(w.const) for w, *_ in weights], axis=1)
        scales = [np.asarray(ws.const, np.float32) for _, ws, _, _ in weights]
        if all(s.size == 1 for s in scales) and len({float(s.reshape(())) for s in scales}) == 1:
            ws_v = b.const(scales[0].reshape(()).astype(np.float32))
        else:
            ws_v = b.const(_concat_columns(scales, n, np.float32))
        zps = [None if wz is None else np.asarray(wz.const) for _, _, wz, _ in weights]
        wz_v = None
        if any(z is not None and np.any(z) for z in zps):
            wz_v = b.const(_concat_columns(zps, n, w_dt.np), dtype=w_dt)
        w_v = b.const(codes, dtype=w_dt)
        if w_dt in (dtypes.int4, dtypes.uint4):  # stored 4-bit, widened when ORT loads the model
            wide = "int8" if w_dt == dtypes.int4 else "uint8"
            w_v = b.Cast(w_v, to=wide)
            wz_v = None if wz_v is None else b.Cast(wz_v, to=wide)
        bias = _concat_columns([None if c is None else np.asarray(c.const) for *_, c in weights], n, np.float32)
        mask = parts["mask"]
        mask_index = None
        if mask is not None:
            axes = [1, 2] if mask.type.shape[2] == 1 and mask.type.shape[3] != 1 else [1]
            mask_index = b.Squeeze(b.Cast(mask, to="int32"), b.const(np.asarray(axes, np.int64)))
        scale = parts["scale"]
        if scale != 0.0 and np.float32(scale) == np.float32(1.0 / np.sqrt(parts["size"])):
            scale = 0.0
        attrs = {"num_heads": parts["heads"]} | ({"scale": scale} if scale != 0.0 else {})
        return b[_MS + "QAttention"](m.a, w_v, b.const(bias), m.a_scale, ws_v, mask_index, m.a_zp,
                            wz_v, **attrs)

    def pattern(with_mask: bool) -> OpPattern:
        ins = [_projection("q"), _projection("k"), _projection("v")] + ([Var("mask", optional=True)] if with_mask else [])
        sdpa = op.ScaledDotProductAttention(*ins, _bind="sdpa")
        return op.Reshape(op.Transpose(sdpa, perm=_HEADS_FIRST), Var("out_shape"))

    return [Rule("lower_qattention", pattern(w), replace, check) for w in (True, False)]


@graph_pass("lower_quant", "Q/DQ around MatMul/Gemm/Gather -> ONNX Runtime's integer kernels (com.microsoft; exact)",
            requires=(QUANTIZED,))
def lower_quant(graph: Graph, kernel: str = "auto", accuracy_level: int = 0) -> PassResult:
    """See the module docstring. `accuracy_level`: MatMulNBits' (4: int8 activations
    inside the kernel)."""
    return lower_with(graph, OrtLowering(graph, kernel, accuracy_level), lower=kernel != "qdq")
