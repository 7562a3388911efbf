"""Models ONNX Runtime's own quantizers wrote in its operator format (QLinearConv,
QLinearMatMul, com.microsoft QLinearAdd / QLinearSigmoid / QLinearMul /
QLinearGlobalAveragePool / QGemm; ConvInteger and MatMulInteger from quantize_dynamic),
read by `from_onnx` into requant's Q/DQ form (frontends/onnx_qlinear.py): no quantized
operator is left, the interpreter agrees with ONNX Runtime running the quantized file,
and requant's export of the Q/DQ graph runs in ONNX Runtime.

Agreement: the operator format accumulates in int32 and requantizes once, the Q/DQ form
sums in float32, so a code may land one step over where a value sits within float32
rounding of a half-way point: outputs are compared within one step of the final
DequantizeLinear (and their exact equality counted); the dynamic model's integer convs
are exact in the Q/DQ form (sums far below 2^24), so it compares within float32
rounding of the float ops after them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto, helper, numpy_helper
from requant.backends.onnx import OnnxRuntimeSession, to_onnx
from requant.errors import RequantError
from requant.frontends import from_onnx
from requant.ir import Builder, Graph, run, tensor_type

_QUANTIZED_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
                  "QLinearGlobalAveragePool", "QGemm", "QLinearConcat", "QLinearLeakyRelu", "QLinearAveragePool"}


def _float_model(path: Path, rng: np.random.Generator) -> Path:
    """Conv-ReLU, a residual Conv + Add, SiLU (Sigmoid * x), a concat, global pooling,
    Gemm and MatMul heads: every operator ORT's QOperator format has for a small CNN."""
    def w(*shape: int, s: float = 0.3) -> np.ndarray:
        return (rng.normal(size=shape) * s).astype(np.float32)

    inits = {"W1": w(8, 3, 3, 3), "B1": w(8, s=0.1), "W2": w(8, 8, 3, 3, s=0.2), "B2": w(8, s=0.1),
             "WG": w(6, 16), "BG": w(6, s=0.1), "WM": w(6, 4)}
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["res"]),
        helper.make_node("Sigmoid", ["res"], ["sig"]),
        helper.make_node("Mul", ["res", "sig"], ["silu"]),
        helper.make_node("Concat", ["silu", "r1"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "WG", "BG"], ["fc"], transB=1),
        helper.make_node("MatMul", ["fc", "WM"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 10, 10])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


