"""Pass "quantize": insert quantize/dequantize nodes in front of the inputs of the ops
that run fast in low precision (MatMul, Gemm, Conv by default), leaving the float ops
that carry accuracy (LayerNorm, Softmax, GELU, residual Adds, attention) alone.

What it rewrites (the graph edits are in `quantize_insert`, smoothing in
`quantize_smooth`):
- a constant float weight W of MatMul / Gemm / Conv -> codes constant +
  `DequantizeLinear` (default int8, symmetric, one scale per output channel: MatMul
  W[K, N] axis 1; Gemm axis 1, or 0 with transB; Conv W[O, I, ...] axis 0; group
  schemes group along K);
- a float activation x read by such an op -> `QuantizeLinear` (shared by x's readers)
  + one `DequantizeLinear` per reader, one scale per tensor from calibration statistics
  (`stats`, from `requant.passes.calibration.collect_stats`) and a range `method`
  (default: uint8 asymmetric, min/max); with `dynamic=True`, `DynamicQuantizeLinear`
  (scale computed per call, no statistics); with `weight_only=True`, activations stay
  float;
- SmoothQuant smoothing (`smooth_alpha`, default 0.7): an activation x whose channel
  ranges are uneven (largest channel max|x_k| >= `smooth_min_ratio` = 4 x the median)
  becomes x / s for its quantized readers, whose weight rows are multiplied by s
  (exact in float; folded into x's norm / linear producer when nothing else reads x,
  else a `Mul(x, 1 / s)`: `quantize_smooth`); it needs per-channel min/max, i.e.
  `collect_stats(..., per_channel_axis=smoothing_axes(graph))` (without them the pass
  warns and counts `smoothing_unavailable`). Smoothed ranges are min/max of x / s;
  `smooth_scope="norm"` smooths only LayerNorm / RMSNorm outputs (on post-LN models the
  cheaper half of the multiplies; MiniLM: tools/bench/quantize_minilm.py);
- with `quantize_embeddings` (default on), a Gather from a constant float table (word
  embeddings: half of a BERT's bytes) -> `Gather(DequantizeLinear(table_q, scale,
  axis=0))`, int8 with one scale per row (`embedding_scheme`);
- formats without ONNX Q/DQ (fp4_e2m1, FloatFormat, MXFP4, NVFP4) -> requant's
  `FakeQuantize` (simulation); fp8 uses QuantizeLinear/DequantizeLinear to fp8.
Every value holding codes or dequantized values gets `meta["quant"] =
scheme.to_attrs()`; quantized activations also `meta["quant_range"]` (method, lo, hi).

What it leaves float, recording `{"node", "op", "reason"}` in
`graph.meta["quant_skipped"]`: a MatMul whose weight is not a constant (attention's
Q @ K^T and P @ V: "weight not constant"), ops matching an `exclude` glob (against the
node's name, its `meta["source"]` module path, or its first output's name), activations
without calibration statistics, non-float operands, inputs already quantized.
`ScaledDotProductAttention` is never a candidate. Static activation quantization with
`stats=None` raises (a target must calibrate, or ask for weight_only / dynamic).

Options (validated): weight_scheme / activation_scheme / embedding_scheme take a
`QuantScheme`, a `parse_scheme` name ("int8-channel", "uint8", "int4-g32", "fp8_e4m3",
"mxfp4", "nvfp4", ...) or None for the defaults above; `method` / `method_options` go
to `TensorStats.range`. Stats: ops_quantized, tensors_quantized, weights_quantized,
activations_quantized, embeddings_quantized, activations_smoothed (and
smoothed_into_norm / _linear / _mul: how), smoothing_unavailable, skipped, bytes_before / bytes_after (constant payloads at their
dtypes' widths).

How the defaults were chosen (tools/bench/minilm_int8.py: trained all-MiniLM-L6-v2,
64 docstring sentences x 64 tokens, calibrated on 32 others, quantize -> lower_quant ->
ONNX Runtime; cosine of mean-pooled embeddings vs fp32, mean / min, on the set used
for choosing and on 64 held-out sentences; size of the ONNX file vs fp32):

    variant                                    cos (chosen on)     cos (held out)     size
    defaults (u8 asym, minmax, smooth 0.7)     0.99801 / 0.99585   0.99808 / 0.99637  25.5%
    no smoothing                               0.99377 / 0.98358   0.99378 / 0.98838  25.5%
    no smoothing, percentile 99.99             0.91426 / 0.85650   0.91240 / 0.81675  25.5%
    no smoothing, mse                          0.99391 / 0.98696   0.99388 / 0.98938  25.5%
    no smoothing, entropy                      0.96031 / 0.91648   0.96363 / 0.92818  25.5%
    no smoothing, int8 symmetric activations   0.98472 / 0.95792   0.98435 / 0.96311  25.5%
    int8 symmetric activations, smooth 0.7     0.99633 / 0.99126   0.99626 / 0.99099  25.5%
    dynamic (DynamicQuantizeLinear)            0.99363 / 0.98774   0.99360 / 0.98870  25.5%
    defaults, embeddings float                 0.99802 / 0.99584   0.99811 / 0.99588  64.6%
    int8 weight-only                           0.99959 / 0.99924   0.99956 / 0.99934  25.8%
    ONNX Runtime quantize_dynamic (anchor)     0.96577 / 0.93880   0.96570 / 0.93929  25.3%
Percentile and entropy clip BERT's outlier channels (a few channels of the LayerNorm
and GELU outputs carry 10-25x the median range: 0.01% of the values is a whole
channel), which is why min/max wins; uint8 asymmetric fits GELU's [-0.17, x] range; a
smoothing alpha of 0.6-0.8 is flat (0.5: 0.9927, 0.3: 0.89, 1.0: 0.9919); smoothing
the attention-output inputs (channel ratio 2.4-3) gained nothing and cost a Mul each,
hence `smooth_min_ratio`.

Speed, same tool (batch 64 x 64 tokens, requant's ONNX Runtime settings; the 2-core
machine was shared with other jobs, so: wall clock with 2 threads, and process CPU
time with 1 thread; median ms):

    model                        wall, 2 threads   CPU, 1 thread   vs fp32      vs quantize_dynamic
    fp32                         334.6 - 336.7     631 - 676       1.00x        0.45-0.50x
    ORT quantize_dynamic         161.3 - 166.4     292 - 303       2.0-2.2x     1.00x
    requant defaults             169.0 - 169.2     303 - 318       2.0-2.1x     0.95-0.98x
    requant, no smoothing        164.1 - 164.2     306 - 313       2.0-2.2x     0.97-1.01x
Where the time goes (ORT profile, 1 thread): the 36 MatMulIntegerToFloat take ~128 ms
against fp32's ~231 ms of MatMul; the static QuantizeLinear nodes ~9 ms (what
quantize_dynamic's fused DynamicQuantizeMatMul spends inside the kernel); smoothing's
Muls ~10 ms; per-column weight scales cost ~3% of GEMM time over per-tensor ones. The
float rest (ORT's SkipLayerNormalization ~77 ms, attention masking Where/IsNaN ~20 ms)
is the same in every model. (requant's ORT sessions have since turned the
SkipLayerNormalization fusion off, `backends/onnx/runtime.SLOW_ORT_FUSIONS`, and the
cpu-int8 target smooths only LayerNorm outputs, `smooth_scope="norm"`: GELU-output
multiplies cost 2-6% on ORT for +0.0017 cosine.) (Measured before lower_quant fused attention blocks into ORT's
QAttention: since then requant's defaults run ahead of quantize_dynamic, 182.6 vs 189.8 ms
in tools/bench/quantize_minilm.py, README.)
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from requant.errors import RequantError
from requant.ir import dtypes
from requant.ir.graph import Graph, Node, Value
from requant.ir.quant_formats import QuantScheme, parse_scheme
from requant.passes.manager import PassResult, graph_pass
from requant.passes.quantize_insert import QuantEditor, constant_bytes, uses_qdq, with_axis
from requant.passes.quantize_smooth import SMOOTH_SCOPES, Smoothing, apply_smoothing, smoothing_axes, smoothing_factors

__all__ = ["quantize", "DEFAULT_OPS", "DEFAULT_METHOD", "resolve_scheme", "QuantizeConfig", "smoothing_axes",
           "smoothing_factors"]

logger = logging.getLogger(__name__)

DEFAULT_OPS: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
DEFAULT_METHOD = "minmax"
DEFAULT_SMOOTH_ALPHA = 0.7
DEFAULT_SMOOTH_MIN_RATIO = 4.0
_SUPPORTED_OPS = frozenset(DEFAULT_OPS)
_DEFAULT_WEIGHT = QuantScheme(dtypes.int8, "channel", axis=1)
_DEFAULT_ACTIVATION = QuantScheme(dtypes.uint8, "tensor", symmetric=False)
_DEFAULT_EMBEDDING = QuantScheme(dtypes.int8, "channel", axis=0)


def resolve_scheme(spec: QuantScheme | str | None, default: QuantScheme, what: str) -> QuantScheme:
    """A `QuantScheme` from an option value (a scheme, a `parse_scheme` name, or None)."""
    if spec is None:
        return default
    if isinstance(spec, QuantScheme):
        return spec
    if isinstance(spec, str):
        try:
            return parse_scheme(spec)
        except ValueError as exc:
            raise RequantError(f"quantize: {what}: {exc}") from None
    if isinstance(spec, Mapping):
        return QuantScheme.from_attrs(dict(spec))
    raise RequantError(f"quantize: {what} must be a QuantScheme or a scheme name, not {spec!r}")


@dataclass(frozen=True)
class QuantizeConfig:
    """The pass's options, resolved and checked."""

    weight: QuantScheme
    activation: QuantScheme | None  # None: weight-only
    embedding: QuantScheme | None  # None: tables stay float
    ops: tuple[str, ...]
    method: str
    method_options: dict[str, Any]
    exclude: tuple[str, ...]
    dynamic: bool

    @staticmethod
    def make(weight_scheme, activation_scheme, embedding_scheme, ops, method, method_options, exclude,
             weight_only: bool, dynamic: bool, quantize_embeddings: bool, stats) -> QuantizeConfig:
        weight = resolve_scheme(weight_scheme, _DEFAULT_WEIGHT, "weight_scheme")
        activation = None if weight_only else resolve_scheme(activation_scheme, _DEFAULT_ACTIVATION, "activation_scheme")
        if weight_only and dynamic:
            raise RequantError("quantize: weight_only and dynamic exclude each other (dynamic quantizes activations)")
        if activation is not None:
            if activation.granularity in ("channel", "group"):
                raise RequantError(f"quantize: activation_scheme {activation.describe()}: activations take one scale "
                                   f"per tensor (or a block format: mxfp4 / nvfp4)")
            if dynamic and (activation.dtype != dtypes.uint8 or activation.symmetric):
                raise RequantError(f"quantize: dynamic quantization is uint8 asymmetric (DynamicQuantizeLinear), "
                                   f"not {activation.describe()}")
        unknown = sorted(set(ops) - _SUPPORTED_OPS)
        if unknown:
            raise RequantError(f"quantize: cannot quantize op(s) {', '.join(unknown)}; supported: "
                               f"{', '.join(sorted(_SUPPORTED_OPS))} (Gather tables: quantize_embeddings=True)")
        embedding = resolve_scheme(embedding_scheme, _DEFAULT_EMBEDDING, "embedding_scheme") if quantize_embeddings else None
        if embedding is not None and not uses_qdq(embedding):
            raise RequantError(f"quantize: embedding_scheme {embedding.describe()}: tables take integer or fp8 schemes")
        if isinstance(exclude, str):
            exclude = (exclude,)
        return QuantizeConfig(weight, activation, embedding, tuple(ops), method, dict(method_options or {}),
                              tuple(exclude or ()), bool(dynamic))


