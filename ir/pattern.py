"""Patterns: small Python expressions that read like the subgraph they match.

    op.Add(op.MatMul(a, b), c)            # a, b, c: Vars bound to any value
    op.Div(op.MatMul(a, b), Const("s"))   # Const: binds only constant values
    op.Softmax(x, axis=-1)                # attribute must equal -1 (default filled in)
    op.Mul(x, y, _commute=True)           # also tries the swapped operand order
    op.MatMul(a, w, _bind="mm")           # the matched node is available as m.mm
    op.Split(x, _output=1)                # the value is output 1 of a Split node

An attribute constraint may also be a predicate `lambda v: ...`. A pattern variable bound
twice must bind the same Value. Matching a pattern against a value yields a `Match`
(bindings, matched nodes with the root last) or a `NoMatch` reason that says where and
why the pattern failed; `requant.ir.rewrite.explain` reports that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from requant.ir.graph import Graph, Node, Value
from requant.ir.registry import get_schema

__all__ = ["Pattern", "Var", "Const", "OpPattern", "op", "Match", "NoMatch", "match_node"]


class Pattern:
    """Base of Var, Const and OpPattern."""


@dataclass(frozen=True, eq=False)
class Var(Pattern):
    """Matches any value (an omitted optional input too, when `optional`)."""

    name: str
    optional: bool = False

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, eq=False)
class Const(Var):
    """Matches a constant value; with `value`, only one whose elements all equal it."""

    value: float | None = None

    def __repr__(self) -> str:
        return f"Const({self.name})" if self.value is None else f"Const({self.name}={self.value})"


@dataclass(frozen=True, eq=False)
class OpPattern(Pattern):
    op: str
    inputs: tuple[Pattern | None, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    output: int = 0
    commute: bool = False
    bind: str | None = None

    def __repr__(self) -> str:
        args = ", ".join("_" if p is None else repr(p) for p in self.inputs)
        extra = "".join(f", {k}={v!r}" for k, v in self.attrs.items())
        return f"{self.op}({args}{extra})"


class _OpFactory:
    """`op.Name(*inputs, **attr_constraints)` makes an OpPattern; `op["domain.Name"](...)`
    does for an op of another domain (its op id, `registry.op_id`)."""

    def __getattr__(self, name: str) -> Callable[..., OpPattern]:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name: str) -> Callable[..., OpPattern]:
        def make(*inputs: Pattern | None, _output: int = 0, _commute: bool = False,
                 _bind: str | None = None, **attrs: Any) -> OpPattern:
            for p in inputs:
                if p is not None and not isinstance(p, Pattern):
                    raise TypeError(f"op.{name}: pattern inputs must be patterns, got {p!r}")
            return OpPattern(name, tuple(inputs), dict(attrs), _output, _commute, _bind)

        return make


op = _OpFactory()


class NoMatch(Exception):
    """Why a pattern did not match: raised inside the matcher, reported by `explain`."""


class Match:
    """A successful match: variable bindings, named nodes, all matched nodes (root last)."""

    def __init__(self, root: Node, bindings: dict[str, Value | None], named: dict[str, Node], nodes: list[Node]) -> None:
        self.root = root
        self.bindings = bindings
        self.named = named
        self.nodes = nodes

    def __getattr__(self, name: str) -> Any:
        if name in ("bindings", "named"):
            raise AttributeError(name)
        if name in self.bindings:
            return self.bindings[name]
        if name in self.named:
            return self.named[name]
        raise AttributeError(f"pattern has no variable or bound node named {name!r}")

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    @property
    def graph(self) -> Graph:
        assert self.root.graph is not None
        return self.root.graph

    def __repr__(self) -> str:
        binds = ", ".join(f"{k}=%{v.name if v is not None else '_'}" for k, v in self.bindings.items())
        return f"<Match at {self.root.label}: {binds}>"


class _Fail(NoMatch):
    """A reasonless NoMatch: the driver only needs to know that a pattern failed, so the
    fast matcher skips building messages and paths (explain() re-runs with them)."""


class _Matcher:
    __slots__ = ("bindings", "named", "nodes", "seen", "explain")

    def __init__(self, explain: bool) -> None:
        self.bindings: dict[str, Value | None] = {}
        self.named: dict[str, Node] = {}
        self.nodes: list[Node] = []
        self.seen: set[int] = set()
        self.explain = explain

    def fail(self, reason: Callable[[], str]) -> NoMatch:
        return NoMatch(reason()) if self.explain else _Fail()

    def snapshot(self) -> tuple:
        return dict(self.bindings), dict(self.named), len(self.nodes), set(self.seen)

    def restore(self, snap: tuple) -> None:
        self.bindings, self.named, n, self.seen = snap[0], snap[1], snap[2], snap[3]
        del self.nodes[n:]

    # `where` is a lazily formatted path, kept only when explaining: None at the root,
    # else (parent_where, op, input index).
    def value(self, pat: Pattern | None, v: Value | None, where: tuple | None) -> None:
        if pat is None:
            if v is not None:
                raise self.fail(lambda: f"{_path(where)}: expected an omitted input, found %{v.name}")
            return
        if isinstance(pat, Var):
            self.var(pat, v, where)
            return
        if v is None:
            raise self.fail(lambda: f"{_path(where)}: input is omitted, pattern wants {pat.op}")
        node = v.producer
        if node is None:
            kind = "a constant" if v.const is not None else "a graph input"
            raise self.fail(lambda: f"{_path(where)}: %{v.name} is {kind}, not the output of {pat.op}")
        self.node(pat, node, v.index, where)

    def var(self, pat: Var, v: Value | None, where: tuple | None) -> None:
        if v is None and not pat.optional:
            raise self.fail(lambda: f"{_path(where)}: input is omitted, {pat.name} needs a value")
        if isinstance(pat, Const) and v is not None:
            if v.const is None:
                raise self.fail(lambda: f"{_path(where)}: %{v.name} is not a constant (pattern {pat!r})")
            if pat.value is not None and not (v.const.size > 0 and np.all(v.const == pat.value)):
                raise self.fail(lambda: f"{_path(where)}: constant %{v.name} is not all {pat.value}")
        bindings = self.bindings
        if pat.name in bindings:
            bound = bindings[pat.name]
            if bound is not v:
                raise self.fail(lambda: f"{_path(where)}: {pat.name} is bound to {_ref(bound)} and to {_ref(v)}")
        else:
            bindings[pat.name] = v

    def node(self, pat: OpPattern, node: Node, output_index: int, where: tuple | None) -> None:
        if node.op != pat.op:
            raise self.fail(lambda: f"{_path(where, pat.op)}: found {node.op} ({node.label})")
        if output_index != pat.output:
            raise self.fail(
                lambda: f"{_path(where, pat.op)}: value is output {output_index}, pattern wants output {pat.output}"
            )
        if pat.attrs:
            self.attrs(pat, node, where)
        ins = node._inputs
        if len(ins) != len(pat.inputs):
            raise self.fail(lambda: f"{_path(where, pat.op)}: node has {len(ins)} inputs, pattern has {len(pat.inputs)}")
        if pat.bind is not None:
            prev = self.named.get(pat.bind)
            if prev is not None and prev is not node:
                raise self.fail(lambda: f"{_path(where, pat.op)}: {pat.bind} is bound to two different nodes")
            self.named[pat.bind] = node
        explain = self.explain
        if pat.commute and len(ins) == 2:
            snap = self.snapshot()
            try:
                self.value(pat.inputs[0], ins[0], (where, pat.op, 0) if explain else None)
                self.value(pat.inputs[1], ins[1], (where, pat.op, 1) if explain else None)
            except NoMatch as first:
                self.restore(snap)
                try:
                    self.value(pat.inputs[0], ins[1], (where, pat.op, 1) if explain else None)
                    self.value(pat.inputs[1], ins[0], (where, pat.op, 0) if explain else None)
                except NoMatch:
                    raise self.fail(lambda first=first: f"{first} (and with operands swapped)") from None
        elif explain:
            for i, p in enumerate(pat.inputs):
                self.value(p, ins[i], (where, pat.op, i))
        else:
            for p, v in zip(pat.inputs, ins):
                self.value(p, v, None)
        if id(node) not in self.seen:
            self.seen.add(id(node))
            self.nodes.append(node)

    def attrs(self, pat: OpPattern, node: Node, where: tuple | None) -> None:
        defaults = get_schema(node.op).attrs
        for key, want in pat.attrs.items():
            have = node.attrs.get(key, defaults.get(key))
            ok = want(have) if callable(want) else _attr_equal(have, want)
            if not ok:
                raise self.fail(lambda: f"{_path(where, pat.op)}: attribute {key}={have!r} does not fit {want!r}")


def _ref(v: Value | None) -> str:
    return "_" if v is None else f"%{v.name}"


def _path(where: tuple | None, op_name: str | None = None) -> str:
    """Format a lazy path: `Add[0] > MatMul[1]`, ending at `op_name` when given."""
    parts: list[str] = []
    while where is not None:
        where, parent_op, index = where
        parts.append(f"{parent_op}[{index}]")
    parts.reverse()
    if op_name is not None:
        parts.append(op_name)
    return " > ".join(parts) if parts else "root"


def _attr_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return bool(a == b)


def match_node(pattern: OpPattern, node: Node, explain: bool = False) -> Match:
    """Match `pattern` rooted at `node`; raise NoMatch otherwise, with the reason when
    `explain` (the driver matches without one, which is faster). Inner values that escape
    the match are checked here too: every output of a non-root matched node must be read
    only by matched nodes and must not be a graph output."""
    m = _Matcher(explain)
    m.node(pattern, node, pattern.output, None)
    graph = node.graph
    inside = m.seen
    for inner in m.nodes:
        if inner is node:
            continue
        for out in inner.outputs:
            for user, _ in out.uses:
                if id(user) not in inside:
                    raise m.fail(
                        lambda: f"inner value %{out.name} ({inner.op}) escapes the match: also read by {user.label}"
                    )
            if graph is not None and graph.is_output(out):
                raise m.fail(lambda: f"inner value %{out.name} ({inner.op}) escapes the match: it is a graph output")
    return Match(node, m.bindings, m.named, m.nodes)
