"""Helpers shared by the fold passes (fold_batchnorm, fold_norm_affine, smoothquant,
llm_fp4): recognising canonical linears and normalisation affines, replacing constant
operands, and migrating an invertible channel transform (passes/channel_transforms.py:
diagonal, orthogonal, block-diagonal, any matrix) between a tensor's writer and the
linears that read it, refusing with a reason where one cannot absorb it.

Stream-wide transforms (`migrate_stream_transform`) are the same migration over a whole
residual stream (passes/residual_stream.py): every writer takes M (linear weights and
biases, embedding tables, constant terms of the stream's first value), every linear
reading the stream, directly or through a norm that commutes with M, takes M^-1; a
writer of the stream's first value or a reader of its last value that cannot absorb M
gets one explicit product instead (`explicit_ends`), and anything else that cannot
refuses the whole migration by name, before anything changes. `write_into_stream` is the
writer half alone, for maps that are not invertible (the mean removal of
passes/layernorm_to_rmsnorm.py).

Nothing here is a pass. The canonical linear (passes/canonicalize_linear.py) is
`MatMul(x, W[in, out])` with W a constant, optionally followed by `Add(., b)` with b a
constant per-feature vector; the fold passes read and write exactly that form.

Every new weight is a new constant (constants are read-only and may be shared, e.g.
after CSE merged equal norm weights of several layers); a replaced constant that nothing
reads any more is removed. Arithmetic on weights is done in float64 and rounded once
to the weight's dtype.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from requant.errors import RequantError
from requant.ir.graph import Graph, Node, Value
from requant.ir.shapes import normalize_axis
from requant.passes.channel_transforms import ChannelTransform, HadamardTransform

if TYPE_CHECKING:  # residual_stream imports this module
    from requant.passes.residual_stream import ResidualStream

__all__ = [
    "count_refusal",
    "NORM_OPS",
    "Linear",
    "as_linear",
    "linear_readers",
    "producing_linear",
    "replace_constant_input",
    "drop_if_unused",
    "scale_weight_rows",
    "add_to_bias",
    "splice_after",
    "unused_name",
    "rebuild_node",
    "mark_folded",
    "norm_affine",
    "set_norm_affine",
    "Migration",
    "writer_absorber",
    "migration_refusal",
    "migrate_transform",
    "StreamMigration",
    "write_into_stream",
    "stream_transform_refusal",
    "migrate_stream_transform",
]

logger = logging.getLogger(__name__)

NORM_OPS = ("LayerNormalization", "RMSNormalization")


# -- canonical linears ----------------------------------------------------------------------


@dataclass
class Linear:
    """A canonical linear reading an activation: `MatMul(x, W)` with W a constant
    [in, out], and its bias `Add(., b)` when the MatMul's only reader is an Add with a
    constant 1-D [out] operand."""

    matmul: Node
    weight: Value
    add: Node | None = None
    bias: Value | None = None

    @property
    def output(self) -> Value:
        return (self.add if self.add is not None else self.matmul).outputs[0]

    @property
    def bias_index(self) -> int:
        assert self.add is not None and self.bias is not None
        return 0 if self.add.inputs[0] is self.bias else 1


def as_linear(node: Node, x: Value) -> Linear | str:
    """`node` as a canonical linear whose activation input is `x`, else why not."""
    if node.op != "MatMul":
        return f"{node.label} is a {node.op}, not a linear"
    a, w = node.inputs
    if a is not x or w is x:
        return f"{node.label} reads %{x.name} as its weight operand"
    if w is None or w.const is None:
        return f"{node.label} has a non-constant weight"
    if w.type.rank != 2 or not w.dtype.is_float or w.dtype != x.dtype:
        return f"{node.label}: weight %{w.name} is not a 2-D {x.dtype} matrix"
    lin = Linear(node, w)
    out = node.outputs[0]
    graph = node.graph
    users = out.users
    if len(users) == 1 and len(out.uses) == 1 and users[0].op == "Add" and not (graph and graph.is_output(out)):
        add = users[0]
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        n_out = w.type.shape[1]
        if other is not None and other.const is not None and other.dtype == w.dtype and other.type.shape == (n_out,):
            lin.add, lin.bias = add, other
    return lin


def linear_readers(x: Value) -> tuple[list[Linear], list[str]]:
    """The canonical linears reading `x` and, for every other reader, why it is not one."""
    linears: list[Linear] = []
    others: list[str] = []
    for node in x.users:
        found = as_linear(node, x)
        if isinstance(found, str):
            others.append(found)
        else:
            linears.append(found)
    return linears, others


def producing_linear(x: Value) -> Linear | None:
    """The canonical linear whose output (after its bias Add, when it has one) is `x`."""
    node = x.producer
    if node is None or node.op not in ("MatMul", "Add"):
        return None
    matmuls = [node] if node.op == "MatMul" else [a.producer for a in node.inputs if a is not None
                                                   and a.producer is not None and a.producer.op == "MatMul"]
    for mm in matmuls:
        lin = as_linear(mm, mm.inputs[0])
        if isinstance(lin, Linear) and lin.output is x:
            return lin
    return None


# -- editing constants and nodes ---------------------------------------------------------------


def replace_constant_input(graph: Graph, node: Node, index: int, array: np.ndarray, suffix: str) -> Value:
    """Give `node` a new constant `array` (rounded to the old operand's dtype, named after
    it, with its meta) at input `index`; the old constant goes when nothing reads it."""
    old = node.inputs[index]
    assert old is not None
    new = graph.add_constant(np.ascontiguousarray(np.asarray(array).astype(old.dtype.np)), dtype=old.dtype,
                             base=f"{old.name}_{suffix}")
    new.meta.update(old.meta)
    node.set_input(index, new)
    drop_if_unused(graph, old)
    return new


def drop_if_unused(graph: Graph, v: Value) -> None:
    """Remove constant `v` from `graph` when nothing reads it and it is not an output."""
    if v.const is not None and not v.uses and v in graph.constants and not graph.is_output(v):
        graph.remove_constant(v)


def scale_weight_rows(graph: Graph, lin: Linear, s: np.ndarray, suffix: str) -> None:
    """W <- diag(s) W: input channel j of the linear is multiplied by s[j]."""
    w = np.asarray(lin.weight.const, dtype=np.float64)
    lin.weight = replace_constant_input(graph, lin.matmul, 1, w * np.asarray(s, np.float64)[:, None], suffix)


def add_to_bias(graph: Graph, lin: Linear, delta: np.ndarray, suffix: str) -> None:
    """b <- b + delta (a new Add after the MatMul when the linear has no bias)."""
    delta = np.asarray(delta, np.float64)
    if lin.add is not None and lin.bias is not None:
        b = np.asarray(lin.bias.const, np.float64)
        lin.bias = replace_constant_input(graph, lin.add, lin.bias_index, b + delta, suffix)
        return
    out = lin.matmul.outputs[0]
    c = graph.add_constant(delta.astype(out.dtype.np), dtype=out.dtype, base=f"{lin.weight.name}_{suffix}_bias")
    new = splice_after(graph, out, list(out.uses), "Add", [c], created_by=suffix, suffix="biased")
    lin.add, lin.bias = new.producer, c


def splice_after(graph: Graph, value: Value, uses: Sequence[tuple[Node, int]], op: str, operands: Sequence[Value],
                 attrs: dict[str, Any] | None = None, *, created_by: str, suffix: str | None = None) -> Value:
    """Insert `op(value, *operands)` right after `value`'s producer and point `uses` (a
    subset of value's uses) at its output; when `value` is a graph output and every use
    moves, the new value takes over the output (and its name)."""
    anchor = value.producer
    moving_all = len(uses) == len(value.uses)
    kwargs: dict[str, Any] = {"after": anchor} if anchor is not None else {"before": _first_node(graph)}
    names = [unused_name(graph, f"{value.name}_{suffix}")] if suffix else None
    node = graph.create_node(op, [value, *operands], attrs or {}, meta={"created_by": created_by}, output_names=names,
                             **kwargs)
    new = node.outputs[0]
    for user, index in list(uses):
        user.set_input(index, new)
    if moving_all and graph.is_output(value):
        _take_over_output(graph, value, new)
    return new


def _first_node(graph: Graph) -> Node | None:
    for node in graph:
        return node
    return None


def unused_name(graph: Graph, base: str) -> str:
    """A value name not taken in `graph` (not claimed: `Graph.rename` claims it)."""
    name, i = base, 0
    while graph.has_name(name):
        i += 1
        name = f"{base}_{i}"
    return name


def _take_over_output(graph: Graph, old: Value, new: Value) -> None:
    name = old.name
    graph.rename(old, unused_name(graph, f"{name}_unfolded"))
    graph.rename(new, name)
    graph.outputs = [new if o is old else o for o in graph.outputs]


def rebuild_node(graph: Graph, node: Node, inputs: Sequence[Value | None], *, created_by: str) -> Node:
    """Replace single-output `node` by a node of the same op, attributes and name with
    `inputs` (e.g. dropping a trailing optional input). The new output keeps the old
    output's name, type, meta and readers (graph outputs included)."""
    old = node.outputs[0]
    name = old.name
    graph.rename(old, unused_name(graph, f"{name}_old"))
    meta = dict(node.meta)
    meta.setdefault("created_by", created_by)
    new_node = graph.create_node(node.op, list(inputs), dict(node.attrs), output_types=[old.type],
                                 output_names=[name], name=node.name, meta=meta, before=node)
    new = new_node.outputs[0]
    new.meta.update(old.meta)
    old.replace_all_uses_with(new)
    graph.outputs = [new if o is old else o for o in graph.outputs]
    replaced = [v for v in node.inputs if v is not None]
    graph.remove_node(node)
    for v in replaced:
        drop_if_unused(graph, v)
    return new_node


