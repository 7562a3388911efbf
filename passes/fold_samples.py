"""Activation samples for the searches of the fold passes (SmoothQuant's alpha search,
LLM-FP4's format search): run the float graph over calibration batches and keep, per
requested value, a seeded random subset of its rows (the value flattened to
[rows, channels] over its last axis) and the exact per-channel max |x| over all rows.

The graph is never changed: a clone with the requested values added as outputs runs on
a graph runner, as `requant.passes.calibration.collect_stats` does (`runner`: a
`requant.ir.runners` name, "auto" by default); graph inputs are read from the batch. Batches are checked with `requant.passes.calibration.validate_calibration`
(same forms as `collect_stats`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph
from requant.passes.calibration import observed_batches

__all__ = ["ActivationRows", "collect_rows"]

logger = logging.getLogger(__name__)


@dataclass
class ActivationRows:
    """A sample of an activation's rows and its exact per-channel absolute maximum."""

    rows: np.ndarray  # [n, C] float32, at most max_rows of them
    absmax: np.ndarray  # [C] float64, over every row seen
    seen: int  # rows seen in total


def collect_rows(graph: Graph, batches: Iterable[Any], names: Sequence[str], *, max_rows: int = 2048,
                 runner: str = "auto", seed: int = 0) -> dict[str, ActivationRows]:
    """{name: ActivationRows} for the float activations `names` (module docstring)."""
    names = list(dict.fromkeys(names))
    known = {v.name for v in graph.values()}
    missing = [n for n in names if n not in known]
    if missing:
        raise RequantError(f"fold samples: graph '{graph.name}' has no value(s) {', '.join(missing)}")
    if not names:
        return {}
    rng = np.random.default_rng(seed)
    kept: dict[str, list[np.ndarray]] = {n: [] for n in names}
    absmax: dict[str, np.ndarray] = {}
    seen: dict[str, int] = dict.fromkeys(names, 0)
    for outs in observed_batches(graph, batches, names, runner):
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
