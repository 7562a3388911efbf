"""Pass "lower_integer": quantize/dequantize patterns -> standard ONNX integer ops, which
every backend runs (TVM compiles them to int8 kernels with int32 accumulation; ONNX
Runtime runs them too, but has faster kernels of its own: backends/onnx/lower_quant.py).
Exact: the lowered graph computes what the Q/DQ graph computes, up to float32 rounding
(bound below).

What it rewrites (A: the activation operand, W: a constant weight [K, N]):
- `MatMul(DQ(a_q, a_s, a_zp), DQ(W_q, w_s[, w_zp]))` [+ Add(bias[N])], a_q u8/i8 per
  tensor, W_q 8-bit per tensor or per column ->
  `Mul(Cast(MatMulInteger(a_q, W_q, a_zp, w_zp), f32), f32(a_s * w_s))` [+ Add(bias)]
  (kernel "integer"). An int8 activation made by a QuantizeLinear is re-quantized to
  uint8 with zero point + 128: the same codes shifted by 128, element for element, so
  exact (u8 x s8 is the integer product x86 has instructions for);
- `Gemm(DQ(a), DQ(W), c)` with alpha = beta = 1 and transA = 0 -> as MatMul (+ c),
  W_q transposed when transB;
- `Gather(DQ(T_q, s[rows], axis=0), ids)` (per-row embedding tables) ->
  `Mul(Cast(Gather(T_q, ids)), Gather(s[rows, 1], ids))`, per tensor ->
  `DQ(Gather(T_q, ids), s)`: rows are gathered as codes, the table is never
  dequantized whole;
- kernel "qlinear": `Q(MatMul(DQ(a), DQ(W)), y_s, y_zp)` -> `QLinearMatMul` (only where
  the Q/DQ graph requantizes the output itself; a runtime's requantization may round a
  tie differently: +-1 output code).
Dequantize/quantize nodes and constants left without readers are removed. What is not
lowered stays as it was, with the reason in `graph.meta["lower_skipped"]` ({node, op,
reason}): e.g. "format fp8_e4m3 has no integer kernel", "weight is not quantized".
Stats: rewrites, one `rule:<name>` and one `op:<kernel op>` count per rule / op made,
nodes_removed, constants_removed, skipped.

Rounding bound (tests use it): for y = A @ W (+ b) with K terms, the Q/DQ graph sums K
float32 products while the integer form sums integers exactly and rounds 3 times
(int32 -> float, a_s * w_s, the product), so
    |lowered - qdq| <= (K + 3) u (|DQ(a)| @ |DQ(W)|) + 2 u |y|,   u = 2^-24
(Higham's bound for a float32 dot product plus those roundings and the bias add).

`IntegerLowering` is the machinery a backend's own lowering extends (it reads the Q/DQ
operands, chooses a kernel per layer, emits it); `lower_with` runs one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from requant.errors import RequantError
from requant.ir import dtypes
from requant.ir.builder import Builder
from requant.ir.graph import Graph, Node, Value
from requant.ir.pattern import Match, Var, op
from requant.ir.rewrite import Rule, rewrite
from requant.passes.conditions import QUANTIZED
from requant.passes.manager import PassResult, graph_pass

__all__ = [
    "lower_integer",
    "IntegerLowering",
    "QuantActivation",
    "QuantWeight",
    "QuantLinear",
    "quant_linear",
    "dequantized_parts",
    "lower_with",
]

logger = logging.getLogger(__name__)

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


# -- reading the Q/DQ operands ---------------------------------------------------------------


@dataclass(frozen=True)
class QuantActivation:
    """A quantized activation operand: codes, scalar scale / zero point, and where the
    codes come from ("static": QuantizeLinear, "dynamic": DynamicQuantizeLinear)."""

    codes: Value
    scale: Value
    zero_point: Value | None
    source: str
    x: Value | None  # the float input of the QuantizeLinear / DynamicQuantizeLinear


@dataclass(frozen=True)
class QuantWeight:
    """A constant quantized weight as [K, N]: codes, scale ([N] or scalar), zero point."""

    codes: np.ndarray
    dtype: dtypes.DType
    scale: np.ndarray
    zero_point: np.ndarray | None
    block: int  # 0: per tensor / column; else group size along K (scale [K/G, N])
    values: tuple[Value, Value, Value | None] | None = None  # the constants, when usable as they are


def _numel(v: Value) -> int | None:
    return v.type.numel


def dequantized_parts(v: Value) -> tuple[Node, Value, Value, Value | None] | str:
    node = v.producer
    if node is None or node.op != "DequantizeLinear":
        what = node.op if node is not None else ("a constant" if v.const is not None else "a graph input")
        return f"%{v.name} is not dequantized ({what})"
    ins = list(node.inputs) + [None] * (3 - len(node.inputs))
    if node.attrs.get("output_dtype") not in (None, "float32", "f32", dtypes.float32):
        return f"DequantizeLinear %{v.name} does not give float32"
    return node, ins[0], ins[1], ins[2]


def _activation(v: Value) -> QuantActivation | str:
    parts = dequantized_parts(v)
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
        return QuantActivation(codes, scale, zp, "dynamic", src.inputs[0])
    if src is not None and src.op == "QuantizeLinear":
        return QuantActivation(codes, scale, zp, "static", src.inputs[0])
    return QuantActivation(codes, scale, zp, "other", None)


def _weight(v: Value, trans: bool = False) -> QuantWeight | str:
    """The weight operand as [K, N] (transposed when `trans`, Gemm's transB)."""
    parts = dequantized_parts(v)
    if isinstance(parts, str):
        if v.producer is not None and v.producer.op == "FakeQuantize":
            return "FakeQuantize simulates a format that has no integer kernel"
        return "weight is not quantized: " + parts
    node, codes, scale, zp = parts
    if codes.const is None or scale.const is None or (zp is not None and zp.const is None):
        return f"weight codes %{codes.name} or their scale are not constants"
    if codes.dtype not in (dtypes.int8, dtypes.uint8, dtypes.int4, dtypes.uint4):
        return f"format {codes.dtype} has no integer kernel"
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
        return QuantWeight(q, codes.dtype, s, z, block)
    if s.size != 1 and (s.ndim != 1 or axis != 1 or s.shape[0] != n):
        return "weight scales are per input row, the kernels want one per output column"
    if s.ndim > 1 or (z is not None and z.shape != s.shape):
        values = None
    return QuantWeight(q, codes.dtype, s.reshape(-1) if s.size > 1 else s.reshape(()), z, 0, values)


# -- the MatMul-like match ---------------------------------------------------------------------


@dataclass(frozen=True)
class QuantLinear:
    """What the rules need of a MatMul / Gemm: operands, weight, optional bias."""

    node: Node
    a: Value
    weight: QuantWeight
    act: QuantActivation | None  # None: weight-only
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


def quant_linear(node: Node, with_bias: bool) -> QuantLinear | str:
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
        return "FakeQuantize simulates a format that has no integer kernel"
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
    return QuantLinear(node, a, w, act, bias, out, usable)


# -- emitters ------------------------------------------------------------------------------


# -- lowering ---------------------------------------------------------------------------------


class IntegerLowering:
    """One run of a lowering: chooses a kernel per quantized linear (`choose`) and emits
    it (`emit`). This class makes the standard integer forms; a backend's lowering
    subclasses it for its own kernels (and adds `rules`). Caches the uint8 twins of
    int8 activations so layers reading one activation share one re-quantization."""

    pass_name = "lower_integer"
    kernels: tuple[str, ...] = ("integer", "qlinear")
    created_ops: tuple[str, ...] = ("MatMulInteger", "QLinearMatMul")

    def __init__(self, graph: Graph, kernel: str) -> None:
        if kernel not in self.kernels:
            raise RequantError(f"{self.pass_name}: unknown kernel '{kernel}'; choose one of {', '.join(self.kernels)}")
        self.graph = graph
        self.kernel = kernel
        self._u8: dict[int, tuple[Value, Value | None]] = {}

    def choose(self, lin: QuantLinear) -> str:
        """The kernel for one linear layer, or a reason (starting with '!') why none."""
        if lin.act is None:
            return f"!weight-only layer: kernel '{self.kernel}' needs a quantized activation"
        if lin.weight.dtype not in (dtypes.int8, dtypes.uint8) or lin.weight.block:
            return "!group-quantized weights with quantized activations have no integer kernel"
        if self.kernel == "qlinear":
            return "!kernel 'qlinear' does not apply to this MatMul (QLinearMatMul needs a QuantizeLinear on the output)"
        return self.kernel

    def weight_values(self, b: Builder, lin: QuantLinear) -> tuple[Value, Value, Value | None]:
        """The weight's codes, scale and zero point as values (None: zero point all 0)."""
        w = lin.weight
        if w.values is not None:
            wq, ws, wz = w.values
        else:
            wq = b.const(w.codes, dtype=w.dtype)
            ws = b.const(w.scale)
            wz = None if w.zero_point is None else b.const(w.zero_point, dtype=w.dtype)
        if w.zero_point is not None and not np.any(w.zero_point):
            wz = None
        return wq, ws, wz

    def bias_value(self, b: Builder, lin: QuantLinear) -> Value | None:
        if lin.bias_value is not None or lin.bias is None:
            return lin.bias_value
        return b.const(lin.bias.astype(np.float32))

    def emit(self, b: Builder, lin: QuantLinear, kernel: str) -> Value:
        """`kernel` "integer": Mul(Cast(MatMulInteger), f32(a_s * w_s)) (+ bias)."""
        bias = self.bias_value(b, lin)
        wq, ws, wz = self.weight_values(b, lin)
        act = lin.act
        assert act is not None
        codes, zp = self.unsigned(b, act)
        acc = b.MatMulInteger(codes, wq, zp, wz)
        if act.scale.const is not None:  # f32(a_s * w_s), rounded once as the kernels do
            scale = b.const((np.float32(act.scale.const) * lin.weight.scale.astype(np.float32)).astype(np.float32))
        else:
            scale = b.Mul(act.scale, ws)
        y = b.Mul(b.Cast(acc, to="float32"), scale)
        return y if bias is None else b.Add(y, bias)

    def unsigned(self, b: Builder, act: QuantActivation) -> tuple[Value, Value | None]:
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
                                 meta={"created_by": self.pass_name})
            node.output.meta["quant"] = dict(act.codes.meta.get("quant", {}), dtype="u8", symmetric=False)
            self._u8[key] = (node.output, z_dq)
        return self._u8[key]

    def rules(self) -> list[Rule]:
        """The rules of this run: the linear rules, the embedding rule, and QLinearMatMul
        (first) with kernel "qlinear"."""
        rules = [_linear_rule(kind, self) for kind in ("matmul_add", "matmul", "gemm2", "gemm3")] + [_gather_rule()]
        if self.kernel == "qlinear":
            rules.insert(0, _qlinear_rule())
        return rules

    def after_rules(self) -> list[Rule]:
        """Rules run on what the first round made (a backend's fusions of its kernels)."""
        return []


