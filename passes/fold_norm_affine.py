"""Pass "fold_norm_affine": the affine part of a LayerNorm / RMSNorm folded into the
linears that read it.

Rewrite (exact in float, up to one rounding of the new weights): with
`N(x) = n(x) * gamma (+ beta)` and every reader of N(x) a canonical linear
`MatMul(N(x), W_k) (+ b_k)`,
    N(x) @ W_k + b_k  ->  n(x) @ W_k' + b_k'   with  W_k' = diag(gamma) W_k,
                                                     b_k' = b_k + beta @ W_k
(a bias-less linear gets an `Add` when beta is not zero); the norm keeps a unit scale
(`gamma = 1`) and loses its bias input. Rotation passes need exactly this form: a norm
without affine parameters commutes with an orthogonal rotation of its output.

Refused, counted in the stats as `refused:<reason>`:
- `non_linear_reader`: some reader of the norm output is not a linear with a constant
  weight: a residual `Add` (post-LN BERT / MiniLM), an activation, attention. Folding
  into the linears would change what that reader sees.
- `graph_output`: the norm output is a graph output.
- `not_per_feature`: the norm normalises more than the last axis, has non-constant or
  non-per-feature parameters, or also returns its statistics.
A norm whose affine part is already the identity is left alone (not counted).

Requires canonical linears (passes/conditions.py): a Gemm reader would be refused as
`non_linear_reader`, silently; run "canonicalize" first.

Stats: `norms_folded`, `linears_updated`, `refused`, `refused:<reason>`.
"""

from __future__ import annotations

import logging

import numpy as np

from requant.ir.graph import Graph, Node
from requant.passes.fold_common import (
    NORM_OPS,
    Linear,
    add_to_bias,
    count_refusal,
    linear_readers,
    mark_folded,
    norm_affine,
    scale_weight_rows,
    set_norm_affine,
)
from requant.passes.conditions import CANONICAL_LINEARS
from requant.passes.manager import PassResult, graph_pass

__all__ = ["fold_norm_affine", "norm_fold_refusal"]

logger = logging.getLogger(__name__)

PASS = "fold_norm_affine"


def norm_fold_refusal(node: Node) -> str | None:
    """Why the affine part of norm `node` cannot be folded into its readers, or None."""
    found = norm_affine(node)
    if isinstance(found, str):
        return "not_per_feature"
    y = node.outputs[0]
    if node.graph is not None and node.graph.is_output(y):
        return "graph_output"
    linears, others = linear_readers(y)
    if others:
        return "non_linear_reader"
    if not linears:
        return "no_readers"
    return None


def _is_identity(gamma: np.ndarray, beta: np.ndarray | None) -> bool:
    return bool(np.all(gamma == 1.0)) and (beta is None or bool(np.all(beta == 0.0)))


def _fold_into(graph: Graph, lin: Linear, gamma: np.ndarray, beta: np.ndarray | None) -> None:
    w = np.asarray(lin.weight.const, np.float64)
    scale_weight_rows(graph, lin, gamma, PASS)
    mark_folded(lin.matmul, PASS)
    if beta is not None and np.any(beta != 0.0):
        add_to_bias(graph, lin, beta @ w, PASS)
        if lin.add is not None:
            mark_folded(lin.add, PASS)


@graph_pass(PASS, "LayerNorm/RMSNorm gamma (and beta) -> folded into the linears reading the norm (unit norm left)",
            requires=(CANONICAL_LINEARS,))
def fold_norm_affine(graph: Graph) -> PassResult:
    stats: dict[str, int | float | str] = {"norms_folded": 0, "linears_updated": 0, "refused": 0}
    for node in list(graph):
        if node.op not in NORM_OPS or node.graph is not graph:
            continue
        found = norm_affine(node)
        if not isinstance(found, str) and _is_identity(*found):
            continue
        reason = norm_fold_refusal(node)
        if reason == "no_readers":
            continue
        if reason is not None:
            count_refusal(stats, PASS, node, reason)
            continue
        gamma, beta = found  # type: ignore[misc]
        linears, _ = linear_readers(node.outputs[0])
        for lin in linears:
            _fold_into(graph, lin, gamma, beta)
        set_norm_affine(graph, node, np.ones_like(gamma), None, created_by=PASS)
        stats["norms_folded"] += 1
        stats["linears_updated"] += len(linears)
    return PassResult(graph, stats["norms_folded"] > 0, stats)