def count_refusal(stats: dict, pass_name: str, node: Node, reason: str) -> None:
    """A fold left undone: `refused` and `refused:<reason>` counted in `stats`, logged."""
    stats["refused"] += 1
    key = f"refused:{reason}"
    stats[key] = int(stats.get(key, 0)) + 1
    logger.debug("%s: %s not folded: %s", pass_name, node.label, reason)


def mark_folded(node: Node, pass_name: str) -> None:
    """Record on a node that a fold pass changed its constant operands."""
    folded = node.meta.setdefault("folded", [])
    if pass_name not in folded:
        folded.append(pass_name)


# -- normalisation affines -----------------------------------------------------------------------


def norm_affine(node: Node) -> tuple[np.ndarray, np.ndarray | None] | str:
    """(gamma [C], beta [C] or None) of a LayerNormalization / RMSNormalization that
    normalises the last axis only and has constant per-feature affine parameters (float64),
    else why not."""
    if node.op not in NORM_OPS:
        return f"{node.label} is not a LayerNormalization / RMSNormalization"
    if len(node.outputs) != 1:
        return f"{node.label} also returns its statistics"
    x = node.inputs[0]
    shape = x.type.shape if x is not None else None
    if shape is None or not shape or not isinstance(shape[-1], int):
        return f"{node.label}: the normalised axis has no static size"
    rank = len(shape)
    if normalize_axis(int(node.attrs.get("axis", -1)), rank, node.op) != rank - 1:
        return f"{node.label} normalises more than the last axis"
    c = shape[-1]
    params: list[np.ndarray | None] = []
    for i, what in ((1, "scale"), (2, "bias")):
        p = node.inputs[i] if i < len(node.inputs) else None
        if p is None:
            params.append(None)
            continue
        if p.const is None:
            return f"{node.label}: its {what} is not a constant"
        arr = np.asarray(p.const, np.float64)
        if (arr.ndim > 1 and any(d != 1 for d in arr.shape[:-1])) or arr.size not in (1, c):
            return f"{node.label}: its {what} of shape {arr.shape} is not per-feature"
        params.append(np.broadcast_to(arr.reshape(-1), (c,)).copy())
    gamma, beta = params
    assert gamma is not None  # Scale is a required input
    return gamma, beta


