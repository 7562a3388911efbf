"""The compile report: what each pipeline step changed, model sizes, times and accuracy
against the float model, as data (`StepRecord`, `Accuracy`, `constant_bytes`) and as a
plain-text table (`render_report`).

`CompiledModel.stats` is the data (a dict of plain values); `CompiledModel.report()`
renders it. Accuracy compares the compiled model with the float graph it came from on
held-back calibration batches: per output, the cosine similarity of all elements
together and the largest absolute error. Simulated formats are marked as such.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["StepRecord", "Accuracy", "constant_bytes", "render_report", "format_bytes", "SIMULATED_NOTE",
           "nonfinite_note"]

logger = logging.getLogger(__name__)

SIMULATED_NOTE = "(simulated: quantize-dequantize on CPU)"
QUANTIZED_KEY = "tensors_quantized"
"""The stat a quantize pass reports its count of quantized tensors under (own column)."""


@dataclass
class StepRecord:
    """One pipeline step as run: a pass or the calibrate step."""

    name: str
    changed: bool
    nodes_before: int
    nodes_after: int
    added: int
    removed: int
    seconds: float | None
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, with_time: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_time:
            d.pop("seconds")
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StepRecord:
        return cls(d["name"], bool(d["changed"]), int(d["nodes_before"]), int(d["nodes_after"]),
                   int(d.get("added", 0)), int(d.get("removed", 0)), d.get("seconds"), dict(d.get("stats", {})))


class Accuracy:
    """Streaming comparison of outputs with a reference: cosine over all elements of
    each output and the largest absolute error."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.batches = 0
        self._dot = [0.0] * len(names)
        self._nn = [0.0] * len(names)
        self._rr = [0.0] * len(names)
        self._max_abs = [0.0] * len(names)
        self._nonfinite = [0] * len(names)

    def add(self, outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> None:
        for i, (y, r) in enumerate(zip(outputs, reference)):
            y = np.asarray(y, dtype=np.float64).ravel()
            r = np.asarray(r, dtype=np.float64).ravel()
            if y.shape != r.shape:
                raise ValueError(f"output '{self.names[i]}': shape {y.shape} vs reference {r.shape}")
            bad = ~(np.isfinite(y) & np.isfinite(r))
            self._nonfinite[i] += int(bad.sum())
            y, r = y[~bad], r[~bad]
            self._dot[i] += float(y @ r)
            self._nn[i] += float(y @ y)
            self._rr[i] += float(r @ r)
            if y.size:
                self._max_abs[i] = max(self._max_abs[i], float(np.max(np.abs(y - r))))
        self.batches += 1

    def result(self) -> dict[str, dict[str, float]]:
        out = {}
        for i, name in enumerate(self.names):
            denom = np.sqrt(self._nn[i]) * np.sqrt(self._rr[i])
            cosine = 1.0 if denom == 0 and self._nn[i] == self._rr[i] else (self._dot[i] / denom if denom else 0.0)
            out[name] = {"cosine": float(cosine), "max_abs_error": self._max_abs[i],
                         "nonfinite": self._nonfinite[i]}
        return out


def constant_bytes(graph: Any) -> int:
    """Bytes of a graph's constants at their element width (int4 counts half a byte)."""
    total = 0
    for v in graph.constants:
        bits = v.dtype.bits
        total += (int(np.asarray(v.const).size) * bits + 7) // 8
    return total


_ACTIVATION_QUANTIZERS = ("QuantizeLinear", "DynamicQuantizeLinear", "FakeQuantize")


def nonfinite_note(graph: Any) -> str | None:
    """What the compiled graph does with NaN / Inf inputs where it quantizes activations
    (float ops propagate them as the interpreter does on every backend), or None when it
    quantizes no activation."""
    from requant.ir import dtypes

    kinds = set()
    for node in graph:
        if node.op not in _ACTIVATION_QUANTIZERS or not node.inputs or node.inputs[0] is None:
            continue
        if node.inputs[0].is_constant:
            continue  # a weight: no run-time values
        dt = node.outputs[0].dtype if node.op != "FakeQuantize" else dtypes.dtype(node.attrs.get("dtype", "int8"))
        kinds.add("integer" if dt.is_integer else "float")
    if not kinds:
        return None
    parts = []
    if "integer" in kinds:
        parts.append("integer-quantized activations turn NaN into the lowest code and +-Inf into the ends of "
                     "their range, so what follows them stays finite")
    if "float" in kinds:
        parts.append("low-bit float activations keep NaN and saturate +-Inf to the largest finite value")
    return "non-finite inputs: " + "; ".join(parts) + " (float ops propagate NaN/Inf as the interpreter does)"


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _is_zero(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return (indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _passes_section(records: Iterable[StepRecord]) -> list[str]:
    records = list(records)
    timed = any(r.seconds is not None for r in records)
    quantized = any(QUANTIZED_KEY in r.stats for r in records)
    header = (["step", "changed", "nodes", "added", "removed"] + (["quantized"] if quantized else [])
              + (["time ms"] if timed else []) + ["stats"])
    rows = []
    for r in records:
        stats = ", ".join(f"{k}={_fmt(v)}" for k, v in r.stats.items() if not _is_zero(v) and k != QUANTIZED_KEY)
        row = [r.name, "yes" if r.changed else "no", f"{r.nodes_before}->{r.nodes_after}", str(r.added), str(r.removed)]
        if quantized:
            row.append(_fmt(r.stats.get(QUANTIZED_KEY, "")))
        if timed:
            row.append("-" if r.seconds is None else f"{r.seconds * 1e3:.2f}")
        rows.append(row + [stats])
    return ["passes"] + _table(header, rows)


def _sizes_section(sizes: Mapping[str, Any]) -> list[str]:
    before, after = sizes.get("constants_before"), sizes.get("constants_after")
    ratio = ""
    if before and after:
        if after < before:
            ratio = f" ({before / after:.2f}x smaller)"
        elif after > before:
            ratio = f" ({after / before:.2f}x larger)"
    lines = ["size", f"  constants: {format_bytes(before)} -> {format_bytes(after)}{ratio}"]
    if sizes.get("artifact") is not None:
        lines.append(f"  artifact ({sizes.get('artifact_kind', 'model')}): {format_bytes(sizes['artifact'])}")
    if sizes.get("saved") is not None:
        lines.append(f"  saved to {sizes.get('saved_to', '?')}: {format_bytes(sizes['saved'])}")
    return lines


def _times_section(times: Mapping[str, float]) -> list[str]:
    if not times:
        return []
    parts = [f"{k} {v:.3f} s" for k, v in times.items() if k != "total" and v]
    total = times.get("total")
    return ["time", "  " + ", ".join(parts) + (f"; total {total:.3f} s" if total is not None else "")]


def _accuracy_section(accuracy: Mapping[str, Any] | None, simulated: bool) -> list[str]:
    if not accuracy:
        return ["accuracy vs float: not measured (pass calibration=[...] batches to measure it)"]
    if "outputs" not in accuracy:
        return [f"accuracy vs float: not measured ({accuracy['not_measured']})"]
    title = f"accuracy vs float, {accuracy['batches']} batch(es) {accuracy['note']}"
    if simulated:
        title += f" {SIMULATED_NOTE}"
    outputs = accuracy["outputs"]
    nonfinite = any(m.get("nonfinite") for m in outputs.values())
    rows = [[name, f"{m['cosine']:.6f}", f"{m['max_abs_error']:.4g}"] + ([str(m.get("nonfinite", 0))] if nonfinite else [])
            for name, m in outputs.items()]
    return [title] + _table(["output", "cosine", "max abs err"] + (["non-finite"] if nonfinite else []), rows)


def _skipped_section(skipped: Sequence[Mapping[str, Any]]) -> list[str]:
    if not skipped:
        return []
    lines = [f"left in float: {len(skipped)} op(s)"]
    for s in skipped[:10]:
        lines.append(f"  {s.get('node', '?')} ({s.get('op', '?')}): {s.get('reason', '')}")
    if len(skipped) > 10:
        lines.append(f"  ... {len(skipped) - 10} more")
    return lines


def render_report(stats: Mapping[str, Any]) -> str:
    """`CompiledModel.stats` as a plain-text report."""
    head = f"requant report: target {stats['target']} ({stats.get('description', '')}), backend {stats.get('backend')}"
    lines = [head]
    if stats.get("simulated"):
        lines.append(f"  low-bit formats are {SIMULATED_NOTE[1:-1]}")
    if stats.get("custom_pipeline"):
        lines.append("  pipeline replaced by passes=[...]")
    if stats.get("loaded_from"):
        lines.append(f"  loaded from {stats['loaded_from']} (compile-time figures as saved; times not saved)")
    if stats.get("nonfinite"):
        lines.append(f"  {stats['nonfinite']}")
    records = [r if isinstance(r, StepRecord) else StepRecord.from_dict(r) for r in stats.get("passes", [])]
    lines += _passes_section(records)
    lines += _skipped_section(stats.get("quant_skipped") or [])
    lines += _sizes_section(stats.get("sizes", {}))
    lines += _times_section(stats.get("times", {}))
    if not stats.get("loaded_from"):
        lines += _accuracy_section(stats.get("accuracy"), bool(stats.get("simulated")))
    warnings = stats.get("warnings") or []
    if warnings:
        lines += [f"warnings: {len(warnings)}"] + [f"  - {w}" for w in warnings]
    return "\n".join(lines)