class _Batches(quantization.CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self._it = iter([{"x": b} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._it, None)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    d = tmp_path_factory.mktemp("ort_quantized")
    src = _float_model(d / "float.onnx", rng)
    calib = [rng.normal(size=(2, 3, 10, 10)).astype(np.float32) for _ in range(4)]
    out = {}
    for per_channel in (True, False):
        path = d / f"qop_{'channel' if per_channel else 'tensor'}.onnx"
        quantization.quantize_static(str(src), str(path), _Batches(calib), quant_format=quantization.QuantFormat.QOperator,
                                     per_channel=per_channel, extra_options={"ActivationSymmetric": False})
        out[path.stem] = path
    out["dynamic"] = d / "dynamic.onnx"
    quantization.quantize_dynamic(str(src), str(out["dynamic"]), weight_type=quantization.QuantType.QInt8,
                                  op_types_to_quantize=["Conv", "MatMul"])
    return out


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _last_dq_scale(graph: Graph) -> float:
    (producer,) = [n for n in graph if n.outputs[0] is graph.outputs[0]]
    return float(np.asarray(producer.inputs[1].const)) if producer.op == "DequantizeLinear" else 0.0


@pytest.mark.parametrize("name", ["qop_channel", "qop_tensor"])
def test_operator_format_reads_as_qdq_and_agrees_with_ort(models: dict, name: str) -> None:
    path = models[name]
    assert {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearSigmoid", "QLinearMul", "QLinearConcat",
            "QLinearGlobalAveragePool", "QGemm"} <= _ops(path)
    graph = from_onnx(path)
    ops = graph.op_histogram()
    assert not set(ops) & _QUANTIZED_OPS, ops
    assert {"Conv", "MatMul", "Add", "QuantizeLinear", "DequantizeLinear"} <= set(ops)
    x = np.random.default_rng(3).normal(size=(2, 3, 10, 10)).astype(np.float32)
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = run(graph, {"x": x})
    step = _last_dq_scale(graph)
    assert step > 0
    assert np.max(np.abs(got - want)) <= step * (1 + 1e-6), f"{np.sum(got != want)} of {got.size} codes differ"
    # requant's export of the Q/DQ graph runs in ONNX Runtime like the interpreter
    (exported,) = OnnxRuntimeSession(to_onnx(graph))(x)
    assert np.max(np.abs(exported - got)) <= step * (1 + 1e-6)


def test_dynamic_format_convinteger_is_exact(models: dict) -> None:
    path = models["dynamic"]
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} <= _ops(path)
    graph = from_onnx(path)
    ops = graph.op_histogram()
    assert "ConvInteger" not in ops and ops["Conv"] == 2
    x = np.random.default_rng(4).normal(size=(2, 3, 10, 10)).astype(np.float32)
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = run(graph, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.max(np.abs(want)))


def _one_node_model(node: object, inputs: list, inits: list, out_type: int, producer: str = "test") -> object:
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", out_type, None)],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], producer_name=producer)
    model.ir_version = 10
    return model


@pytest.mark.parametrize("w_zp", [np.int8(-3), np.array([1, -2, 3], np.int8)], ids=["tensor", "channel"])
def test_convinteger_is_exact(w_zp: np.ndarray) -> None:
    """Full-range u8 x i8 codes over 36 taps: sums far below 2^24, so exact in float32.
    (ONNX Runtime has no per-channel ConvInteger: ONNX's reference is the oracle.)"""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(1, 4, 6, 6), dtype=np.uint8)
    w = rng.integers(-128, 128, size=(3, 4, 3, 3), dtype=np.int8)
    node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[1, 1, 1, 1])
    model = _one_node_model(node, [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 6, 6])],
                            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.uint8(128), "xz"),
                             numpy_helper.from_array(w_zp, "wz")], TensorProto.INT32)
    graph = from_onnx(model)
    assert graph.op_histogram() == {"DequantizeLinear": 2, "Conv": 1, "Cast": 1}
    (want,) = ReferenceEvaluator(model).run(None, {"x": x})
    (got,) = run(graph, {"x": x})
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_qlinearmatmul_of_a_model_requant_wrote_stays() -> None:
    g = Graph("qmm")
    b = Builder(g)
    a = b.input("a", tensor_type("u8", (2, 3)))
    consts = [b.const(np.float32(0.1)), b.const(np.uint8(3)), b.const(np.ones((3, 4), np.int8)),
              b.const(np.float32(0.2)), b.const(np.int8(0)), b.const(np.float32(0.05)), b.const(np.uint8(7))]
    g.outputs = [b.node("QLinearMatMul", a, *consts).outputs[0]]
    model = to_onnx(g)
    assert model.producer_name == "requant"
    assert from_onnx(model).op_histogram() == {"QLinearMatMul": 1}
    model.producer_name = "onnxruntime.quantization"
    assert from_onnx(model).op_histogram() == {"DequantizeLinear": 2, "MatMul": 1, "QuantizeLinear": 1}


def test_per_row_scale_of_a_is_refused_naming_the_node() -> None:
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"], name="mm")
    inits = [numpy_helper.from_array(np.full(2, 0.1, np.float32), "as"), numpy_helper.from_array(np.zeros(2, np.uint8), "az"),
             numpy_helper.from_array(np.ones((3, 4), np.uint8), "b"), numpy_helper.from_array(np.float32(0.2), "bs"),
             numpy_helper.from_array(np.uint8(0), "bz"), numpy_helper.from_array(np.float32(0.3), "ys"),
             numpy_helper.from_array(np.uint8(0), "yz")]
    model = _one_node_model(node, [helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 3])], inits, TensorProto.UINT8)
    with pytest.raises(RequantError, match="'mm' \\(QLinearMatMul\\).*per-row scales"):
        from_onnx(model)