def set_norm_affine(graph: Graph, node: Node, gamma: np.ndarray, beta: np.ndarray | None, *, created_by: str) -> Node:
    """Give a norm new affine parameters (1-D [C]); beta None drops LayerNorm's bias."""
    dt = node.inputs[0].dtype
    g = graph.add_constant(np.asarray(gamma, np.float64).astype(dt.np), dtype=dt,
                           base=f"{node.inputs[1].name}_{created_by}")
    g.meta.update(node.inputs[1].meta)
    inputs: list[Value | None] = [node.inputs[0], g]
    if beta is not None:
        old_b = node.inputs[2] if len(node.inputs) > 2 else None
        base = f"{old_b.name}_{created_by}" if old_b is not None else f"{node.outputs[0].name}_bias"
        b = graph.add_constant(np.asarray(beta, np.float64).astype(dt.np), dtype=dt, base=base)
        if old_b is not None:
            b.meta.update(old_b.meta)
        inputs.append(b)
    new = rebuild_node(graph, node, inputs, created_by=created_by)
    mark_folded(new, created_by)
    return new


# -- migrating an invertible transform between a tensor's writer and its readers ------------------


@dataclass
class Migration:
    """What `migrate_transform` did: how x M is produced ("norm", "linear", "mul",
    "hadamard" or "matmul"), the value the linears read now, and those linears (their
    weights updated)."""

    how: str
    value: Value
    linears: list[Linear]


