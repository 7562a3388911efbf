"""Pass "llm_fp4": LLM-FP4's searched floating-point quantizers with pre-shifted
per-channel exponent biases (Liu et al., "LLM-FP4: 4-Bit Floating-Point Quantized
Transformers", EMNLP 2023; reference code nbasyl/LLM-FP4; the search is in
passes/llm_fp4_search.py).

For every float activation X read by canonical linears `X @ W_k (+ b_k)`:
1. search (on calibration rows of X) the E/M split, a real per-tensor bias rho and
   integer per-channel shifts delta_c >= 0: channel c is quantized with exponent bias
   rho + delta_c. Since `Q_{rho+delta}(x) = 2^-delta Q_rho(2^delta x)` exactly,
2. fold the shifts (exact in float: powers of two):
       X @ W_k  ->  (X * 2^delta) @ (diag(2^-delta) W_k),
   the `X * 2^delta` going into X's producing LayerNorm / RMSNorm (gamma, beta), or
   the producing linear, or an explicit per-channel `Mul` on the branch to the linears
   (passes/fold_common.py `migrate_transform`, a diagonal transform), which leaves ONE
   per-tensor bias rho
   for the activation;
3. with `insert_quantizers` (default), insert `FakeQuantize(X', 1.0)` with dtype
   `ff_e{E}m{M}_b{rho}` (per tensor) shared by the linears, and replace each weight W'
   by `FakeQuantize(W', scale)` with its own searched E/M split: per output column
   (default) the dtype's bias is an integer B and `scale[o] = 2^(B - b_o)` carries column
   o's real bias b_o (dividing by it is quantizing with bias b_o); per tensor the dtype
   carries the bias and the scale is 1.
Every FakeQuantize output gets `meta["quant"]` (the QuantScheme's attributes), so the
"quantize" pass leaves these inputs alone.

Options: `calibration` (batches, required: the search needs activation rows), `bits` /
`weight_bits` (4), `weight_granularity` ("channel" | "tensor"), `per_channel_shifts`
(False: one bias per activation, no folding), `max_shift` (None: 2^E - 1, as the
reference), `act_offsets` / `weight_offsets` (the bias grids of llm_fp4_search),
`insert_quantizers` (False: only the exact shift fold, formats recorded in meta),
`exclude` (value names of activations to leave alone), `max_rows`, `runner`.

Stats: `activations_quantized`, `weights_quantized`, `channels_shifted`, `shift_folds`
(activations whose shifts were folded), `absorbed:norm|linear`, `explicit_mul`,
`act:e{E}m{M}` and `weight:e{E}m{M}` counts. `graph.meta["llm_fp4"]` lists, per
activation, {value, format, shifts (max), error (sum of squared output errors on the
rows, activation-only step)}.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir.dtypes import FloatFormat
from requant.ir.graph import Graph, Node, Value
from requant.ir.quant_formats import QuantScheme
from requant.passes.channel_transforms import DiagonalTransform
from requant.passes.fold_common import Linear, linear_readers, mark_folded, migrate_transform, splice_after, unused_name
from requant.passes.llm_fp4_search import (
    DEFAULT_ACT_OFFSETS,
    DEFAULT_WEIGHT_OFFSETS,
    ActivationFormat,
    WeightFormat,
    search_activation_format,
    search_weight_format,
)
from requant.passes.fold_samples import collect_rows
from requant.passes.smoothquant import smoothing_candidates
from requant.passes.conditions import CANONICAL_LINEARS, QUANTIZED
from requant.passes.manager import PassResult, graph_pass

__all__ = ["llm_fp4", "fp4_candidates"]

logger = logging.getLogger(__name__)

PASS = "llm_fp4"
GRANULARITIES = ("channel", "tensor")


def fp4_candidates(graph: Graph, exclude: Sequence[str] = ()) -> list[Value]:
    """Every float activation read by a canonical linear that is not quantized yet."""
    skip = set(exclude)
    return [v for v in smoothing_candidates(graph, "all") if v.name not in skip and "quant" not in v.meta]


def _fake_quantize(graph: Graph, x: Value, scheme: QuantScheme, scale: np.ndarray, uses: list[tuple[Node, int]],
                   anchor: Node) -> Value:
    s = graph.add_constant(np.asarray(scale, np.float32), base=f"{x.name}_fp_scale")
    if x.const is not None:
        node = graph.create_node("FakeQuantize", [x, s], scheme.op_attrs(), meta={"created_by": PASS}, before=anchor,
                                 output_names=[unused_name(graph, f"{x.name}_fq")])
        out = node.outputs[0]
        for user, index in uses:
            user.set_input(index, out)
    else:
        out = splice_after(graph, x, uses, "FakeQuantize", [s], scheme.op_attrs(), created_by=PASS, suffix="fq")
    out.meta["quant"] = scheme.to_attrs()
    return out


def _weight_quantizer(lin: Linear, fmt: WeightFormat, graph: Graph) -> None:
    if not fmt.per_channel:
        scheme = QuantScheme(FloatFormat(fmt.exp_bits, fmt.man_bits, float(fmt.biases[0])), "tensor")
        scale = np.asarray(1.0, np.float32)
    else:
        base = float(np.round(np.mean(fmt.biases)))
        scheme = QuantScheme(FloatFormat(fmt.exp_bits, fmt.man_bits, base), "channel", axis=1)
        scale = np.exp2(base - fmt.biases).astype(np.float32)
    _fake_quantize(graph, lin.weight, scheme, scale, [(lin.matmul, 1)], lin.matmul)


def _search(x_rows: np.ndarray, absmax: np.ndarray, weights: list[np.ndarray], opts: dict[str, Any]
            ) -> tuple[ActivationFormat, list[WeightFormat]]:
    act = search_activation_format(x_rows, absmax, weights, bits=opts["bits"], offsets=opts["act_offsets"],
                                   per_channel=opts["per_channel_shifts"], max_shift=opts["max_shift"])
    xq = act.quantize(x_rows)
    down = np.exp2(-act.shifts.astype(np.float64))[:, None]
    xq_shifted = xq * np.exp2(act.shifts)[None, :]  # what the shifted weights W' = 2^-delta W multiply
    wfmts = [search_weight_format(w * down, xq_shifted, x_rows, w_ref=w, bits=opts["weight_bits"],
                                  offsets=opts["weight_offsets"], granularity=opts["weight_granularity"])
             for w in weights]
    return act, wfmts


def _process(graph: Graph, x: Value, rows: Any, opts: dict[str, Any], stats: dict[str, Any],
             report: list[dict[str, Any]]) -> None:
    name = x.name
    linears, others = linear_readers(x)
    weights = [np.asarray(lin.weight.const, np.float64) for lin in linears]
    act, wfmts = _search(rows.rows.astype(np.float64), rows.absmax, weights, opts)
    target = x
    if np.any(act.shifts != 0):
        migration = migrate_transform(graph, x, DiagonalTransform(np.exp2(act.shifts.astype(np.float64))),
                                      created_by=PASS)
        how, target, linears = migration.how, migration.value, migration.linears
        stats["shift_folds"] += 1
        stats["channels_shifted"] += int(np.count_nonzero(act.shifts))
        stats["explicit_mul" if how == "mul" else f"absorbed:{how}"] += 1
        # the Linear objects now hold the shifted weights; the MatMuls read `target`
    report.append({"value": name, "format": act.format.short, "max_shift": int(act.shifts.max(initial=0)),
                   "error": act.error, "weights": [f"e{f.exp_bits}m{f.man_bits}" for f in wfmts]})
    if not opts["insert_quantizers"]:
        return
    scheme = QuantScheme(act.format, "tensor")
    uses = [(lin.matmul, 0) for lin in linears]
    anchor = linears[0].matmul
    _fake_quantize(graph, target, scheme, np.asarray(1.0, np.float32), uses, anchor)
    stats["activations_quantized"] += 1
    key = f"act:e{act.exp_bits}m{act.man_bits}"
    stats[key] = stats.get(key, 0) + 1
    for lin, fmt in zip(linears, wfmts):
        _weight_quantizer(lin, fmt, graph)
        mark_folded(lin.matmul, PASS)
        stats["weights_quantized"] += 1
        key = f"weight:e{fmt.exp_bits}m{fmt.man_bits}"
        stats[key] = stats.get(key, 0) + 1


@graph_pass(PASS, "LLM-FP4: searched FP formats per tensor; per-channel exponent-bias shifts folded into the next "
                  "weight's rows; FakeQuantize nodes", requires=(CANONICAL_LINEARS,), ensures=(QUANTIZED,))
def llm_fp4(
    graph: Graph,
    calibration: Iterable[Any] | None = None,
    bits: int = 4,
    weight_bits: int = 4,
    weight_granularity: str = "channel",
    per_channel_shifts: bool = True,
    max_shift: int | None = None,
    act_offsets: Sequence[float] = DEFAULT_ACT_OFFSETS,
    weight_offsets: Sequence[float] = DEFAULT_WEIGHT_OFFSETS,
    insert_quantizers: bool = True,
    exclude: Sequence[str] = (),
    max_rows: int = 512,
    runner: str = "auto",
) -> PassResult:
    """See the module docstring."""
    if calibration is None:
        raise RequantError("llm_fp4: the format search needs calibration batches (calibration=[...])")
    if weight_granularity not in GRANULARITIES:
        raise RequantError(f"llm_fp4: weight_granularity must be one of {', '.join(GRANULARITIES)}, "
                           f"got {weight_granularity!r}")
    for what, b in (("bits", bits), ("weight_bits", weight_bits)):
        if not 2 <= int(b) <= 8:
            raise RequantError(f"llm_fp4: {what} must be in 2..8, got {b}")
    opts = dict(bits=int(bits), weight_bits=int(weight_bits), weight_granularity=weight_granularity,
                per_channel_shifts=bool(per_channel_shifts), max_shift=max_shift, act_offsets=tuple(act_offsets),
                weight_offsets=tuple(weight_offsets), insert_quantizers=bool(insert_quantizers))
    candidates = fp4_candidates(graph, exclude)
    samples = collect_rows(graph, calibration, [v.name for v in candidates], max_rows=max_rows, runner=runner)
    stats: dict[str, Any] = {"activations_quantized": 0, "weights_quantized": 0, "channels_shifted": 0,
                             "shift_folds": 0, "absorbed:norm": 0, "absorbed:linear": 0, "explicit_mul": 0}
    report: list[dict[str, Any]] = []
    for x in candidates:
        _process(graph, x, samples[x.name], opts, stats, report)
    graph.meta.setdefault("llm_fp4", []).extend(report)
    changed = stats["shift_folds"] > 0 or stats["activations_quantized"] > 0
    return PassResult(graph, changed, stats)
