"""The rotation passes on real model graphs (tests/models/zoo.py: random-weight Llama, OPT,
GPT-2, ViT and BERT with norms and biases perturbed off 1 and 0), from both frontends
(torch.export, and the ONNX file requant writes read back by from_onnx), canonicalized.

Each pass is exact in float on its own, so after every pass of the rotation pipeline
(fold_norm_affine -> layernorm_to_rmsnorm -> rotate_residual -> rotate_heads ->
rotate_online) the graph matches the canonical one within REL = 1e-5 of the largest
|output| (float32; the rotations reassociate every sum) on seeded inputs. What each
pass did is held per model: the pre-norm models rotate their residual stream with no
per-architecture table (ViT with one explicit product at each end: its patch convolution
and its final LayerNorm, whose output is the graph's); BERT (post-norm) is refused by
both stream passes, by name, and takes per-linear online rotations instead. The
block-diagonal online rotations (rotate_online block=16, the models' head size) are exact
the same way, and need no Hadamard across heads.
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
from requant.ir.graph import Graph  # noqa: E402
from requant.passes import PassManager, get_pass  # noqa: E402

REL = 1e-5

# per model: (streams centred, streams rotated, explicit ends (centring + rotation),
# attentions rotated per head, online rotations, the stream refusal's key)
EXPECTED = {
    "llama": (0, 1, 0, 2, 4, None),
    "opt": (1, 1, 0, 2, 4, None),
    "gpt2": (1, 1, 0, 2, 4, None),
    "vit": (1, 1, 2, 2, 5, None),  # the patch convolution (start) and the final LayerNorm (end)
    "bert": (0, 0, 0, 2, 8, "post_norm"),
}


def _graphs(name: str) -> dict[str, tuple[Graph, dict]]:
    from requant.backends.onnx import to_onnx
    from requant.frontends import from_onnx, from_torch

    case = perturbed(getattr(zoo, name)())
    canonical = PassManager(["canonicalize"], verify=True).run(from_torch(case.module, case.example_inputs)).graph
    feeds = {v.name: np.asarray(x) for v, x in zip(canonical.inputs, case.example_inputs)}
    read_back = PassManager(["canonicalize"], verify=True).run(from_onnx(to_onnx(canonical))).graph
    return {"torch": (canonical, feeds), "onnx": (read_back, feeds)}


def _steps(name: str, block: int = 0) -> list:
    post = EXPECTED[name][-1] == "post_norm"
    return [get_pass("fold_norm_affine"), get_pass("layernorm_to_rmsnorm"), get_pass("rotate_residual", seed=3),
            get_pass("rotate_heads", seed=4),
            get_pass("rotate_online", scope="all" if post else "writers", block=block)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_rotation_pass_is_exact_from_both_frontends(name):
    centred, rotated, explicit, heads, online, refused = EXPECTED[name]
    for frontend, (graph, feeds) in _graphs(name).items():
        (want,) = ir.run(graph, feeds)
        scale = float(np.max(np.abs(want)))
        g = graph.clone()
        stats = {}
        for step in _steps(name):
            result = PassManager([step], verify=True).run(g)
            g = result.graph
            stats[step.name] = result.records[0].stats
            (got,) = ir.run(g, feeds)
            err = float(np.max(np.abs(got.astype(np.float64) - want)))
            assert err <= REL * scale, f"{name} via {frontend}, after {step.name}: {err:.3g} > {REL} x {scale:.3g}"
        where = f"{name} via {frontend}"
        assert stats["layernorm_to_rmsnorm"]["streams_centred"] == centred, where
        assert stats["rotate_residual"]["streams_rotated"] == rotated, where
        ends = stats["layernorm_to_rmsnorm"]["explicit_products"] + stats["rotate_residual"]["explicit_products"]
        assert ends == explicit, where
        assert stats["rotate_heads"]["attentions_rotated"] == heads, where
        assert stats["rotate_online"]["activations_rotated"] == online, where
        assert stats["rotate_online"]["across_heads"] == heads, where
        if refused is not None:
            assert stats["rotate_residual"][f"refused:{refused}"] == 1, where
            assert stats["layernorm_to_rmsnorm"][f"refused:{refused}"] == 1, where
            why = stats["rotate_residual"]["refusal"]
            assert "post-norm" in why and "rotate_online" in why, why
        else:
            assert not any(n.op == "LayerNormalization" for n in g) or name == "vit", where
            assert sum(n.op == "Hadamard" for n in g) == online, where


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_block_diagonal_online_rotations_are_exact(name):
    heads, online = EXPECTED[name][3], EXPECTED[name][4]
    for frontend, (graph, feeds) in _graphs(name).items():
        (want,) = ir.run(graph, feeds)
        result = PassManager(_steps(name, block=16), verify=True).run(graph.clone())
        (got,) = ir.run(result.graph, feeds)
        err = float(np.max(np.abs(got.astype(np.float64) - want)))
        where = f"{name} via {frontend}"
        assert err <= REL * float(np.max(np.abs(want))), f"{where}: {err:.3g}"
        stats = result.records[-1].stats
        assert stats["skipped:heads_within_block"] == heads and stats["across_heads"] == 0, where
        assert stats["blocked"] == stats["activations_rotated"] == online - heads, where
        blocks = [n.attrs.get("block") for n in result.graph if n.op == "Hadamard"]
        assert blocks == [16] * (online - heads), where


@pytest.mark.slow
def test_rotated_llama_runs_on_onnx_runtime():
    """The rotated graph, Hadamard ops included, exports and runs on ONNX Runtime."""
    pytest.importorskip("onnxruntime")
    from requant.backends.onnx import to_onnx
    from requant.backends.onnx.runtime import run_onnx

    graph, feeds = _graphs("llama")["torch"]
    (want,) = ir.run(graph, feeds)
    g = PassManager(_steps("llama"), verify=True).run(graph.clone()).graph
    got = run_onnx(to_onnx(g), feeds)[0]
    assert float(np.max(np.abs(got - want))) <= REL * float(np.max(np.abs(want)))
