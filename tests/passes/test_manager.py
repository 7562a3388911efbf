"""Tests of the pass infrastructure: registry, options, the pass contract, PassManager's
records, verification after each pass, error messages, fixed-point mode and table(),
the conditions passes require and ensure, and the pipeline inputs they declare."""

from __future__ import annotations

import numpy as np
import pytest

from requant.errors import PassError, RequantError, RewriteLimitError, VerifyError
from requant.ir import Builder, Graph, parse, tensor_type
from requant.passes import manager
from requant.passes.conditions import CANONICAL_LINEARS, QUANTIZED
from requant.passes.manager import Condition, get_factory
from requant.passes import (
    FunctionPass,
    Pass,
    PassManager,
    PassResult,
    available_passes,
    get_pass,
    graph_pass,
    register_pass,
)

F32 = "float32"


def small_graph() -> Graph:
    """y = (x + c1) * (x + c1') * (c1 + c2), with a dead Sub: work for every cleanup pass."""
    g = Graph()
    b = Builder(g)
    x = b.input("x", tensor_type(F32, (2, 3)))
    c1 = b.const(np.full((2, 3), 2.0, np.float32), "c1")
    c2 = b.const(np.full((2, 3), 3.0, np.float32), "c2")
    a = b.Add(x, c1)
    a_twin = b.Add(x, c1)
    b.Sub(x, x)  # dead
    y = b.Mul(b.Mul(a, a_twin), b.Add(c1, c2))
    g.outputs = [y]
    return g


class BreakGraph(Pass):
    """Deliberately broken: drops a node whose output is still read."""

    name = "break_graph"
    description = "remove the first node even though it is used (test only)"

    def run(self, graph: Graph) -> PassResult:
        graph.remove_node(next(iter(graph)), safe=False)
        return PassResult(graph, True, {})


class Explode(Pass):
    name = "explode"
    description = "raise (test only)"

    def run(self, graph: Graph) -> PassResult:
        raise ValueError("boom")


class ChangesNTimes(Pass):
    """Reports a change the first `n` times it runs, then none."""

    description = "pretend to change the graph n times (test only)"

    def __init__(self, n: int, name: str = "flip") -> None:
        self.n = n
        self.name = name
        self.calls = 0

    def run(self, graph: Graph) -> PassResult:
        self.calls += 1
        return PassResult(graph, self.calls <= self.n, {"calls": self.calls})


# -- registry and options ----------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """Passes registered by a test disappear after it."""
    monkeypatch.setattr(manager, "_REGISTRY", dict(manager._REGISTRY))


def test_available_passes_lists_cleanup_with_one_line_descriptions():
    passes = available_passes()
    for name in ("dce", "cse", "fold_constants"):
        assert name in passes
        assert passes[name] and "\n" not in passes[name]
    assert list(passes) == sorted(passes)


def test_unknown_pass_error_lists_every_known_pass():
    with pytest.raises(RequantError) as info:
        get_pass("no_such_pass")
    message = str(info.value)
    assert "'no_such_pass'" in message
    for name in available_passes():
        assert name in message


def test_unknown_option_error_lists_valid_options():
    with pytest.raises(RequantError) as info:
        get_pass("fold_constants", max_elemnts=3)
    message = str(info.value)
    assert "max_elemnts" in message and "max_elements" in message and "fold_constants" in message
    with pytest.raises(RequantError, match="valid options: none"):
        get_pass("dce", aggressive=True)


def test_get_pass_configures_options():
    p = get_pass("fold_constants", max_elements=4)
    assert isinstance(p, FunctionPass)
    assert p.name == "fold_constants" and p.options == {"max_elements": 4}


def test_graph_pass_registers_and_refuses_duplicates(scratch_registry):
    @graph_pass("test_noop_pass", "do nothing (test only)")
    def noop(graph: Graph, note: str = "x") -> PassResult:
        return PassResult(graph, False, {"note": note})

    assert available_passes()["test_noop_pass"] == "do nothing (test only)"
    assert noop.options == {"note": "x"}
    g = small_graph()
    assert get_pass("test_noop_pass", note="y")(g).stats == {"note": "y"}
    assert noop.apply(g).stats == {"note": "x"}
    with pytest.raises(RequantError, match="already registered"):
        graph_pass("test_noop_pass", "again")(lambda graph: PassResult(graph, False))