@graph_pass("quantize", "insert Q/DQ (or FakeQuantize) in front of MatMul/Gemm/Conv inputs and embedding tables")
def quantize(
    graph: Graph,
    weight_scheme: QuantScheme | str | None = None,
    activation_scheme: QuantScheme | str | None = None,
    ops: Sequence[str] = DEFAULT_OPS,
    method: str = DEFAULT_METHOD,
    method_options: Mapping[str, Any] | None = None,
    stats: Mapping[str, Any] | None = None,
    exclude: Sequence[str] = (),
    weight_only: bool = False,
    dynamic: bool = False,
    quantize_embeddings: bool = True,
    embedding_scheme: QuantScheme | str | None = None,
    smooth_alpha: float | None = DEFAULT_SMOOTH_ALPHA,
    smooth_min_ratio: float = DEFAULT_SMOOTH_MIN_RATIO,
    smooth_scope: str = "all",
) -> PassResult:
    """See the module docstring."""
    if smooth_scope not in SMOOTH_SCOPES:
        raise RequantError(f"quantize: smooth_scope must be one of {', '.join(SMOOTH_SCOPES)}, got {smooth_scope!r}")
    cfg = QuantizeConfig.make(weight_scheme, activation_scheme, embedding_scheme, ops, method, method_options,
                              exclude, weight_only, dynamic, quantize_embeddings, stats)
    bytes_before = constant_bytes(graph)
    editor = QuantEditor(graph)
    skipped: list[dict[str, str]] = []
    counts = {"ops_quantized": 0, "weights_quantized": 0, "activations_quantized": 0, "embeddings_quantized": 0,
              "activations_smoothed": 0}
    plans = {id(n): _plan(n, cfg, stats) for n in graph if n.op in cfg.ops}
    smooth: dict[int, Smoothing] = {}
    if smooth_alpha is not None and cfg.activation is not None and not cfg.dynamic:
        factors, missing = smoothing_factors(graph, plans, stats or {}, float(smooth_alpha), float(smooth_min_ratio),
                                             smooth_scope)
        smooth = apply_smoothing(graph, factors, {k for k, p in plans.items() if not isinstance(p, str)})
        counts["smoothing_unavailable"] = len(missing)
        if missing:
            logger.warning("quantize: %d activation(s) not smoothed (e.g. %%%s): no per-channel statistics; "
                           "calibrate with collect_stats(..., per_channel_axis=smoothing_axes(graph))",
                           len(missing), missing[0])
    counts["activations_smoothed"] = len(smooth)
    for how in ("norm", "linear", "mul"):
        counts[f"smoothed_into_{how}"] = sum(1 for sm in smooth.values() if sm.how == how)
    for node in list(graph):
        if node.op in cfg.ops:
            _quantize_op(node, plans[id(node)], cfg, stats or {}, editor, counts, skipped, smooth)
        elif node.op == "Gather" and cfg.embedding is not None:
            _quantize_embedding(node, cfg, editor, counts, skipped)
    editor.drop_unused()
    graph.meta["quant_skipped"] = skipped
    for entry in skipped:
        logger.debug("quantize: %s (%s) stays float: %s", entry["node"], entry["op"], entry["reason"])
    tensors = counts["weights_quantized"] + counts["activations_quantized"] + counts["embeddings_quantized"]
    out = dict(counts, tensors_quantized=tensors, skipped=len(skipped), bytes_before=bytes_before,
               bytes_after=constant_bytes(graph))
    return PassResult(graph, tensors > 0, out)


