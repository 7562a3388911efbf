"""The residual-stream analysis: in any captured transformer graph, find the chain of
residual Adds, the norms that read or make the stream, and every linear that writes to
or reads from it, with no per-architecture table. Rotations (QuaRot's R1), LayerNorm ->
RMSNorm and other stream-wide transforms use it to know where a transform must go and
why it cannot.

Definitions (h the stream, the row-vector convention y = x W):
- a *residual Add* is `Add(skip, branch)` where `branch` is computed from `skip`
  (skip is an ancestor of branch in the dataflow graph: networkx reachability), both
  float and of one shape;
- residual Adds form a *stream* when each Add's skip is the previous Add's output
  (pre-norm: h_{k+1} = h_k + f(norm(h_k)), Llama / GPT-2 / ViT), or the output of a norm
  reading only the previous Add's output (post-norm: h_{k+1} = norm(h_k + f(h_k)), BERT),
  either possibly through Reshapes that keep the channel axis (OPT flattens the stream to
  [tokens, d] around its FFN): such a Reshape regroups whole rows, so channel c stays c;
- the stream's *values* are the first skip h_0, then each Add's output (pre-norm) or
  each norm's output (post-norm); its *aliases* are the values and every channel-keeping
  Reshape of them;
- *writers*: what produces h_0 (an embedding Gather from a constant table, a sum of
  them, a canonical linear) and each Add's branch (a canonical linear: attention's
  output projection, the FFN's down projection);
- *readers*: the canonical linears reading a stream value directly, or through a norm
  that reads it (Q/K/V, up/gate projections, the head);
- *blockers*: every reader or writer that could not take a transform of the stream,
  with the reason: a non-linear reader, a branch not ending in a linear, a stream value
  that is a graph output, a norm reading the stream whose output is a graph output, a
  post-norm LayerNorm (the stream passes through it, and a norm commutes only with
  transforms it can absorb). Each is also recorded as a `StreamBlock` (role, node, the
  stream value, and where it sits: at the stream's "start" (a writer of h_0), its "end"
  (a reader of the last value) or in the "middle"), so that a stream-wide transform can
  repair the two ends with one explicit product and refuse the rest by name.

`find_residual_streams(graph)` returns every stream, longest first. Nothing here
changes the graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from requant.ir.graph import Graph, Node, Value
from requant.passes.fold_common import NORM_OPS, Linear, as_linear, linear_readers, producing_linear

__all__ = [
    "StreamWriter",
    "StreamReader",
    "StreamBlock",
    "ResidualStream",
    "find_residual_streams",
    "residual_adds",
    "channel_aliases",
]

logger = logging.getLogger(__name__)


@dataclass
class StreamWriter:
    """What writes into the stream: `kind` "linear" (a canonical linear, `linear` set),
    "embedding" (a Gather from a constant table, `node` the Gather), "sum" (an Add of
    writers and constants: token + position embeddings) or "concat" (rows stacked along
    a non-channel axis); the parts of a sum or concat are listed on their own too."""

    value: Value
    kind: str
    node: Node
    linear: Linear | None = None


@dataclass
class StreamReader:
    """A canonical linear reading the stream value `value`, through `norm` (pre-norm) or
    directly (`norm` None)."""

    value: Value
    linear: Linear
    norm: Node | None = None


@dataclass
class StreamBlock:
    """A spot that cannot take a stream-wide transform: `role` "writer" (`node` writes
    `value` into the stream and cannot absorb the transform), "reader" (`node` reads the
    stream alias `value` at input `index` and cannot absorb its inverse) or "stream" (the
    stream itself: post-norm, or a value that is a graph output); `where` is "start" (a
    writer of h_0), "end" (a reader of the last value) or "middle"; `reason` is the
    blocker's sentence."""

    role: str
    value: Value
    node: Node | None
    reason: str
    where: str
    index: int | None = None


@dataclass
class ResidualStream:
    """One chain of residual Adds and what reads and writes it (module docstring)."""

    position: str  # "pre-norm" | "post-norm"
    adds: list[Node]
    values: list[Value]
    norms: list[Node] = field(default_factory=list)
    writers: list[StreamWriter] = field(default_factory=list)
    readers: list[StreamReader] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    blocks: list[StreamBlock] = field(default_factory=list)
    aliases: list[Value] = field(default_factory=list)

    def block(self, role: str, value: Value, node: Node | None, reason: str, where: str,
              index: int | None = None) -> None:
        """Record a blocker (its sentence in `blockers`, the structured form in `blocks`)."""
        self.blockers.append(reason)
        self.blocks.append(StreamBlock(role, value, node, reason, where, index))

    @property
    def width(self) -> int | None:
        """The stream's channel count (its last dim), when static."""
        shape = self.values[0].type.shape
        return shape[-1] if shape and isinstance(shape[-1], int) else None

    def describe(self) -> str:
        return (f"{self.position} residual stream of {len(self.adds)} Adds, width {self.width}: "
                f"{len(self.writers)} writers, {len(self.readers)} readers, {len(self.norms)} norms, "
                f"{len(self.blockers)} blockers")