def test_register_pass_class_with_init_options(scratch_registry):
    class Scaled(Pass):
        name = "test_scaled_pass"
        description = "a class pass with an option (test only)"

        def __init__(self, factor: int = 2) -> None:
            self.factor = factor

        def run(self, graph: Graph) -> PassResult:
            return PassResult(graph, False, {"factor": self.factor})

    register_pass(Scaled)
    assert get_pass("test_scaled_pass", factor=5).factor == 5
    with pytest.raises(RequantError, match="valid options: factor=2"):
        get_pass("test_scaled_pass", scale=5)
    register_pass(Scaled, replace=True)  # explicit override is allowed


def test_graph_pass_rejects_kwargs_options(scratch_registry):
    with pytest.raises(RequantError, match="named keyword parameters"):
        graph_pass("test_bad_options", "bad (test only)")(lambda graph, **kw: PassResult(graph, False))


# -- the pass contract ---------------------------------------------------------------------------


def test_in_place_pass_must_return_its_input():
    class ReturnsCopy(Pass):
        name = "returns_copy"
        description = "claims in-place, returns a clone (test only)"

        def run(self, graph: Graph) -> PassResult:
            return PassResult(graph.clone(), False, {})

    with pytest.raises(PassError, match="in-place but returned a different graph"):
        ReturnsCopy()(small_graph())
    with pytest.raises(PassError, match="returns_copy") as info:
        PassManager([ReturnsCopy()], verify=True).run(small_graph())
    assert isinstance(info.value.__cause__, PassError)


def test_functional_pass_must_return_a_new_graph_and_not_mutate_input():
    class Functional(Pass):
        name = "functional"
        description = "a functional pass (test only)"
        in_place = False

        def __init__(self, mutate: bool, same: bool = False) -> None:
            self.mutate, self.same = mutate, same

        def run(self, graph: Graph) -> PassResult:
            if self.mutate:
                graph.remove_node(next(n for n in graph if n.op == "Sub"))  # the dead one
            return PassResult(graph if self.same else graph.clone(), self.mutate, {})

    g = small_graph()
    result = Functional(mutate=False)(g, verify=True)
    assert result.graph is not g and len(result.graph) == len(g)
    with pytest.raises(PassError, match="mutated its input"):
        Functional(mutate=True)(small_graph(), verify=True)
    # the fingerprint is only taken when verifying: without it, nothing is checked
    Functional(mutate=True)(small_graph(), verify=False)
    with pytest.raises(PassError, match="returned its input graph"):
        Functional(mutate=False, same=True)(small_graph(), verify=False)


def test_pass_returning_something_else_is_an_error():
    class Sloppy(Pass):
        name = "sloppy"
        description = "returns the graph instead of a PassResult (test only)"

        def run(self, graph):  # type: ignore[override]
            return graph

    with pytest.raises(PassError, match="returned Graph, not a PassResult"):
        Sloppy()(small_graph())


# -- PassManager ------------------------------------------------------------------------------


def test_pass_manager_records_time_stats_and_node_counts():
    g = small_graph()
    result = PassManager(["cse", "fold_constants", "dce"], verify=True).run(g)
    assert result.graph is g and result.changed
    assert [r.name for r in result.records] == ["cse", "fold_constants", "dce"]
    cse, fold, dce = result.records
    assert (cse.nodes_before, cse.nodes_after, cse.changed) == (6, 5, True)
    assert cse.stats["nodes_merged"] == 1
    assert (fold.nodes_before, fold.nodes_after) == (5, 4) and fold.stats["nodes_folded"] == 1
    assert (dce.nodes_before, dce.nodes_after) == (4, 3) and dce.stats["nodes_removed"] == 1
    assert all(r.seconds >= 0.0 and r.iteration == 1 for r in result.records)
    assert g.op_histogram() == {"Add": 1, "Mul": 2}


