"""The conditions passes require and ensure (passes/manager.py, `Condition`): each a
name, a check that says why a graph does not meet it, and the way out.

- CANONICAL_LINEARS, "canonical linears": no Gemm and no MatMul by a transposed
  constant weight left (what passes/canonicalize_linear.py rewrites into the canonical
  `MatMul(x, W[in, out]) (+ Add(b))`). Ensured by canonicalize; required by the fold
  passes that find linears by that form (fold_norm_affine).
- QUANTIZED, "quantized tensors": QuantizeLinear / DequantizeLinear or FakeQuantize
  nodes in the graph. Ensured by the passes that insert them (quantize, llm_fp4), which
  covers a graph in which they found nothing to quantize; required by the lowerings of
  Q/DQ patterns (lower_integer).
"""

from __future__ import annotations

import logging
from collections import Counter

from requant.ir.graph import Graph
from requant.passes.canonicalize_linear import non_canonical_linears
from requant.passes.manager import Condition

__all__ = ["CANONICAL_LINEARS", "QUANTIZED", "QUANTIZATION_OPS"]

logger = logging.getLogger(__name__)

QUANTIZATION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "FakeQuantize"})


def _linears_left(graph: Graph) -> str | None:
    """E.g. "2 Gemm nodes remain", "1 MatMul by a transposed constant weight remains"."""
    counts = Counter(node.op for node in non_canonical_linears(graph))
    if not counts:
        return None
    parts = []
    if counts["Gemm"]:
        parts.append(f"{counts['Gemm']} Gemm node{'s' if counts['Gemm'] > 1 else ''}")
    if counts["MatMul"]:
        parts.append(f"{counts['MatMul']} MatMul{'s' if counts['MatMul'] > 1 else ''} by a transposed constant weight")
    total = sum(counts.values())
    return f"{' and '.join(parts)} {'remain' if total > 1 else 'remains'}"


def _no_quantization(graph: Graph) -> str | None:
    if any(node.op in QUANTIZATION_OPS for node in graph):
        return None
    return "no QuantizeLinear, DequantizeLinear or FakeQuantize node in the graph"


CANONICAL_LINEARS = Condition("canonical linears", _linears_left, "run 'canonicalize' first")
QUANTIZED = Condition("quantized tensors", _no_quantization, "run 'quantize' (or 'llm_fp4') first")
