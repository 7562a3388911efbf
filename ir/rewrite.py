"""Rewrite rules and the worklist driver that applies them to a fixed point.

A `Rule` is a name, a pattern (a function of pattern variables, see ir/pattern.py), an
optional `check(match)` that returns None/True to accept or a reason string (or False)
to refuse, and a `replace(op, match)` that builds the new subgraph with `op` (a Builder
inserting before the matched root) and returns the value(s) that take the root's place:

    matmul_add_to_gemm = Rule(
        "matmul_add_to_gemm",
        pattern=lambda a, b, c: op.Add(op.MatMul(a, b), c),
        check=lambda m: None if m.a.type.rank == 2 else "a is not 2-D",
        replace=lambda op, m: op.Gemm(m.a, m.b, m.c),
    )
    result = rewrite(graph, [matmul_add_to_gemm])

The driver
- visits nodes from a worklist (initially all nodes in order) and tries the rules whose
  root op is the node's op, in the order given;
- never rewrites a match whose inner values are read outside it (or are graph outputs);
- keeps graph outputs' names and types (Graph.replace_value);
- tags every node a rule creates with `meta["created_by"] = rule.name`;
- after a rewrite, revisits the new nodes, the readers of the replacement values and the
  remaining readers of the match's inputs (their patterns may fit now);
- stops at a fixed point, or raises RewriteLimitError after `max_rewrites` rewrites,
  naming the rules that kept firing.
Matched nodes are removed; dead code outside the match is left to the "dce" pass.
`explain(rule, node)` says in one line why the rule does or does not fire there.
"""

from __future__ import annotations

import gc
import inspect
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from requant.errors import RequantError, RewriteLimitError
from requant.ir.builder import Builder
from requant.ir.graph import Graph, Node, Value
from requant.ir.pattern import Match, NoMatch, OpPattern, Pattern, Var, match_node
from requant.ir.verifier import types_agree

__all__ = ["Rule", "RewriteResult", "rewrite", "explain"]

logger = logging.getLogger(__name__)

CheckFn = Callable[[Match], Any]
ReplaceFn = Callable[[Builder, Match], "Value | Sequence[Value | None]"]


class Rule:
    def __init__(
        self,
        name: str,
        pattern: Callable[..., OpPattern] | OpPattern,
        replace: ReplaceFn,
        check: CheckFn | None = None,
        description: str = "",
    ) -> None:
        self.name = name
        self.pattern = pattern if isinstance(pattern, OpPattern) else _build_pattern(pattern)
        if not isinstance(self.pattern, OpPattern):
            raise TypeError(f"rule {name}: the pattern must be rooted at an op, got {self.pattern!r}")
        self.check = check
        self.replace = replace
        self.description = description

    @property
    def root_op(self) -> str:
        return self.pattern.op

    def match(self, node: Node, explain: bool = False) -> Match:
        """Match at `node` and run the check; raise NoMatch otherwise (with the reason
        when `explain`)."""
        m = match_node(self.pattern, node, explain)
        if self.check is not None:
            verdict = self.check(m)
            if verdict is False:
                raise NoMatch("check refused the match")
            if isinstance(verdict, str):
                raise NoMatch(f"check refused: {verdict}")
        return m

    def __repr__(self) -> str:
        return f"<Rule {self.name}: {self.pattern!r}>"


def _build_pattern(fn: Callable[..., Pattern]) -> Pattern:
    params = inspect.signature(fn).parameters
    args = []
    for name, p in params.items():
        args.append(p.default if isinstance(p.default, Pattern) else Var(name))
    return fn(*args)


@dataclass
class RewriteResult:
    changed: bool
    rewrites: int
    by_rule: dict[str, int] = field(default_factory=dict)


def explain(rule: Rule, node: Node) -> str:
    """One line: 'matches' (with the bindings), or why `rule` does not fire at `node`."""
    if node.op != rule.root_op:
        return f"{rule.name} does not match {node.label}: root op is {rule.root_op}, node is {node.op}"
    try:
        m = rule.match(node, explain=True)
    except NoMatch as why:
        return f"{rule.name} does not match {node.label}: {why}"
    return f"{rule.name} matches {node.label}: {m!r}"