def writer_absorber(graph: Graph, x: Value, transform: ChannelTransform, others: Sequence[str]) -> str:
    """How x M can be computed with no extra op, or "explicit": "norm" when x is a
    LayerNorm / RMSNorm output with per-channel affine and M is diagonal (gamma M, beta M),
    "linear" when x is a canonical linear's output (V M, b M). Only when x has no reader
    but the linears taking M^-1 (`others` empty) and is not a graph output can its writer
    change."""
    if others or graph.is_output(x):
        return "explicit"
    node = x.producer
    if node is None:
        return "explicit"
    if node.op in NORM_OPS:
        ok = transform.diagonal is not None and not isinstance(norm_affine(node), str)
        return "norm" if ok else "explicit"
    return "linear" if producing_linear(x) is not None else "explicit"


def migration_refusal(graph: Graph, x: Value, transform: ChannelTransform, *, explicit: bool = True) -> str | None:
    """Why `migrate_transform(graph, x, transform, explicit=explicit)` cannot run, or None."""
    linears, others = linear_readers(x)
    if not linears:
        return f"%{x.name} has no canonical linear reader to take the inverse transform" + (
            f" ({others[0]})" if others else "")
    width = x.type.shape[-1] if x.type.shape else None
    if width != transform.size:
        return f"%{x.name} has {width} channels, the transform is {transform.describe()}"
    if not explicit and writer_absorber(graph, x, transform, others) == "explicit":
        if others:
            return f"a reader of %{x.name} cannot absorb the inverse transform: {others[0]}"
        writer = x.producer.label if x.producer is not None else "a graph input"
        what = "a norm's affine absorbs only a diagonal transform" if x.producer is not None and \
            x.producer.op in NORM_OPS else "it is neither a canonical linear nor a norm"
        return f"the writer of %{x.name} ({writer}) cannot absorb a {transform.kind} transform: {what}"
    return None


def migrate_transform(graph: Graph, x: Value, transform: ChannelTransform, *, created_by: str,
                      explicit: bool = True) -> Migration:
    """Rewrite `x -> linears` as `(x M) -> linears with W <- M^-1 W` (exact in float): every
    canonical linear reading x takes M^-1 into its weight rows; x M is made by x's writer
    when it can absorb M (`writer_absorber`), else, with `explicit`, by a `Mul(x, diag M)`
    (diagonal M), requant's `Hadamard(x)` (an unsigned `HadamardTransform`: O(n log n)
    per row) or `MatMul(x, M)` on the branch to the linears only, so other readers still
    see x. Raises `RequantError` with the reason when it cannot (`migration_refusal`)."""
    reason = migration_refusal(graph, x, transform, explicit=explicit)
    if reason is not None:
        raise RequantError(f"{created_by}: cannot migrate a {transform.describe()} transform: {reason}")
    linears, others = linear_readers(x)
    for lin in linears:
        w = np.asarray(lin.weight.const, np.float64)
        lin.weight = replace_constant_input(graph, lin.matmul, 1, transform.inverse_left(w), created_by)
        mark_folded(lin.matmul, created_by)
    how = writer_absorber(graph, x, transform, others)
    if how == "norm":
        gamma, beta = norm_affine(x.producer)  # type: ignore[misc]
        d = transform.diagonal
        new = set_norm_affine(graph, x.producer, gamma * d, None if beta is None else beta * d, created_by=created_by)
        return Migration(how, new.outputs[0], linears)
    if how == "linear":
        _transform_producer_linear(graph, x, transform, created_by)
        return Migration(how, x, linears)
    uses = [(lin.matmul, 0) for lin in linears]
    d = transform.diagonal
    if d is not None:
        c = graph.add_constant(d.astype(x.dtype.np), dtype=x.dtype, base=f"{x.name}_channel_scale")
        return Migration("mul", splice_after(graph, x, uses, "Mul", [c], created_by=created_by, suffix="scaled"),
                         linears)
    if isinstance(transform, HadamardTransform) and transform.online:
        attrs = {"axis": -1} | ({"block": transform.block} if transform.block else {})
        return Migration("hadamard", splice_after(graph, x, uses, "Hadamard", [], attrs, created_by=created_by,
                                                  suffix="rotated"), linears)
    m = graph.add_constant(transform.matrix().astype(x.dtype.np), dtype=x.dtype, base=f"{x.name}_transform")
    return Migration("matmul", splice_after(graph, x, uses, "MatMul", [m], created_by=created_by,
                                            suffix="transformed"), linears)