# -- planning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    index: int
    role: str  # "weight" | "activation"
    scheme: QuantScheme


def _label(node: Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs else node.op)


def _excluded(node: Node, patterns: tuple[str, ...]) -> str | None:
    keys = [k for k in (node.name, node.meta.get("source"), node.outputs[0].name if node.outputs else None) if k]
    for pat in patterns:
        for key in keys:
            if fnmatch.fnmatchcase(str(key), pat):
                return f"excluded by pattern '{pat}' (matches '{key}')"
    return None


def _weight_axes(node: Node, w: Value) -> tuple[int, int] | str:
    """(channel axis, group axis) of the weight operand, or why there is none."""
    rank = w.type.rank
    if rank is None:
        return f"weight %{w.name} has unknown rank"
    if node.op == "MatMul":
        if rank < 2:
            return f"weight %{w.name} is {rank}-D (a vector product)"
        return rank - 1, rank - 2
    if node.op == "Gemm":
        return (0, 1) if node.attrs.get("transB", 0) else (1, 0)
    return 0, 1  # Conv W[O, I/g, k...]: per output channel; groups along input channels


def _plan(node: Node, cfg: QuantizeConfig, stats: Mapping[str, Any] | None) -> list[_Input] | str:
    """Which inputs to quantize and how, or the reason the node stays float."""
    reason = _excluded(node, cfg.exclude)
    if reason:
        return reason
    ins = node.inputs
    x, w = ins[0], ins[1] if len(ins) > 1 else None
    if x is None or w is None:
        return "an operand is omitted"
    for v in (x, w):
        if v.producer is not None and v.producer.op in ("DequantizeLinear", "FakeQuantize"):
            return f"input %{v.name} is already quantized ({v.producer.op})"
        if not v.dtype.is_float:
            return f"operand %{v.name} is {v.dtype}, not float"
    if w.const is None:
        what = "an activation" if x.const is None else "not a constant"
        return f"weight not constant: %{w.name} is {what} (activation x activation products stay float)"
    if x.const is not None:
        return "both operands are constants (fold them with fold_constants)"
    axes = _weight_axes(node, w)
    if isinstance(axes, str):
        return axes
    wscheme = with_axis(cfg.weight, *axes)
    if wscheme.granularity == "group" and node.op == "Conv":
        return "group-wise weight schemes are for MatMul/Gemm weights"
    plan = [_Input(1, "weight", wscheme)]
    if cfg.activation is None:
        return plan
    act = cfg.activation
    if act.is_block_format:
        act = replace(act, axis=-1 if node.op != "Conv" else 1)
    if node.op == "Gemm" and node.attrs.get("transA", 0) and act.is_block_format:
        return "block formats on a transposed Gemm activation are not supported"
    if not cfg.dynamic and act.granularity != "mx":
        if stats is None:
            raise RequantError(
                f"quantize: {node.label}: static activation quantization needs calibration statistics: pass "
                f"stats=collect_stats(graph, batches) (requant.passes.calibration), or weight_only=True, "
                f"or dynamic=True")
        if x.name not in stats:
            return f"no calibration statistics for activation %{x.name}"
    return plan + [_Input(0, "activation", act)]