def test_pass_manager_reports_unchanged_pipeline():
    g = small_graph()
    PassManager(["cse", "fold_constants", "dce"]).run(g)
    again = PassManager(["cse", "fold_constants", "dce"]).run(g)
    assert not again.changed and not any(r.changed for r in again.records)


def test_verify_after_each_pass_names_the_broken_pass_and_earlier_ones():
    pm = PassManager(["dce", "cse", BreakGraph(), "fold_constants"], verify=True)
    with pytest.raises(PassError) as info:
        pm.run(small_graph())
    message = str(info.value)
    assert "pass 'break_graph' (3 of 4, after: dce, cse)" in message
    assert "invalid graph" in message and "dangling" in message
    assert isinstance(info.value.__cause__, VerifyError)


def test_without_verification_a_broken_graph_goes_through():
    g = small_graph()
    PassManager([BreakGraph()], verify=False).run(g)
    with pytest.raises(VerifyError):
        g.verify()


def test_raising_pass_is_wrapped_with_its_position_and_history():
    with pytest.raises(PassError) as info:
        PassManager(["dce", Explode()], verify=False).run(small_graph())
    assert str(info.value) == "pass 'explode' (2 of 2, after: dce) failed: boom"
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(PassError, match=r"pass 'explode' \(1 of 1, after: none\) failed: boom"):
        PassManager([Explode()]).run(small_graph())


def test_invalid_input_graph_is_reported_before_any_pass():
    g = small_graph()
    g.remove_node(g.nodes[0], safe=False)
    with pytest.raises(PassError, match="input graph is invalid before any pass ran"):
        PassManager(["dce"], verify=True).run(g)


def test_verify_none_reads_the_environment(monkeypatch):
    monkeypatch.setenv("REQUANT_VERIFY", "1")
    assert PassManager(["dce"]).verify is True
    monkeypatch.setenv("REQUANT_VERIFY", "0")
    assert PassManager(["dce"]).verify is False
    monkeypatch.delenv("REQUANT_VERIFY")
    assert PassManager(["dce"]).verify is False
    assert PassManager(["dce"], verify=True).verify is True


def test_pass_manager_rejects_a_single_pass_and_bad_entries():
    with pytest.raises(TypeError, match="sequence of passes"):
        PassManager("dce")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="neither a pass name nor a Pass"):
        PassManager([42])  # type: ignore[list-item]
    with pytest.raises(RequantError, match="unknown pass 'nope'"):
        PassManager(["dce", "nope"])


def test_fixed_point_repeats_until_nothing_changes():
    flip = ChangesNTimes(2)
    result = PassManager(["dce", flip], fixed_point=True, verify=True).run(small_graph())
    assert flip.calls == 3
    assert [(r.iteration, r.name, r.changed) for r in result.records] == [
        (1, "dce", True), (1, "flip", True),
        (2, "dce", False), (2, "flip", True),
        (3, "dce", False), (3, "flip", False),
    ]
    assert result.changed


def test_fixed_point_cap_names_the_passes_still_changing():
    pm = PassManager(["dce", ChangesNTimes(100, "always"), ChangesNTimes(1, "once")], fixed_point=True, max_iterations=3)
    with pytest.raises(RewriteLimitError) as info:
        pm.run(small_graph())
    message = str(info.value)
    assert "3 iterations" in message and "always" in message
    assert "once" not in message and "dce" not in message


def test_fixed_point_errors_name_the_iteration():
    flip = ChangesNTimes(1)
    with pytest.raises(PassError, match=r"pass 'explode' \(2 of 2, iteration 2, after: flip, explode, flip\)"):

        class ExplodeSecondTime(Explode):
            def run(self, graph: Graph) -> PassResult:
                if flip.calls >= 2:
                    raise ValueError("late boom")
                return PassResult(graph, False, {})

        PassManager([flip, ExplodeSecondTime()], fixed_point=True).run(small_graph())


def test_without_fixed_point_a_changing_pass_runs_once():
    flip = ChangesNTimes(100)
    result = PassManager([flip]).run(small_graph())
    assert flip.calls == 1 and result.changed and len(result.records) == 1


