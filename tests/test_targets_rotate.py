"""The rotation and GPTQ options of the quantized targets and the cpu-w4a8 / cpu-w4a4
targets (targets.py): which steps each option puts in the pipeline, in which order, and
small models compiled end to end on ONNX Runtime: a random-weight Llama through cpu-w4a8
(rotated, GPTQ, int4 codes stored 4-bit, int8 kernels) and cpu-w4a4 (per-token int4
activations with searched clip ratios, simulated), and BERT through cpu-int8 with
rotate=True (the stream rotation refused by name, the online and per-head ones applied).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from requant.errors import RequantError
from requant.targets import BATCHES, CALIBRATE, get_target

ROTATIONS = ["fold_norm_affine", "layernorm_to_rmsnorm", "rotate_residual", "rotate_heads", "rotate_online"]


def _names(target: str, **options) -> list[str]:
    t = get_target(target)
    return [s.name for s in t.resolve_steps(t.resolve_options(options))]


def _steps(target: str, **options) -> dict:
    t = get_target(target)
    return {s.name: s for s in t.resolve_steps(t.resolve_options(options))}


@pytest.mark.parametrize("target", ["cpu-int8", "tvm-cpu-int8", "cuda-int8", "cpu-int4", "cpu-fp8", "cpu-fp4"])
def test_rotate_puts_the_rotations_after_the_canonical_forms(target):
    assert not set(ROTATIONS) & set(_names(target))  # off by default
    names = _names(target, rotate=True)
    start = names.index("fold_norm_affine")
    assert names[start - 2:start] == ["canonicalize", "fold_batchnorm"] and names[start:start + 5] == ROTATIONS
    block = 32 if target.endswith("int8") else 0  # int8 grids: blocks of 32 (targets.py)
    assert _steps(target, rotate=True, rotate_online="norms")["rotate_online"].options == {"scope": "norms",
                                                                                           "block": block}
    assert _steps(target, rotate=True, rotate_block=12)["rotate_online"].options["block"] == 12
    with pytest.raises(RequantError, match="rotate_block' must be 0 .* or a Hadamard order"):
        _steps(target, rotate=True, rotate_block=156)
    assert "rotate_online" not in _names(target, rotate=True, rotate_online="none")


def test_weight_method_reaches_quantize_with_the_batches():
    q = _steps("cpu-int8", weight_method="gptq")["quantize"].options
    assert q["weight_method"] == "gptq" and q["batches"] is BATCHES and q["runner"] == "auto"
    int4 = get_target("cpu-int4")
    assert not int4.static  # round to nearest needs no calibration
    assert _steps("cpu-int4", weight_method="gptq")["quantize"].options["batches"] is BATCHES
    assert any(s.needs_batches for s in int4.resolve_steps(int4.resolve_options({"weight_method": "gptq"})))


def test_w4a8_pipelines_for_both_kernels():
    names = _names("cpu-w4a8")
    assert names[:7] == ["canonicalize", "fold_batchnorm", *ROTATIONS] and "smoothquant" not in names
    assert names[7:] == [CALIBRATE, "quantize", "lower_quant", "cse", "dce"]
    q = _steps("cpu-w4a8")["quantize"].options
    assert q["weight_scheme"].dtype == "int4" and q["weight_scheme"].granularity == "channel"
    assert q["activation_scheme"].dtype == "uint8" and q["weight_method"] == "gptq"
    assert _steps("cpu-w4a8")["lower_quant"].options == {"kernel": "auto", "accuracy_level": 0}
    nbits = _steps("cpu-w4a8", kernel="nbits")
    assert CALIBRATE not in nbits and nbits["quantize"].options["weight_only"] is True
    assert nbits["quantize"].options["weight_scheme"].granularity == "group"
    assert nbits["lower_quant"].options["accuracy_level"] == 4


def test_w4a4_pipelines_per_token_and_per_tensor():
    names = _names("cpu-w4a4")
    assert names == ["canonicalize", "fold_batchnorm", *ROTATIONS, "quantize", "cse", "dce"]  # nothing to calibrate
    q = _steps("cpu-w4a4")["quantize"].options
    assert (q["weight_scheme"].dtype, q["weight_scheme"].granularity) == ("int4", "channel")
    assert (q["activation_scheme"].dtype, q["activation_scheme"].granularity) == ("int4", "token")
    assert q["method"] == "mse" and q["weight_method"] == "gptq" and q["batches"] is BATCHES
    tensor = _steps("cpu-w4a4", activations="tensor", rotate=False)
    assert CALIBRATE in tensor and "rotate_online" not in tensor
    assert tensor["quantize"].options["activation_scheme"].granularity == "tensor"
    assert get_target("cpu-w4a4").simulated


# -- end to end --------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
import zoo  # noqa: E402
from quant_testing import perturbed  # noqa: E402

import requant  # noqa: E402


def _ids(seed: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, 128, (2, 8)).astype(np.int64)}


def _records(cm) -> dict[str, dict]:
    return {r["name"]: r.get("stats", {}) for r in cm.stats["passes"]}


def _llama_through(target: str, seed: int) -> tuple:
    """A random-weight Llama compiled for `target` on 6 calibration batches: (the compiled
    model, its pass records, the cosine of its logits to torch's on another batch)."""
    case = perturbed(zoo.llama())
    feeds = _ids(seed)
    want = case.module(torch.from_numpy(feeds["input_ids"])).detach().numpy()
    cm = requant.compile(case.module, target=target, example_inputs=case.example_inputs,
                         calibration=[_ids(s) for s in range(6)], holdout=0)
    got = cm(**feeds)[0]
    return cm, _records(cm), float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want))