def _activation_range(stat: Any, cfg: QuantizeConfig, scheme: QuantScheme) -> tuple[float, float]:
    opts = dict(cfg.method_options)
    if cfg.method in ("minmax", "percentile", "entropy"):
        opts.setdefault("symmetric", scheme.symmetric)
    elif cfg.method == "mse":
        opts.setdefault("dtype", scheme.dtype)
        opts.setdefault("symmetric", scheme.symmetric)
    try:
        lo, hi = stat.range(cfg.method, **opts)
    except RequantError:
        raise
    except Exception as exc:
        raise RequantError(f"quantize: range method '{cfg.method}' failed: {exc}") from exc
    return float(lo), float(hi)


def _quantize_op(node: Node, plan: list[_Input] | str, cfg: QuantizeConfig, stats: Mapping[str, Any],
                 editor: QuantEditor, counts: dict[str, int], skipped: list[dict[str, str]],
                 smooth: dict[int, Smoothing]) -> None:
    if isinstance(plan, str):
        skipped.append({"node": _label(node), "op": node.op, "reason": plan})
        return
    x0 = node.inputs[0]
    sm = smooth.get(id(x0)) if x0 is not None else None
    for item in plan:
        if item.role == "weight":
            editor.weight(node, item.index, item.scheme)
            counts["weights_quantized"] += 1
            continue
        x = node.inputs[item.index]
        assert x is not None
        if cfg.dynamic:
            editor.dynamic(node, item.index, item.scheme)
        elif item.scheme.granularity == "mx":
            editor.simulated(node, item.index, item.scheme, None, None)
        else:
            lo, hi = (sm.lo, sm.hi) if sm is not None else _activation_range(stats[x.name], cfg, item.scheme)
            if uses_qdq(item.scheme):
                dq = editor.activation(node, item.index, item.scheme, lo, hi)
            else:
                dq = editor.simulated(node, item.index, item.scheme, lo, hi)
            dq.meta["quant_range"] = {"method": cfg.method, "lo": lo, "hi": hi}
        counts["activations_quantized"] += 1
    counts["ops_quantized"] += 1


def _quantize_embedding(node: Node, cfg: QuantizeConfig, editor: QuantEditor, counts: dict[str, int],
                        skipped: list[dict[str, str]]) -> None:
    table = node.inputs[0]
    if table is None or table.const is None or not table.dtype.is_float:
        return  # not an embedding lookup: no candidate, nothing to record
    reason = _excluded(node, cfg.exclude)
    if reason is None and node.attrs.get("axis", 0) not in (0, -table.type.rank):
        reason = "Gather along an axis other than 0 (not a row lookup)"
    if reason is None and table.type.rank != 2:
        reason = f"table %{table.name} is {table.type.rank}-D, not a [rows, features] embedding"
    if reason is not None:
        skipped.append({"node": _label(node), "op": node.op, "reason": reason})
        return
    assert cfg.embedding is not None
    editor.weight(node, 0, with_axis(cfg.embedding, 0, 1))
    counts["embeddings_quantized"] += 1