def test_table_lists_passes_changes_node_counts_and_stats():
    result = PassManager(["cse", "fold_constants", "dce"], verify=True).run(small_graph())
    table = result.table()
    lines = table.splitlines()
    assert lines[0].split() == ["pass", "changed", "nodes", "time", "ms", "stats"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[:3] == ["cse", "yes", "6->5"]
    assert "nodes_merged=1" in lines[2] and "constants_merged" not in lines[2]  # zeros are left out
    assert lines[3].split()[:3] == ["fold_constants", "yes", "5->4"] and "nodes_folded=1" in lines[3]
    assert lines[4].split()[:3] == ["dce", "yes", "4->3"] and "nodes_removed=1" in lines[4]
    assert lines[-1].startswith("3 pass runs") and lines[-1].endswith("changed: yes")


def test_table_shows_iterations_in_fixed_point_mode():
    result = PassManager(["dce"], fixed_point=True).run(small_graph())
    lines = result.table().splitlines()
    assert lines[0].split()[0] == "iter"
    assert [line.split()[:2] for line in lines[2:4]] == [["1", "dce"], ["2", "dce"]]


# -- conditions: requires / ensures --------------------------------------------------------------


def _has_no_sub(graph: Graph) -> str | None:
    subs = sum(node.op == "Sub" for node in graph)
    return f"{subs} Sub node{'s' if subs > 1 else ''} left" if subs else None


NO_SUB = Condition("no Sub nodes", _has_no_sub, "run 'drop_subs' first")


class NeedsNoSub(Pass):
    name = "needs_no_sub"
    description = "requires NO_SUB, counts its runs (test only)"
    requires = (NO_SUB,)

    def __init__(self) -> None:
        self.calls = 0

    def run(self, graph: Graph) -> PassResult:
        self.calls += 1
        return PassResult(graph, False, {})


class ClaimsNoSub(Pass):
    """Ensures NO_SUB without removing anything: shows that the record is trusted."""

    name = "claims_no_sub"
    description = "ensures NO_SUB (test only)"
    ensures = (NO_SUB,)

    def run(self, graph: Graph) -> PassResult:
        return PassResult(graph, False, {})


def test_an_unmet_requirement_stops_the_pass_with_one_sentence():
    g = small_graph()
    needs = NeedsNoSub()
    with pytest.raises(PassError) as info:
        needs(g)
    assert str(info.value) == "pass 'needs_no_sub' requires no Sub nodes (1 Sub node left): run 'drop_subs' first"
    assert needs.calls == 0
    with pytest.raises(PassError, match=r"pass 'needs_no_sub' \(2 of 2, after: cse\) failed: pass 'needs_no_sub' "
                                        r"requires no Sub nodes \(1 Sub node left\): run 'drop_subs' first"):
        PassManager(["cse", needs], verify=True).run(small_graph())


def test_a_requirement_holds_when_its_check_finds_nothing():
    g = small_graph()
    PassManager(["dce"], verify=True).run(g)  # removes the dead Sub
    needs = NeedsNoSub()
    needs(g)
    assert needs.calls == 1 and manager.ensured_conditions(g) == frozenset()


def test_a_pass_that_ensures_a_condition_records_it_and_later_passes_trust_the_record():
    g = small_graph()
    needs = NeedsNoSub()
    result = PassManager([ClaimsNoSub(), needs], verify=True).run(g)
    assert needs.calls == 1 and manager.ensured_conditions(result.graph) == {"no Sub nodes"}
    # the record belongs to the graph object: a clone keeps it, a fresh graph has none
    assert manager.ensured_conditions(g.clone()) == {"no Sub nodes"}
    with pytest.raises(PassError, match="requires no Sub nodes"):
        needs(small_graph())


def test_a_functional_pass_records_on_the_graph_it_returns():
    class CloningClaim(ClaimsNoSub):
        name = "cloning_claim"
        in_place = False

        def run(self, graph: Graph) -> PassResult:
            return PassResult(graph.clone(), False, {})

    g = small_graph()
    result = CloningClaim()(g, verify=True)
    assert manager.ensured_conditions(result.graph) == {"no Sub nodes"}
    assert manager.ensured_conditions(g) == frozenset()


def test_the_record_is_not_written_to_text_or_onnx():
    g = small_graph()
    text = g.to_text()
    ClaimsNoSub()(g)
    assert manager.ENSURED_META_KEY in g.meta
    assert g.to_text() == text  # a text round trip reads the same graph back, without the record
    assert manager.ensured_conditions(parse(g.to_text())) == frozenset()
    pytest.importorskip("onnx")
    from requant.backends import to_onnx

    g.meta["note"] = "kept"
    props = {p.key: p.value for p in to_onnx(g).metadata_props}
    assert "kept" in props["requant.meta"] and manager.ENSURED_META_KEY not in props["requant.meta"]


def test_graph_pass_and_register_pass_declare_conditions(scratch_registry):
    @graph_pass("test_conditions_pass", "requires and ensures (test only)", requires=(NO_SUB,), ensures=(NO_SUB,))
    def declared(graph: Graph) -> PassResult:
        return PassResult(graph, False, {})

    assert declared.requires == (NO_SUB,) and declared.ensures == (NO_SUB,)
    p = get_pass("test_conditions_pass")
    assert p.requires == (NO_SUB,) and p.ensures == (NO_SUB,)
    with pytest.raises(PassError, match="requires no Sub nodes"):
        declared.apply(small_graph())  # direct calls are checked too

    register_pass(NeedsNoSub)
    assert get_factory("needs_no_sub").requires == (NO_SUB,)  # from the class attributes
    register_pass(NeedsNoSub, replace=True, requires=())
    get_pass("needs_no_sub")(small_graph())  # the registration's declaration wins


def test_conditions_may_depend_on_the_options(scratch_registry):
    def ensured(strict: bool = True) -> tuple[Condition, ...]:
        return (NO_SUB,) if strict else ()

    @graph_pass("test_optional_claim", "ensures NO_SUB when strict (test only)", ensures=ensured)
    def claim(graph: Graph, strict: bool = True) -> PassResult:
        return PassResult(graph, False, {})

    assert claim.ensures == (NO_SUB,)  # with the default options
    assert get_pass("test_optional_claim", strict=False).ensures == ()
    g = small_graph()
    get_pass("test_optional_claim", strict=False)(g)
    assert manager.ensured_conditions(g) == frozenset()


def test_condition_declarations_are_checked(scratch_registry):
    with pytest.raises(TypeError, match="takes a sequence of Conditions"):
        graph_pass("test_bad_requires", "bad (test only)", requires=NO_SUB)(lambda graph: PassResult(graph, False))
    with pytest.raises(TypeError, match="'canonical linears', which is not a Condition"):
        graph_pass("test_bad_ensures", "bad (test only)", ensures=("canonical linears",))(
            lambda graph: PassResult(graph, False))


# -- the conditions the shipped passes declare ------------------------------------------------------

TWO_GEMMS_AFTER_A_NORM = """
graph main(%x: f32[2,4]) -> (%q, %k) {
  const %gamma: f32[4] = [1.0, 2.0, 3.0, 4.0]
  const %beta: f32[4] = [0.0, 0.5, 0.0, -0.5]
  const %wq: f32[4,4] = 0.5
  const %wk: f32[4,4] = 0.25
  %h: f32[2,4] = LayerNormalization(%x, %gamma, %beta) {axis=-1}
  %q: f32[2,4] = Gemm(%h, %wq)
  %k: f32[2,4] = Gemm(%h, %wk)
}
"""


def test_fold_norm_affine_requires_canonical_linears_and_canonicalize_ensures_them():
    assert get_factory("fold_norm_affine").requires == (CANONICAL_LINEARS,)
    assert get_factory("canonicalize").ensures == (CANONICAL_LINEARS,)
    assert get_pass("canonicalize", passes=["dce"]).ensures == ()  # a subset promises nothing
    with pytest.raises(PassError) as info:
        get_pass("fold_norm_affine")(parse(TWO_GEMMS_AFTER_A_NORM))
    assert str(info.value) == ("pass 'fold_norm_affine' requires canonical linears (2 Gemm nodes remain): "
                               "run 'canonicalize' first")
    result = PassManager(["canonicalize", "fold_norm_affine"], verify=True).run(parse(TWO_GEMMS_AFTER_A_NORM))
    assert result.records[-1].stats["norms_folded"] == 1 and result.records[-1].stats["linears_updated"] == 2
    assert manager.ensured_conditions(result.graph) == {"canonical linears"}


def test_canonical_linears_counts_what_canonicalize_linear_would_rewrite():
    transposed = """
    graph main(%x: f32[2,4], %a: i32[2,3], %b: i32[3,4]) -> (%y, %z) {
      const %w: f32[3,4] = 1.0
      %wt: f32[4,3] = Transpose(%w) {perm=[1, 0]}
      %y: f32[2,3] = MatMul(%x, %wt)
      %z: i32[2,4] = Gemm(%a, %b)
    }"""
    # the integer Gemm stays after canonicalize: it does not count against the condition
    assert CANONICAL_LINEARS.check(parse(transposed)) == "1 MatMul by a transposed constant weight remains"
    both = transposed.replace("-> (%y, %z)", "-> (%y, %z, %v)").replace(
        "\n    }", "\n      %v: f32[2,3] = Gemm(%x, %w) {transB=1}\n    }")
    assert CANONICAL_LINEARS.check(parse(both)) == (
        "1 Gemm node and 1 MatMul by a transposed constant weight remain")
    g = parse(both)
    get_pass("canonicalize")(g, verify=True)
    assert CANONICAL_LINEARS.check(g) is None  # what canonicalize ensures holds


def test_lower_integer_requires_quantized_tensors():
    assert get_factory("lower_integer").requires == (QUANTIZED,)
    assert QUANTIZED.check(small_graph()) == "no QuantizeLinear, DequantizeLinear or FakeQuantize node in the graph"
    with pytest.raises(PassError, match=r"^pass 'lower_integer' requires quantized tensors \(no QuantizeLinear, "
                                        r"DequantizeLinear or FakeQuantize node in the graph\): run 'quantize' "
                                        r"\(or 'llm_fp4'\) first$"):
        get_pass("lower_integer")(small_graph())


# -- pipeline inputs ---------------------------------------------------------------------------------


def test_pipeline_inputs_are_declared_and_readable(scratch_registry):
    @graph_pass("test_calibrated_pass", "reads calibration (test only)", pipeline_inputs=("stats", "batches"))
    def calibrated(graph: Graph, stats: object = None, batches: object = None, alpha: float = 0.5) -> PassResult:
        return PassResult(graph, False, {})

    assert calibrated.pipeline_inputs == ("stats", "batches")
    assert get_factory("test_calibrated_pass").pipeline_inputs == ("stats", "batches")
    assert get_factory("dce").pipeline_inputs == ()  # nothing declared: a pipeline gives nothing

    class ClassCalibrated(Pass):
        name = "test_class_calibrated"
        description = "a class pass reading calibration statistics (test only)"
        pipeline_inputs = ("stats",)

        def __init__(self, stats: object = None) -> None:
            self.stats = stats

    assert register_pass(ClassCalibrated).pipeline_inputs == ("stats",)
    assert set(manager.PIPELINE_INPUTS) == {"stats", "batches"}


def test_pipeline_inputs_must_be_known_names_and_options(scratch_registry):
    def fn(graph: Graph, stats: object = None) -> PassResult:
        return PassResult(graph, False, {})

    with pytest.raises(RequantError, match="unknown pipeline input 'calibration'; a pipeline holds 'stats'"):
        graph_pass("test_bad_input", "bad (test only)", pipeline_inputs=("calibration",))(fn)
    with pytest.raises(RequantError, match=r"pipeline input 'batches' is not one of its options \(stats\)"):
        graph_pass("test_bad_input", "bad (test only)", pipeline_inputs=("batches",))(fn)
    with pytest.raises(TypeError, match="takes a sequence of names"):
        graph_pass("test_bad_input", "bad (test only)", pipeline_inputs="stats")(fn)
