"""Bad options, call inputs and calibration sets (issue 16, items 5, 7 and 9): each is a
`RequantError` subclass with a one-line message that says what to do, never a numpy,
TVM or ONNX Runtime error, a crash, or a silent success; degenerate calibration
compiles but the report says what is wrong with it."""

from __future__ import annotations

import numpy as np
import pytest

import requant
import requant.ir as ir
from requant.errors import InputError, RequantError
from requant.targets import max_threads

GRAPH = """
graph main(%x: f32[batch,4]) -> (%y) {
  const %w: f32[4,4] = [[0.5,-1.0,0.25,2.0],[1.0,0.5,-0.5,0.0],[-0.25,1.5,1.0,0.5],[0.0,-2.0,0.5,1.0]]
  %y = MatMul(%x, %w)
}
"""
TWO_INPUTS = """
graph main(%x: f32[batch,4], %z: f32[batch,4]) -> (%y) {
  %y = Add(%x, %z)
}
"""


def graph(text: str = GRAPH) -> ir.Graph:
    return ir.parse(text)


def batches(n: int, rows: int = 8, seed: int = 0) -> list[tuple[np.ndarray]]:
    rs = np.random.RandomState(seed)
    return [(rs.randn(rows, 4).astype(np.float32),) for _ in range(n)]


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# ----------------------------------------------------------------------------- 5. options


@pytest.mark.parametrize("threads", [100000, -1, max_threads() + 1, True, 2.0])
def test_threads_outside_the_machine_are_refused(threads) -> None:
    with pytest.raises(RequantError, match="option 'threads' must be") as info:
        requant.compile(graph(), "cpu-fp32", threads=threads)
    one_line(info)


def test_threads_within_range_run() -> None:
    x = batches(1)[0][0]
    ref = ir.run(graph(), {"x": x})[0]
    for threads in (0, 1, max_threads()):
        np.testing.assert_allclose(requant.compile(graph(), "cpu-fp32", threads=threads)(x)[0], ref, rtol=1e-6)


def test_onnx_runtime_sessions_refuse_absurd_thread_counts() -> None:
    from requant.backends.onnx.runtime import OnnxRuntimeSession

    with pytest.raises(RequantError, match="intra_op_threads must be 0"):
        OnnxRuntimeSession(graph(), intra_op_threads=100000)


@pytest.mark.parametrize("holdout", [-0.1, 1.0, 7.5, float("nan")])
def test_holdout_outside_zero_one_is_refused(holdout) -> None:
    with pytest.raises(RequantError, match=r"option 'holdout' must be in \[0, 1\)"):
        requant.compile(graph(), "cpu-int8", calibration=batches(3), holdout=holdout)


# ----------------------------------------------------------------------------- 9. call inputs


def test_a_ragged_list_is_an_input_error() -> None:
    cm = requant.compile(graph(), "cpu-fp32")
    with pytest.raises(InputError, match=r"model call: input 'x' is not an array \(list: .*inhomogeneous") as info:
        cm([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]])
    one_line(info)
    with pytest.raises(InputError, match="input 'x' is not a rectangular array of numbers"):
        cm(["a", "b", "c", "d"])


def test_inputs_that_share_a_dim_name_must_agree() -> None:
    cm = requant.compile(graph(TWO_INPUTS), "cpu-fp32")
    x, z = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(InputError, match="input 'z' has batch = 3 .* input 'x' has batch = 2"):
        cm(x, z)
    np.testing.assert_array_equal(cm(x, x)[0], 2 * x)


def test_a_tvm_build_never_lets_a_raw_tvm_error_through() -> None:
    cm = requant.compile(graph(TWO_INPUTS), "tvm-cpu-fp32", static_shapes=False)
    x, z = np.ones((2, 4), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(InputError, match="inputs sharing a dim name must agree"):
        cm(x, z)
    with pytest.raises(RequantError, match="the TVM llvm build failed running the model"):
        cm._runtime({"x": x, "z": z})  # past the checks: TVM's own error, wrapped
    np.testing.assert_array_equal(cm(x, x)[0], 2 * x)


# ----------------------------------------------------------------------------- 7. calibration


@pytest.mark.parametrize("given, kind", [(np.zeros((8, 4), np.float32), "array"),
                                         ({"x": np.zeros((8, 4), np.float32)}, "dict")])
def test_a_bare_batch_as_calibration_says_wrap_it_in_a_list(given, kind) -> None:
    with pytest.raises(InputError, match=f"got a single {kind}: wrap it in a list, calibration=\\[batch\\]") as info:
        requant.compile(graph(), "cpu-int8", calibration=given)
    one_line(info)


def test_calibration_that_is_not_iterable_is_an_input_error() -> None:
    with pytest.raises(InputError, match="calibration= takes a list of batches"):
        requant.compile(graph(), "cpu-int8", calibration=42)


def test_one_all_zero_batch_compiles_with_warnings_in_the_report() -> None:
    cm = requant.compile(graph(), "cpu-int8", calibration=[(np.zeros((8, 4), np.float32),)])
    warnings = cm.stats["warnings"]
    assert any("calibration input 'x' is 0 everywhere (zero range)" in w for w in warnings)
    assert any("1 distinct sample(s), fewer than 8" in w for w in warnings)
    assert any("repeat calibration batches: the accuracy report is measured on data the ranges were fitted to" in w
               for w in warnings)
    assert any("observed activation(s) have zero range" in w for w in warnings)
    report = cm.report()
    assert f"warnings: {len(warnings)}" in report and "the only calibration batch" in report


def test_constant_batches_are_called_out_and_held_out_repeats_named() -> None:
    ones = [(np.ones((8, 4), np.float32),) for _ in range(3)]
    cm = requant.compile(graph(), "cpu-int8", calibration=ones)
    warnings = cm.stats["warnings"]
    assert any("is 1 everywhere (zero range)" in w for w in warnings)
    assert any("1 of 1 held-out batch(es) repeat calibration batches" in w for w in warnings)
    mixed = batches(3) + [(np.full((8, 4), 3.0, np.float32),)]
    warnings = requant.compile(graph(), "cpu-int8", calibration=mixed, holdout=0.0).stats["warnings"]
    assert warnings == ["calibration batch(es) 3 hold one constant value in every input"]


def test_non_finite_calibration_values_are_reported() -> None:
    data = batches(4)
    data[1][0][0, 0] = np.nan
    data[2][0][3, 1] = np.inf
    warnings = requant.compile(graph(), "cpu-int8", calibration=data).stats["warnings"]
    assert warnings == ["calibration input 'x' holds 2 NaN/Inf value(s); they are left out of the ranges, "
                        "and the quantized model saturates them"]


def test_good_calibration_has_no_warnings_and_measures_on_held_out_batches() -> None:
    cm = requant.compile(graph(), "cpu-int8", calibration=batches(5))
    assert cm.stats["warnings"] == []
    assert cm.stats["accuracy"]["note"] == "held back from calibration" and "warnings" not in cm.report()


def test_float_targets_do_not_judge_their_example_batches() -> None:
    assert requant.compile(graph(), "cpu-fp32", calibration=[(np.zeros((8, 4), np.float32),)]).stats["warnings"] == []
