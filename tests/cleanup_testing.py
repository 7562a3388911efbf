"""Helpers shared by the cleanup pass tests (test_dce, test_cse, test_fold_constants):
run one pass through a verifying PassManager, seeded inputs, and the bit-for-bit
comparison these exact passes are held to (they run the same reference kernels on the
same values, only earlier or fewer times)."""

from __future__ import annotations

import numpy as np
import pytest
from requant.ir import Graph, is_registered, run
from requant.ir.graph import Node
from requant.passes import PassManager, PassResult, get_pass

F32, I32, I64 = "float32", "int32", "int64"

needs = {op: pytest.mark.skipif(not is_registered(op), reason=f"op {op} is not registered yet") for op in (
    "Identity", "Shape", "Size", "Expand", "Split", "Constant",
)}


def run_pass(name: str, graph: Graph, **options) -> PassResult:
    """Run one registered pass through a verifying PassManager, return its PassResult."""
    result = PassManager([get_pass(name, **options)], verify=True).run(graph)
    (record,) = result.records
    return PassResult(result.graph, record.changed, record.stats)


def seeded_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        shape = tuple(d if isinstance(d, int) else 3 for d in v.type.shape)
        if v.dtype.is_float:
            out[v.name] = rng.standard_normal(shape).astype(v.dtype.np)
        elif v.dtype.kind == "bool":
            out[v.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[v.name] = rng.integers(-50, 50, shape).astype(v.dtype.np)
    return out


def assert_bitwise_equal(expected: list[np.ndarray], actual: list[np.ndarray]) -> None:
    assert len(expected) == len(actual)
    for i, (e, a) in enumerate(zip(expected, actual)):
        assert a.dtype == e.dtype and a.shape == e.shape, f"output {i}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(e).tobytes(), f"output {i} differs:\n{e}\n{a}"


def check_same_outputs(before: Graph, after: Graph, seeds=(0, 1, 2)) -> None:
    for seed in seeds:
        inputs = seeded_inputs(before, seed)
        assert_bitwise_equal(run(before, inputs), run(after, inputs))


def snapshot(graph: Graph) -> str:
    return graph.to_text()


def node_line(node: Node) -> str:
    ins = ", ".join("_" if v is None else f"%{v.name}" for v in node.inputs)
    outs = ", ".join(f"%{v.name}" for v in node.outputs)
    return f"{outs} = {node.op}({ins})"


def structure(graph: Graph) -> list[str]:
    return [node_line(n) for n in graph]


def unchanged(name: str, graph: Graph, **options) -> None:
    text = snapshot(graph)
    result = run_pass(name, graph, **options)
    assert result.changed is False
    assert snapshot(graph) == text


def f32(*values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)
