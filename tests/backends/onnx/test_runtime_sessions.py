"""requant's ONNX Runtime sessions: thread spinning limited to a run
(`SPINNING_CONFIG`), subnormals flushed on the workers (`DENORMAL_CONFIG`), and `optimized_ops`, the op census of the graph ORT runs after its
own fusions (how the int8 CNN tests see that a DQ -> Conv -> Q became QLinearConv).
Timing is the benchmark's job (`python -m requant.tools.bench.vision --sessions`)."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from requant.backends.onnx.runtime import (  # noqa: E402
    DENORMAL_CONFIG,
    SPINNING_CONFIG,
    OnnxRuntimeSession,
    caller_float_environment_kept,
    make_session_options,
    optimized_ops,
)

RNG = np.random.default_rng(3)


def test_workers_spin_only_while_a_run_is_in_progress() -> None:
    assert SPINNING_CONFIG == {"session.force_spinning_stop": "1"}
    opts = make_session_options()
    assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    # spinning within a run stays on (ORT's default): a woken thread per parallel loop costs more
    with pytest.raises(Exception, match="does not have configuration"):
        opts.get_session_config_entry("session.intra_op.allow_spinning")
    assert OnnxRuntimeSession(_conv_model(True)).options.get_session_config_entry("session.force_spinning_stop") == "1"


def _masked_softmax_times_v() -> bytes:
    """Softmax(scores + mask) @ V with a mask of -100 over half the keys (a shifted
    window's): the probabilities there are ~e^-100, subnormal in float32."""
    nodes = [helper.make_node("Add", ["s", "mask"], ["m"]), helper.make_node("Softmax", ["m"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    mask = np.where(np.arange(64) < 32, 0.0, -100.0).astype(np.float32)
    graph = helper.make_graph(
        nodes, "masked", [helper.make_tensor_value_info("s", TensorProto.FLOAT, [64, 64, 64]),
                          helper.make_tensor_value_info("v", TensorProto.FLOAT, [64, 64, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64, 32])],
        [numpy_helper.from_array(mask, "mask")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10).SerializeToString()


def test_subnormals_are_flushed_on_the_workers_and_outputs_move_by_less_than_the_normal_range() -> None:
    assert DENORMAL_CONFIG == {"session.set_denormal_as_zero": "1"}
    assert make_session_options(flush_denormals=True).get_session_config_entry("session.set_denormal_as_zero") == "1"
    with pytest.raises(Exception, match="does not have configuration"):
        make_session_options().get_session_config_entry("session.set_denormal_as_zero")
    model = _masked_softmax_times_v()
    s = RNG.standard_normal((64, 64, 64)).astype(np.float32)
    v = RNG.standard_normal((64, 64, 32)).astype(np.float32)
    tiny = np.float32(np.finfo(np.float32).tiny)  # 2^-126: every flushed operand is below it
    session = OnnxRuntimeSession(model)
    assert session.options.get_session_config_entry("session.set_denormal_as_zero") == "1"
    # ORT set the flags on this thread too while making the session; the session put them back
    assert tiny * np.float32(0.5) > 0
    flushed = session(s, v)[0]
    assert tiny * np.float32(0.5) > 0  # and a run leaves them alone
    kept = OnnxRuntimeSession(model, flush_denormals=False)(s, v)[0]
    # each output sums 64 products p * v, |v| < 8 here: flushing moves it by < 64 * 8 * tiny
    assert np.abs(v).max() < 8
    np.testing.assert_allclose(flushed, kept, rtol=1e-6, atol=64 * 8 * float(tiny))


def test_the_callers_float_environment_is_restored_whatever_the_block_set() -> None:
    import ctypes
    import ctypes.util

    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    fe_upward = {"x86_64": 0x800, "AMD64": 0x800, "aarch64": 0x400000}.get(__import__("platform").machine())
    if fe_upward is None:
        pytest.skip("rounding-mode constant of this machine not known to the test")
    before = libm.fegetround()
    with caller_float_environment_kept():
        assert libm.fesetround(fe_upward) == 0 and libm.fegetround() == fe_upward
    assert libm.fegetround() == before


def _conv_model(output_quantized: bool) -> bytes:
    """u8 codes -> DQ -> Conv(DQ(int8 W), DQ(int32 bias)) [-> Q] : ORT's QDQ conv pattern,
    or (without the output Q) one it cannot fuse."""
    c_in, c_out = 8, 16
    w = RNG.integers(-127, 128, (c_out, c_in, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.float32(0.02), "x_s"), numpy_helper.from_array(np.uint8(120), "x_z"),
        numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.full(c_out, 0.01, np.float32), "w_s"),
        numpy_helper.from_array(RNG.integers(-500, 500, c_out).astype(np.int32), "b_q"),
        numpy_helper.from_array(np.full(c_out, 0.0002, np.float32), "b_s"),
        numpy_helper.from_array(np.float32(0.05), "y_s"), numpy_helper.from_array(np.uint8(128), "y_z"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "x_s", "x_z"], ["x_f"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_s"], ["w_f"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b_f"], axis=0),
        helper.make_node("Conv", ["x_f", "w_f", "b_f"], ["c"], pads=[1, 1, 1, 1]),
    ]
    if output_quantized:
        nodes.append(helper.make_node("QuantizeLinear", ["c", "y_s", "y_z"], ["y"]))
    out_type = TensorProto.UINT8 if output_quantized else TensorProto.FLOAT
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, c_in, 6, 6])],
                              [helper.make_tensor_value_info("y" if output_quantized else "c", out_type,
                                                             [1, c_out, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10).SerializeToString()


def test_optimized_ops_sees_the_conv_ort_fused_into_qlinearconv() -> None:
    ops = optimized_ops(_conv_model(output_quantized=True))
    assert ops.get("QLinearConv") == 1 and "Conv" not in ops and "DequantizeLinear" not in ops
    x = RNG.integers(0, 256, (1, 8, 6, 6)).astype(np.uint8)
    assert OnnxRuntimeSession(_conv_model(True))(x)[0].dtype == np.uint8


def test_optimized_ops_sees_a_conv_without_output_quantizer_stay_float() -> None:
    ops = optimized_ops(_conv_model(output_quantized=False))
    assert "QLinearConv" not in ops and ops.get("Conv", 0) + ops.get("FusedConv", 0) == 1
