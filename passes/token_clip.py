"""Clip ratios for per-token dynamic activation quantizers, searched on calibration data:
what the "quantize" pass gives a `FakeQuantize {granularity="token"}` with `method="mse"`.

A per-token quantizer scales each row by its own amax (ir/quant_formats.py
`fake_quantize_tokens`), so there is no range to calibrate, but at 4 bits the row's
largest value costs every other value resolution: shrinking the scale by a ratio c < 1
(values past c * amax saturate) lowers the error of the row as a whole. QuaRot fixes c
by hand (its `a_clip_ratio`, 0.9); here each activation gets the c in `CLIP_GRID` with
the least squared error sum |x - FQ_c(x)|^2 over every row of the calibration batches,
run on the float graph as the other range searches are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from requant.ir.graph import Graph
from requant.ir.quant_formats import QuantScheme, fake_quantize_tokens
from requant.passes.calibration import observed_batches

__all__ = ["CLIP_GRID", "search_token_clips"]

CLIP_GRID = tuple(float(c) for c in np.round(np.arange(1.0, 0.475, -0.05), 2))
"""The candidate ratios, 1 (no clipping) down to 0.5."""


def search_token_clips(graph: Graph, batches: Iterable[Any], schemes: Mapping[str, QuantScheme], *,
                       runner: str = "auto") -> dict[str, float]:
    """{activation name: the ratio in CLIP_GRID with the least squared per-token
    quantization error over the batches, under that activation's scheme (its row axis)}
    (module docstring); ties keep the larger ratio."""
    names = list(schemes)
    if not names:
        return {}
    errors = {name: np.zeros(len(CLIP_GRID)) for name in names}
    for outs in observed_batches(graph, batches, names, runner):
        for name in names:
            x = np.asarray(outs[name], np.float32)
            for i, clip in enumerate(CLIP_GRID):
                d = fake_quantize_tokens(x, schemes[name], clip) - x
                errors[name][i] += float(np.sum(np.square(d, dtype=np.float64)))
    return {name: CLIP_GRID[int(np.argmin(errors[name]))] for name in names}