def _shift128(zp: np.ndarray | None, scale: Value) -> np.ndarray:
    """An int8 zero point (0 when omitted, shaped like the scale) + 128 as uint8."""
    if zp is None:
        shape = scale.type.shape if scale.type.shape is not None else ()
        return np.full(tuple(shape), 128, np.uint8)
    return (np.asarray(zp).astype(np.int16) + 128).astype(np.uint8)


def _const_of(v: Value) -> np.ndarray:
    if v.const is None:
        raise RequantError(f"lowering: zero point %{v.name} is not a constant")
    return v.const


# -- rules -----------------------------------------------------------------------------------


def _linear_rule(kind: str, low: IntegerLowering) -> Rule:
    """kind: "matmul_add" (MatMul + bias Add, the bias fused), "matmul", "gemm2" or
    "gemm3" (Gemm nodes carry 2 or 3 inputs)."""
    with_bias = kind == "matmul_add"

    def check(m: Match) -> str | None:
        node = m.mm if with_bias else m.root
        if not with_bias and node.op == "MatMul" and _bias_of(node) is not None \
                and not isinstance(quant_linear(node, True), str):
            return "left to the bias-fusing rule"
        lin = quant_linear(node, with_bias)
        if isinstance(lin, str):
            return lin
        kernel = low.choose(lin)
        return kernel[1:] if kernel.startswith("!") else None

    def replace(b: Builder, m: Match) -> Value:
        node = m.mm if with_bias else m.root
        lin = quant_linear(node, with_bias)
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
        parts = dequantized_parts(m.table)
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
        node, codes, scale, zp = dequantized_parts(m.table)  # type: ignore[misc]
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
        lin = quant_linear(m.mm, False)
        if isinstance(lin, str):
            return lin
        if lin.act is None or lin.weight.block or lin.weight.dtype not in (dtypes.int8, dtypes.uint8):
            return "QLinearMatMul needs 8-bit activations and weights"
        if m.y_zp is None or _numel(m.y_scale) != 1 or _numel(m.y_zp) != 1:
            return "output quantization is not per tensor with a zero point"
        return None

    def replace(b: Builder, m: Match) -> Value:
        lin = quant_linear(m.mm, False)
        assert not isinstance(lin, str) and lin.act is not None
        w = lin.weight
        wz = w.zero_point if w.zero_point is not None else np.zeros(w.scale.shape, w.dtype.np)
        return b.QLinearMatMul(lin.act.codes, lin.act.scale, lin.act.zero_point or b.const(np.uint8(0)),
                               b.const(w.codes, dtype=w.dtype), b.const(w.scale), b.const(wz, dtype=w.dtype),
                               m.y_scale, m.y_zp)

    pattern = op.QuantizeLinear(op.MatMul(Var("a"), Var("b"), _bind="mm"), Var("y_scale"), Var("y_zp"))
    return Rule("lower_qlinear_matmul", pattern, replace, check)


