"""Pass "fold_batchnorm": inference BatchNormalization folded into the Conv or canonical
linear that produces its input.

Rewrites (exact in float, up to one rounding of the new weights):
- `BatchNormalization(Conv(x, W, b), scale, B, mean, var)` -> `Conv(x, W', b')` with
  `a = scale / sqrt(var + epsilon)`, `W'[o] = a[o] * W[o]`, `b' = a * b + (B - a * mean)`
  (b = 0 when the Conv has no bias; grouped convolutions too: output channel o owns
  W[o] whatever the group);
- `BatchNormalization(Add(MatMul(x, W), b))` on a 2-D [N, C] activation (BatchNorm1d
  after a Linear, where the channel axis is the features) -> `Add(MatMul(x, W'), b')`
  with `W'[:, o] = a[o] * W[:, o]` (a bias-less MatMul gets a new Add).

Refused, counted in the stats as `refused:<reason>`: `training_mode=1` (batch
statistics are not constants), non-constant BatchNorm parameters or weights, a
producer that is neither (`no_producer`), and a producer output that something besides
the BatchNorm reads or that is a graph output (`shared_producer`: its other readers
need the unnormalised values).

Stats: `batchnorms_folded`, `refused`, `refused:<reason>`.
"""

from __future__ import annotations

import logging

import numpy as np

from requant.ir.graph import Graph, Node, Value
from requant.passes.fold_common import (
    Linear,
    add_to_bias,
    as_linear,
    count_refusal,
    drop_if_unused,
    mark_folded,
    replace_constant_input,
)
from requant.passes.manager import PassResult, graph_pass

__all__ = ["fold_batchnorm", "batchnorm_fold_refusal"]

logger = logging.getLogger(__name__)

PASS = "fold_batchnorm"


def _affine(bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """(a, shift) with BN(y) = a * y + shift per channel, float64."""
    scale, b, mean, var = (np.asarray(v.const, np.float64).reshape(-1) for v in bn.inputs[1:5])
    a = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    return a, b - a * mean


def _producer(bn: Node) -> tuple[str, Node | Linear] | str:
    """("conv", node) or ("linear", Linear) that makes the BatchNorm's input, or why not."""
    x = bn.inputs[0]
    node = x.producer
    graph = bn.graph
    if node is None:
        return "no_producer"
    if len(x.uses) != 1 or (graph is not None and graph.is_output(x)):
        return "shared_producer"
    if node.op == "Conv":
        w = node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if w is None or w.const is None or (b is not None and b.const is None):
            return "non_constant_weight"
        return "conv", node
    if x.type.rank != 2:
        return "no_producer"
    mm = node
    if node.op == "Add":
        mm = next((a.producer for a in node.inputs if a is not None and a.producer is not None
                   and a.producer.op == "MatMul"), None)
        if mm is None:
            return "no_producer"
    if mm.op != "MatMul":
        return "no_producer"
    lin = as_linear(mm, mm.inputs[0])
    if isinstance(lin, str):
        return "non_constant_weight" if "non-constant" in lin else "no_producer"
    if lin.output is not x:
        return "shared_producer" if len(mm.outputs[0].uses) > 1 else "no_producer"
    return "linear", lin


def batchnorm_fold_refusal(bn: Node) -> str | None:
    """Why `bn` cannot be folded (a short reason), or None when it can."""
    if int(bn.attrs.get("training_mode", 0)) != 0:
        return "training_mode"
    if any(v is None or v.const is None for v in bn.inputs[1:5]):
        return "non_constant_params"
    if not bn.inputs[0].dtype.is_float:
        return "not_float"
    found = _producer(bn)
    return found if isinstance(found, str) else None


def _fold_into_conv(graph: Graph, conv: Node, a: np.ndarray, shift: np.ndarray) -> Value:
    w = np.asarray(conv.inputs[1].const, np.float64)
    replace_constant_input(graph, conv, 1, w * a.reshape((-1,) + (1,) * (w.ndim - 1)), PASS)
    b = conv.inputs[2] if len(conv.inputs) > 2 else None
    if b is None:
        dt = conv.inputs[1].dtype
        new_b = graph.add_constant(shift.astype(dt.np), dtype=dt, base=f"{conv.inputs[1].name}_bias")
        if len(conv.inputs) > 2:
            conv.set_input(2, new_b)
        else:
            conv.append_input(new_b)
    else:
        replace_constant_input(graph, conv, 2, a * np.asarray(b.const, np.float64).reshape(-1) + shift, PASS)
    mark_folded(conv, PASS)
    return conv.outputs[0]


def _fold_into_linear(graph: Graph, lin: Linear, a: np.ndarray, shift: np.ndarray) -> Value:
    w = np.asarray(lin.weight.const, np.float64)
    lin.weight = replace_constant_input(graph, lin.matmul, 1, w * a[None, :], PASS)
    mark_folded(lin.matmul, PASS)
    if lin.add is not None and lin.bias is not None:
        b = np.asarray(lin.bias.const, np.float64)
        lin.bias = replace_constant_input(graph, lin.add, lin.bias_index, a * b + shift, PASS)
        mark_folded(lin.add, PASS)
    else:
        add_to_bias(graph, lin, shift, PASS)
    return lin.output


@graph_pass(PASS, "BatchNormalization (inference) -> folded into the preceding Conv or linear's weight and bias")
def fold_batchnorm(graph: Graph) -> PassResult:
    stats: dict[str, int | float | str] = {"batchnorms_folded": 0, "refused": 0}
    for bn in list(graph):
        if bn.op != "BatchNormalization" or bn.graph is not graph:
            continue
        reason = batchnorm_fold_refusal(bn)
        if reason is not None:
            count_refusal(stats, PASS, bn, reason)
            continue
        kind, producer = _producer(bn)  # type: ignore[misc]
        a, shift = _affine(bn)
        if kind == "conv":
            y = _fold_into_conv(graph, producer, a, shift)
        else:
            y = _fold_into_linear(graph, producer, a, shift)
        params = [v for v in bn.inputs[1:5] if v is not None]
        graph.replace_value(bn.outputs[0], y)
        graph.remove_node(bn)
        for v in params:
            drop_if_unused(graph, v)
        stats["batchnorms_folded"] += 1
    return PassResult(graph, stats["batchnorms_folded"] > 0, stats)
