"""Pass "quantize": insert quantize/dequantize nodes in front of the inputs of the ops
that run fast in low precision (MatMul, Gemm, Conv by default), leaving the float ops
that carry accuracy (LayerNorm, Softmax, GELU, residual Adds, attention) alone.

What it rewrites (the graph edits are in `quantize_insert`; SmoothQuant runs before it,
as its own pass, passes/smoothquant.py):
- a constant float weight W of MatMul / Gemm / Conv -> codes constant +
  `DequantizeLinear` (default int8, symmetric, one scale per output channel: MatMul
  W[K, N] axis 1; Gemm axis 1, or 0 with transB; Conv W[O, I, ...] axis 0; group
  schemes group along K);
- a float activation x read by such an op -> `QuantizeLinear` (shared by x's readers)
  + one `DequantizeLinear` per reader, one scale per tensor from calibration statistics
  (`stats`, from `requant.passes.calibration.collect_stats`) and a range `method`
  (default: uint8 asymmetric, min/max); with `dynamic=True`, `DynamicQuantizeLinear`
  (scale computed per call, no statistics); with a per-token activation scheme
  ("int4-token": one scale per row from the data, simulated by `FakeQuantize`), no
  statistics either, and with `method="mse"` each activation's clip ratio searched on
  `batches` (passes/token_clip.py); with `weight_only=True`, activations stay float;
- with `quantize_embeddings` (default on), a Gather from a constant float table (word
  embeddings: half of a BERT's bytes) -> `Gather(DequantizeLinear(table_q, scale,
  axis=0))`, int8 with one scale per row (`embedding_scheme`);
- with `feature_maps=True` (convolutional networks on integer kernels), also the
  outputs of integer convs, residual Adds and MaxPools (after a ReLU / ReLU6 the
  quantizer absorbs) -> one shared QuantizeLinear + a DequantizeLinear per reader, and
  each integer conv's float bias -> int32 codes at the accumulator's scale
  (passes/quantize_feature_maps.py says which values and why); with
  `min_conv_reduction=K`, a dense (group 1) Conv with a spatial kernel whose outputs
  each sum fewer than K products (input channels x kernel area) stays float: the
  3 x 3 x 3 image stem of MobileNet / EfficientNet runs faster in ONNX Runtime's float
  kernel than in its uint8 one, which unfolds so short a reduction inefficiently
  (`python -m requant.tools.bench.vision --convs`); a 7 x 7 x 3 stem and 1 x 1 convs do
  not; with `float_depthwise_entry=True`, a depthwise Conv whose input is a float map
  (no integer conv or op writes its codes) stays float, so that the integer region
  starts at the dense conv after it (`_float_depthwise_entries`);
- formats without ONNX Q/DQ (fp4_e2m1, FloatFormat, MXFP4, NVFP4) -> requant's
  `FakeQuantize` (simulation); fp8 uses QuantizeLinear/DequantizeLinear to fp8.
Weight codes are rounded to nearest (`weight_method="rtn"`), or, with
`weight_method="gptq"`, chosen by GPTQ (passes/gptq.py) for MatMul weights with integer
or NVFP4 / MXFP4 schemes (those simulated formats: the weight becomes its dequantized
GPTQ values, a constant), from the Hessians of their inputs over the calibration `batches` (run on
`runner`); `gptq_damp` / `gptq_act_order` / `gptq_clip` are its damping, activation
order and scale search ("mse": each scale's range shrunk to the least input-weighted
rounding error; "minmax": the weights' range). Other
weights (Gemm, Conv, float formats) stay round-to-nearest.
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
activations_quantized, embeddings_quantized, skipped, bytes_before / bytes_after
(constant payloads at their dtypes' widths); with `feature_maps`, also
feature_maps_quantized and biases_quantized; with GPTQ, weights_gptq and
gptq_error_ratio (the mean over those weights of GPTQ's Hessian-weighted error over
round-to-nearest's).

Why these defaults (uint8 asymmetric activations, min/max ranges, int8 per-channel
weights, int8 per-row embedding tables): BERT-style models have a few LayerNorm and GELU
output channels with 10-25x the median range, so 0.01% of the values is a whole channel
and percentile or entropy ranges clip it; uint8 asymmetric fits GELU's [-0.17, x] range.
`python -m requant.tools.bench.minilm_int8` measures each alternative on
all-MiniLM-L6-v2 (README, "Quantizing all-MiniLM-L6-v2").
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
from requant.passes.conditions import QUANTIZED
from requant.passes.manager import PassResult, graph_pass
from requant.passes.quantize_feature_maps import (
    FeatureMapPoint,
    feature_map_points,
    integer_hard_activation,
    point_readers,
    quantize_conv_bias,
)
from requant.passes.quantize_insert import QuantEditor, constant_bytes, uses_qdq, with_axis

__all__ = ["quantize", "DEFAULT_OPS", "DEFAULT_METHOD", "WEIGHT_METHODS", "resolve_scheme", "QuantizeConfig"]

logger = logging.getLogger(__name__)

DEFAULT_OPS: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
DEFAULT_METHOD = "minmax"
WEIGHT_METHODS = ("rtn", "gptq")
TOKEN_METHODS = ("minmax", "mse")
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
    min_conv_reduction: int = 0  # dense convs summing fewer terms per output stay float
    float_depthwise_entry: bool = False  # depthwise convs reading a float map stay float

    @staticmethod
    def make(weight_scheme, activation_scheme, embedding_scheme, ops, method, method_options, exclude,
             weight_only: bool, dynamic: bool, quantize_embeddings: bool, stats) -> QuantizeConfig:
        weight = resolve_scheme(weight_scheme, _DEFAULT_WEIGHT, "weight_scheme")
        if weight.granularity == "token":
            raise RequantError(f"quantize: weight_scheme {weight.describe()}: per-token scales are for activations")
        activation = None if weight_only else resolve_scheme(activation_scheme, _DEFAULT_ACTIVATION, "activation_scheme")
        if weight_only and dynamic:
            raise RequantError("quantize: weight_only and dynamic exclude each other (dynamic quantizes activations)")
        if activation is not None:
            if activation.granularity in ("channel", "group"):
                raise RequantError(f"quantize: activation_scheme {activation.describe()}: activations take one scale "
                                   f"per tensor (or a block format: mxfp4 / nvfp4, or per token: int4-token)")
            if activation.granularity == "token" and (dynamic or method not in TOKEN_METHODS):
                raise RequantError(f"quantize: activation_scheme {activation.describe()} computes its scales at run "
                                   f"time: method must be one of {', '.join(TOKEN_METHODS)} (the clip ratio: none, "
                                   f"or searched on the batches), not {method!r}{' with dynamic=True' * dynamic}")
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


@graph_pass("quantize", "insert Q/DQ (or FakeQuantize) in front of MatMul/Gemm/Conv inputs and embedding tables",
            ensures=(QUANTIZED,), pipeline_inputs=("stats", "batches"))
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
    feature_maps: bool = False,
    min_conv_reduction: int = 0,
    float_depthwise_entry: bool = False,
    weight_method: str = "rtn",
    batches: Any = None,
    runner: str = "auto",
    gptq_damp: float = 0.01,
    gptq_act_order: bool = True,
    gptq_clip: str = "mse",
) -> PassResult:
    """See the module docstring."""
    cfg = QuantizeConfig.make(weight_scheme, activation_scheme, embedding_scheme, ops, method, method_options,
                              exclude, weight_only, dynamic, quantize_embeddings, stats)
    cfg = replace(cfg, min_conv_reduction=int(min_conv_reduction), float_depthwise_entry=bool(float_depthwise_entry))
    bytes_before = constant_bytes(graph)
    editor = QuantEditor(graph)
    skipped: list[dict[str, str]] = []
    counts = {"ops_quantized": 0, "weights_quantized": 0, "activations_quantized": 0, "embeddings_quantized": 0}
    plans = {id(n): _plan(n, cfg, stats) for n in graph if n.op in cfg.ops}
    if weight_method not in WEIGHT_METHODS:
        raise RequantError(f"quantize: weight_method must be one of {', '.join(WEIGHT_METHODS)}, got {weight_method!r}")
    if weight_method == "gptq":
        counts.update(_gptq_codes(graph, plans, editor, batches, runner, gptq_damp, gptq_act_order, gptq_clip))
    points = _feature_map_plan(graph, plans, cfg, skipped) if feature_maps else []
    if feature_maps and cfg.float_depthwise_entry:
        points = _float_depthwise_entries(graph, plans, cfg, points)
    ranges = _point_ranges(points, cfg, stats or {}, skipped)
    token_clips = _token_clips(graph, plans, cfg, batches, runner)
    for node in list(graph):
        if node.op in cfg.ops:
            _quantize_op(node, plans[id(node)], cfg, stats or {}, editor, counts, skipped, ranges, token_clips)
        elif node.op == "Gather" and cfg.embedding is not None:
            _quantize_embedding(node, cfg, editor, counts, skipped)
    if feature_maps:
        counts.update(_quantize_feature_maps(graph, points, ranges, plans, cfg, editor, skipped))
    editor.drop_unused()
    graph.meta["quant_skipped"] = skipped
    for entry in skipped:
        logger.debug("quantize: %s (%s) stays float: %s", entry["node"], entry["op"], entry["reason"])
    tensors = counts["weights_quantized"] + counts["activations_quantized"] + counts["embeddings_quantized"] + \
        counts.get("feature_maps_quantized", 0)
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
    short = _short_conv(node, w, cfg.min_conv_reduction)
    if short:
        return short
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
    if act.is_block_format or act.granularity == "token":
        act = replace(act, axis=-1 if node.op != "Conv" else 1)
    if node.op == "Gemm" and node.attrs.get("transA", 0) and act.is_block_format:
        return "block formats on a transposed Gemm activation are not supported"
    if not cfg.dynamic and act.granularity not in ("mx", "token"):
        if stats is None:
            raise RequantError(
                f"quantize: {node.label}: static activation quantization needs calibration statistics: pass "
                f"stats=collect_stats(graph, batches) (requant.passes.calibration), or weight_only=True, "
                f"or dynamic=True")
        if x.name not in stats:
            return f"no calibration statistics for activation %{x.name}"
    return plan + [_Input(0, "activation", act)]


def _short_conv(node: Node, w: Value, minimum: int) -> str | None:
    """Why a dense (group 1) Conv with a spatial kernel whose outputs each sum fewer than
    `minimum` products (input channels x kernel area: an image stem's 3 x 3 x 3) stays
    float, or None. 1 x 1 convs are matrix products and exempt (no im2col)."""
    if node.op != "Conv" or minimum <= 0 or int(node.attrs.get("group", 1)) != 1 or w.type.shape is None:
        return None
    area = 1
    for d in w.type.shape[2:]:
        area *= int(d)
    reduction = area * int(w.type.shape[1])
    if area == 1 or reduction >= minimum:
        return None
    return (f"Conv sums {reduction} products per output, fewer than min_conv_reduction={minimum} "
            f"(an image stem: the runtime's float kernel is faster there)")


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


def _gptq_codes(graph: Graph, plans: Mapping[int, list[_Input] | str], editor: QuantEditor, batches: Any,
                runner: str, damp: float, act_order: bool, clip: str) -> dict[str, int | float]:
    """GPTQ's codes for every planned MatMul weight with an integer Q/DQ scheme (or the
    dequantized values for an FP4 block scheme), handed to the editor (passes/gptq.py);
    {weights_gptq, gptq_error_ratio}."""
    from requant.passes.gptq import gptq_weight_codes

    if batches is None:
        raise RequantError("quantize: weight_method='gptq' needs calibration batches (batches=[...]) for the "
                           "Hessians of the linears' inputs")
    weights = [(node, item.index, item.scheme) for node in graph if node.op == "MatMul"
               and not isinstance(plan := plans.get(id(node), "-"), str)
               for item in plan if item.role == "weight"
               and (uses_qdq(item.scheme) and item.scheme.dtype.is_integer or item.scheme.is_block_format)]
    found, ratio = gptq_weight_codes(graph, weights, batches, runner=runner, damp=damp, act_order=act_order,
                                     clip=clip)
    editor.precomputed.update({key: v for key, v in found.items() if isinstance(v, tuple)})
    editor.precomputed_values.update({key: v for key, v in found.items() if not isinstance(v, tuple)})
    return {"weights_gptq": len(found), "gptq_error_ratio": ratio}


def _token_clips(graph: Graph, plans: Mapping[int, list[_Input] | str], cfg: QuantizeConfig, batches: Any,
                 runner: str) -> dict[str, float]:
    """{activation: clip ratio} for per-token activations with method "mse"
    (passes/token_clip.py); empty otherwise (every ratio 1)."""
    if cfg.activation is None or cfg.activation.granularity != "token" or cfg.method != "mse":
        return {}
    if batches is None:
        raise RequantError("quantize: per-token activations with method='mse' search their clip ratios on the "
                           "calibration batches: pass batches=[...] (or method='minmax': no clipping)")
    from requant.passes.token_clip import search_token_clips

    schemes = {node.inputs[item.index].name: item.scheme for node in graph
               if not isinstance(plan := plans.get(id(node), "-"), str) for item in plan if item.role == "activation"}
    return search_token_clips(graph, batches, schemes, runner=runner)


def _quantize_op(node: Node, plan: list[_Input] | str, cfg: QuantizeConfig, stats: Mapping[str, Any],
                 editor: QuantEditor, counts: dict[str, int], skipped: list[dict[str, str]],
                 ranges: Mapping[str, tuple[float, float]] | None = None,
                 token_clips: Mapping[str, float] | None = None) -> None:
    if isinstance(plan, str):
        skipped.append({"node": _label(node), "op": node.op, "reason": plan})
        return
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
        elif item.scheme.granularity == "token":
            clip = (token_clips or {}).get(x.name, 1.0)
            dq = editor.simulated(node, item.index, item.scheme, None, None, clip=clip)
            dq.meta["quant_range"] = {"method": cfg.method, "clip": clip}
        else:
            if ranges and x.name in ranges:  # a feature-map point: one range for all its readers
                lo, hi = ranges[x.name]
            else:
                lo, hi = _activation_range(stats[x.name], cfg, item.scheme)
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


# -- feature maps (convolutional networks) ------------------------------------------------------


def _integer_conv(plan: list[_Input] | str, cfg: QuantizeConfig) -> bool:
    """Whether a Conv's plan gives it static 8-bit integer activation codes per tensor."""
    if isinstance(plan, str) or cfg.dynamic:
        return False
    act = next((item.scheme for item in plan if item.role == "activation"), None)
    return act is not None and uses_qdq(act) and act.dtype in (dtypes.uint8, dtypes.int8) \
        and act.granularity == "tensor"


