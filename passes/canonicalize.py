"""Pass "canonicalize": the canonical forms later passes rely on, so one model gives one
graph whether it came through torch.export or through an ONNX file.

It runs, to a fixed point, constant folding, "refine_types" (passes/refine_types.py:
dims of node outputs that inference knows once shape computations are folded, so a
no-op Expand or Reshape can be seen as one) and these rule passes (each registered on
its own too; their module docstrings list every rewrite):

- canonicalize_linear (passes/canonicalize_linear.py): Gemm, MatMul by a transposed
  constant, flatten -> Gemm/MatMul -> unflatten -> MatMul(x, W[in, out]) (+ Add(b));
- canonicalize_noops (passes/canonicalize_noops.py): Identity, same-dtype Cast, Dropout,
  no-op Reshape/Transpose/Expand, x * 1, x / 1 removed; Reshape and Transpose chains
  folded; static Reshape targets; 1 / x -> Reciprocal; constants second in Add/Mul;
- canonicalize_norm (passes/canonicalize_norm.py): decomposed LayerNorm / RMSNorm (casts,
  scale, bias) -> LayerNormalization / RMSNormalization;
- canonicalize_activation (passes/canonicalize_activation.py): decomposed GELU (erf, tanh)
  and softmax -> Gelu / Softmax;
- canonicalize_attention (passes/canonicalize_attention.py): MatMul-Softmax-MatMul
  attention blocks -> ScaledDotProductAttention with canonical masks and GQA;

then common-subexpression elimination and dead-code elimination. It ensures the
condition "canonical linears" (passes/conditions.py) that fold passes require; run with
a chosen subset (`passes=`), it ensures nothing. Linear comes before
the no-op rules so a flatten -> Gemm -> unflatten group is seen before its Reshapes are
merged with their neighbours (the linear rule copes with either, this keeps the stats
readable). Stats: `iterations`, `rewrites`, one `rule:<name>` count per rule that fired,
and the cleanup passes' counters summed (`nodes_folded`, `nodes_merged`, `nodes_removed`,
...).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from requant.ir.graph import Graph
# the passes the canonical pipeline names register themselves on import
from requant.passes import (  # noqa: F401
    canonicalize_activation,
    canonicalize_attention,
    canonicalize_linear,
    canonicalize_noops,
    canonicalize_norm,
    cse,
    dce,
    fold_constants,
    refine_types,
)
from requant.passes.conditions import CANONICAL_LINEARS
from requant.passes.manager import Condition, PassManager, PassResult, graph_pass

__all__ = ["CANONICALIZE_PIPELINE", "canonicalize"]

logger = logging.getLogger(__name__)

CANONICALIZE_PIPELINE: tuple[str, ...] = (
    "fold_constants",
    "refine_types",
    "canonicalize_linear",
    "canonicalize_noops",
    "canonicalize_norm",
    "canonicalize_activation",
    "canonicalize_attention",
    "cse",
    "dce",
)


# Each sweep can expose work for an earlier pass (a fold enables a fusion that enables
# a no-op removal ...); real models settle in two or three sweeps.
MAX_SWEEPS = 12


def _ensured(passes: Sequence[str] | None = None) -> tuple[Condition, ...]:
    """What the run leaves: only the whole pipeline promises canonical linears (a subset
    may leave out canonicalize_linear, or the constant folding that frees its matches)."""
    return (CANONICAL_LINEARS,) if passes is None else ()


@graph_pass("canonicalize", "canonical forms: linear, no-ops, LayerNorm/RMSNorm, GELU, softmax, attention "
            "(+ constant folding, CSE, DCE) to a fixed point", ensures=_ensured)
def canonicalize(graph: Graph, passes: Sequence[str] | None = None) -> PassResult:
    """`passes`: run these (registered names) instead of CANONICALIZE_PIPELINE."""
    manager = PassManager(list(passes or CANONICALIZE_PIPELINE), fixed_point=True, max_iterations=MAX_SWEEPS)
    result = manager.run(graph)
    stats: dict[str, int | float | str] = {"iterations": max((r.iteration for r in result.records), default=0)}
    stats["rewrites"] = 0
    for record in result.records:
        for key, value in record.stats.items():
            if isinstance(value, str):
                continue
            stats[key] = stats.get(key, 0) + value
    logger.debug("canonicalize: %s", stats)
    return PassResult(result.graph, result.changed, stats)
