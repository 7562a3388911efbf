"""Canonical forms on real models: the same model gives the same canonical graph whether
it comes through requant's torch frontend or through an ONNX file that
torch.onnx.export wrote, and canonicalisation keeps every model's outputs.

- MiniLM (trained all-MiniLM-L6-v2): from_torch vs from_onnx of the dynamo exporter's
  file (opset 18, where attention, GELU and masks are decomposed, and opset 23, where
  the exporter writes ONNX Attention), both canonicalised: equal op histograms, equal
  multisets of (op, attributes with defaults filled in), and both still match torch.
- BERT, ViT, GPT-2, Llama (random weights, norms and biases perturbed so that no
  parameter is a trivial 1 or 0 an exporter could drop): the expected fused ops appear
  once per layer, outputs match torch, and the torch and ONNX canonical histograms agree.
- small_cnn: canonical linear, outputs kept.

Tolerance (FP32_TOL): max|a-b| <= 1e-4 * max(1, max|ref|) against torch, as in the
frontend round-trip tests; canonicalisation itself moves outputs by float rounding only.
"""

from __future__ import annotations

import inspect
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")  # the dynamo exporter needs it

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402
from quant_testing import perturbed  # noqa: E402

import requant.ir as ir  # noqa: E402
from requant.frontends import from_onnx, from_torch  # noqa: E402
from requant.ir.graph import Graph  # noqa: E402
from requant.passes import PassManager  # noqa: E402
from requant.passes.cse import attr_key  # noqa: E402

FP32_TOL = 1e-4


def assert_matches_torch(graph: Graph, case: zoo.ModelCase, what: str) -> None:
    with torch.no_grad():
        ref = case.module(*case.example_inputs).numpy()
    (got,) = ir.run(graph, [t.numpy() for t in case.example_inputs])
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    scale = max(1.0, float(np.max(np.abs(ref))))
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    assert err <= FP32_TOL * scale, f"{what}: max|a-b| = {err:.3g} > {FP32_TOL * scale:.3g}"


def canonical(graph: Graph) -> tuple[Graph, dict]:
    start = time.perf_counter()
    result = PassManager(["canonicalize"], verify=True).run(graph)
    seconds = time.perf_counter() - start
    print(f"canonicalize: {seconds * 1e3:.0f} ms, {len(graph)} nodes, stats {result.records[0].stats}")
    return result.graph, result.records[0].stats


