"""Pass "intonly": a quantized (or float) transformer graph -> integer-only inference, after
I-ViT (Li & Gu, ICCV 2023, arXiv 2207.01405) with I-BERT's polynomial forms (Kim et al.,
ICML 2021, arXiv 2101.01321) as an alternative. Between the input quantizers and the
output dequantizers every tensor is an integer and every op an integer op.

What it rewrites into what (passes/intonly_convert.py has the rules per op):
- every float rescale (a DequantizeLinear -> ... -> QuantizeLinear chain, a matmul's
  accumulator into the next layer's input, a residual branch into the residual stream)
  -> `Requantize` / `DyadicAdd`: the real factor r = S_in / S_out as multiplier * 2^-shift
  with (m, e) = frexp(r), multiplier = round(m 2^31), shift = 31 - e, rounding half up,
  per tensor or per channel; biases and zero points ride along as one integer offset;
- MatMul / patch-embedding Conv with int8 weights -> `MatMulInteger` (u8 x s8, int32);
- Softmax and the softmax inside ScaledDotProductAttention -> `Shiftmax` (I-ViT: exp by
  shifts, x log2 e ~ x + x/2 - x/16 and 2^f ~ 1 + f/2, one integer division per row) or
  `PolySoftmax` (I-BERT: exp(p) ~ 0.3585 (p + 1.353)^2 + 0.344 on p in (-ln2, 0]);
  attention probabilities in uint8 with scale 2^-8, then a u8 x s8 matmul with V; a
  constant float attention mask (Swin's relative position bias and shifted-window -100s)
  is added to the int32 scores as codes at their scale;
- ReduceMean over static axes (global average pooling) -> an int32 ReduceSum of the
  codes, the scale divided by the count;
- Gelu -> `ShiftGELU` (x sigmoid(1.702 x), the sigmoid from two ShiftExps), `PolyGELU`
  (I-BERT's second-order erf) or `TanhGELU` (x sigmoid(1.5958 x + 0.0713548 x^3) with
  I-BERT's exp);
- LayerNormalization -> `ILayerNorm` (mean, sum of squares, integer square root by 10
  Newton steps from 2^16, scale sqrt(N)/2^30), gamma and beta folded into the next
  requantization as a per-channel multiplier and offset;
- residual Add -> `DyadicAdd` into int16 (I-ViT keeps the residual stream in 16 bits).
Scales come from the QuantizeLinear nodes of the quantize pass where it put them (the
inputs of linear layers) and from calibration ranges of the float values elsewhere
(min/max over `batches`, collected by the pass, or `stats` given). The approximation
family (`approx`: "shift" = I-ViT, "poly" = I-BERT, "fine" = requant's: I-BERT's exp and
the tanh form of GELU; passes/intonly_approx.py) is one choice per model; "auto" converts
with each, runs them on the calibration batches and keeps the one closest (mean 1 -
cosine over the outputs) to the graph it was given.

After the rewrite, the check (passes/intonly_check.py) lists every node that still has
a float operand, the boundary (input quantizers, output dequantizers) apart; with
`strict=True` any other is an error naming it, and the pass ensures "integer-only".
Ops with no integer form (e.g. grouped-query attention, RMSNorm) otherwise run in float
between a DequantizeLinear and a QuantizeLinear and are named in the stats.

Stats: family, integer_ops (count), float_ops (count outside the boundary), float_op_names,
boundary, integer_op_types, fallbacks, and with approx="auto" one error:<family> each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph
from requant.passes.conditions import CANONICAL_LINEARS
from requant.passes.dce import dead_code_elimination
from requant.passes.intonly_approx import FAMILIES
from requant.passes.intonly_check import INTEGER_ONLY, float_op_report
from requant.passes.intonly_convert import DATA_MOVEMENT, ConvertOptions, IntegerConverter
from requant.passes.manager import PassResult, graph_pass

__all__ = ["intonly", "convert_integer_only", "stats_values", "APPROX_CHOICES"]

logger = logging.getLogger(__name__)

APPROX_CHOICES = (*FAMILIES, "auto")


def _ensures(strict: bool = False, **_: Any) -> tuple:
    return (INTEGER_ONLY,) if strict else ()


def stats_values(graph: Graph) -> list[str]:
    """The float values whose ranges the conversion reads: graph inputs and outputs of
    every node that is not pure data movement (data movement keeps its input's range)."""
    names = [v.name for v in graph.inputs if v.dtype.is_float]
    for node in graph:
        if node.op in DATA_MOVEMENT:
            continue
        names += [o.name for o in node.outputs if o.dtype.is_float]
    return names


def _ranges(graph: Graph, stats: Mapping[str, Any] | None, batches: Iterable[Any] | None,
            runner: str) -> dict[str, tuple[float, float]]:
    """{name: (lo, hi)} of the float values, from `stats` and, for what they lack, the batches."""
    out: dict[str, tuple[float, float]] = {}
    for name, s in (stats or {}).items():
        lo, hi = s.range("minmax", symmetric=False) if hasattr(s, "range") else s
        out[name] = (float(lo), float(hi))
    wanted = [n for n in stats_values(graph) if n not in out]
    if wanted and batches is not None:
        from requant.passes.calibration import collect_stats

        collected = collect_stats(graph, batches, values=wanted, runner=runner, histogram=False)
        for name, s in collected.items():
            if s.min is not None:
                out[name] = (float(s.min), float(s.max))
    return out


def convert_integer_only(graph: Graph, ranges: Mapping[str, tuple[float, float]], options: ConvertOptions) -> dict:
    """Convert `graph` in place; returns the stats (module docstring)."""
    converter = IntegerConverter(graph, ranges, options)
    converter.run()
    dead_code_elimination()(graph)
    report = float_op_report(graph)
    graph.meta["intonly"] = {"family": options.family.name, "boundary": report.boundary,
                             "float_ops": report.float_ops, "integer_ops": report.integer_ops,
                             "fallbacks": converter.fallbacks}
    return {
        "family": options.family.name,
        "integer_ops": sum(report.integer_ops.values()),
        "float_ops": len(report.float_ops),
        "float_op_names": "; ".join(report.float_ops) or "none",
        "boundary": "; ".join(report.boundary),
        "integer_op_types": ", ".join(f"{k} x{v}" for k, v in sorted(report.integer_ops.items())),
        "fallbacks": len(converter.fallbacks),
    }


def _error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Mean over outputs of 1 - cosine of the flattened float outputs."""
    errs = []
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64).ravel(), np.asarray(w, np.float64).ravel()
        if not np.issubdtype(w.dtype, np.floating) or not w.size:
            continue
        denom = np.linalg.norm(g) * np.linalg.norm(w)
        errs.append(0.0 if denom == 0 else 1.0 - float(g @ w) / denom)
    return float(np.mean(errs)) if errs else 0.0


def _choose_family(graph: Graph, ranges: Mapping[str, tuple[float, float]], options: ConvertOptions,
                   batches: Iterable[Any], runner: str) -> tuple[str, dict[str, float]]:
    """Convert a copy with each family, run it on the batches, return the best and the errors."""
    from requant.ir.runners import make_runner

    feeds = list(batches)
    reference = make_runner(graph, runner)
    want = [reference(f) for f in feeds]
    errors: dict[str, float] = {}
    for name, family in FAMILIES.items():
        candidate = graph.clone()
        convert_integer_only(candidate, ranges, ConvertOptions(**{**options.__dict__, "family": family}))
        run = make_runner(candidate, runner)
        errors[name] = float(np.mean([_error(run(f), w) for f, w in zip(feeds, want)]))
    best = min(errors, key=errors.get)
    logger.info("intonly: approx errors %s -> %s", errors, best)
    return best, errors


@graph_pass("intonly", "integer-only inference (I-ViT): Shiftmax / ShiftGELU / I-LayerNorm / dyadic requantization, "
                       "or I-BERT's polynomial forms; checks that no float op remains",
            requires=(CANONICAL_LINEARS,), ensures=_ensures, pipeline_inputs=("stats", "batches"))
def intonly(
    graph: Graph,
    approx: str = "shift",
    activations: str = "uint8",
    residual_bits: int = 16,
    stats: Mapping[str, Any] | None = None,
    batches: Iterable[Any] | None = None,
    runner: str = "auto",
    strict: bool = False,
) -> PassResult:
    """See the module docstring."""
    if approx not in APPROX_CHOICES:
        raise RequantError(f"intonly: approx must be one of {', '.join(APPROX_CHOICES)}, got {approx!r}")
    if activations not in ("uint8", "int8"):
        raise RequantError(f"intonly: activations must be 'uint8' or 'int8', got {activations!r}")
    if residual_bits not in (8, 16, 32):
        raise RequantError(f"intonly: residual_bits must be 8, 16 or 32, got {residual_bits!r}")
    before = float_op_report(graph)
    if before.integer_only:
        return PassResult(graph, False, {"float_ops": 0, "boundary": "; ".join(before.boundary)})
    batches = list(batches) if batches is not None else None
    ranges = _ranges(graph, stats, batches, runner)
    options = ConvertOptions(activations=activations, residual_bits=residual_bits)
    auto_errors: dict[str, float] = {}
    if approx == "auto":
        if not batches:
            raise RequantError("intonly: approx='auto' measures each family on calibration batches: pass batches=...")
        approx, auto_errors = _choose_family(graph, ranges, options, batches, runner)
    options = ConvertOptions(**{**options.__dict__, "family": FAMILIES[approx]})
    out = convert_integer_only(graph, ranges, options)
    out.update({f"error:{k}": v for k, v in auto_errors.items()})
    if strict and out["float_ops"]:
        raise RequantError(f"intonly: {out['float_ops']} float op(s) remain between the input quantizers and the "
                           f"output dequantizers: {out['float_op_names']}")
    return PassResult(graph, True, out)