# -- running a lowering -------------------------------------------------------------------------


def lower_with(graph: Graph, lowering: IntegerLowering, *, lower: bool = True) -> PassResult:
    """Apply `lowering`'s rules (unless `lower` is False), remove the Q/DQ nodes and
    constants nothing reads any more, and record what stayed (module docstring)."""
    stats: dict[str, int | float | str] = {"rewrites": 0}
    if lower:
        by_rule: dict[str, int] = {}
        for rules in (lowering.rules(), lowering.after_rules()):
            if not rules:
                continue
            result = rewrite(graph, rules)
            stats["rewrites"] += result.rewrites
            by_rule.update(result.by_rule)
        stats.update({f"rule:{k}": v for k, v in sorted(by_rule.items())})
        for new_op, count in _created_ops(graph, lowering).items():
            stats[f"op:{new_op}"] = count
    stats["nodes_removed"], stats["constants_removed"] = _remove_dead_qdq(graph)
    skipped = _skipped(graph, lowering, lower)
    graph.meta["lower_skipped"] = skipped
    stats["skipped"] = len(skipped)
    changed = bool(stats["rewrites"]) or bool(stats["nodes_removed"]) or bool(stats["constants_removed"])
    return PassResult(graph, changed, stats)


@graph_pass("lower_integer", "Q/DQ around MatMul/Gemm/Gather -> standard integer ops (MatMulInteger, "
                             "QLinearMatMul), exact", requires=(QUANTIZED,))
