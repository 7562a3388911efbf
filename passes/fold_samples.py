"""Activation samples for the searches of the fold passes (SmoothQuant's alpha search,
LLM-FP4's format search): run the float graph over calibration batches and keep, per
requested value, a seeded random subset of its rows (the value flattened to
[rows, channels] over its last axis) and the exact per-channel max |x| over all rows.

The graph is never changed: a clone with the requested values added as outputs runs on
ONNX Runtime (`runner="onnxruntime"`), on requant's interpreter (`"interpreter"`), or
on ONNX Runtime with the interpreter as fallback (`"auto"`). Batches are checked with
`requant.passes.calibration.validate_calibration` (same forms as `collect_stats`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph

__all__ = ["ActivationRows", "collect_rows"]

logger = logging.getLogger(__name__)


@dataclass
class ActivationRows:
    """A sample of an activation's rows and its exact per-channel absolute maximum."""

    rows: np.ndarray  # [n, C] float32, at most max_rows of them
    absmax: np.ndarray  # [C] float64, over every row seen
    seen: int  # rows seen in total


class _Runner:
    """Runs a clone of the graph with the requested values added as outputs."""

    def __init__(self, graph: Graph, names: Sequence[str], runner: str) -> None:
        clone = graph.clone()
        by_name = {v.name: v for v in clone.values()}
        outputs = list(clone.outputs)
        self.positions: dict[str, int] = {}
        for n in names:
            v = by_name[n]
            found = [i for i, o in enumerate(outputs) if o is v]
            if found:
                self.positions[n] = found[0]
            else:
                self.positions[n] = len(outputs)
                outputs.append(v)
        clone.outputs = outputs
        self.graph = clone
        self.session = None
        if runner in ("onnxruntime", "auto"):
            try:
                from requant.backends.onnx.export import to_onnx
                from requant.backends.onnx.runtime import OnnxRuntimeSession

                self.session = OnnxRuntimeSession(to_onnx(clone))
            except (RequantError, ImportError) as exc:
                if runner == "onnxruntime":
                    raise
                logger.warning("fold samples: ONNX Runtime cannot run the graph (%s); using the interpreter", exc)

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is not None:
            outs = self.session(**feeds)
        else:
            from requant.ir.interpreter import run

            outs = run(self.graph, feeds)
        return {n: outs[i] for n, i in self.positions.items()}


def collect_rows(graph: Graph, batches: Iterable[Any], names: Sequence[str], *, max_rows: int = 2048,
                 runner: str = "auto", seed: int = 0) -> dict[str, ActivationRows]:
    """{name: ActivationRows} for the float activations `names` (module docstring)."""
    from requant.passes.calibration import validate_calibration

    names = list(dict.fromkeys(names))
    known = {v.name for v in graph.values()}
    missing = [n for n in names if n not in known]
    if missing:
        raise RequantError(f"fold samples: graph '{graph.name}' has no value(s) {', '.join(missing)}")
    if not names:
        return {}
    rng = np.random.default_rng(seed)
    run = _Runner(graph, names, runner)
    kept: dict[str, list[np.ndarray]] = {n: [] for n in names}
    absmax: dict[str, np.ndarray] = {}
    seen: dict[str, int] = dict.fromkeys(names, 0)
    for feeds in validate_calibration(graph, batches):
        outs = run(feeds)
        for n in names:
            arr = np.asarray(outs[n], dtype=np.float32)
            rows = arr.reshape(-1, arr.shape[-1]) if arr.ndim > 1 else arr.reshape(1, -1)
            amax = np.max(np.abs(rows), axis=0).astype(np.float64)
            absmax[n] = amax if n not in absmax else np.maximum(absmax[n], amax)
            seen[n] += rows.shape[0]
            if rows.shape[0] > max_rows:
                rows = rows[rng.choice(rows.shape[0], max_rows, replace=False)]
            kept[n].append(rows.copy())
        del outs
    result: dict[str, ActivationRows] = {}
    for n in names:
        rows = np.concatenate(kept[n], axis=0)
        if rows.shape[0] > max_rows:
            rows = rows[np.sort(rng.choice(rows.shape[0], max_rows, replace=False))]
        result[n] = ActivationRows(rows, absmax[n], seen[n])
    return result