def rewrite(graph: Graph, rules: Sequence[Rule], max_rewrites: int | None = None) -> RewriteResult:
    """Apply `rules` until none fires; see the module docstring."""
    # Nodes and values reference each other, so every rewrite leaves cyclic garbage;
    # CPython's full collections over a large graph would make the driver quadratic.
    with _gc_paused():
        return _rewrite(graph, rules, max_rewrites)


@contextmanager
def _gc_paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _rewrite(graph: Graph, rules: Sequence[Rule], max_rewrites: int | None) -> RewriteResult:
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        by_op.setdefault(r.root_op, []).append(r)
    cap = max_rewrites if max_rewrites is not None else max(1000, 10 * len(graph))
    fired: Counter[str] = Counter()
    queue: deque[Node] = deque(n for n in graph if n.op in by_op)
    queued: set[int] = {id(n) for n in queue}
    total = 0
    builders = {id(r): Builder(graph, meta={"created_by": r.name}) for r in rules}

    def push(node: Node) -> None:
        if node.op in by_op and id(node) not in queued and node.graph is graph:
            queued.add(id(node))
            queue.append(node)

    while queue:
        node = queue.popleft()
        queued.discard(id(node))
        if node.graph is not graph:
            continue
        for rule in by_op[node.op]:
            try:
                m = rule.match(node)
            except NoMatch:
                continue
            if total >= cap:
                top = ", ".join(f"{k} x{v}" for k, v in fired.most_common(5))
                raise RewriteLimitError(
                    f"rewriting did not converge after {cap} rewrites (rules firing: {top}); "
                    f"a rule set that undoes itself, or raise max_rewrites"
                )
            for new_node in _apply(graph, rule, m, builders[id(rule)]):
                push(new_node)
            total += 1
            fired[rule.name] += 1
            break
    if total:
        logger.debug("rewrite: %d rewrites %s", total, dict(fired))
    return RewriteResult(changed=total > 0, rewrites=total, by_rule=dict(fired))


def _apply(graph: Graph, rule: Rule, m: Match, builder: Builder) -> list[Node]:
    """Replace the match (building before its root with the rule's `builder`); return
    the nodes worth revisiting."""
    root = m.root
    builder.before = root
    builder.created = []
    result = rule.replace(builder, m)
    new_values = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(new_values) != len(root.outputs):
        raise RequantError(
            f"rule {rule.name}: replacement gives {len(new_values)} values for {len(root.outputs)} outputs of {root.label}"
        )
    for old, new in zip(root.outputs, new_values):
        if new is None:
            if old.uses or graph.is_output(old):
                raise RequantError(f"rule {rule.name}: output %{old.name} is still used but the replacement gives none")
            continue
        if old.type != new.type:
            _reconcile_type(graph, rule, old, new, builder.created)
        graph.replace_value(old, new)
    graph.remove_node(root)
    for node in reversed(m.nodes):
        if node is not root:
            graph.remove_node(node)
    revisit: list[Node] = builder.created
    for v in new_values:
        if v is not None:
            revisit.extend([user for user, _ in v.uses])
    for v in m.bindings.values():
        if v is not None:
            revisit.extend([user for user, _ in v.uses])
    return revisit


def _reconcile_type(graph: Graph, rule: Rule, old: Value, new: Value, created: list[Node]) -> None:
    if not types_agree(old.type, new.type) and not types_agree(new.type, old.type):
        raise RequantError(
            f"rule {rule.name}: replacement %{new.name} has type {new.type}, the replaced %{old.name} has {old.type}"
        )
    # A value the rule just made takes the (possibly more specific) type it replaces, so
    # graph outputs keep their declared types and users keep the shapes they were built on.
    if new.producer is not None and any(new.producer is n for n in created):
        new.type = old.type
    elif graph.is_output(old):
        raise RequantError(
            f"rule {rule.name}: would change graph output %{old.name} from {old.type} to {new.type}"
        )
