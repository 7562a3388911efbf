"""Tests of `requant.compile` and `CompiledModel`: every accepted model form compiles for
cpu-fp32 and matches its source (float32, 1e-4 relative), errors name what exists,
the caller's graph is not mutated, the report carries the pass table, sizes and
accuracy, and static / unavailable targets fail clearly.

Tolerance: cpu-fp32 only canonicalizes, but ONNX Runtime's kernels sum in a different
order than torch or the interpreter, so outputs agree to 1e-4 relative (1e-6 absolute
for values near zero), not bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import requant
from requant.errors import RequantError
from requant.ir import Graph, run, tensor_type
from requant.passes.manager import PassResult, get_pass, graph_pass
from requant.targets import TARGETS, Step, Target

RTOL, ATOL = 1e-4, 1e-6


class MLP(nn.Module):
    """Linear -> ReLU -> Linear, its weights drawn after torch.manual_seed(seed)."""

    def __init__(self, n_in: int, hidden: int, n_out: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def tiny_mlp() -> MLP:
    return MLP(8, 16, 4, seed=0)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(a) * b


def mlp_graph() -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("mlp")
    x = g.add_input("x", tensor_type("float32", ("batch", 8)))
    w = g.add_constant(rng.standard_normal((8, 4)).astype(np.float32), "w")
    b = g.add_constant(rng.standard_normal(4).astype(np.float32), "b")
    one = g.add_constant(np.float32(1.0), "one")
    m = g.create_node("MatMul", [x, w]).output
    a = g.create_node("Add", [m, b]).output
    s = g.create_node("Mul", [a, one]).output  # x * 1: canonicalize removes it
    g.outputs = [g.create_node("Relu", [s]).output]
    return g


def batches(n: int, shape: tuple[int, ...] = (2, 8), seed: int = 0) -> list[tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=gen),) for _ in range(n)]


@pytest.fixture(scope="module")
def mlp_compiled() -> tuple[MLP, requant.CompiledModel]:
    model = tiny_mlp().eval()
    return model, requant.compile(model, "cpu-fp32", example_inputs=batches(1)[0], calibration=batches(5, seed=3))


# -- model forms -------------------------------------------------------------------------------


def test_torch_module_matches_torch(mlp_compiled) -> None:
    model, cm = mlp_compiled
    x = torch.randn(2, 8)
    (y,) = cm(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(y, model(x).detach().numpy(), rtol=RTOL, atol=ATOL)
    # numpy in, by name, or as one mapping: the same answer
    np.testing.assert_array_equal(cm(x.numpy())[0], y)
    np.testing.assert_array_equal(cm(x=x.numpy())[0], y)
    np.testing.assert_array_equal(cm({"x": x})[0], y)


def test_small_cnn_from_the_zoo_matches_torch() -> None:
    from models.zoo import small_cnn

    case = small_cnn()
    cm = requant.compile(case.module, example_inputs=case.example_inputs)
    x = case.example_inputs[0]
    np.testing.assert_allclose(cm(x)[0], case.module(x).detach().numpy(), rtol=RTOL, atol=ATOL)


def test_two_input_torch_module_by_position_and_name() -> None:
    model = TwoInputs().eval()
    a, b = torch.randn(2, 6), torch.randn(2, 3)
    cm = requant.compile(model, example_inputs=(a, b))
    ref = model(a, b).detach().numpy()
    np.testing.assert_allclose(cm(a, b)[0], ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(cm(b=b, a=a)[0], ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(cm(a, b=b)[0], ref, rtol=RTOL, atol=ATOL)


def test_exported_program_needs_no_example_inputs() -> None:
    model = tiny_mlp().eval()
    x = torch.randn(2, 8)
    ep = torch.export.export(model, (x,))
    cm = requant.compile(ep)
    np.testing.assert_allclose(cm(x)[0], model(x).detach().numpy(), rtol=RTOL, atol=ATOL)


def test_torch_example_inputs_default_to_the_first_calibration_batch() -> None:
    model = tiny_mlp().eval()
    cm = requant.compile(model, calibration=[np.ones((2, 8), np.float32)])
    x = torch.randn(2, 8)
    np.testing.assert_allclose(cm(x)[0], model(x).detach().numpy(), rtol=RTOL, atol=ATOL)


def test_torch_module_without_inputs_is_an_error() -> None:
    with pytest.raises(RequantError, match="example_inputs"):
        requant.compile(tiny_mlp().eval())


def test_onnx_file_and_proto_match_the_interpreter(tmp_path) -> None:
    from requant.backends.onnx import save_onnx, to_onnx

    g = mlp_graph()
    path = save_onnx(to_onnx(g), tmp_path / "mlp.onnx")
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    (want,) = run(g, [x])
    for source in (path, str(path), to_onnx(g), path.read_bytes()):
        cm = requant.compile(source)
        np.testing.assert_allclose(cm(x)[0], want, rtol=RTOL, atol=ATOL)


def test_missing_onnx_file_and_unknown_model_type(tmp_path) -> None:
    with pytest.raises(RequantError, match="no such ONNX file"):
        requant.compile(tmp_path / "nope.onnx")
    with pytest.raises(RequantError, match="torch.nn.Module.*requant.ir.Graph"):
        requant.compile(42)


def test_graph_is_cloned_never_mutated() -> None:
    g = mlp_graph()
    before = g.to_text()
    cm = requant.compile(g)
    assert g.to_text() == before
    assert cm.graph is not g
    assert "Mul" not in cm.graph.op_histogram()  # canonicalize ran on the copy
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)  # symbolic batch
    np.testing.assert_allclose(cm(x)[0], run(g, [x])[0], rtol=RTOL, atol=ATOL)


# -- inputs at call time --------------------------------------------------------------------------


def test_call_checks_dtype_shape_and_names(mlp_compiled) -> None:
    _, cm = mlp_compiled
    with pytest.raises(RequantError, match=r"input 'x' must be float32"):
        cm(np.zeros((2, 8), np.float64))
    with pytest.raises(RequantError, match=r"input 'x' must have shape \[2,8\]"):
        cm(np.zeros((3, 8), np.float32))
    with pytest.raises(RequantError, match="unknown input"):
        cm(y=np.zeros((2, 8), np.float32))
    with pytest.raises(RequantError, match="takes 1 input"):
        cm(np.zeros((2, 8), np.float32), np.zeros((2, 8), np.float32))


# -- targets and options ---------------------------------------------------------------------------


def test_unknown_target_lists_every_target() -> None:
    with pytest.raises(RequantError, match="unknown target 'gpu-int3'") as info:
        requant.compile(mlp_graph(), target="gpu-int3")
    for name in TARGETS:
        assert name in str(info.value)


def test_unknown_option_lists_the_targets_options() -> None:
    with pytest.raises(RequantError, match="has no option") as info:
        requant.compile(mlp_graph(), target="cpu-fp32", tile_size=4)
    message = str(info.value)
    assert "'tile_size'" in message
    for name in TARGETS["cpu-fp32"].all_options:
        assert name in message


def test_option_types_are_validated() -> None:
    with pytest.raises(RequantError, match="option 'threads' must be int, got str"):
        requant.compile(mlp_graph(), threads="4")
    with pytest.raises(RequantError, match="option 'threads' must be int, got bool"):
        requant.compile(mlp_graph(), threads=True)
    with pytest.raises(RequantError, match="option 'method' must be one of"):
        requant.compile(mlp_graph(), target="cpu-int8", calibration=[np.zeros((1, 8), np.float32)], method="median")
    cm = requant.compile(mlp_graph(), threads=1, holdout=0)  # an int is accepted for a float option
    assert cm.options["holdout"] == 0.0 and isinstance(cm.options["holdout"], float)


def test_static_target_without_calibration_says_so() -> None:
    with pytest.raises(RequantError, match=r"cpu-int8 is static: pass calibration=\[\.\.\.\] batches"):
        requant.compile(mlp_graph(), target="cpu-int8")
    with pytest.raises(RequantError, match="calibration=\\[\\] is empty"):
        requant.compile(mlp_graph(), target="cpu-int8", calibration=[])


@pytest.mark.parametrize("name", [n for n, t in TARGETS.items() if not t.available])
def test_unavailable_targets_name_what_is_missing(name: str) -> None:
    target = TARGETS[name]
    calib = [np.zeros((1, 8), np.float32)] * 2
    with pytest.raises(RequantError, match=f"target '{name}' is not available yet") as info:
        requant.compile(mlp_graph(), target=name, calibration=calib)
    for reason in target.missing():
        assert reason in str(info.value)


def test_a_target_naming_an_unregistered_pass_fails_clearly(monkeypatch) -> None:
    fake = Target("cpu-test", "test target", (Step("canonicalize"), Step("no_such_pass_xyz")))
    monkeypatch.setitem(TARGETS, "cpu-test", fake)
    assert requant.targets()["cpu-test"].endswith("(not available yet)")
    with pytest.raises(RequantError, match="needs pass 'no_such_pass_xyz'"):
        requant.compile(mlp_graph(), target="cpu-test")


# -- passes= ---------------------------------------------------------------------------------------

SEEN: dict[str, object] = {}


@pytest.fixture
def test_passes(monkeypatch) -> None:
    """Registers "test_compile_stats_probe" and "test_compile_broken" in a copy of the
    registry, so they disappear after the test."""
    from requant.passes import manager

    monkeypatch.setattr(manager, "_REGISTRY", dict(manager._REGISTRY))

    @graph_pass("test_compile_stats_probe", "records the calibration statistics it is given (tests only)",
                pipeline_inputs=("stats",))
    def _stats_probe(graph: Graph, stats: object = None) -> PassResult:
        SEEN["stats"] = stats
        return PassResult(graph, False, {"tensors_quantized": 0 if stats is None else len(stats)})

    @graph_pass("test_compile_broken", "always fails (tests only)")
    def _broken(graph: Graph) -> PassResult:
        raise ValueError("boom")


def test_passes_replace_the_pipeline() -> None:
    cm = requant.compile(mlp_graph(), passes=["dce", ("cse", {}), get_pass("fold_constants")])
    assert [r["name"] for r in cm.stats["passes"]] == ["dce", "cse", "fold_constants"]
    assert "Mul" in cm.graph.op_histogram()  # no canonicalize this time
    assert "pipeline replaced by passes=" in cm.report()
    with pytest.raises(RequantError, match="takes a list"):
        requant.compile(mlp_graph(), passes="dce")
    with pytest.raises(RequantError, match="needs pass 'nope'"):
        requant.compile(mlp_graph(), passes=["nope"])


def test_calibrate_step_feeds_stats_and_holds_batches_back(test_passes) -> None:
    calib = [np.random.default_rng(i).standard_normal((2, 8)).astype(np.float32) for i in range(5)]
    SEEN.clear()
    cm = requant.compile(mlp_graph(), passes=["canonicalize", "calibrate", "test_compile_stats_probe"],
                         calibration=calib)
    records = {r["name"]: r for r in cm.stats["passes"]}
    assert records["calibrate"]["stats"]["batches"] == 4  # 20% of 5 held back
    assert isinstance(SEEN["stats"], dict) and SEEN["stats"]  # the probe got the statistics
    accuracy = cm.stats["accuracy"]
    assert accuracy["batches"] == 1 and "held back" in accuracy["note"]
    (metrics,) = accuracy["outputs"].values()
    assert metrics["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert "quantized" in cm.report()  # the tensors_quantized stat gets its own column
    with pytest.raises(RequantError, match="is static"):
        requant.compile(mlp_graph(), passes=["calibrate", "test_compile_stats_probe"])


def test_a_single_calibration_batch_is_used_for_both(test_passes) -> None:
    cm = requant.compile(mlp_graph(), passes=["calibrate", "test_compile_stats_probe"],
                         calibration=[np.ones((2, 8), np.float32)])
    assert cm.stats["passes"][0]["stats"]["batches"] == 1
    assert cm.stats["accuracy"]["batches"] == 1 and "only calibration batch" in cm.stats["accuracy"]["note"]


def test_calibration_batches_are_checked_against_the_inputs() -> None:
    with pytest.raises(RequantError, match="calibration batch 1: 2 arrays for 1 input"):
        requant.compile(mlp_graph(), calibration=[np.ones((2, 8), np.float32), (np.ones(1), np.ones(1))])


# -- the report --------------------------------------------------------------------------------------


def test_report_has_the_pass_table_sizes_times_and_accuracy(mlp_compiled) -> None:
    _, cm = mlp_compiled
    text = cm.report()
    assert "target cpu-fp32" in text
    for column in ("step", "changed", "nodes", "added", "removed", "time ms"):
        assert column in text
    for step in ("canonicalize", "fold_constants", "cse", "dce"):
        assert step in text
    assert "constants:" in text and "artifact (ONNX)" in text
    assert "total" in text
    assert "accuracy vs float, 5 batch(es)" in text  # cpu-fp32 does not calibrate: all 5 measure
    stats = cm.stats
    assert stats["sizes"]["constants_before"] == stats["sizes"]["constants_after"] == (8 * 16 + 16 + 16 * 4 + 4) * 4
    assert stats["sizes"]["artifact"] > stats["sizes"]["constants_after"]
    assert stats["accuracy"]["outputs"]["output_0"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert stats["accuracy"]["outputs"]["output_0"]["max_abs_error"] < 1e-5
    assert set(stats["times"]) >= {"frontend", "pipeline", "backend", "total"}


def test_without_calibration_the_report_says_accuracy_was_not_measured() -> None:
    assert "not measured" in requant.compile(mlp_graph()).report()


def test_simulated_targets_are_marked_in_the_report() -> None:
    from requant.report import SIMULATED_NOTE, render_report

    stats = {"target": "cpu-fp8", "backend": "onnx", "simulated": True, "passes": [],
             "accuracy": {"batches": 1, "note": "held back from calibration",
                          "outputs": {"y": {"cosine": 0.99, "max_abs_error": 0.1}}}}
    text = render_report(stats)
    assert SIMULATED_NOTE in text and text.count("simulated") >= 2
    assert TARGETS["cpu-fp8"].simulated and TARGETS["cpu-fp4"].simulated and not TARGETS["cpu-int8"].simulated


# -- quantized targets (run once their passes and lowerings exist) --------------------------------


def wide_mlp() -> MLP:
    return MLP(64, 64, 8, seed=2)


# loose floors: a sanity check that the pipeline quantizes and runs, not an accuracy benchmark
MIN_COSINE = {"cpu-int8": 0.99, "cpu-int4": 0.95, "cpu-fp8": 0.99, "cpu-fp4": 0.8}


@pytest.mark.parametrize("name", list(MIN_COSINE))
def test_quantized_targets_compile_report_and_save(name: str, tmp_path) -> None:
    target = TARGETS[name]
    if not target.available:
        pytest.skip(f"{name} not available yet: {'; '.join(target.missing())}")
    model = wide_mlp().eval()
    calib = batches(6, shape=(4, 64), seed=5)
    cm = requant.compile(model, name, example_inputs=calib[0], calibration=calib)
    x = calib[-1][0]
    y, ref = cm(x)[0], model(x).detach().numpy()
    cosine = float((y * ref).sum() / (np.linalg.norm(y) * np.linalg.norm(ref)))
    assert cosine > MIN_COSINE[name]
    quantize = next(r for r in cm.stats["passes"] if r["name"] == "quantize")
    assert quantize["stats"]["tensors_quantized"] > 0
    text = cm.report()
    assert "quantized" in text and ("simulated: quantize-dequantize on CPU" in text) == target.simulated
    if target.static:
        assert cm.stats["accuracy"]["batches"] == 1 and cm.stats["accuracy"]["note"] == "held back from calibration"
    loaded = requant.load(cm.save(tmp_path / name))
    np.testing.assert_array_equal(loaded(x)[0], y)


def test_a_failing_step_is_named_with_the_steps_before_it(test_passes) -> None:
    with pytest.raises(requant.PassError, match=r"step 2 of 3 \('test_compile_broken', after: dce\).*boom"):
        requant.compile(mlp_graph(), passes=["dce", "test_compile_broken", "cse"])
    with pytest.raises(requant.PassError, match=r"step 1 of 2 \('calibrate', after: none\).*batch"):
        requant.compile(mlp_graph(), passes=["calibrate", "dce"], calibration=[np.ones((2, 8), np.float64)])


def test_cpu_fp4_search_swaps_the_block_quantizer_for_llm_fp4(tmp_path) -> None:
    target = TARGETS["cpu-fp4"]
    steps = [s.name for s in target.resolve_steps(target.resolve_options({"search": True}))]
    assert steps == ["canonicalize", "fold_batchnorm", "llm_fp4", "cse", "dce"]
    assert [s.name for s in target.resolve_steps(target.resolve_options({}))][:5] == [
        "canonicalize", "fold_batchnorm", "smoothquant", "calibrate", "quantize"]  # blocks: SmoothQuant, then GPTQ
    model = wide_mlp().eval()
    calib = batches(6, shape=(4, 64), seed=5)
    with pytest.raises(RequantError, match="cpu-fp4 is static"):
        requant.compile(model, "cpu-fp4", example_inputs=calib[0], search=True)
    cm = requant.compile(model, "cpu-fp4", example_inputs=calib[0], calibration=calib, search=True)
    record = next(r for r in cm.stats["passes"] if r["name"] == "llm_fp4")
    assert record["stats"]["activations_quantized"] == 2 and record["stats"]["weights_quantized"] == 2
    assert sum(n.op == "FakeQuantize" for n in cm.graph) == 4
    assert cm.stats["accuracy"]["note"] == "held back from calibration"
    x = calib[-1][0]
    y, ref = cm(x)[0], model(x).detach().numpy()
    assert float((y * ref).sum() / (np.linalg.norm(y) * np.linalg.norm(ref))) > MIN_COSINE["cpu-fp4"]
    saved = json.loads((cm.save(tmp_path / "fp4s") / "pipeline.json").read_text())
    assert saved["steps"][2] == {"name": "llm_fp4", "options": {"calibration": "<the calibration batches>",
                                                                "runner": "auto"}}
