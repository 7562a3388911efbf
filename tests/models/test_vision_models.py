"""The vision zoo (tests/models/vision.py, "tiny" scale: 32 x 32 images, a few blocks)
through `requant.compile` on the CPU targets, each model captured once:

- cpu-fp32: every BatchNorm folded (the report's fold_batchnorm row counts them) and
  outputs within FP32_REL of torch's (float kernels sum in other orders);
- cpu-int8: cosine of each image's logits to torch >= INT8_COSINE (mean over the
  evaluation images, as the benchmark and issue 17 state it), and in ONNX Runtime's
  optimised graph every convolution an integer QLinearConv but a 3 x 3 x 3 image stem
  (`min_conv_reduction`: ORT's float kernel is the faster one there) and a depthwise
  conv reading a float map (`float_depthwise_entry`). The
  tiny MobileViT (8 to 32 channels, 32 convs, three quantized maps per SiLU conv, a
  transformer whose LayerNorms amplify what reaches them) is held to
  TINY_MOBILEVIT_COSINE instead: its mean cosine ranges from 0.978 to 0.992 over
  calibration sets of other seeds, while the published-size model the benchmark builds
  keeps the 0.99 goal;
- tvm-cpu-fp32 / tvm-cpu-int8 on the ResNet-style model (TVM builds take tens of
  seconds each; `python -m requant.tools.bench.vision --scale tiny` builds every model
  for every target).
Timing is the benchmark's job: no timing assertions here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vision  # noqa: E402

import requant  # noqa: E402
from requant.backends.onnx.runtime import optimized_ops  # noqa: E402
from requant.frontends import from_torch  # noqa: E402

FP32_REL = 1e-5
INT8_COSINE = 0.99
TINY_MOBILEVIT_COSINE = 0.97
# depthwise convs reading a float map stay float on cpu-int8 (float_depthwise_entry): the
# first block's of MobileNetV3 / EfficientNet reads the float stem's map (no expansion conv
# in between), ConvNeXt's first reads a LayerNorm's output (its second, the downsampling
# conv's codes)
FLOAT_DEPTHWISE_ENTRIES = {"mobilenet_v3": 1, "efficientnet": 1, "convnext": 1}
CALIB_BATCHES, EVAL_BATCHES = 6, 3

pytestmark = pytest.mark.slow


class Captured:
    """One zoo model: its graph (captured once), calibration and evaluation images, and
    torch's outputs on the latter."""

    def __init__(self, name: str) -> None:
        self.case = vision.build(name, "tiny")
        self.graph = from_torch(self.case.module, self.case.example_inputs)
        shape = self.case.image_shape
        self.calibration = [(vision.images(shape, 100 + i).numpy(),) for i in range(CALIB_BATCHES)]
        self.evaluation = [vision.images(shape, 200 + i) for i in range(EVAL_BATCHES)]
        with torch.no_grad():
            self.reference = np.concatenate([self.case.module(x).numpy() for x in self.evaluation])

    def outputs(self, cm: requant.CompiledModel) -> np.ndarray:
        return np.concatenate([cm(x.numpy())[0] for x in self.evaluation])

    def batchnorms(self) -> int:
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in self.case.module.modules())


@pytest.fixture(scope="module")
def zoo() -> dict[str, Captured]:
    return {}


def captured(zoo: dict[str, Captured], name: str) -> Captured:
    if name not in zoo:
        zoo[name] = Captured(name)
    return zoo[name]


def cosines(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    o, r = out.reshape(out.shape[0], -1).astype(np.float64), ref.reshape(ref.shape[0], -1).astype(np.float64)
    return (o * r).sum(1) / (np.linalg.norm(o, axis=1) * np.linalg.norm(r, axis=1))


def folded(cm: requant.CompiledModel) -> int:
    record = next(r for r in cm.stats["passes"] if r["name"] == "fold_batchnorm")
    return int(record["stats"].get("batchnorms_folded", 0))


@pytest.mark.parametrize("name", list(vision.VISION_MODELS))
def test_cpu_fp32_folds_every_batchnorm_and_matches_torch(zoo, name: str) -> None:
    m = captured(zoo, name)
    cm = requant.compile(m.graph, "cpu-fp32")
    assert folded(cm) == m.batchnorms() and "BatchNormalization" not in cm.graph.op_histogram()
    out = m.outputs(cm)
    assert np.abs(out - m.reference).max() <= FP32_REL * np.abs(m.reference).max()


@pytest.mark.parametrize("name", list(vision.VISION_MODELS))
def test_cpu_int8_runs_every_conv_on_integers(zoo, name: str) -> None:
    m = captured(zoo, name)
    cm = requant.compile(m.graph, "cpu-int8", calibration=m.calibration, holdout=0.0)
    convs = sum(1 for n in cm.graph if n.op == "Conv")
    reasons = [s["reason"] for s in cm.graph.meta["quant_skipped"]]
    stems = sum("min_conv_reduction" in r for r in reasons)
    assert stems == (0 if name in ("resnet", "convnext", "swin", "vit") else 1)  # 3 x 3 x 3 image stems
    # the depthwise conv straight after such a stem reads its float map (float_depthwise_entry)
    entries = sum("float_depthwise_entry" in r for r in reasons)
    assert entries == FLOAT_DEPTHWISE_ENTRIES.get(name, 0), reasons
    ops = optimized_ops(cm.onnx_model)
    assert ops.get("QLinearConv", 0) == convs - stems - entries, ops
    assert ops.get("Conv", 0) + ops.get("FusedConv", 0) == stems + entries, ops
    cos = cosines(m.outputs(cm), m.reference)
    floor = TINY_MOBILEVIT_COSINE if name == "mobilevit" else INT8_COSINE
    assert cos.mean() >= floor, f"{name}: cosine mean {cos.mean():.5f} min {cos.min():.5f}"


@pytest.mark.parametrize("target", ["tvm-cpu-fp32", "tvm-cpu-int8"])
def test_tvm_targets_build_the_resnet(zoo, target: str) -> None:
    pytest.importorskip("tvm")
    m = captured(zoo, "resnet")
    options = {"calibration": m.calibration, "holdout": 0.0} if target.endswith("int8") else {}
    cm = requant.compile(m.graph, target, example_inputs=(m.evaluation[0].numpy(),), **options)
    assert cm.stats["backend"] == "tvm" and folded(cm) == m.batchnorms()
    out = m.outputs(cm)
    if target == "tvm-cpu-fp32":
        assert np.abs(out - m.reference).max() <= FP32_REL * np.abs(m.reference).max()
    else:
        assert cosines(out, m.reference).mean() >= INT8_COSINE