def lower_integer(graph: Graph, kernel: str = "integer") -> PassResult:
    """See the module docstring."""
    return lower_with(graph, IntegerLowering(graph, kernel))


def _created_ops(graph: Graph, lowering: IntegerLowering) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph:
        if str(node.meta.get("created_by", "")).startswith("lower_") and node.op in lowering.created_ops:
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


def _skipped(graph: Graph, low: IntegerLowering, lowered: bool) -> list[dict[str, str]]:
    """Every MatMul / Gemm / Gather still reading a dequantized or fake-quantized value,
    with the reason no rule lowered it."""
    out = []
    for node in graph:
        if node.op not in ("MatMul", "Gemm", "Gather", "Conv"):
            continue
        reads = [v for v in node.inputs if v is not None and v.producer is not None
                 and v.producer.op in ("DequantizeLinear", "FakeQuantize")]
        if not reads:
            continue
        if not lowered:
            reason = f"kernel '{low.kernel}' keeps Q/DQ for the runtime's own transformers"
        elif node.op == "Conv":
            reason = "Conv keeps Q/DQ (no integer Conv lowering; ONNX Runtime fuses DQ -> Conv -> Q itself)"
        elif node.op == "Gather":
            reason = _gather_rule().check(_fake_match(node)) or "not lowered"
        else:
            lin = quant_linear(node, False)
            reason = lin if isinstance(lin, str) else low.choose(lin).lstrip("!")
        out.append({"node": node.name or node.outputs[0].name, "op": node.op, "reason": str(reason)})
    return out


def _fake_match(node: Node) -> Match:
    return Match(node, {"table": node.inputs[0], "ids": node.inputs[1]}, {}, [node])

