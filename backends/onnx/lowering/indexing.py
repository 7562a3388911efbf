"""ONNX lowering of the indexing and data-movement ops (`requant.ir.ops.indexing`):
all standard ONNX, emitted as they are."""

from __future__ import annotations

import logging

from requant.backends.onnx.lowering._common import LOWERINGS, standard

__all__: list[str] = []

logger = logging.getLogger(__name__)

# Emitted as the same ONNX op: the registry defines them with ONNX's modern semantics.
LOWERINGS.lowers(
    "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND",
    "ScatterElements", "ScatterND", "Pad", "Tile", "Trilu"
)(standard)
