"""Pass "canonicalize": the canonical forms later passes rely on, so one model gives one
graph whether it came through torch.export or through an ONNX file.

It runs, to a fixed point, constant folding, "refine_types" (defined here: fill in the
dims of node outputs that inference knows once shape computations are folded, so a
no-op Expand or Reshape can be seen as one) and these rule passes (each registered on
its own too; their module docstrings list every rewrite):

- canonicalize_linear (passes/canonical_linear.py): Gemm, MatMul by a transposed
  constant, flatten -> Gemm/MatMul -> unflatten -> MatMul(x, W[in, out]) (+ Add(b));
- canonicalize_noops (passes/canonical_noops.py): Identity, same-dtype Cast, Dropout,
  no-op Reshape/Transpose/Expand, x * 1, x / 1 removed; Reshape and Transpose chains
  folded; static Reshape targets; 1 / x -> Reciprocal; constants second in Add/Mul;
- canonicalize_norm (passes/canonical_norm.py): decomposed LayerNorm / RMSNorm (casts,
  scale, bias) -> LayerNormalization / RMSNormalization;
- canonicalize_activation (passes/canonical_activation.py): decomposed GELU (erf, tanh)
  and softmax -> Gelu / Softmax;
- canonicalize_attention (passes/canonical_attention.py): MatMul-Softmax-MatMul
  attention blocks -> ScaledDotProductAttention with canonical masks and GQA;

then common-subexpression elimination and dead-code elimination. Linear comes before
the no-op rules so a flatten -> Gemm -> unflatten group is seen before its Reshapes are
merged with their neighbours (the linear rule copes with either, this keeps the stats
readable). Stats: `iterations`, `rewrites`, one `rule:<name>` count per rule that fired,
and the cleanup passes' counters summed (`nodes_folded`, `nodes_merged`, `nodes_removed`,
...).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from requant.errors import RequantError
from requant.ir import registry
from requant.ir.graph import Graph
from requant.ir.types import Dim, TensorType
from requant.passes import canonical_activation, canonical_attention, canonical_linear, canonical_noops, canonical_norm
from requant.passes import cleanup  # noqa: F401  (registers fold_constants, cse, dce)
from requant.passes.manager import PassManager, PassResult, graph_pass

__all__ = ["CANONICALIZE_PIPELINE", "canonicalize", "refine_types", "canonical_activation", "canonical_attention",
           "canonical_linear", "canonical_noops", "canonical_norm"]

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


def _refined(declared: TensorType, inferred: TensorType) -> TensorType | None:
    """`declared` with the dims it leaves unknown filled in from `inferred`, when that
    adds something and the two agree; else None."""
    if declared.dtype != inferred.dtype or inferred.shape is None:
        return None
    if declared.shape is None:
        return inferred
    if len(declared.shape) != len(inferred.shape):
        return None
    dims: list[Dim] = []
    for d, i in zip(declared.shape, inferred.shape):
        if d is None:
            dims.append(i)
        elif i is None or i == d or isinstance(i, str) or isinstance(d, str):
            dims.append(d)  # a declared symbol names what inference may not know: keep it
        else:
            return None  # two different static dims: leave it to the verifier to report
    refined = TensorType(tuple(dims), declared.dtype)
    return refined if refined != declared else None


@graph_pass("refine_types", "fill in unknown dims of node outputs that inference now knows (after folding)")
def refine_types(graph: Graph, outputs: bool = False) -> PassResult:
    """Constant folding turns computed shapes (Shape -> Gather -> Concat) into constants,
    but the nodes reading them keep the unknown dims they were built with; re-inferring
    lets the no-op rules see that e.g. an Expand does not broadcast. Graph outputs keep
    their declared types unless `outputs` (bind_dims: specialising is meant to make them
    more specific); `outputs_refined` counts those."""
    refined = outputs_refined = 0
    for node in graph:
        outs = node.outputs
        if all(o.type.shape is not None and None not in o.type.shape for o in outs):
            continue
        try:
            inferred = registry.infer_types(node.op, node.inputs, node.attrs, len(outs))
        except RequantError:
            continue
        for out, want in zip(outs, inferred):
            is_output = graph.is_output(out)
            better = None if is_output and not outputs else _refined(out.type, want)
            if better is not None:
                out.type = better
                refined += 1
                outputs_refined += is_output
    stats = {"types_refined": refined} | ({"outputs_refined": outputs_refined} if outputs else {})
    return PassResult(graph, refined > 0, stats)


# Each sweep can expose work for an earlier pass (a fold enables a fusion that enables
# a no-op removal ...); real models settle in two or three sweeps.
MAX_SWEEPS = 12


@graph_pass("canonicalize", "canonical forms: linear, no-ops, LayerNorm/RMSNorm, GELU, softmax, attention "
            "(+ constant folding, CSE, DCE) to a fixed point")
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