def _transform_producer_linear(graph: Graph, x: Value, transform: ChannelTransform, created_by: str) -> None:
    """x = u V + b -> u (V M) + b M."""
    lin = producing_linear(x)
    assert lin is not None
    w = np.asarray(lin.weight.const, np.float64)
    replace_constant_input(graph, lin.matmul, 1, transform.right(w), created_by)
    mark_folded(lin.matmul, created_by)
    if lin.add is not None and lin.bias is not None:
        b = np.asarray(lin.bias.const, np.float64)
        replace_constant_input(graph, lin.add, lin.bias_index, transform.right(b), created_by)
        mark_folded(lin.add, created_by)


# -- stream-wide transforms ------------------------------------------------------------------------


@dataclass
class StreamMigration:
    """What a stream-wide migration did: the writer nodes whose constants took M, the
    linears that took M^-1, and the values that got an explicit product at the stream's
    start or end (module docstring)."""

    writers: int = 0
    readers: int = 0
    explicit: list[str] = field(default_factory=list)


def _repairable(stream: ResidualStream, explicit_ends: bool) -> tuple[list, list]:
    """(the blocks an explicit product repairs, the blocks that refuse)."""
    fixed, refused = [], []
    for b in stream.blocks:
        ok = explicit_ends and ((b.role == "writer" and b.where == "start") or (b.role == "reader" and b.where == "end"))
        (fixed if ok else refused).append(b)
    return fixed, refused


def _writer_refusal(stream: ResidualStream, explicit_ends: bool) -> str | None:
    if stream.position != "pre-norm":
        return (f"{stream.describe()}: the stream passes through its LayerNorms, whose gamma commutes with no "
                f"transform of the stream (post-norm): transform each linear's input instead (rotate_online)")
    _, refused = _repairable(stream, explicit_ends)
    if refused:
        b = refused[0]
        where = "" if b.where == "middle" or not explicit_ends else f" (at the stream's {b.where})"
        return f"{b.reason}{where}"
    return None


def stream_transform_refusal(graph: Graph, stream: ResidualStream, transform: ChannelTransform, *,
                             explicit_ends: bool = True) -> str | None:
    """Why `migrate_stream_transform` cannot move `transform` along `stream`, or None."""
    if stream.width != transform.size:
        return f"the stream has {stream.width} channels, the transform is {transform.describe()}"
    reason = _writer_refusal(stream, explicit_ends)
    if reason is not None:
        return reason
    if transform.kind not in ("orthogonal", "hadamard"):
        return f"a {transform.kind} transform of the stream does not commute with its norms (only rotations do)"
    fixed, _ = _repairable(stream, explicit_ends)
    repaired_norms = {id(b.node) for b in fixed if b.role == "reader"}
    for norm in stream.norms:
        if id(norm) in repaired_norms:
            continue
        why = _norm_commutes(norm)
        if why is not None:
            return why
    return None


def _norm_commutes(norm: Node) -> str | None:
    """Why a norm reading the stream does not commute with a rotation of it, or None:
    RMSNorm(x Q) = RMSNorm(x) Q when its scale is one value (|x Q| = |x|)."""
    if norm.op != "RMSNormalization":
        return (f"{norm.label} ({norm.op}) reads the stream and subtracts its mean, which a rotation does not keep: "
                f"run layernorm_to_rmsnorm first")
    found = norm_affine(norm)
    if isinstance(found, str):
        return found
    gamma, _ = found
    if not np.all(gamma == gamma[0]):
        return f"{norm.label} scales each channel differently: run fold_norm_affine first"
    return None


def _stream_uses(stream: ResidualStream, v: Value) -> list[tuple[Node, int]]:
    """The uses through which writer value `v` enters the stream: all of them for the
    stream's first value, else those by the sum / concat writers it is a part of."""
    if v is stream.values[0]:
        return list(v.uses)
    parts = {id(w.node) for w in stream.writers if w.kind in ("sum", "concat")}
    return [(n, i) for n, i in v.uses if id(n) in parts]