def _feature_map_plan(graph: Graph, plans: Mapping[int, list[_Input] | str], cfg: QuantizeConfig,
                      skipped: list[dict[str, str]]) -> list[FeatureMapPoint]:
    if cfg.activation is None or "Conv" not in cfg.ops:
        return []
    if cfg.activation.dtype != dtypes.uint8:
        # signed maps: ONNX Runtime 1.32's Q/DQ propagation through a Reshape and its
        # S8 -> U8 rewrite make a QuantizeLinear it then refuses (output_dtype int8 with a
        # uint8 zero point); its x86 integer kernels take unsigned activations anyway
        skipped.append({"node": graph.name or "graph", "op": "Conv", "reason": (
            f"feature maps are quantized for uint8 activation codes only, not {cfg.activation.dtype}: "
            f"convolutions keep float outputs")})
        return []
    return feature_map_points(graph, lambda n: _integer_conv(plans.get(id(n), ""), cfg),
                              absorb_activations=not cfg.activation.symmetric)


def _is_depthwise(node: Node) -> bool:
    """A Conv with one input channel per group and one output channel per group (its
    constant weight [C, 1, ...] with group C)."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    group = int(node.attrs.get("group", 1))
    return node.op == "Conv" and group > 1 and w is not None and w.const is not None \
        and w.const.shape[0] == group and w.const.shape[1] == 1


def _float_depthwise_entries(graph: Graph, plans: dict[int, list[_Input] | str], cfg: QuantizeConfig,
                             points: list[FeatureMapPoint]) -> list[FeatureMapPoint]:
    """With `float_depthwise_entry`: a depthwise Conv whose input is not a feature-map
    point (a float map: a float image stem's output, a LayerNorm's, a residual stream
    summed in float) stays float, and the points are found again without it. Its integer
    form would start an integer region there, and on ONNX Runtime converting the float
    map to channels-last codes (reorder, quantize, transpose) costs more than its uint8
    depthwise kernel saves over the float one; left float, the region starts at the next
    dense conv. Each round demotes the first such conv in graph order, whose points
    downstream then change."""
    while True:
        is_point = {id(p.value) for p in points}
        entry = next((n for n in graph if _is_depthwise(n) and _integer_conv(plans.get(id(n), ""), cfg)
                      and id(n.inputs[0]) not in is_point), None)
        if entry is None:
            return points
        reason = ("depthwise Conv reading a float map stays float (float_depthwise_entry: quantizing the map "
                  "costs more than the integer depthwise kernel saves)")
        plans[id(entry)] = reason
        points = _feature_map_plan(graph, plans, cfg, [])


def _point_ranges(points: list[FeatureMapPoint], cfg: QuantizeConfig, stats: Mapping[str, Any],
                  skipped: list[dict[str, str]]) -> dict[str, tuple[float, float]]:
    """{point name: (lo, hi)}; a MaxPool point takes its input's range (shared codes)."""
    ranges: dict[str, tuple[float, float]] = {}
    assert cfg.activation is not None or not points
    for p in points:
        if p.same_as is not None:
            if p.same_as.name in ranges:
                ranges[p.value.name] = ranges[p.same_as.name]
        elif p.value.name in stats:
            ranges[p.value.name] = _activation_range(stats[p.value.name], cfg, cfg.activation)
        else:
            skipped.append({"node": _label(p.node), "op": p.node.op,
                            "reason": f"no calibration statistics for feature map %{p.value.name}"})
    return ranges


