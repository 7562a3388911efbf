"""Hypothesis strategies for random, well-typed IR graphs, shared by the IR and pass tests.

`graphs()` draws graphs that pass `verify()`: float32 inputs of small static shapes, a mix
of the registered ops among Add, Sub, Mul, MatMul, Relu, Tanh, Neg, Transpose, Reshape,
ReduceSum, Concat and Softmax, constants, repeated identical subexpressions (work for
CSE), dead nodes that reach no output (work for DCE) and subgraphs of constants only
(work for constant folding), with 1-3 outputs. `random_inputs(graph, seed)` gives seeded
float32 inputs for the interpreter.

Ops are used only when they are registered *and* a one-off probe (build, verify, run)
succeeds, so the strategy keeps working while ops are being added or changed. Values stay
bounded (inputs and constants in [-1, 1], an op is skipped when its result could exceed
`_BOUND_LIMIT`), so no float32 overflow hides a real mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from hypothesis import strategies as st

from requant.ir import dtypes, is_registered
from requant.ir.graph import Graph, Node, Value
from requant.ir.interpreter import run
from requant.ir.registry import get_schema
from requant.ir.types import TensorType

__all__ = ["graphs", "random_inputs", "usable_ops", "CANDIDATE_OPS"]

T = TypeVar("T")

CANDIDATE_OPS: tuple[str, ...] = (
    "Add", "Sub", "Mul", "MatMul", "Relu", "Tanh", "Neg",
    "Transpose", "Reshape", "ReduceSum", "Concat", "Softmax",
)

# Largest magnitude any value may reach; far below float32 overflow even after a MatMul.
_BOUND_LIMIT = 1.0e3


# -- choices: hypothesis draws in graphs(), fixed picks in the op probe ------------------
class _Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...
    def choice(self, seq: Sequence[T]) -> T: ...
    def chance(self, percent: int) -> bool: ...


class _DrawChooser:
    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self._draw(st.integers(lo, hi))

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self._draw(st.integers(0, len(seq) - 1))]

    def chance(self, percent: int) -> bool:
        # shrinks towards 0, i.e. towards "no": the simpler graph
        return self._draw(st.integers(0, 99)) >= 100 - percent


class _FixedChooser:
    def integer(self, lo: int, hi: int) -> int:
        return lo

    def choice(self, seq: Sequence[T]) -> T:
        return seq[0]

    def chance(self, percent: int) -> bool:
        return False


# -- the graph under construction --------------------------------------------------------
@dataclass
class _Item:
    value: Value
    bound: float  # upper bound of |element|
    const_only: bool  # computed from constants alone
    selectable: bool = True  # False for dead branches: nothing may read them


@dataclass
class _Build:
    graph: Graph
    ch: _Chooser
    pool: list[_Item] = field(default_factory=list)
    const_mode: bool = False  # this step builds from constants only

    def candidates(self, shape: tuple[int, ...] | None = None, rank_at_least: int = 0) -> list[_Item]:
        out = []
        for it in self.pool:
            s = it.value.type.shape
            if not it.selectable or (self.const_mode and not it.const_only):
                continue
            if shape is not None and s != shape:
                continue
            if len(s) < rank_at_least:
                continue
            out.append(it)
        return out

    def pick(self, rank_at_least: int = 0) -> _Item | None:
        cands = self.candidates(rank_at_least=rank_at_least)
        if not cands and self.const_mode:
            rank = self.ch.integer(max(rank_at_least, 1), 3)
            return self.new_const(tuple(self.ch.integer(1, 4) for _ in range(rank)))
        if not cands:
            return None
        # favour recent values so graphs grow deep, not only wide
        recent = cands[-4:]
        return self.ch.choice(recent) if self.ch.chance(70) else self.ch.choice(cands)

    def operand_of_shape(self, shape: tuple[int, ...], fresh_percent: int = 40) -> _Item:
        cands = self.candidates(shape=shape)
        if cands and not self.ch.chance(fresh_percent):
            return self.ch.choice(cands)
        return self.new_const(shape)

    def new_const(self, shape: tuple[int, ...]) -> _Item:
        kind = self.ch.integer(0, 9)
        if kind == 8:
            arr = np.zeros(shape, np.float32)  # x+0, x*0: work for algebraic folding
        elif kind == 9:
            arr = np.ones(shape, np.float32)
        else:
            seed = self.ch.integer(0, 2**16)
            arr = np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)
        v = self.graph.add_constant(arr)
        item = _Item(v, 1.0, const_only=True)
        self.pool.append(item)
        return item

    def int64_const(self, values: Sequence[int]) -> Value:
        return self.graph.add_constant(np.asarray(values, dtype=np.int64))

    def emit(self, op: str, inputs: Sequence[_Item | Value | None], attrs: dict[str, Any], bound: float) -> _Item | None:
        if bound > _BOUND_LIMIT:
            return None
        values = [x.value if isinstance(x, _Item) else x for x in inputs]
        node = self.graph.create_node(op, values, attrs)
        const_only = all(x.const_only for x in inputs if isinstance(x, _Item))
        item = _Item(node.output, bound, const_only)
        self.pool.append(item)
        return item


# -- one handler per op: pick operands, emit the node, return None when not applicable ---
def _binary(op: str) -> Callable[[_Build], _Item | None]:
    def handler(b: _Build) -> _Item | None:
        a = b.pick()
        if a is None:
            return None
        shape = a.value.type.shape
        options = [shape, ()]
        if len(shape) >= 1:
            options.append(shape[-1:])
        other = b.operand_of_shape(b.ch.choice(options))
        x, y = (other, a) if b.ch.chance(30) else (a, other)
        bound = x.bound * y.bound if op == "Mul" else x.bound + y.bound
        return b.emit(op, [x, y], {}, bound)

    return handler


def _unary(op: str, bound_of: Callable[[float], float]) -> Callable[[_Build], _Item | None]:
    def handler(b: _Build) -> _Item | None:
        a = b.pick()
        if a is None:
            return None
        return b.emit(op, [a], {}, bound_of(a.bound))

    return handler


def _matmul(b: _Build) -> _Item | None:
    a = b.pick(rank_at_least=2)
    if a is None:
        return None
    k = a.value.type.shape[-1]
    rhs = b.candidates(rank_at_least=2)
    rhs = [it for it in rhs if len(it.value.type.shape) == 2 and it.value.type.shape[0] == k]
    if rhs and not b.ch.chance(50):
        w = b.ch.choice(rhs)
    else:
        w = b.new_const((k, b.ch.integer(1, 4)))
    return b.emit("MatMul", [a, w], {}, a.bound * w.bound * max(k, 1))


def _transpose(b: _Build) -> _Item | None:
    a = b.pick(rank_at_least=2)
    if a is None:
        return None
    rank = len(a.value.type.shape)
    perm = list(range(rank))
    # a rotation or a swap: any permutation would do, these shrink well
    if b.ch.chance(50):
        perm = perm[1:] + perm[:1]
    else:
        perm[-1], perm[-2] = perm[-2], perm[-1]
    return b.emit("Transpose", [a], {"perm": perm}, a.bound)


def _reshape(b: _Build) -> _Item | None:
    a = b.pick()
    if a is None:
        return None
    shape = a.value.type.shape
    numel = int(np.prod(shape, dtype=np.int64))
    target = b.ch.choice([(numel,), tuple(reversed(shape)), (1, numel)])
    schema = get_schema("Reshape")
    if len(schema.inputs) >= 2:
        return b.emit("Reshape", [a, b.int64_const(target)], {}, a.bound)
    if "shape" in schema.attrs:
        return b.emit("Reshape", [a], {"shape": list(target)}, a.bound)
    return None


def _reduce_sum(b: _Build) -> _Item | None:
    a = b.pick(rank_at_least=1)
    if a is None:
        return None
    shape = a.value.type.shape
    axis = b.ch.integer(0, len(shape) - 1)
    axes = [axis] if b.ch.chance(70) else list(range(len(shape)))
    count = int(np.prod([shape[i] for i in axes], dtype=np.int64))
    schema = get_schema("ReduceSum")
    attrs: dict[str, Any] = {}
    if "keepdims" in schema.attrs:
        attrs["keepdims"] = b.ch.integer(0, 1)
    bound = a.bound * max(count, 1)
    if any(p.name == "axes" for p in schema.inputs):
        return b.emit("ReduceSum", [a, b.int64_const(axes)], attrs, bound)
    if "axes" in schema.attrs:
        attrs["axes"] = axes
        return b.emit("ReduceSum", [a], attrs, bound)
    return None


def _concat(b: _Build) -> _Item | None:
    a = b.pick(rank_at_least=1)
    if a is None:
        return None
    shape = a.value.type.shape
    axis = b.ch.integer(0, len(shape) - 1)
    parts = [a]
    for _ in range(b.ch.integer(1, 2)):
        if b.ch.chance(50):
            parts.append(b.operand_of_shape(shape, fresh_percent=30))
        else:
            other = list(shape)
            other[axis] = b.ch.integer(1, 3)
            parts.append(b.new_const(tuple(other)))
    if b.ch.chance(30):
        axis -= len(shape)  # negative axes are legal and a classic normalisation bug
    return b.emit("Concat", parts, {"axis": axis}, max(p.bound for p in parts))


def _softmax(b: _Build) -> _Item | None:
    a = b.pick(rank_at_least=1)
    if a is None:
        return None
    attrs = {}
    if "axis" in get_schema("Softmax").attrs and b.ch.chance(30):
        attrs["axis"] = b.ch.integer(0, len(a.value.type.shape) - 1)
    return b.emit("Softmax", [a], attrs, 1.0)


_HANDLERS: dict[str, Callable[[_Build], _Item | None]] = {
    "Add": _binary("Add"),
    "Sub": _binary("Sub"),
    "Mul": _binary("Mul"),
    "MatMul": _matmul,
    "Relu": _unary("Relu", lambda x: x),
    "Tanh": _unary("Tanh", lambda x: 1.0),
    "Neg": _unary("Neg", lambda x: x),
    "Transpose": _transpose,
    "Reshape": _reshape,
    "ReduceSum": _reduce_sum,
    "Concat": _concat,
    "Softmax": _softmax,
}

_PROBED: dict[str, bool] = {}


def _probe(op: str) -> bool:
    """Build, verify and run one node of `op` with fixed choices; an op whose schema or
    kernel does not fit our assumptions (yet) is left out instead of failing tests."""
    if op in _PROBED:
        return _PROBED[op]
    ok = False
    try:
        if is_registered(op):
            g = Graph("probe")
            b = _Build(g, _FixedChooser())
            b.pool.append(_Item(g.add_input("x", TensorType((2, 3), dtypes.float32)), 1.0, False))
            item = _HANDLERS[op](b)
            if item is not None:
                g.outputs = [item.value]
                g.verify()
                (out,) = run(g, {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)})
                t = item.value.type
                ok = out.dtype == t.dtype.np and out.shape == t.shape and bool(np.all(np.isfinite(out)))
    except Exception:
        ok = False
    _PROBED[op] = ok
    return ok


def usable_ops(ops: Sequence[str] = CANDIDATE_OPS) -> list[str]:
    """The ops of `ops` the strategy can use right now (registered and probed)."""
    return [op for op in ops if op in _HANDLERS and _probe(op)]


@st.composite
def graphs(
    draw: Callable[[st.SearchStrategy[Any]], Any],
    *,
    min_nodes: int = 1,
    max_nodes: int = 12,
    max_inputs: int = 3,
    max_outputs: int = 3,
    ops: Sequence[str] = CANDIDATE_OPS,
    names_and_meta: bool = True,
) -> Graph:
    """A random well-typed graph (it passes `verify()`); see the module docstring.

    `names_and_meta` sometimes gives nodes a name and `created_by` meta and inputs a
    `source` meta, which the text form must carry through."""
    usable = usable_ops(ops)
    if not usable:
        raise RuntimeError(f"none of {list(ops)} is registered and usable")
    ch = _DrawChooser(draw)
    g = Graph("main")
    b = _Build(g, ch)
    for i in range(ch.integer(1, max_inputs)):
        shape = tuple(ch.integer(1, 4) for _ in range(ch.integer(1, 3)))
        v = g.add_input(f"x{i}", TensorType(shape, dtypes.float32))
        if names_and_meta and ch.chance(20):
            v.meta["source"] = f"input.{i}"
        b.pool.append(_Item(v, 1.0, const_only=False))

    made: list[Node] = []
    steps = ch.integer(min_nodes, max_nodes)
    attempts = 0
    while len(made) < steps and attempts < steps * 4:
        attempts += 1
        if made and ch.chance(15):
            # a repeated identical subexpression: the same op on the same inputs
            twin = ch.choice(made)
            node = g.create_node(twin.op, list(twin.inputs), dict(twin.attrs))
            src = next(it for it in b.pool if it.value is twin.output)
            b.pool.append(_Item(node.output, src.bound, src.const_only))
            made.append(node)
            continue
        b.const_mode = ch.chance(20)
        item = _HANDLERS[ch.choice(usable)](b)
        b.const_mode = False
        if item is None:
            continue
        node = item.value.producer
        assert node is not None
        if names_and_meta and ch.chance(15):
            node.name = f"n{len(made)}"
        if names_and_meta and ch.chance(15):
            node.meta["created_by"] = "strategies"
        if ch.chance(10):
            item.selectable = False  # a dead branch: nothing will read it
        made.append(node)

    live = [it for it in b.pool if not it.const_only and it.value.producer is not None and it.selectable]
    if not live:
        x = b.pool[0]
        live = [b.emit("Add", [x, x], {}, 2 * x.bound)]  # type: ignore[list-item]
    n_out = ch.integer(1, min(max_outputs, len(live)))
    outputs: list[Value] = [live[-1].value]  # the newest value: keeps most of the graph alive
    rest = [it.value for it in live[:-1]]
    while len(outputs) < n_out and rest:
        outputs.append(rest.pop(ch.integer(0, len(rest) - 1)))
    g.outputs = outputs
    return g


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs in [-1, 1] for every graph input, by name (symbolic or unknown
    dims become 2; non-float inputs get small integers or booleans)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for v in graph.inputs:
        shape = tuple(d if isinstance(d, int) else 2 for d in (v.type.shape or ()))
        dt = v.type.dtype
        if dt.kind == "bool":
            arr = rng.integers(0, 2, size=shape).astype(bool)
        elif dt.is_integer:
            lo, hi = dt.int_range
            arr = rng.integers(max(lo, -8), min(hi, 8) + 1, size=shape).astype(dt.np)
        else:
            arr = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32).astype(dt.np)
        out[v.name] = arr
    return out
