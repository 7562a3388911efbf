"""Helpers for the canonicalisation pass tests (tests/passes/test_canonicalize*.py):
build a small graph, run one pass through a verifying PassManager, compare the
interpreter's outputs before and after on seeded inputs, count ops and rule firings."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from requant.ir import Builder, Graph, run, tensor_type
from requant.ir.graph import Value
from requant.passes import PassManager, PassResult, get_pass

__all__ = [
    "build_graph",
    "run_pass",
    "seeded_inputs",
    "outputs_before_after",
    "assert_same_outputs",
    "rule_counts",
    "ops",
    "live_ops",
    "only_node",
]


def build_graph(inputs: dict[str, tuple[str, Sequence]], body: Callable[..., Value | Sequence[Value]]) -> Graph:
    """A graph with `inputs` {name: (dtype, shape)} whose outputs `body(b, *inputs)`
    returns (named y0, y1, ...)."""
    g = Graph()
    b = Builder(g)
    ins = [b.input(name, tensor_type(dt, shape)) for name, (dt, shape) in inputs.items()]
    outs = body(b, *ins)
    outs = [outs] if isinstance(outs, Value) else list(outs)
    for i, out in enumerate(outs):
        g.rename(out, f"y{i}")
        g.outputs.append(out)
    g.verify()
    return g


def run_pass(name: str, graph: Graph, **options) -> PassResult:
    """One registered pass through a verifying PassManager; its changed flag and stats."""
    result = PassManager([get_pass(name, **options)], verify=True).run(graph)
    (record,) = result.records
    return PassResult(result.graph, record.changed, record.stats)


def seeded_inputs(graph: Graph, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Normal floats, bools (70% True), ints in 1..5; a symbolic dim takes `dims[sym]` (else 3)."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        shape = tuple(d if isinstance(d, int) else (dims or {}).get(d, 3) for d in v.type.shape)
        if v.dtype.is_float:
            out[v.name] = rng.standard_normal(shape).astype(np.float32).astype(v.dtype.np)
        elif v.dtype.kind == "bool":
            out[v.name] = rng.random(shape) < 0.7
        else:
            out[v.name] = rng.integers(1, 6, shape).astype(v.dtype.np)  # no zero divisors
    return out


def outputs_before_after(name: str, graph: Graph, seeds: Sequence[int] = (0, 1, 2), **options):
    """Run pass `name` on `graph`; return (PassResult, [(before, after) outputs per seed])."""
    before = graph.clone()
    feeds = [seeded_inputs(graph, s) for s in seeds]
    expected = [run(before, f) for f in feeds]
    result = run_pass(name, graph, **options)
    actual = [run(graph, f) for f in feeds]
    return result, list(zip(expected, actual))


def assert_same_outputs(pairs, rtol: float | None = None, atol: float = 0.0) -> None:
    """Bit-for-bit equality when `rtol` is None, else |a - e| <= atol + rtol * |e|
    (NaN where the expected value is NaN)."""
    for expected, actual in pairs:
        assert len(expected) == len(actual)
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert a.dtype == e.dtype and a.shape == e.shape, f"output {i}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
            if rtol is None:
                assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(e).tobytes(), f"output {i} differs"
            else:
                np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol,
                                           equal_nan=True, err_msg=f"output {i}")


def rule_counts(stats: dict) -> dict[str, int]:
    """The `rule:<name>` counters of a rule pass's stats, without the prefix."""
    return {k[len("rule:"):]: v for k, v in stats.items() if k.startswith("rule:")}


def ops(graph: Graph) -> list[str]:
    return [n.op for n in graph]


def live_ops(graph: Graph) -> list[str]:
    """Ops of the nodes whose results are read (what dce would keep): a rule leaves an
    input's producer that other nodes may still read to dce."""
    return [n.op for n in graph if any(o.uses or graph.is_output(o) for o in n.outputs)]


def only_node(graph: Graph, op: str):
    found = [n for n in graph if n.op == op]
    assert len(found) == 1, f"expected one {op}, found {len(found)} in {ops(graph)}"
    return found[0]