def _quantize_feature_maps(graph: Graph, points: list[FeatureMapPoint], ranges: Mapping[str, tuple[float, float]],
                           plans: Mapping[int, list[_Input] | str], cfg: QuantizeConfig, editor: QuantEditor,
                           skipped: list[dict[str, str]]) -> dict[str, int]:
    """Every float reader of each point reads it through the point's Q/DQ; integer convs'
    biases become int32 codes (passes/quantize_feature_maps.py)."""
    assert cfg.activation is not None or not points
    act = cfg.activation
    replaced: dict[int, Value | None] = {}  # HardSwish: its product; HardSigmoid: None (codes already)
    for p in points:
        x = p.node.inputs[0] if p.node.inputs else None
        if p.node.op in ("HardSwish", "HardSigmoid") and p.value.name in ranges and x is not None \
                and x.name in ranges:
            lo_x, hi_x = ranges[x.name]
            new = integer_hard_activation(graph, p.node, lambda n, i: editor.activation(n, i, act, lo_x, hi_x))
            if new is not None:
                replaced[id(p.value)] = new if new.dtype.is_float else None
    maps = 0
    for p in points:
        if p.value.name not in ranges:
            continue
        value = replaced.get(id(p.value), p.value)
        if value is None:
            continue
        lo, hi = ranges[p.value.name]
        readers = point_readers(value)
        for reader, index in readers:
            dq = editor.activation(reader, index, cfg.activation, lo, hi)
            dq.meta["quant_range"] = {"method": cfg.method, "lo": lo, "hi": hi}
        maps += bool(readers)
    biases = 0
    # a conv with an output point runs as an integer kernel: its bias joins the accumulator
    for node in [p.node for p in points if p.kind == "conv" and p.value.name in ranges]:
        if _integer_conv(plans.get(id(node), ""), cfg):
            reason = quantize_conv_bias(graph, node)
            if reason is None:
                biases += 1
            elif reason != "no bias":
                skipped.append({"node": _label(node), "op": node.op, "reason": f"bias stays float: {reason}"})
    return {"feature_maps_quantized": maps, "biases_quantized": biases, "hard_activations_integer": len(replaced)}
