"""The fold passes on real model graphs (tests/models/zoo.py, random weights with norms
and biases perturbed off 1 and 0, captured with from_torch and canonicalized): each
fold is exact in float, so the folded graph matches the canonical one to REL = 1e-5 of
the largest |output| (float32) on seeded inputs.

- small_cnn: fold_batchnorm folds both BatchNorms into their convs.
- Llama (pre-norm, RMSNorm): fold_norm_affine folds every norm (q/k/v, gate/up,
  lm_head read them); smoothquant's scales are absorbed by the norms; llm_fp4's
  exponent shifts too (its fold alone, no quantizers).
- BERT (post-LN): fold_norm_affine refuses every LayerNorm (each feeds a residual Add
  or is the output); smoothquant and llm_fp4 put their scales in explicit Muls on the
  branch to the linears.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402
from quant_testing import perturbed  # noqa: E402

import requant.ir as ir  # noqa: E402
from requant.frontends import from_torch  # noqa: E402
from requant.ir.graph import Graph  # noqa: E402
from requant.passes import PassManager, get_pass  # noqa: E402
from requant.passes.calibration import collect_stats  # noqa: E402
from requant.passes.smoothquant import smoothing_channel_axes  # noqa: E402

REL = 1e-5
SEEDS = (0, 1, 2)


def canonical(case: zoo.ModelCase) -> Graph:
    graph = from_torch(case.module, case.example_inputs)
    return PassManager(["canonicalize"], verify=True).run(graph).graph


def seeded_feeds(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in graph.inputs:
        shape = tuple(v.type.shape)
        if v.dtype.is_float:
            feeds[v.name] = rng.standard_normal(shape).astype(v.dtype.np)
        elif "mask" in v.name:
            mask = np.ones(shape, v.dtype.np)
            mask[0, -2:] = 0  # some padding
            feeds[v.name] = mask
        else:
            feeds[v.name] = rng.integers(0, 128, shape).astype(v.dtype.np)
    return feeds


def calibration(graph: Graph, n: int = 3) -> list[dict[str, np.ndarray]]:
    return [seeded_feeds(graph, 100 + i) for i in range(n)]


def folded(graph: Graph, pass_obj) -> tuple[Graph, dict]:
    g = graph.clone()
    result = PassManager([pass_obj], verify=True).run(g)
    (record,) = result.records
    return result.graph, record.stats


def assert_same_function(before: Graph, after: Graph, rel: float = REL) -> None:
    for seed in SEEDS:
        feeds = seeded_feeds(before, seed)
        (e,) = ir.run(before, feeds)
        (a,) = ir.run(after, feeds)
        err = float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64))))
        scale = float(np.max(np.abs(e)))
        assert err <= rel * scale, f"seed {seed}: max|after - before| = {err:.3g} > {rel} * {scale:.3g}"


@pytest.fixture(scope="module")
def cnn() -> Graph:
    return canonical(zoo.small_cnn())


@pytest.fixture(scope="module")
def llama() -> Graph:
    return canonical(perturbed(zoo.llama()))


@pytest.fixture(scope="module")
def bert() -> Graph:
    return canonical(perturbed(zoo.bert()))


def test_cnn_batchnorms_fold_into_convs(cnn: Graph) -> None:
    assert cnn.op_histogram()["BatchNormalization"] == 2
    after, stats = folded(cnn, get_pass("fold_batchnorm"))
    assert stats == {"batchnorms_folded": 2, "refused": 0}
    assert "BatchNormalization" not in after.op_histogram()
    assert_same_function(cnn, after)


def test_llama_norm_affines_fold_into_every_linear(llama: Graph) -> None:
    hist = llama.op_histogram()
    after, stats = folded(llama, get_pass("fold_norm_affine"))
    assert stats["norms_folded"] == hist["RMSNormalization"] == 5 and stats["refused"] == 0
    assert stats["linears_updated"] == 11  # 2 layers x (q, k, v, gate, up) + lm_head
    for node in after:
        if node.op == "RMSNormalization":
            assert np.all(node.inputs[1].const == 1.0)
    assert_same_function(llama, after)
    again = PassManager(["fold_norm_affine"], verify=True).run(after)
    assert not again.changed  # idempotent: unit norms are left alone


def test_bert_layer_norms_are_refused(bert: Graph) -> None:
    after, stats = folded(bert, get_pass("fold_norm_affine"))
    assert stats == {"norms_folded": 0, "linears_updated": 0, "refused": 5, "refused:non_linear_reader": 4,
                     "refused:graph_output": 1}
    assert after.to_text() == bert.to_text()


@pytest.mark.parametrize("model,how", [("llama", "absorbed:norm"), ("bert", "explicit_mul")])
def test_smoothquant_is_exact(model: str, how: str, request: pytest.FixtureRequest) -> None:
    graph = request.getfixturevalue(model)
    stats = collect_stats(graph, calibration(graph), values=[], per_channel_axis=smoothing_channel_axes(graph))
    # min_ratio 0: random weights give even channels, which the default would leave alone
    after, counters = folded(graph, get_pass("smoothquant", stats=stats, min_ratio=0.0))
    expected = {"llama": 5, "bert": 4}[model]  # BERT: the 4 encoder LayerNorms read by linears
    assert counters["activations_smoothed"] == expected and counters[how] == expected
    assert_same_function(graph, after)


@pytest.mark.parametrize("model", ["llama", "bert"])
def test_smoothquant_alpha_search_and_scope_all_are_exact(model: str, request: pytest.FixtureRequest) -> None:
    graph = request.getfixturevalue(model)
    after, counters = folded(graph, get_pass("smoothquant", calibration=calibration(graph), alpha_search=True,
                                             scope="all", alpha_grid=(0.25, 0.5, 0.75), min_ratio=0.0))
    assert counters["activations_smoothed"] + counters["kept_unsmoothed"] >= 8
    assert_same_function(graph, after)


@pytest.mark.parametrize("model", ["llama", "bert"])
def test_llm_fp4_shift_fold_is_exact(model: str, request: pytest.FixtureRequest) -> None:
    graph = request.getfixturevalue(model)
    after, counters = folded(graph, get_pass("llm_fp4", calibration=calibration(graph), insert_quantizers=False))
    assert counters["shift_folds"] > 0 and counters["channels_shifted"] > 0
    assert_same_function(graph, after)


def test_llm_fp4_quantized_llama_runs(llama: Graph) -> None:
    after, counters = folded(llama, get_pass("llm_fp4", calibration=calibration(llama)))
    # per layer: q/k/v share one activation, o_proj, gate/up share one, down_proj; + lm_head
    assert counters["activations_quantized"] == 2 * 4 + 1 and counters["weights_quantized"] == 2 * 7 + 1
    feeds = seeded_feeds(llama, 0)
    (ref,) = ir.run(llama, feeds)
    (got,) = ir.run(after, feeds)
    assert np.all(np.isfinite(got))
    cos = float(np.sum(ref * got) / (np.linalg.norm(ref) * np.linalg.norm(got)))
    assert cos > 0.8, f"W4A4 LLM-FP4 logits cosine {cos:.3f}"
