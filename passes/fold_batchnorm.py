"""Pass "fold_batchnorm": inference BatchNormalization folded into the Conv or canonical
linear that produces its input.

Rewrites (exact in float, up to one rounding of the new weights):
- `BatchNormalization(Conv(x, W, b), scale, B, mean, var)` -> `Conv(x, W', b')` with
  `a = scale / sqrt(var + epsilon)`, `W'[o] = a[o] * W[o]`, `b' = a * b + (B - a * mean)`
  (b = 0 when the Conv has no bias; grouped convolutions too: output channel o owns
  W[o] whatever the group);
- `BatchNormalization(ConvTranspose(x, W, b))` -> `ConvTranspose(x, W', b')`: W is
  [C_in, C_out / g, k...], so output channel o = j * (C_out / g) + m (group j) owns
  `W[j * C_in/g : (j+1) * C_in/g, m]`, scaled by a[o];
- `BatchNormalization(Add(MatMul(x, W), b))` on a 2-D [N, C] activation (BatchNorm1d
  after a Linear, where the channel axis is the features) -> `Add(MatMul(x, W'), b')`
  with `W'[:, o] = a[o] * W[:, o]` (a bias-less MatMul gets a new Add).

When no producer can take it (the BatchNorm normalises a graph input, or a value others
read unnormalised), it folds forward into its readers instead, if every reader is
- a Conv without padding (pads 0 or auto_pad VALID: a zero-padded border would see 0,
  not BN(0) = shift): `Conv(a * x + shift, W, b) = Conv(x, W', b')` with
  `W'[o, i] = a[g(o) + i] * W[o, i]` and `b'[o] = b[o] + sum_{i,k} W[o, i, k] *
  shift[g(o) + i]`, g(o) the first input channel of o's group;
- a canonical linear reading a 2-D [N, C] BatchNorm1d output: `W'[c, :] = a[c] W[c, :]`,
  `b' = b + shift @ W`.
(The fold of batch normalisation into adjacent convolutions: Jacob et al., CVPR 2018,
section 3.2; forward folding is the same identity on the reader's side.)

Refused, counted in the stats as `refused:<reason>`: `training_mode=1` (batch
statistics are not constants), non-constant BatchNorm parameters or weights, and a
BatchNorm that neither direction takes: no producer that is a Conv / ConvTranspose /
linear (`no_producer`) or one whose output something besides the BatchNorm reads or
that is a graph output (`shared_producer`: its other readers need the unnormalised
values), with a reader that is not an unpadded Conv or a linear (or the BatchNorm's
output is a graph output).

Stats: `batchnorms_folded` (either direction), `folded_forward`, `refused`,
`refused:<reason>`.
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
    if node.op in ("Conv", "ConvTranspose"):
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


def _output_channel_scale(conv: Node, w: np.ndarray, a: np.ndarray) -> np.ndarray:
    """`a` per output channel shaped to multiply W: Conv W[O, I/g, k...] along axis 0;
    ConvTranspose W[I, O/g, k...]: group j's rows, column m, is output channel
    j * O/g + m."""
    if conv.op == "Conv":
        return a.reshape((-1,) + (1,) * (w.ndim - 1))
    group = int(conv.attrs.get("group", 1))
    per_group = w.shape[1]
    rows = np.arange(w.shape[0]) // (w.shape[0] // group)  # each input row's group
    return a.reshape(group, per_group)[rows].reshape(w.shape[:2] + (1,) * (w.ndim - 2))


def _fold_into_conv(graph: Graph, conv: Node, a: np.ndarray, shift: np.ndarray) -> Value:
    w = np.asarray(conv.inputs[1].const, np.float64)
    replace_constant_input(graph, conv, 1, w * _output_channel_scale(conv, w, a), PASS)
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


# -- forward: into the readers -------------------------------------------------------------


def _unpadded(conv: Node) -> bool:
    auto = conv.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return True
    return auto == "NOTSET" and not any(int(p) for p in conv.attrs.get("pads", []) or [])


def _forward_readers(bn: Node) -> list[tuple[str, Node | Linear]] | None:
    """Every reader of the BatchNorm's output as ("conv", node) / ("linear", Linear),
    or None when one of them cannot absorb it (or the output is a graph output)."""
    y = bn.outputs[0]
    graph = bn.graph
    if not y.uses or (graph is not None and graph.is_output(y)):
        return None
    readers: list[tuple[str, Node | Linear]] = []
    for node, index in y.uses:
        if node.op == "Conv" and index == 0 and _unpadded(node):
            w = node.inputs[1]
            b = node.inputs[2] if len(node.inputs) > 2 else None
            if w is None or w.const is None or (b is not None and b.const is None):
                return None
            readers.append(("conv", node))
            continue
        lin = as_linear(node, y) if y.type.rank == 2 else "not a [N, C] activation"
        if isinstance(lin, str):
            return None
        readers.append(("linear", lin))
    return readers


def _fold_forward_into_conv(graph: Graph, conv: Node, a: np.ndarray, shift: np.ndarray) -> None:
    w = np.asarray(conv.inputs[1].const, np.float64)  # [O, I/g, k...]
    group = int(conv.attrs.get("group", 1))
    per_group = w.shape[1]
    first = (np.arange(w.shape[0]) // (w.shape[0] // group)) * per_group  # first input channel of o's group
    channels = first[:, None] + np.arange(per_group)[None, :]  # [O, I/g] input channel indices
    extra = (w * shift[channels].reshape(channels.shape + (1,) * (w.ndim - 2))).reshape(w.shape[0], -1).sum(1)
    replace_constant_input(graph, conv, 1, w * a[channels].reshape(channels.shape + (1,) * (w.ndim - 2)), PASS)
    b = conv.inputs[2] if len(conv.inputs) > 2 else None
    if b is None:
        dt = conv.inputs[1].dtype
        conv.append_input(graph.add_constant(extra.astype(dt.np), dtype=dt, base=f"{conv.inputs[1].name}_bias"))
    else:
        replace_constant_input(graph, conv, 2, np.asarray(b.const, np.float64).reshape(-1) + extra, PASS)
    mark_folded(conv, PASS)


def _fold_forward_into_linear(graph: Graph, lin: Linear, a: np.ndarray, shift: np.ndarray) -> None:
    w = np.asarray(lin.weight.const, np.float64)  # [C, N]
    lin.weight = replace_constant_input(graph, lin.matmul, 1, w * a[:, None], PASS)
    mark_folded(lin.matmul, PASS)
    add_to_bias(graph, lin, shift @ w, PASS)


def _fold_forward(graph: Graph, bn: Node, readers: list[tuple[str, Node | Linear]]) -> None:
    a, shift = _affine(bn)
    x = bn.inputs[0]
    for kind, reader in readers:
        if kind == "conv":
            _fold_forward_into_conv(graph, reader, a, shift)  # type: ignore[arg-type]
        else:
            _fold_forward_into_linear(graph, reader, a, shift)  # type: ignore[arg-type]
    params = [v for v in bn.inputs[1:5] if v is not None]
    graph.replace_value(bn.outputs[0], x)
    graph.remove_node(bn)
    for v in params:
        drop_if_unused(graph, v)


@graph_pass(PASS, "BatchNormalization (inference) -> folded into the preceding Conv / ConvTranspose / linear's "
                  "weight and bias, else into unpadded Convs / linears reading it")
def fold_batchnorm(graph: Graph) -> PassResult:
    stats: dict[str, int | float | str] = {"batchnorms_folded": 0, "refused": 0}
    for bn in list(graph):
        if bn.op != "BatchNormalization" or bn.graph is not graph:
            continue
        reason = batchnorm_fold_refusal(bn)
        if reason in ("no_producer", "shared_producer"):
            readers = _forward_readers(bn)
            if readers is not None:
                _fold_forward(graph, bn, readers)
                stats["batchnorms_folded"] += 1
                stats["folded_forward"] = int(stats.get("folded_forward", 0)) + 1
                continue
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
