"""Pass "lower_quant": quantize/dequantize patterns -> the integer kernels ONNX Runtime
runs fast on x86 CPUs. Exact: the lowered graph computes what the Q/DQ graph computes,
up to float32 rounding (tolerance below).

What it rewrites (A: the activation operand, W: a constant weight [K, N]):
- `MatMul(DQ(a_q, a_s, a_zp), DQ(W_q, w_s[, w_zp]))` [+ Add(bias[N])], a_q u8/i8 per
  tensor, W_q int8 per tensor or per column -> com.microsoft
  `MatMulIntegerToFloat(a_q, W_q, a_s, w_s, a_zp, w_zp, bias)` ("integer_to_float").
  An int8 activation made by a QuantizeLinear is re-quantized to uint8 with zero point
  + 128 (the same codes shifted: exact), because ONNX Runtime's u8 x s8 kernels are
  ~15x faster than its s8 x s8 ones on x86 (table below);
- the same with `a_q, a_s, a_zp = DynamicQuantizeLinear(x)` -> com.microsoft
  `DynamicQuantizeMatMul(x, W_q, w_s, w_zp, bias)` ("dynamic"; with "auto" only where
  the DynamicQuantizeLinear has one reader, else MatMulIntegerToFloat on its outputs,
  so Q/K/V quantize their shared input once);
- `MatMul(x, DQ(W_q int4/uint4, scales[K/G, N], zp) {axis=0, block_size=G})` [+ bias]
  -> com.microsoft `MatMulNBits(x, packed, scales, zp) {bits=4, block_size=G,
  accuracy_level=0}` ("nbits"; ORT's packing: uint8 [N, K/G, G/2], low nibble first);
  int8 weight-only per column -> MatMulNBits bits=8 (blocks of 128 along K sharing the
  column's scale);
- `Gemm(DQ(a), DQ(W), c)` with alpha = beta = 1 and transA = 0 -> as MatMul (+ c),
  W_q transposed when transB;
- `Gather(DQ(T_q, s[rows], axis=0), ids)` (per-row embedding tables) ->
  `Mul(Cast(Gather(T_q, ids)), Gather(s[rows, 1], ids))`, per tensor ->
  `DQ(Gather(T_q, ids), s)`: ORT then gathers int8 rows instead of dequantizing the
  whole table on every run ("gather");
- then (kernel="auto" only) self-attention on those kernels: three MatMulIntegerToFloat
  of the same static uint8 activation (same codes, scale, zero point) -> Reshape
  [B, S, H, D] -> Transpose [0, 2, 1, 3] into a non-causal ScaledDotProductAttention's
  Q, K, V, its output Transpose [0, 2, 1, 3] -> Reshape [B, S, H*D] -> one com.microsoft
  `QAttention(a_q, [W_q|W_k|W_v], [b_q|b_k|b_v], a_s, w_s, mask_index, a_zp, w_zp)
  {num_heads=H, scale}` ("lower_qattention"); SDPA's bool mask [B, 1, 1, S] or
  [B, 1, S, S] (or an additive Where(mask, 0, c <= -10000)) becomes mask_index
  `Squeeze(Cast(mask, int32))` [B, S] or [B, S, S]. One kernel runs the Q/K/V GEMM and
  the attention (measured below). Not exact at fully masked rows (tolerance below);
  kernel="integer" (TVM targets) never makes it;
- kernel="integer": `Mul(Cast(MatMulInteger(a_q, W_q, a_zp, w_zp)), a_s * w_s)` [+ Add];
- kernel="qlinear": `Q(MatMul(DQ(a), DQ(W)), y_s, y_zp)` -> `QLinearMatMul` (only where
  the Q/DQ graph requantizes the output itself; ONNX Runtime's requantization may round
  a tie differently: +-1 output code);
- kernel="qdq": nothing (ONNX Runtime's own QDQ transformers see the Q/DQ graph).
Dequantize/quantize nodes and constants left without readers are removed. What is not
lowered stays as it was, with the reason in `graph.meta["lower_skipped"]` ({node, op,
reason}): e.g. "format fp8_e4m3 has no integer kernel", "FakeQuantize simulates a
format ONNX Runtime cannot run", "weight is not quantized". Stats: rewrites, one
`rule:<name>` and one `op:<kernel>` count per rule / kernel used, nodes_removed,
constants_removed, skipped.

Tolerance (tests use it): for y = A @ W (+ b) with K terms, the Q/DQ graph sums K
float32 products, the kernels sum integers exactly and round 3 times (int32 -> float,
a_s * w_s, the product), so |lowered - qdq| <= (K + 3) u (|DQ(a)| @ |DQ(W)|) + 2 u |y|,
u = 2^-24 (Higham's bound for a float32 dot product plus the kernels' roundings and the
bias add); MatMulNBits and the embedding rewrites are float32 in both forms.
QAttention: its projections are the bound above; the attention is float32 in both forms
with sums in another order (tests: |lowered - qdq| <= 1e-5 * max(1, max|y|)). Masking
differs in kind: ORT *adds* mask_filter_value = -10000 to masked scores where SDPA
selects -inf, so a masked key still gets exp(s - 10000 - max), 0 in float32 unless its
score beats the row's best attended one by > ~9900; and a query row with *every* key
masked gets softmax over all keys (the -10000 cancels) where SDPA gives 0. A padding
mask [B, 1, 1, S] masks whole rows only for an all-padding sequence; such rows' outputs
then differ (the rule cannot see the mask's values, so it does not refuse them).

Kernel choice (kernel="auto"): measured with tools/bench/matmul_kernels.py --cpu-time,
one linear layer x[64, 64, K] @ W[K, N] + b (MiniLM's shapes), onnxruntime 1.32 CPU,
one thread, process CPU time (the 2-core machine was shared: wall-clock runs gave the
same ranking, 2 threads, times 1.5-2x noisier), median ms (speed-up vs fp32):

    form                                  384x384      384x1536      1536x384      exact
    fp32 MatMul + Add                     5.80         28.04         26.75         -
    QDQ u8 (ORT's QDQ transformers)       7.72 (0.75)  29.26 (0.96)  26.99 (0.99)  yes
    QDQ s8                                ORT fails to load it (its Gemm-reshape of an int8 Q)
    MatMulIntegerToFloat u8 x s8          1.68 (3.46)  6.43 (4.36)   6.46 (4.14)   yes  <- auto, static
    MatMulIntegerToFloat s8 x s8          26.28 (0.22) 101.9 (0.28)  100.1 (0.27)  yes
    MatMulInteger + Cast + Mul, u8        2.13 (2.72)  8.87 (3.16)   7.71 (3.47)   yes
    QLinearMatMul u8 (+ DQ)               2.21 (2.62)  8.67 (3.23)   6.89 (3.88)   +-1 code
    DynamicQuantizeMatMul                 1.78 (3.26)  6.63 (4.23)   8.62 (3.10)   yes  <- auto, dynamic
    MatMulNBits 8-bit, accuracy_level 0   6.30 (0.92)  26.09 (1.07)  26.35 (1.02)  yes  <- auto, int8 weight-only
    DQ(W_i8) -> MatMul (ORT: MatMulNBits) 6.65 (0.87)  22.51 (1.25)  23.00 (1.16)  no (level 4)
    MatMulNBits 4-bit, accuracy_level 0   5.35 (1.08)  20.81 (1.35)  20.58 (1.30)  yes  <- auto, int4
    MatMulNBits 4-bit, accuracy_level 4   6.86 (0.84)  23.61 (1.19)  25.09 (1.07)  no
QAttention vs its unfused form (3 MatMulIntegerToFloat + Reshape/Transpose + SDPA's
MatMul/Softmax/Where/IsNaN decomposition), one MiniLM attention x[64, 64, 384], 12
heads, [B, S] padding mask, same ORT, 1 thread, median ms: 14.8 fused (2-D mask), 15.0
(3-D mask), 18.1 unfused (1.22x per layer, 6 layers in MiniLM).
The static u8 x s8 MatMulIntegerToFloat is the fastest exact form (s8 activations are
~15x slower: ORT has no fast s8 x s8 path on x86, hence the u8 re-quantization above);
ORT does not fuse a float-output DQ -> MatMul into an integer kernel (it runs DQ + a
float Gemm), so keeping Q/DQ ("qdq") gains nothing on CPU; and its own DQ(W) -> MatMul
fusion to MatMulNBits uses accuracy_level 4 (int8 activations inside), which is not
exact, so weight-only layers are lowered explicitly with accuracy_level 0. Weight-only
int8 runs at fp32 speed (it saves memory, not time) and int4 1.1-1.35x faster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from requant.errors import RequantError
from requant.ir import dtypes
from requant.ir.builder import Builder
from requant.ir.graph import Graph, Node, Value
from requant.ir.pattern import Match, OpPattern, Var, op
from requant.ir.rewrite import Rule, rewrite
from requant.ir.types import Dim
from requant.passes.manager import PassResult, graph_pass

__all__ = ["lower_quant", "KERNELS", "rules_for"]

logger = logging.getLogger(__name__)

KERNELS = ("auto", "qdq", "integer_to_float", "integer", "dynamic", "qlinear", "nbits")
NBITS8_BLOCK = 128
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


# -- reading the Q/DQ operands ---------------------------------------------------------------


@dataclass(frozen=True)
class _Act:
    """A quantized activation operand: codes, scalar scale / zero point, and where the
    codes come from ("static": QuantizeLinear, "dynamic": DynamicQuantizeLinear)."""

    codes: Value
    scale: Value
    zero_point: Value | None
    source: str
    x: Value | None  # the float input of the QuantizeLinear / DynamicQuantizeLinear


@dataclass(frozen=True)
class _Weight:
    """A constant quantized weight as [K, N]: codes, scale ([N] or scalar), zero point."""

    codes: np.ndarray
    dtype: dtypes.DType
    scale: np.ndarray
    zero_point: np.ndarray | None
    block: int  # 0: per tensor / column; else group size along K (scale [K/G, N])
    values: tuple[Value, Value, Value | None] | None = None  # the constants, when usable as they are


def _numel(v: Value) -> int | None:
    return v.type.numel


def _dq_parts(v: Value) -> tuple[Node, Value, Value, Value | None] | str:
    node = v.producer
    if node is None or node.op != "DequantizeLinear":
        what = node.op if node is not None else ("a constant" if v.const is not None else "a graph input")
        return f"%{v.name} is not dequantized ({what})"
    ins = list(node.inputs) + [None] * (3 - len(node.inputs))
    if node.attrs.get("output_dtype") not in (None, "float32", "f32", dtypes.float32):
        return f"DequantizeLinear %{v.name} does not give float32"
    return node, ins[0], ins[1], ins[2]


def _activation(v: Value) -> _Act | str:
    parts = _dq_parts(v)
    if isinstance(parts, str):
        return parts
    _, codes, scale, zp = parts
    if codes.dtype not in (dtypes.uint8, dtypes.int8):
        return f"activation codes %{codes.name} are {codes.dtype}: format {codes.dtype} has no integer kernel"
    if _numel(scale) != 1 or (zp is not None and _numel(zp) != 1):
        return f"activation %{codes.name} is not quantized per tensor"
    src = codes.producer
    if src is not None and src.op == "DynamicQuantizeLinear" and codes.index == 0 \
            and scale is src.outputs[1] and zp is src.outputs[2]:
        return _Act(codes, scale, zp, "dynamic", src.inputs[0])
    if src is not None and src.op == "QuantizeLinear":
        return _Act(codes, scale, zp, "static", src.inputs[0])
    return _Act(codes, scale, zp, "other", None)


def _weight(v: Value, trans: bool = False) -> _Weight | str:
    """The weight operand as [K, N] (transposed when `trans`, Gemm's transB)."""
    parts = _dq_parts(v)
    if isinstance(parts, str):
        if v.producer is not None and v.producer.op == "FakeQuantize":
            return "FakeQuantize simulates a format ONNX Runtime cannot run: no integer kernel"
        return "weight is not quantized: " + parts
    node, codes, scale, zp = parts
    if codes.const is None or scale.const is None or (zp is not None and zp.const is None):
        return f"weight codes %{codes.name} or their scale are not constants"
    if codes.dtype not in (dtypes.int8, dtypes.uint8, dtypes.int4, dtypes.uint4):
        return f"format {codes.dtype} has no integer kernel in ONNX Runtime"
    if codes.type.rank != 2:
        return f"weight %{codes.name} is {codes.type.rank}-D, the kernels take a 2-D constant weight"
    q = np.asarray(codes.const)
    s = np.asarray(scale.const, np.float32)
    z = None if zp is None else np.asarray(zp.const)
    axis = int(node.attrs.get("axis", 1)) % 2
    block = int(node.attrs.get("block_size", 0) or 0)
    values: tuple[Value, Value, Value | None] | None = (codes, scale, zp)
    if trans:
        q, s, z = q.T, (s.T if block else s), (None if z is None else (z.T if block else z))
        axis = 1 - axis
        values = None
    n = q.shape[1]
    if block:
        if axis != 0:
            return "blocked weight scales run along N, the kernels want blocks along K"
        return _Weight(q, codes.dtype, s, z, block)
    if s.size != 1 and (s.ndim != 1 or axis != 1 or s.shape[0] != n):
        return "weight scales are per input row, the kernels want one per output column"
    if s.ndim > 1 or (z is not None and z.shape != s.shape):
        values = None
    return _Weight(q, codes.dtype, s.reshape(-1) if s.size > 1 else s.reshape(()), z, 0, values)


# -- the MatMul-like match ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Linear:
    """What the rules need of a MatMul / Gemm: operands, weight, optional bias."""

    node: Node
    a: Value
    weight: _Weight
    act: _Act | None  # None: weight-only
    bias: np.ndarray | None
    out: Value  # the value the lowered kernel replaces (the Add's output when fused)
    bias_value: Value | None = None  # the bias constant, when it is [N] already


def _bias_of(mm: Node) -> tuple[Node, np.ndarray, Value] | None:
    """The Add(mm, c) with constant c of shape [N] (or [1, .., N]) reading mm's only output."""
    out = mm.outputs[0]
    if len(out.uses) != 1 or out.type.shape is None:
        return None
    add, _ = out.uses[0]
    if add.op != "Add":
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    n = out.type.shape[-1]
    if other is None or other.const is None or not isinstance(n, int) or other.dtype != dtypes.float32:
        return None
    c = np.asarray(other.const)
    if c.size != n or c.shape[-1:] != (n,) or c.ndim > len(out.type.shape) or add.outputs[0].type != out.type:
        return None
    return add, c.reshape(n), other


def _linear(node: Node, with_bias: bool) -> _Linear | str:
    if node.op == "Gemm":
        if node.attrs.get("transA", 0):
            return "Gemm with transA"
        if float(node.attrs.get("alpha", 1.0)) != 1.0 or float(node.attrs.get("beta", 1.0)) != 1.0:
            return "Gemm with alpha or beta != 1"
    a, b = node.inputs[0], node.inputs[1]
    if a is None or b is None:
        return "an operand is omitted"
    w = _weight(b, trans=node.op == "Gemm" and bool(node.attrs.get("transB", 0)))
    if isinstance(w, str):
        return w
    act = _activation(a) if a.producer is not None and a.producer.op == "DequantizeLinear" else None
    if isinstance(act, str):
        return act
    if act is None and a.dtype != dtypes.float32:
        return f"activation %{a.name} is {a.dtype}, not float32"
    if a.producer is not None and a.producer.op == "FakeQuantize":
        return "FakeQuantize simulates a format ONNX Runtime cannot run: no integer kernel"
    bias, out, c = None, node.outputs[0], None
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        c = node.inputs[2]
        if c.const is None or c.const.size != w.codes.shape[1] or c.dtype != dtypes.float32:
            return "Gemm's C is not a constant float32 [N] bias"
        bias = np.asarray(c.const, np.float32).reshape(-1)
    elif with_bias:
        fused = _bias_of(node)
        if fused is None:
            return "no constant bias Add"
        bias, out, c = fused[1], fused[0].outputs[0], fused[2]
    usable = c if c is not None and bias is not None and c.type.shape == bias.shape else None
    return _Linear(node, a, w, act, bias, out, usable)


# -- emitters ------------------------------------------------------------------------------


class _Lowering:
    """Builds the kernels of one pass run (caches the uint8 twins of int8 activations)."""

    def __init__(self, graph: Graph, kernel: str) -> None:
        self.graph = graph
        self.kernel = kernel
        self._u8: dict[int, tuple[Value, Value]] = {}

    def choose(self, lin: _Linear) -> str:
        """The kernel for one linear layer, or a reason (starting with '!') why none."""
        wide = lin.weight.dtype in (dtypes.int8, dtypes.uint8)
        k = self.kernel
        if lin.act is None:
            if k in ("auto", "nbits"):
                return "nbits"
            return f"!weight-only layer: kernel '{k}' needs a quantized activation (use 'nbits' or 'auto')"
        if not wide or lin.weight.block:
            return "!group-quantized weights with quantized activations have no integer kernel"
        if k == "auto":
            # one DynamicQuantizeLinear read by several layers (Q/K/V) quantizes once for
            # all of them, as ORT's quantize_dynamic does; a lone reader takes the fused op
            shared = len(lin.act.codes.uses) > 1
            return "dynamic" if lin.act.source == "dynamic" and not shared else "integer_to_float"
        if k == "dynamic" and lin.act.source != "dynamic":
            return "!kernel 'dynamic' needs DynamicQuantizeLinear activations (quantize(dynamic=True))"
        if k in ("nbits", "qlinear"):
            return f"!kernel '{k}' does not apply to this MatMul" + (
                " (QLinearMatMul needs a QuantizeLinear on the output)" if k == "qlinear" else "")
        return k

    def emit(self, b: Builder, lin: _Linear, kernel: str) -> Value:
        bias = lin.bias_value
        if bias is None and lin.bias is not None:
            bias = b.const(lin.bias.astype(np.float32))
        if kernel == "nbits":
            return self._nbits(b, lin, bias)
        w = lin.weight
        if w.values is not None:
            wq, ws, wz = w.values
        else:
            wq = b.const(w.codes, dtype=w.dtype)
            ws = b.const(w.scale)
            wz = None if w.zero_point is None else b.const(w.zero_point, dtype=w.dtype)
        if w.zero_point is not None and not np.any(w.zero_point):
            wz = None
        act = lin.act
        assert act is not None
        if kernel == "dynamic":
            return b.DynamicQuantizeMatMul(act.x, wq, ws, wz, bias)
        codes, zp = self._unsigned(b, act)
        if kernel == "integer_to_float":
            return b.MatMulIntegerToFloat(codes, wq, act.scale, ws, zp, wz, bias)
        acc = b.MatMulInteger(codes, wq, zp, wz)
        if act.scale.const is not None:  # f32(a_s * w_s), as MatMulIntegerToFloat rounds it
            scale = b.const((np.float32(act.scale.const) * w.scale.astype(np.float32)).astype(np.float32))
        else:
            scale = b.Mul(act.scale, ws)
        y = b.Mul(b.Cast(acc, to="float32"), scale)
        return y if bias is None else b.Add(y, bias)

    def _unsigned(self, b: Builder, act: _Act) -> tuple[Value, Value | None]:
        """uint8 codes for an int8 activation made by QuantizeLinear: Q(x, s, zp + 128)
        as uint8 equals Q(x, s, zp) as int8 plus 128, element for element (the Q's own
        scale and zero point, which may be per channel when smoothed); the DQ's zero
        point shifts alike."""
        if act.codes.dtype == dtypes.uint8 or act.source != "static":
            return act.codes, act.zero_point
        key = id(act.codes)
        if key not in self._u8:
            q = act.codes.producer
            assert q is not None and act.x is not None
            g = self.graph
            q_zp = q.inputs[2] if len(q.inputs) > 2 else None
            q_scale = q.inputs[1]
            shifted = _shift128(None if q_zp is None else _const_of(q_zp), q_scale)
            z_q = g.add_constant(shifted, base=f"{act.codes.name}_u8_zero_point")
            dq_zp = 0 if act.zero_point is None else int(np.asarray(_const_of(act.zero_point)).reshape(()))
            z_dq = z_q if shifted.ndim == 0 and dq_zp + 128 == int(shifted) else \
                g.add_constant(np.asarray(dq_zp + 128, np.uint8), base=f"{act.codes.name}_u8_zero_point")
            attrs = {k: v for k, v in q.attrs.items() if k in ("saturate", "axis")}
            node = g.create_node("QuantizeLinear", [act.x, q_scale, z_q], attrs, after=q,
                                 meta={"created_by": "lower_quant"})
            node.output.meta["quant"] = dict(act.codes.meta.get("quant", {}), dtype="u8", symmetric=False)
            self._u8[key] = (node.output, z_dq)
        return self._u8[key]

    def _nbits(self, b: Builder, lin: _Linear, bias: Value | None) -> Value:
        w = lin.weight
        k, n = w.codes.shape
        bits = 8 if w.dtype in (dtypes.int8, dtypes.uint8) else 4
        block = w.block or NBITS8_BLOCK
        packed, scales, zps = pack_nbits(w.codes, w.dtype, w.scale, w.zero_point, bits, block)
        zp_v = None if zps is None else b.const(zps)
        return b.node("MatMulNBits", lin.a, b.const(packed), b.const(scales), zp_v, None, bias,
                      K=k, N=n, bits=bits, block_size=block, accuracy_level=0).output


def _shift128(zp: np.ndarray | None, scale: Value) -> np.ndarray:
    """An int8 zero point (0 when omitted, shaped like the scale) + 128 as uint8."""
    if zp is None:
        shape = scale.type.shape if scale.type.shape is not None else ()
        return np.full(tuple(shape), 128, np.uint8)
    return (np.asarray(zp).astype(np.int16) + 128).astype(np.uint8)


def _const_of(v: Value) -> np.ndarray:
    if v.const is None:
        raise RequantError(f"lower_quant: zero point %{v.name} is not a constant")
    return v.const


def pack_nbits(codes: np.ndarray, dt: dtypes.DType, scale: np.ndarray, zero_point: np.ndarray | None,
               bits: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ORT MatMulNBits operands for codes [K, N]: packed uint8 [N, K/block, block*bits/8]
    (unsigned codes, low bits first), scales [N * K/block] float32, zero points packed
    like the codes ([N, ceil(K/block * bits / 8)]) or None when they are all the
    default 2^(bits-1). Signed codes are stored + 2^(bits-1) with the zero point
    shifted alike, so (code - zp) * scale is unchanged. Per-column scales (block 0
    input) are repeated over the blocks of their column; K is padded to whole blocks
    with codes equal to the zero point (weights 0, never read: MatMulNBits knows K)."""
    from requant.ir.ops.quant import pack_low_first

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


# -- rules -----------------------------------------------------------------------------------


def _linear_rule(kind: str, low: _Lowering) -> Rule:
    """kind: "matmul_add" (MatMul + bias Add, the bias fused), "matmul", "gemm2" or
    "gemm3" (Gemm nodes carry 2 or 3 inputs)."""
    with_bias = kind == "matmul_add"

    def check(m: Match) -> str | None:
        node = m.mm if with_bias else m.root
        if not with_bias and node.op == "MatMul" and _bias_of(node) is not None \
                and not isinstance(_linear(node, True), str):
            return "left to the bias-fusing rule"
        lin = _linear(node, with_bias)
        if isinstance(lin, str):
            return lin
        kernel = low.choose(lin)
        return kernel[1:] if kernel.startswith("!") else None

    def replace(b: Builder, m: Match) -> Value:
        node = m.mm if with_bias else m.root
        lin = _linear(node, with_bias)
        assert not isinstance(lin, str)
        return low.emit(b, lin, low.choose(lin))

    a, b, c = Var("a"), Var("b"), Var("c", optional=True)
    patterns = {
        "matmul_add": op.Add(op.MatMul(a, b, _bind="mm"), Var("c"), _commute=True),
        "matmul": op.MatMul(a, b),
        "gemm2": op.Gemm(a, b),
        "gemm3": op.Gemm(a, b, c),
    }
    name = "lower_gemm" if kind.startswith("gemm") else f"lower_{kind}"
    return Rule(name, patterns[kind], replace, check)


def _gather_rule() -> Rule:
    def check(m: Match) -> str | None:
        parts = _dq_parts(m.table)
        if isinstance(parts, str):
            return parts
        node, codes, scale, zp = parts
        if codes.const is None or scale.const is None or (zp is not None and zp.const is None):
            return "table codes or scales are not constants"
        if int(m.root.attrs.get("axis", 0)) != 0:
            return "Gather along an axis other than 0"
        if scale.const.size != 1 and not (scale.const.ndim == 1 and int(node.attrs.get("axis", 1)) % codes.type.rank == 0
                                          and not node.attrs.get("block_size", 0)):
            return "table scales are not per row or per tensor"
        if codes.dtype not in (dtypes.int8, dtypes.uint8, dtypes.int4, dtypes.uint4, dtypes.fp8_e4m3, dtypes.fp8_e5m2):
            return f"table format {codes.dtype} is not supported"
        return None

    def replace(b: Builder, m: Match) -> Value:
        node, codes, scale, zp = _dq_parts(m.table)  # type: ignore[misc]
        rows = b.Gather(codes, m.ids, axis=0)
        if scale.const.size == 1:
            return b.DequantizeLinear(rows, scale, zp)
        v = scale.const.shape[0]
        shape = (v,) + (1,) * (codes.type.rank - 1)
        s_rows = b.Gather(b.const(np.asarray(scale.const, np.float32).reshape(shape)), m.ids, axis=0)
        vals = b.Cast(rows, to="float32")
        if zp is not None and np.any(np.asarray(zp.const)):
            z_rows = b.Gather(b.const(np.asarray(zp.const).astype(np.float32).reshape(shape)), m.ids, axis=0)
            vals = b.Sub(vals, z_rows)
        return b.Mul(vals, s_rows)

    return Rule("lower_gather", op.Gather(Var("table"), Var("ids")), replace, check)


def _qlinear_rule() -> Rule:
    def check(m: Match) -> str | None:
        lin = _linear(m.mm, False)
        if isinstance(lin, str):
            return lin
        if lin.act is None or lin.weight.block or lin.weight.dtype not in (dtypes.int8, dtypes.uint8):
            return "QLinearMatMul needs 8-bit activations and weights"
        if m.y_zp is None or _numel(m.y_scale) != 1 or _numel(m.y_zp) != 1:
            return "output quantization is not per tensor with a zero point"
        return None

    def replace(b: Builder, m: Match) -> Value:
        lin = _linear(m.mm, False)
        assert not isinstance(lin, str) and lin.act is not None
        w = lin.weight
        wz = w.zero_point if w.zero_point is not None else np.zeros(w.scale.shape, w.dtype.np)
        return b.QLinearMatMul(lin.act.codes, lin.act.scale, lin.act.zero_point or b.const(np.uint8(0)),
                               b.const(w.codes, dtype=w.dtype), b.const(w.scale), b.const(wz, dtype=w.dtype),
                               m.y_scale, m.y_zp)

    pattern = op.QuantizeLinear(op.MatMul(Var("a"), Var("b"), _bind="mm"), Var("y_scale"), Var("y_zp"))
    return Rule("lower_qlinear_matmul", pattern, replace, check)


_HEADS_FIRST = [0, 2, 1, 3]
_MASK_FLOOR = -10000.0  # an additive mask this negative masks out as QAttention's does


def _projection(t: str) -> OpPattern:
    """Transpose(Reshape(MatMulIntegerToFloat(a, W_t, ...), shape) -> [B, S, H, D], heads first)."""
    mm = op.MatMulIntegerToFloat(Var("a"), Var(f"w_{t}"), Var("a_scale"), Var(f"ws_{t}"),
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
    if _numel(m.a_scale) != 1 or (m.a_zp is not None and _numel(m.a_zp) != 1):
        return "activation is not quantized per tensor"
    if a.type.shape is None or len(a.type.shape) != 3:
        return f"activation %{a.name} is not 3-D [batch, seq, hidden]"
    batch, seq = a.type.shape[0], a.type.shape[1]
    heads_dim = None
    weights = []
    for t in "qkv":
        w, ws, wz, bias = m[f"w_{t}"], m[f"ws_{t}"], m[f"wz_{t}"], m[f"bias_{t}"]
        if any(v is not None and v.const is None for v in (w, ws, wz, bias)):
            return f"the {t} projection's weight, scales, zero points or bias are not constants"
        if w.type.rank != 2 or w.dtype not in (dtypes.int8, dtypes.uint8):
            return f"the {t} projection's weight is not 2-D 8-bit"
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


def _concat_columns(parts: list[np.ndarray | None], n: int, dtype: np.dtype, fill: float = 0) -> np.ndarray:
    """Three per-column (or per-tensor, or absent) vectors of N side by side: [3N]."""
    cols = [np.full(n, fill, dtype) if p is None else np.broadcast_to(np.asarray(p).reshape(-1), (n,)) for p in parts]
    return np.concatenate(cols).astype(dtype)


def _qattention_rules() -> list[Rule]:
    """Three MatMulIntegerToFloat of one static uint8 activation, split into heads,
    into a non-causal ScaledDotProductAttention whose output is merged back to [B, S, N]
    -> one com.microsoft QAttention (mask -> Cast int32 + Squeeze mask_index). Masking
    differs where a query row has every key masked (module docstring, "QAttention")."""

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
        return b.QAttention(m.a, b.const(codes, dtype=w_dt), b.const(bias), m.a_scale, ws_v, mask_index, m.a_zp,
                            wz_v, **attrs)

    def pattern(with_mask: bool) -> OpPattern:
        ins = [_projection("q"), _projection("k"), _projection("v")] + ([Var("mask", optional=True)] if with_mask else [])
        sdpa = op.ScaledDotProductAttention(*ins, _bind="sdpa")
        return op.Reshape(op.Transpose(sdpa, perm=_HEADS_FIRST), Var("out_shape"))

    return [Rule("lower_qattention", pattern(w), replace, check) for w in (True, False)]


def rules_for(graph: Graph, kernel: str) -> list[Rule]:
    """The rules of one run of the pass with `kernel`."""
    low = _Lowering(graph, kernel)
    rules = [_linear_rule(kind, low) for kind in ("matmul_add", "matmul", "gemm2", "gemm3")] + [_gather_rule()]
    if kernel == "qlinear":
        rules.insert(0, _qlinear_rule())
    return rules


# -- the pass --------------------------------------------------------------------------------


@graph_pass("lower_quant", "Q/DQ around MatMul/Gemm/Gather -> ONNX Runtime's integer kernels (exact)")
def lower_quant(graph: Graph, kernel: str = "auto") -> PassResult:
    """See the module docstring."""
    if kernel not in KERNELS:
        raise RequantError(f"lower_quant: unknown kernel '{kernel}'; choose one of {', '.join(KERNELS)}")
    stats: dict[str, int | float | str] = {"rewrites": 0}
    if kernel != "qdq":
        result = rewrite(graph, rules_for(graph, kernel))
        by_rule = dict(result.by_rule)
        stats["rewrites"] = result.rewrites
        if kernel == "auto":  # on the kernels the linear rules made: Q/K/V + attention -> QAttention
            fused = rewrite(graph, _qattention_rules())
            stats["rewrites"] += fused.rewrites
            by_rule.update(fused.by_rule)
        stats.update({f"rule:{k}": v for k, v in sorted(by_rule.items())})
        for new_op, count in _created_ops(graph).items():
            stats[f"op:{new_op}"] = count
    stats["nodes_removed"], stats["constants_removed"] = _remove_dead_qdq(graph)
    skipped = _skipped(graph, kernel)
    graph.meta["lower_skipped"] = skipped
    stats["skipped"] = len(skipped)
    changed = bool(stats["rewrites"]) or bool(stats["nodes_removed"]) or bool(stats["constants_removed"])
    return PassResult(graph, changed, stats)


def _created_ops(graph: Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph:
        if str(node.meta.get("created_by", "")).startswith("lower_") and node.op in (
                "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits", "MatMulInteger", "QLinearMatMul",
                "QAttention"):
            counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def _remove_dead_qdq(graph: Graph) -> tuple[int, int]:
    """Remove Q/DQ nodes nothing reads any more, then constants nothing reads (the
    codes and scales the kernels copied, e.g. transposed for Gemm's transB)."""
    removed = 0
    for node in list(graph.reversed()):
        if node.op in _QDQ_OPS and all(not o.uses and not graph.is_output(o) for o in node.outputs):
            graph.remove_node(node)
            removed += 1
    dropped = 0
    for v in list(graph.constants):
        if not v.uses and not graph.is_output(v):
            graph.remove_constant(v)
            dropped += 1
    return removed, dropped


def _skipped(graph: Graph, kernel: str) -> list[dict[str, str]]:
    """Every MatMul / Gemm / Gather still reading a dequantized or fake-quantized value,
    with the reason no rule lowered it."""
    out = []
    low = _Lowering(graph, kernel)
    for node in graph:
        if node.op not in ("MatMul", "Gemm", "Gather", "Conv"):
            continue
        reads = [v for v in node.inputs if v is not None and v.producer is not None
                 and v.producer.op in ("DequantizeLinear", "FakeQuantize")]
        if not reads:
            continue
        if kernel == "qdq":
            reason = "kernel 'qdq' keeps Q/DQ for ONNX Runtime's transformers"
        elif node.op == "Conv":
            reason = "Conv keeps Q/DQ (no integer Conv lowering; ONNX Runtime fuses DQ -> Conv -> Q itself)"
        elif node.op == "Gather":
            reason = _gather_rule().check(_fake_match(node)) or "not lowered"
        else:
            lin = _linear(node, False)
            reason = lin if isinstance(lin, str) else low.choose(lin).lstrip("!")
        out.append({"node": node.name or node.outputs[0].name, "op": node.op, "reason": str(reason)})
    return out


def _fake_match(node: Node) -> Match:
    return Match(node, {"table": node.inputs[0], "ids": node.inputs[1]}, {}, [node])

