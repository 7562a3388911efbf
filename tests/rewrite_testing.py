"""Before/Expected pass tests, as TVM writes its Relax pass tests: a test states the
graph a pass is given and the graph it must leave, both in the text form, and one call
checks the four things a pass test checks (DESIGN.md, "Conventions"):

    check_rewrite("canonicalize_linear", BEFORE, EXPECTED,
                  rules={"gemm_to_matmul[3]": 1}, tolerances={"float32": (1e-6, 1e-6)})
    check_unchanged("canonicalize_linear", NEAR_MISS)

(a) the changed flag and the stats (`stats`: the whole dict, exactly; `rules`: the
    `rule:<name>` counters of a rule pass, exactly: no other rule fired);
(b) the structure: the graph after the pass is structurally equal (ir/structural.py) to
    the Expected text, whose constant payloads may be elided (`...`: dtype and shape only),
    constants compared within `constant_rtol` / `constant_atol` (exact by default); the
    graph outputs keep their names; with `same_names`, every value is named as in the
    Expected text (for passes whose point is which value survives, e.g. cse);
(c) numeric agreement: the interpreter's outputs before and after the pass, on seeded
    inputs, within the tolerance `tolerances` states per output dtype ({dtype name:
    (rtol, atol)}); a dtype it does not name is compared bit for bit;
(d) a case that must not match: `check_unchanged` (changed is False, the text is the same).

The pass runs alone through a verifying PassManager, as every pass test runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from requant import ir
from requant.ir import Graph, assert_structural_equal
from requant.ir.structural import parse_elided
from requant.passes import PassResult

from canonical_testing import rule_counts, run_pass, seeded_inputs

__all__ = ["check_rewrite", "check_unchanged", "assert_same_function", "value_names", "Feeds"]

# How a test makes the inputs of one seeded run: (graph, seed) -> {input name: array}.
Feeds = Callable[[Graph, int], Mapping[str, np.ndarray]]


def check_rewrite(
    pass_name: str,
    before: str,
    expected: str,
    *,
    options: Mapping[str, Any] | None = None,
    changed: bool = True,
    stats: Mapping[str, Any] | None = None,
    rules: Mapping[str, int] | None = None,
    tolerances: Mapping[str, tuple[float, float]] | None = None,
    constant_rtol: float = 0.0,
    constant_atol: float = 0.0,
    seeds: Sequence[int] = (0, 1, 2),
    feeds: Feeds | None = None,
    same_names: bool = False,
) -> PassResult:
    """Run pass `pass_name` (with `options`) on the `before` text and check (a)-(c) of the
    module docstring against the `expected` text; return the pass's result for further
    assertions (provenance meta, ...)."""
    graph = ir.parse(before)
    reference = ir.parse(before)
    result = run_pass(pass_name, graph, **dict(options or {}))
    assert result.changed is changed, f"pass '{pass_name}': changed is {result.changed}, expected {changed}"
    _check_stats(pass_name, result, stats, rules)
    expected_graph = parse_elided(expected)
    assert_structural_equal(result.graph, expected_graph, rtol=constant_rtol, atol=constant_atol)
    # structure is compared up to renaming, but a pass keeps the graph outputs' names
    assert [v.name for v in result.graph.outputs] == [v.name for v in reference.outputs], "graph outputs renamed"
    if same_names:
        assert value_names(result.graph) == value_names(expected_graph), "values are named otherwise than expected"
    assert_same_function(reference, result.graph, tolerances or {}, seeds, feeds or seeded_inputs)
    return result


def check_unchanged(pass_name: str, text: str, *, options: Mapping[str, Any] | None = None,
                    stats: Mapping[str, Any] | None = None, rules: Mapping[str, int] | None = None) -> PassResult:
    """The pass must not match: changed is False and the graph's text is what it was
    (`stats` and `rules` as for check_rewrite; `rules={}`: no rule fired)."""
    graph = ir.parse(text)
    printed = graph.to_text()
    result = run_pass(pass_name, graph, **dict(options or {}))
    assert result.changed is False, f"pass '{pass_name}' changed a graph it must leave alone: {result.stats}"
    _check_stats(pass_name, result, stats, rules)
    assert result.graph.to_text() == printed, f"pass '{pass_name}' edited the graph:\n{result.graph.to_text()}"
    return result


def _check_stats(pass_name: str, result: PassResult, stats: Mapping[str, Any] | None,
                 rules: Mapping[str, int] | None) -> None:
    if stats is not None:
        assert result.stats == dict(stats), f"pass '{pass_name}': stats {result.stats}, expected {dict(stats)}"
    if rules is not None:
        assert rule_counts(result.stats) == dict(rules), f"pass '{pass_name}': rules fired {rule_counts(result.stats)}"


def value_names(graph: Graph) -> list[str]:
    """Every value's name: inputs, constants, node outputs in order, graph outputs."""
    return [v.name for v in graph.values()] + [v.name for v in graph.outputs]


def assert_same_function(before: Graph, after: Graph, tolerances: Mapping[str, tuple[float, float]],
                         seeds: Sequence[int], feeds: Feeds) -> None:
    """The interpreter's outputs of `before` and `after` on each seed's inputs: bit for
    bit, or within the (rtol, atol) `tolerances` gives for the output's dtype."""
    for seed in seeds:
        inputs = dict(feeds(before, seed))
        for i, (e, a) in enumerate(zip(ir.run(before, inputs), ir.run(after, inputs), strict=True)):
            where = f"output {i} (seed {seed})"
            assert a.dtype == e.dtype and a.shape == e.shape, f"{where}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
            tolerance = tolerances.get(before.outputs[i].dtype.name)
            if tolerance is None:
                assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(e).tobytes(), f"{where} differs"
            else:
                rtol, atol = tolerance
                np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=rtol, atol=atol,
                                           equal_nan=True, err_msg=where)
