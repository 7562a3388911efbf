"""Property tests: on random well-typed graphs (tests/strategies.py), DCE, CSE and
constant folding never change a bit of any interpreter output, keep the graph outputs'
names and types, leave a valid graph (the PassManager verifies after each pass) and are
idempotent: a second run changes nothing."""

from __future__ import annotations

import pytest
from cleanup_testing import assert_bitwise_equal
from hypothesis import HealthCheck, given, settings
from requant.ir import Graph, run
from requant.passes import PassManager
from strategies import graphs, random_inputs

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_pipeline_is_exact(graph: Graph, passes: list[str]) -> None:
    before = graph.clone()
    first = PassManager(passes, verify=True).run(graph)
    assert first.graph is graph
    assert [(v.name, v.type) for v in graph.outputs] == [(v.name, v.type) for v in before.outputs]
    for seed in (0, 1):
        inputs = random_inputs(before, seed)
        assert_bitwise_equal(run(before, inputs), run(graph, inputs))
    second = PassManager(passes, verify=True).run(graph)
    assert not second.changed, second.table()


@pytest.mark.parametrize("name", ["dce", "cse", "fold_constants"])
@SETTINGS
@given(graph=graphs())
def test_cleanup_pass_never_changes_outputs(name: str, graph: Graph) -> None:
    check_pipeline_is_exact(graph, [name])


@SETTINGS
@given(graph=graphs(max_nodes=20))
def test_cleanup_pipeline_never_changes_outputs(graph: Graph) -> None:
    before = graph.clone()
    result = PassManager(["cse", "fold_constants", "dce"], verify=True, fixed_point=True).run(graph)
    assert len(result.records) <= 9  # cse, fold, dce settle within a few sweeps
    inputs = random_inputs(before, 0)
    assert_bitwise_equal(run(before, inputs), run(graph, inputs))
    # after the pipeline no node computes from constants alone, and nothing is dead
    outputs = {id(v) for v in graph.outputs}
    for node in graph:
        assert any(o.uses or id(o) in outputs for o in node.outputs), node
        if node.op != "Identity":
            assert not all(v is None or v.is_constant for v in node.inputs), node