# -- residual Adds -------------------------------------------------------------------------------


def _dataflow(graph: Graph):
    """networkx DiGraph: one vertex per node (by id) and per graph input, producer ->
    reader edges."""
    import networkx as nx

    g = nx.DiGraph()
    for v in graph.inputs:
        g.add_node(("input", v.name))
    for node in graph:
        g.add_node(id(node))
        for v in node.inputs:
            if v is not None and v.const is None:
                g.add_edge(_vertex(v), id(node))
    return g


def _vertex(v: Value) -> object:
    return id(v.producer) if v.producer is not None else ("input", v.name)


def residual_adds(graph: Graph) -> list[tuple[Node, Value, Value]]:
    """(Add, skip, branch) for every residual Add, in graph order."""
    import networkx as nx

    flow = None
    found = []
    for node in graph:
        if node.op != "Add" or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if a is None or b is None or a.const is not None or b.const is not None or not a.dtype.is_float:
            continue
        if a.type.shape is None or a.type.shape != b.type.shape or b.producer is None and a.producer is None:
            continue
        flow = flow if flow is not None else _dataflow(graph)
        for skip, branch in ((a, b), (b, a)):
            if branch.producer is not None and nx.has_path(flow, _vertex(skip), id(branch.producer)):
                found.append((node, skip, branch))
                break
    return found


# -- chains ----------------------------------------------------------------------------------------


def _is_channel_reshape(node: Node) -> bool:
    """A Reshape keeping the last dim (a static size): it regroups whole rows of channels."""
    if node.op != "Reshape" or node.inputs[0] is None:
        return False
    a, b = node.inputs[0].type.shape, node.outputs[0].type.shape
    return bool(a and b and isinstance(a[-1], int) and a[-1] == b[-1])


def channel_aliases(v: Value) -> list[Value]:
    """`v` and every value reached from it through channel-keeping Reshapes, in order."""
    out, todo = [], [v]
    while todo:
        x = todo.pop(0)
        out.append(x)
        todo += [u.outputs[0] for u in x.users if _is_channel_reshape(u) and u.inputs[0] is x]
    return out


def _post_norm_of(add: Node) -> Node | None:
    """The norm that is the only reader of `add`'s output (a post-norm block's norm)."""
    users = add.outputs[0].users
    return users[0] if len(users) == 1 and users[0].op in NORM_OPS else None


def _chains(found: list[tuple[Node, Value, Value]]) -> list[list[tuple[Node, Value, Value]]]:
    """Residual Adds grouped into streams, each in order."""
    by_skip = {id(item[1]): item for item in found}
    successors: dict[int, tuple[Node, Value, Value]] = {}
    has_predecessor: set[int] = set()
    for add, _, _ in found:
        out = add.outputs[0]
        post = _post_norm_of(add)
        candidates = channel_aliases(out) + (channel_aliases(post.outputs[0]) if post is not None else [])
        for candidate in candidates:
            nxt = by_skip.get(id(candidate))
            if nxt is not None:
                successors[id(add)] = nxt
                has_predecessor.add(id(nxt[0]))
                break
    chains = []
    for item in found:
        if id(item[0]) in has_predecessor:
            continue
        chain = [item]
        while id(chain[-1][0]) in successors and len(chain) <= len(found):
            chain.append(successors[id(chain[-1][0])])
        chains.append(chain)
    return sorted(chains, key=len, reverse=True)


# -- writers, readers, blockers ----------------------------------------------------------------------