def write_into_stream(graph: Graph, stream: ResidualStream, right: Callable[[np.ndarray], np.ndarray],
                      matrix: np.ndarray, *, created_by: str, explicit_ends: bool = True) -> StreamMigration:
    """Make every writer of `stream` write `x M` instead of `x` (`right(a)` = a M on the
    last axis, `matrix` = M): linear writers W <- W M, b <- b M; embedding tables; the
    constant terms of sums and concats; a writer of the first value that cannot absorb M
    gets `MatMul(v, M)` (`explicit_ends`). Raises `RequantError` (nothing changed) when a
    writer cannot and is not at the start. Readers are left to the caller."""
    reason = _writer_refusal(stream, explicit_ends)
    if reason is not None:
        raise RequantError(f"{created_by}: cannot transform the residual stream: {reason}")
    done = StreamMigration()
    seen: set[int] = set()
    for w in stream.writers:
        if id(w.node) in seen:
            continue
        seen.add(id(w.node))
        if w.kind == "linear":
            _transform_producer_linear_with(graph, w.value, right, created_by)
        elif w.kind == "embedding":
            table = w.node.inputs[0]
            replace_constant_input(graph, w.node, 0, right(np.asarray(table.const, np.float64)), created_by)
            mark_folded(w.node, created_by)
        else:  # sum / concat: the constant terms; the computed ones are writers of their own
            for i, x in enumerate(w.node.inputs):
                if x is not None and x.const is not None:
                    replace_constant_input(graph, w.node, i, right(np.asarray(x.const, np.float64)), created_by)
            mark_folded(w.node, created_by)
        done.writers += 1
    fixed, _ = _repairable(stream, explicit_ends)
    for b in fixed:
        if b.role != "writer":
            continue
        m = graph.add_constant(np.asarray(matrix, np.float64).astype(b.value.dtype.np), dtype=b.value.dtype,
                               base=f"{b.value.name}_{created_by}")
        splice_after(graph, b.value, _stream_uses(stream, b.value), "MatMul", [m], created_by=created_by,
                     suffix=created_by)
        done.explicit.append(b.value.name)
    return done


def _transform_producer_linear_with(graph: Graph, x: Value, right: Callable[[np.ndarray], np.ndarray],
                                    created_by: str) -> None:
    """x = u V + b -> u right(V) + right(b)."""
    lin = producing_linear(x)
    assert lin is not None
    replace_constant_input(graph, lin.matmul, 1, right(np.asarray(lin.weight.const, np.float64)), created_by)
    mark_folded(lin.matmul, created_by)
    if lin.add is not None and lin.bias is not None:
        replace_constant_input(graph, lin.add, lin.bias_index, right(np.asarray(lin.bias.const, np.float64)),
                               created_by)
        mark_folded(lin.add, created_by)


def migrate_stream_transform(graph: Graph, stream: ResidualStream, transform: ChannelTransform, *,
                             created_by: str, explicit_ends: bool = True) -> StreamMigration:
    """Move the rotation M along the whole residual `stream` (module docstring): writers
    take M (`write_into_stream`), every linear reading the stream (through a norm that
    commutes with M, or directly) takes M^-1 into its weight rows; with `explicit_ends`,
    a reader of the last value that cannot absorb M^-1 (a final LayerNorm whose output is
    the graph's) reads `MatMul(h, M^-1)`. Exact in float. Raises `RequantError` naming the
    first op that cannot take part, before changing anything."""
    reason = stream_transform_refusal(graph, stream, transform, explicit_ends=explicit_ends)
    if reason is not None:
        raise RequantError(f"{created_by}: cannot move a {transform.describe()} transform along the residual "
                           f"stream: {reason}")
    fixed, _ = _repairable(stream, explicit_ends)
    ends = [b for b in fixed if b.role == "reader"]
    done = write_into_stream(graph, stream, transform.right, transform.matrix(), created_by=created_by,
                             explicit_ends=explicit_ends)
    seen: set[int] = set()
    for r in stream.readers:
        if id(r.linear.matmul) in seen:
            continue
        seen.add(id(r.linear.matmul))
        w = np.asarray(r.linear.weight.const, np.float64)
        r.linear.weight = replace_constant_input(graph, r.linear.matmul, 1, transform.inverse_left(w), created_by)
        mark_folded(r.linear.matmul, created_by)
        r.linear.matmul.meta["rotated_input"] = created_by  # its input is rotated: no online rotation needed
        done.readers += 1
    if ends:
        inverse = transform.inverse().matrix()
        for b in ends:
            m = graph.add_constant(inverse.astype(b.value.dtype.np), dtype=b.value.dtype,
                                   base=f"{b.value.name}_{created_by}_inverse")
            splice_after(graph, b.value, [(b.node, b.index)], "MatMul", [m], created_by=created_by,
                         suffix=f"{created_by}_restored")
            done.explicit.append(b.value.name)
    return done