def export_onnx(case: zoo.ModelCase, path: Path, opset: int = 18) -> Path:
    """torch 2.13's default exporter (dynamo=True: torch.export + onnxscript) with its
    graph optimizer; it needs nothing from the network."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(case.module, case.example_inputs, str(path), dynamo=True, optimize=True,
                          opset_version=opset, external_data=False, verbose=False)
    return path


def signature(graph: Graph) -> Counter:
    """The multiset of (op, attributes with their defaults filled in)."""
    sig: Counter = Counter()
    for node in graph:
        attrs = ir.get_schema(node.op).fill_attrs(node.attrs)
        sig[(node.op, tuple(sorted((k, attr_key(v)) for k, v in attrs.items())))] += 1
    return sig


@pytest.fixture(scope="module")
def minilm_case() -> zoo.ModelCase:
    return zoo.minilm()


@pytest.fixture(scope="module")
def minilm_from_torch(minilm_case: zoo.ModelCase) -> tuple[Graph, dict]:
    return canonical(from_torch(minilm_case.module, minilm_case.example_inputs))


MINILM_CANONICAL = {
    "Add": 50, "And": 1, "Cast": 1, "Gather": 1, "GatherND": 1, "Gelu": 6, "LayerNormalization": 13,
    "MatMul": 36, "Reshape": 24, "ScaledDotProductAttention": 6, "Transpose": 24,
}
"""The canonical MiniLM: per layer 6 linears (MatMul + bias Add), 2 residual Adds, 2
LayerNorms, Gelu, fused attention, head split/merge Reshape+Transpose for Q, K, V and
the output; the embeddings (one Gather of token ids, folded position/type embeddings,
LayerNorm) and the padding mask (Cast, GatherND, And)."""


@pytest.mark.slow
@pytest.mark.parametrize("opset", [18, 23])
def test_minilm_from_torch_and_from_onnx_canonicalise_alike(
    opset: int, minilm_case: zoo.ModelCase, minilm_from_torch: tuple[Graph, dict], tmp_path: Path
) -> None:
    via_torch, _ = minilm_from_torch
    via_onnx, stats = canonical(from_onnx(export_onnx(minilm_case, tmp_path / "minilm.onnx", opset)))
    a, b = via_torch.op_histogram(), via_onnx.op_histogram()
    assert a == b, f"canonical op histograms differ:\n  from torch: {a}\n  from ONNX:  {b}"
    assert a == MINILM_CANONICAL, f"canonical MiniLM changed: {a}"
    sa, sb = signature(via_torch), signature(via_onnx)
    assert sa == sb, f"(op, attrs) differ:\n  only from torch: {sa - sb}\n  only from ONNX: {sb - sa}"
    if opset == 18:  # the exporter spelled attention, GELU and the mask out: they were fused here
        assert stats["rule:sdpa[split,add,safe_softmax]"] == 6 and stats["rule:sdpa_additive_mask_to_bool"] == 6
        assert stats["rule:gelu_erf[div_sqrt2,x*(half*P)]"] == 6
    assert_matches_torch(via_torch, minilm_case, "MiniLM from torch, canonical")
    assert_matches_torch(via_onnx, minilm_case, f"MiniLM from ONNX opset {opset}, canonical")


# (builder, fused op -> count for 2 layers, attributes every fused attention must have)
MODELS = {
    "bert": (zoo.bert, {"LayerNormalization": 5, "Gelu": 2, "ScaledDotProductAttention": 2}, {"is_causal": 0}),
    "vit": (zoo.vit, {"LayerNormalization": 5, "Gelu": 2, "ScaledDotProductAttention": 2}, {"is_causal": 0}),
    "gpt2": (zoo.gpt2, {"LayerNormalization": 5, "Gelu": 2, "ScaledDotProductAttention": 2}, {"is_causal": 1}),
    "llama": (zoo.llama, {"RMSNormalization": 5, "ScaledDotProductAttention": 2}, {"is_causal": 1}),
}
GONE_AFTER_CANONICALIZE = ("Gemm", "Softmax", "Erf", "Tanh", "Pow", "Sqrt", "Reciprocal", "ReduceMean", "IsNaN",
                           "Identity", "Dropout", "Trilu")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_transformer_canonical_forms(name: str, tmp_path: Path) -> None:
    build, fused, sdpa_attrs = MODELS[name]
    case = perturbed(build())
    via_torch, _ = canonical(from_torch(case.module, case.example_inputs))
    hist = via_torch.op_histogram()
    for op, count in fused.items():
        assert hist.get(op, 0) == count, f"{name}: {hist.get(op, 0)} {op}, expected {count}: {hist}"
    assert not set(hist) & set(GONE_AFTER_CANONICALIZE), f"{name}: decomposed ops remain: {hist}"
    for node in via_torch:
        if node.op == "ScaledDotProductAttention":
            assert {k: node.attrs.get(k, 0) for k in sdpa_attrs} == sdpa_attrs
            assert node.attrs.get("scale", 0.0) == 0.0  # 1/sqrt(head_dim), spelled as the default
        if node.op == "MatMul" and node.inputs[1].is_constant:
            assert node.inputs[1].shape[0] == node.inputs[0].shape[-1]  # weights [in, out]
    if name == "llama":  # grouped-query attention without repeated K/V: 4 query heads, 2 key heads
        sdpa = next(n for n in via_torch if n.op == "ScaledDotProductAttention")
        assert sdpa.inputs[0].shape[1] == 4 and sdpa.inputs[1].shape[1] == 2
    assert_matches_torch(via_torch, case, f"{name} from torch, canonical")

    via_onnx, _ = canonical(from_onnx(export_onnx(case, tmp_path / f"{name}.onnx")))
    assert via_onnx.op_histogram() == hist, (
        f"{name}: canonical op histograms differ:\n  from torch: {hist}\n  from ONNX:  {via_onnx.op_histogram()}")
    assert_matches_torch(via_onnx, case, f"{name} from ONNX, canonical")


@pytest.mark.slow
def test_small_cnn_canonical_linear() -> None:
    case = zoo.small_cnn()
    graph, _ = canonical(from_torch(case.module, case.example_inputs))
    hist = graph.op_histogram()
    assert hist.get("MatMul") == 1 and hist.get("Add") == 1 and "Gemm" not in hist and "Transpose" not in hist
    matmul = next(n for n in graph if n.op == "MatMul")
    assert matmul.inputs[1].is_constant and matmul.inputs[1].shape == (16, 10)  # [in, out]
    assert_matches_torch(graph, case, "small_cnn from torch, canonical")


BLOCK_OPS = ("MatMul", "ScaledDotProductAttention", "LayerNormalization", "Gelu", "Transpose", "Reshape")


@pytest.mark.slow
def test_minilm_with_a_symbolic_batch_canonicalises_alike(minilm_case: zoo.ModelCase, tmp_path: Path) -> None:
    """With a symbolic batch the encoder blocks canonicalise alike (the exporter's K^T is
    then computed from Shape(K) slices) and the batch stays a symbol. The index
    arithmetic of the embeddings and the padding mask, which depends on the batch, is
    spelled differently by the two sources (Range/Mul/Add vs Max/Expand/Squeeze): no
    canonical form covers it yet, so only the block ops are compared."""
    params = list(inspect.signature(minilm_case.module.forward).parameters)
    via_torch, _ = canonical(from_torch(minilm_case.module, minilm_case.example_inputs,
                                        dynamic_dims={p: {0: "batch"} for p in params}))
    batch = torch.export.Dim("batch", min=1, max=64)
    path = tmp_path / "minilm_batch.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(minilm_case.module, minilm_case.example_inputs, str(path), dynamo=True, optimize=True,
                          dynamic_shapes={p: {0: batch} for p in params}, external_data=False, verbose=False)
    via_onnx, _ = canonical(from_onnx(path))
    for graph, what in ((via_torch, "torch"), (via_onnx, "ONNX")):
        assert graph.outputs[0].type.shape[0] == "batch"
        assert_matches_torch(graph, minilm_case, f"MiniLM (symbolic batch) from {what}, canonical")
    blocks = [{op: n for op, n in g.op_histogram().items() if op in BLOCK_OPS} for g in (via_torch, via_onnx)]
    assert blocks[0] == blocks[1] == {op: MINILM_CANONICAL[op] for op in BLOCK_OPS}, blocks
