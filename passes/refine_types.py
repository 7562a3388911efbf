"""Pass "refine_types": fill in the dims of node outputs that type inference knows once
shape computations are folded to constants.

Constant folding turns computed shapes (Shape -> Gather -> Concat) into constants, but
the nodes reading them keep the unknown dims they were built with; re-inferring lets
later rules see that e.g. an Expand does not broadcast. A declared dim is replaced only
where it was unknown; a declared symbol is kept; two different static dims are left for
the verifier to report. Graph outputs keep their declared types unless `outputs=True`
(bind_dims: specialising is meant to make them more specific).
"""

from __future__ import annotations

import logging

from requant.errors import RequantError
from requant.ir import registry
from requant.ir.graph import Graph
from requant.ir.types import Dim, TensorType
from requant.passes.manager import PassResult, graph_pass

__all__ = ["refine_types"]

logger = logging.getLogger(__name__)


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