def _writers_of(v: Value, stream: ResidualStream, role: str, where: str) -> None:
    """Record what writes `v` into the stream, or why nothing can absorb a transform."""
    node = v.producer
    lin = producing_linear(v)
    if lin is not None:
        stream.writers.append(StreamWriter(v, "linear", lin.matmul, lin))
        return
    if node is not None and node.op == "Gather" and node.inputs[0] is not None and node.inputs[0].const is not None \
            and int(node.attrs.get("axis", 0)) == 0:
        stream.writers.append(StreamWriter(v, "embedding", node))
        return
    if node is not None and node.op == "Add" and any(x is not None and x.const is None for x in node.inputs):
        # a sum of writers (token + position embeddings); a constant term takes the transform too
        stream.writers.append(StreamWriter(v, "sum", node))
        for x in node.inputs:
            if x is not None and x.const is None:
                _writers_of(x, stream, role, where)
        return
    rank = v.type.rank
    if node is not None and node.op == "Concat" and rank and int(node.attrs.get("axis", 0)) % rank != rank - 1:
        # rows stacked along a non-channel axis (a class token before the patches)
        stream.writers.append(StreamWriter(v, "concat", node))
        for x in node.inputs:
            if x is not None and x.const is None:
                _writers_of(x, stream, role, where)
        return
    what = "a graph input" if node is None else f"{node.label} ({node.op})"
    stream.block("writer", v, node, f"the {role} %{v.name} is written by {what}, not a linear or an embedding table",
                 where)


def _readers_of(v: Value, stream: ResidualStream, in_stream: set[int], adds: set[int], where: str) -> None:
    """Record the linears reading stream alias `v` (directly or through a pre-norm) and
    block on any other reader."""
    graph = v.producer.graph if v.producer is not None else None
    if graph is not None and graph.is_output(v):
        stream.block("stream", v, None, f"stream value %{v.name} is a graph output", where)
    for node in v.users:
        if id(node) in adds or (_is_channel_reshape(node) and id(node.outputs[0]) in in_stream):
            continue  # the next residual Add, or the stream regrouped: part of the stream
        index = next(i for i, x in enumerate(node.inputs) if x is v)
        if node.op in NORM_OPS and node.inputs[0] is v:
            if id(node.outputs[0]) in in_stream:
                continue  # post-norm: the norm makes the next stream value
            stream.norms.append(node)
            y = node.outputs[0]
            linears, others = linear_readers(y)
            stream.readers += [StreamReader(v, lin, node) for lin in linears]
            for why in others:
                stream.block("reader", v, node, f"{node.label} reads the stream; {why}", where, index)
            if node.graph is not None and node.graph.is_output(y):
                stream.block("reader", v, node, f"{node.label} reads the stream and its output %{y.name} is a graph "
                             f"output", where, index)
            continue
        lin = as_linear(node, v)
        if isinstance(lin, Linear):
            stream.readers.append(StreamReader(v, lin))
        else:
            stream.block("reader", v, node, f"stream value %{v.name}: {lin}", where, index)


def _stream(chain: list[tuple[Node, Value, Value]]) -> ResidualStream:
    post = [_post_norm_of(add) for add, _, _ in chain]
    # post-norm when every Add but the last feeds the next through its norm
    is_post = all(p is not None for p in post[:-1]) and len(chain) > 1 and \
        all(any(chain[i + 1][1] is a for a in channel_aliases(post[i].outputs[0])) for i in range(len(chain) - 1))
    if len(chain) == 1:
        # one Add read only by a norm: post-norm unless a norm reads its skip too (pre-norm)
        skip = chain[0][1]
        is_post = post[0] is not None and not any(u.op in NORM_OPS for a in channel_aliases(skip) for u in a.users)
    values = [chain[0][1]]
    for (add, _, _), norm in zip(chain, post):
        values.append(norm.outputs[0] if is_post and norm is not None else add.outputs[0])
    stream = ResidualStream("post-norm" if is_post else "pre-norm", [a for a, _, _ in chain], values)
    if is_post:
        stream.norms += [p for p in post if p is not None]
        stream.block("stream", values[0], post[0], "post-norm stream: it passes through "
                     + ", ".join(p.label for p in post if p is not None)
                     + " (LayerNorm with gamma commutes with no rotation of the stream)", "middle")
    _writers_of(values[0], stream, "stream input", "start")
    for add, _, branch in chain:
        _writers_of(branch, stream, f"branch of {add.label}", "middle")
    per_value = [channel_aliases(v) for v in values]
    stream.aliases = [a for group in per_value for a in group]
    ids = {id(a) for a in stream.aliases}
    add_ids = {id(a) for a in stream.adds}
    for k, group in enumerate(per_value):
        for v in group:
            _readers_of(v, stream, ids, add_ids, "end" if k == len(values) - 1 else "middle")
    return stream


def find_residual_streams(graph: Graph) -> list[ResidualStream]:
    """Every residual stream of `graph`, longest first (module docstring)."""
    streams = [_stream(chain) for chain in _chains(residual_adds(graph))]
    for s in streams:
        logger.debug("%s", s.describe())
    return streams
