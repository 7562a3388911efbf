"""Real models through from_torch: each zoo model (MiniLM with trained weights, BERT,
Llama, GPT-2, ViT, a small CNN) converted to IR and run on the interpreter must match
torch; MiniLM with dynamic batch and sequence dims must run at another size too."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

from requant.frontends import from_torch  # noqa: E402
from requant.ir import run  # noqa: E402
from requant.ir.graph import Graph  # noqa: E402

# fp32: max|ir - torch| <= FP32_TOLERANCE * max(1, max|torch|)
FP32_TOLERANCE = 1e-4


def _check(graph: Graph, module: torch.nn.Module, inputs: tuple) -> None:
    graph.verify()
    (out,) = run(graph, [x.numpy() for x in inputs])
    with torch.no_grad():
        ref = module(*inputs).numpy()
    assert out.shape == ref.shape and out.dtype == ref.dtype
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(out.astype(np.float64) - ref).max())
    assert err <= FP32_TOLERANCE * scale, f"max abs error {err:.3g} > {FP32_TOLERANCE:g} * {scale:.3g}"


def _check_sources(graph: Graph, *expected: str) -> None:
    found = {n.meta["source"] for n in graph}
    assert all(isinstance(n.meta.get("torch_op"), str) for n in graph)
    for path in expected:
        assert path in found, f"no node from {path}; sources: {sorted(found)[:20]}"


@pytest.fixture(scope="module")
def minilm() -> zoo.ModelCase:
    try:
        return zoo.minilm()
    except ImportError as exc:  # the weights ship in an optional package
        pytest.skip(f"MiniLM weights unavailable: {exc}")


def test_minilm(minilm: zoo.ModelCase) -> None:
    graph = from_torch(minilm.module, minilm.example_inputs)
    _check(graph, minilm.module, minilm.example_inputs)
    _check_sources(graph, "inner.encoder.layer.0.attention.self", "inner.encoder.layer.5.output.dense")
    assert graph.op_histogram()["LayerNormalization"] == 13
    assert "inner.encoder.layer.0.attention.self.query.weight" in {c.name for c in graph.constants}
    assert [v.name for v in graph.inputs] == ["input_ids", "attention_mask"]


def test_minilm_dynamic_batch_and_seq(minilm: zoo.ModelCase) -> None:
    dims = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    graph = from_torch(minilm.module, minilm.example_inputs, dynamic_dims=dims)
    assert [v.type.shape for v in graph.inputs] == [("batch", "seq"), ("batch", "seq")]
    assert graph.outputs[0].type.shape == ("batch", "seq", 384)
    _check(graph, minilm.module, minilm.example_inputs)
    other = zoo.minilm(zoo.SENTENCES[:3], seq_len=11)  # a second (batch, seq) size, with padding
    assert other.example_inputs[0].shape == (3, 11)
    _check(graph, minilm.module, other.example_inputs)


@pytest.mark.parametrize(
    "make, sources",
    [
        (zoo.bert, ["inner.encoder.layer.1.attention.self"]),
        (zoo.llama, ["inner.model.layers.0.self_attn", "inner.model.layers.1.mlp.down_proj"]),
        (zoo.gpt2, ["inner.transformer.h.0.attn", "inner.lm_head"]),
        (zoo.vit, ["inner.embeddings.patch_embeddings.projection"]),
        (zoo.small_cnn, ["0", "1", "9"]),
    ],
    ids=["bert", "llama", "gpt2", "vit", "small_cnn"],
)
def test_zoo_model(make, sources: list[str]) -> None:
    case = make()
    graph = from_torch(case.module, case.example_inputs)
    _check(graph, case.module, case.example_inputs)
    _check_sources(graph, *sources)