@pytest.mark.slow
def test_llama_through_cpu_w4a8():
    cm, ran, cos = _llama_through("cpu-w4a8", 99)
    assert ran["rotate_residual"]["streams_rotated"] == 1 and ran["rotate_heads"]["attentions_rotated"] == 2
    assert ran["quantize"]["weights_gptq"] >= 14 and ran["rotate_online"]["activations_rotated"] == 4
    ops = cm.graph.op_histogram()
    assert ops.get("com.microsoft.MatMulIntegerToFloat", 0) + ops.get("com.microsoft.QAttention", 0) > 0
    assert any(v.dtype.name == "int4" for v in cm.graph.constants)  # 4-bit codes in the file
    assert cos > 0.95, cos  # random weights, 6 calibration batches: a plumbing check, not accuracy


@pytest.mark.slow
def test_llama_through_cpu_w4a4_per_token():
    cm, ran, cos = _llama_through("cpu-w4a4", 98)
    assert ran["rotate_residual"]["streams_rotated"] == 1 and ran["quantize"]["weights_gptq"] >= 14
    fq = [n for n in cm.graph if n.op == "FakeQuantize"]
    assert fq and all(n.attrs["granularity"] == "token" and 0.5 <= n.attrs["clip"] <= 1.0 for n in fq)
    weighted = [n for n in cm.graph if n.op == "MatMul" and n.inputs[1].producer is not None
                and n.inputs[1].producer.op == "DequantizeLinear"]
    assert len(weighted) == ran["quantize"]["weights_gptq"]  # every int4 linear reads per-token int4 activations
    assert all(n.inputs[0].producer is not None and n.inputs[0].producer.op == "FakeQuantize" for n in weighted)
    assert cos > 0.9, cos  # random weights at 4 bits, 6 calibration batches: a plumbing check


@pytest.mark.slow
def test_bert_with_rotate_refuses_the_stream_and_rotates_online():
    case = perturbed(zoo.bert())
    ids, mask = (x.numpy() for x in case.example_inputs)
    batches = [{"input_ids": ids, "attention_mask": mask}] * 2
    cm = requant.compile(case.module, target="cpu-int8", example_inputs=case.example_inputs, calibration=batches,
                         holdout=0, rotate=True, smooth_alpha=None)
    ran = _records(cm)
    assert ran["rotate_residual"]["refused:post_norm"] == 1 and "post-norm" in ran["rotate_residual"]["refusal"]
    assert ran["rotate_online"]["activations_rotated"] == 8 and ran["rotate_heads"]["attentions_rotated"] == 2
    want = case.module(*case.example_inputs).detach().numpy()
    got = cm(input_ids=ids, attention_mask=mask)[0]
    assert float(np.max(np.abs(got - want))) < 0.1 * float(np.max(np.abs(want)))
