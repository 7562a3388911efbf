"""ONNX backend, beyond single ops: the round trip keeps graph, node and value meta and
reads an edited decomposition node by node; the default opset, opset lowering and its
refusals; initializers, unknown dims and ranks, recorded intermediate types; unsupported
ops reported together; fp4 casts ORT cannot run; external data; and the runner's
session settings and call forms.

Every op's export (at the default opset and the older ones where decompositions kick
in), its round trip and its ONNX Runtime results against the interpreter are checked
on the op cases (tests/op_cases/) by tests/backends/onnx/test_onnx_op_cases.py."""

from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import requant.ir as ir  # noqa: E402
from requant.backends.onnx import (  # noqa: E402
    LOWERINGS,
    OnnxRuntimeSession,
    Unsupported,
    make_session_options,
    max_supported_opset,
    physical_cores,
    save_onnx,
    to_onnx,
)
from requant.backends.onnx.export import ort_supports  # noqa: E402
from requant.errors import RequantError, UnsupportedOpError  # noqa: E402
from requant.frontends.onnx_frontend import from_onnx  # noqa: E402
from requant.ir import Builder, Graph, dtypes, tensor_type  # noqa: E402

FP32_TOL = 1e-4
"""ORT vs interpreter on float32: max|a-b| <= FP32_TOL * max(1, max|ref|)."""

TOLERANCES = {dtypes.float32: FP32_TOL, dtypes.float64: 1e-9, dtypes.float16: 2e-3, dtypes.bfloat16: 1.6e-2}


def assert_matches(actual: np.ndarray, ref: np.ndarray, what: str = "") -> None:
    """Floats within the dtype's tolerance (NaN where the reference has NaN); every other
    dtype exactly."""
    actual = np.asarray(actual)
    ref = np.asarray(ref)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    dt = ir.dtypes.from_numpy(ref.dtype)
    if dt.is_float:
        a = actual.astype(np.float64)
        r = ref.astype(np.float64)
        nan = np.isnan(r)
        assert np.array_equal(np.isnan(a), nan), f"{what}: NaN positions differ"
        a, r = a[~nan], r[~nan]
        if r.size == 0:
            return
        inf = np.isinf(r)
        assert np.array_equal(a[inf], r[inf]), f"{what}: infinities differ"
        a, r = a[~inf], r[~inf]
        if r.size == 0:
            return
        tol = TOLERANCES.get(dt, FP32_TOL) * max(1.0, float(np.max(np.abs(r))))
        err = float(np.max(np.abs(a - r)))
        assert err <= tol, f"{what}: max|ort - ref| = {err:.3g} > {tol:.3g}"
    else:
        assert actual.dtype == ref.dtype, f"{what}: dtype {actual.dtype} != {ref.dtype}"
        np.testing.assert_array_equal(actual, ref, err_msg=what)


def f32(rng: np.random.Generator, *shape: int, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return rng.uniform(lo, hi, shape).astype(np.float32)


def inp(b: Builder, name: str, dt: str, shape: tuple):
    return b.input(name, tensor_type(dt, shape))


def i64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


# ----------------------------------------------------------------------------- export


def test_roundtrip_keeps_graph_node_and_value_meta() -> None:
    g = Graph("with_meta")
    g.meta["source"] = "hand-built"
    b = Builder(g, meta={"created_by": "rule_x"})
    x = inp(b, "x", "f32", (2, 8))
    x.meta["calibration"] = {"min": -1.5, "max": 2.0}
    w = b.const(np.ones((8, 8), np.float32), name="w")
    w.meta["scale"] = np.array([0.5, 0.25], np.float32)
    h = b.MatMul(x, w)
    h.meta["dtype_hint"] = dtypes.int8
    y = b.Gelu(h)  # decomposed at opset 17: its meta rides in the provenance record
    y.meta["note"] = "output"
    g.outputs.append(y)
    for opset in (None, 17):
        back = from_onnx(to_onnx(g, opset=opset))
        assert back.to_text() == g.to_text()
        assert back.meta == {"source": "hand-built"}
        assert next(iter(back.constants)).meta["scale"].tolist() == [0.5, 0.25]
        assert all(n.meta == {"created_by": "rule_x"} for n in back)


def test_decomposed_op_reads_back_node_by_node_when_edited() -> None:
    g = Graph("edited")
    b = Builder(g)
    x = inp(b, "x", "f32", (2, 8))
    g.outputs.append(b.Gelu(x, _name="act"))
    model = to_onnx(g, opset=17)
    assert len(model.graph.node) > 1
    assert from_onnx(model).op_histogram() == {"Gelu": 1}
    # another tool rewired a helper value to a new graph output: no longer one Gelu
    helper = model.graph.node[0].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(helper, onnx.TensorProto.FLOAT, None))
    back = from_onnx(model)
    assert "Gelu" not in back.op_histogram() and "Erf" in back.op_histogram()
    feeds = {"x": f32(np.random.default_rng(0), 2, 8)}
    assert_matches(ir.run(back, feeds)[0], ir.run(g, feeds)[0], "decomposed Gelu")


def test_full_check_passes_and_default_opset_is_ort_max() -> None:
    g = Graph("tiny")
    b = Builder(g)
    x = inp(b, "x", "f32", ("batch", 4))
    g.outputs.append(b.Relu(x))
    model = to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    (default,) = [o.version for o in model.opset_import if o.domain == ""]
    assert default == max_supported_opset()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 4


def test_opset_is_lowered_when_rms_norm_needs_decomposition() -> None:
    g = Graph("rms")
    b = Builder(g)
    x = inp(b, "x", "f32", (2, 8))
    g.outputs.append(b.RMSNormalization(x, b.const(np.ones(8, np.float32), name="s")))
    native = to_onnx(g, opset=23)
    assert [n.op_type for n in native.graph.node] == ["RMSNormalization"]
    old = to_onnx(g, opset=21)
    assert "RMSNormalization" not in {n.op_type for n in old.graph.node}
    assert {"ReduceMean", "Sqrt", "Div"} <= {n.op_type for n in old.graph.node}


def test_constants_become_initializers_and_unknown_dims_stay_unknown() -> None:
    g = Graph("consts")
    b = Builder(g)
    x = b.input("x", ir.TensorType((None, 3), dtypes.float32))
    y = b.Add(x, b.const(np.float32(2.0), name="two"))
    g.outputs.append(b.Reshape(y, b.const(i64([-1]), name="flat")))
    model = to_onnx(g)
    assert {t.name for t in model.graph.initializer} == {"two", "flat"}
    assert not any(n.op_type == "Constant" for n in model.graph.node)
    d0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert not d0.HasField("dim_value") and not d0.HasField("dim_param")


def test_unknown_rank_output_gets_its_rank_from_onnx_inference() -> None:
    g = Graph("unknown_rank")
    b = Builder(g)
    x = inp(b, "x", "f32", (2, 3))
    shape = inp(b, "shape", "i64", (2,))
    y = b.Reshape(x, shape)
    assert y.type.shape == (None, None)
    z = b.Relu(y)
    z.type = ir.TensorType(None, dtypes.float32)  # as if inference had lost the rank
    g.outputs.append(z)
    model = to_onnx(g)
    assert len(model.graph.output[0].type.tensor_type.shape.dim) == 2
    (got,) = OnnxRuntimeSession(model)(x=np.ones((2, 3), np.float32), shape=i64([3, 2]))
    assert got.shape == (3, 2)


def test_unknown_rank_input_is_a_clear_error() -> None:
    g = Graph("no_rank")
    b = Builder(g)
    x = b.input("x", ir.TensorType(None, dtypes.float32))
    g.outputs.append(b.Relu(x))
    with pytest.raises(RequantError, match="rank of every graph input and output.*input %x"):
        to_onnx(g)


def test_intermediate_types_are_recorded_for_the_round_trip() -> None:
    g = Graph("symbolic")
    b = Builder(g)
    x = inp(b, "x", "f32", ("batch", 4))
    y = b.Relu(x)
    g.outputs.append(b.Exp(y))
    model = to_onnx(g)
    (info,) = model.graph.value_info
    assert info.name == y.name and info.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not to_onnx(g, value_info=False).graph.value_info


def test_unsupported_ops_are_reported_together(monkeypatch) -> None:
    g = Graph("bad")
    b = Builder(g)
    x = inp(b, "x", "f32", (2,))
    y = b.Relu(b.Exp(b.Relu(x, _name="r1"), _name="e1"), _name="r2")
    g.outputs.append(y)
    monkeypatch.setitem(LOWERINGS, "Relu", Unsupported("testing the report"))
    monkeypatch.delitem(LOWERINGS, "Exp")
    with pytest.raises(UnsupportedOpError) as info:
        to_onnx(g)
    msg = str(info.value)
    assert "Relu: 2 node(s)" in msg and "'r1'" in msg and "'r2'" in msg and "testing the report" in msg
    assert "Exp: 1 node(s)" in msg and "no entry in the ONNX lowering table" in msg


def _cast_node_and_types():
    node = onnx.helper.make_node("Cast", ["a"], ["b"], to=onnx.TensorProto.FLOAT4E2M1)
    return node, {"a": tensor_type("f32", (4,)), "b": tensor_type("fp4_e2m1", (4,))}


def test_fp4_cast_exports_but_ort_has_no_kernel(caplog) -> None:
    g = Graph("fp4")
    b = Builder(g)
    x = inp(b, "x", "f32", (4,))
    g.outputs.append(b.Cast(b.Cast(x, to="fp4_e2m1"), to="f32"))
    if ort_supports("Cast", max_supported_opset(), "", *_cast_node_and_types()):
        pytest.skip("this ONNX Runtime build casts to FLOAT4E2M1")
    with caplog.at_level("WARNING"):
        model = to_onnx(g)  # valid ONNX (checker passes)...
    assert "Cast(f32 -> fp4_e2m1)" in caplog.text
    with pytest.raises(RequantError, match="Cast"):  # ...that this ORT build cannot run
        OnnxRuntimeSession(model)


def test_op_newer_than_requested_opset_is_a_clear_error() -> None:
    g = Graph("gn")
    b = Builder(g)
    x = inp(b, "x", "f32", (1, 4, 2))
    g.outputs.append(b.GroupNormalization(x, b.const(np.ones(4, np.float32)), b.const(np.zeros(4, np.float32)),
                                          num_groups=2))
    with pytest.raises(UnsupportedOpError, match="opset 21"):
        to_onnx(g, opset=18)


# ----------------------------------------------------------------------------- external data


def _weighted_graph() -> tuple[Graph, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    g = Graph("weighted")
    b = Builder(g)
    x = inp(b, "x", "f32", ("batch", 64))
    h = b.Relu(b.MatMul(x, b.const(f32(rng, 64, 128), name="w1")))
    y = b.Add(b.MatMul(h, b.const(f32(rng, 128, 32), name="w2")), b.const(f32(rng, 32), name="b2"))
    g.outputs.append(y)
    return g, {"x": f32(rng, 3, 64)}


def test_external_data_forced_on_a_small_model(tmp_path) -> None:
    g, feeds = _weighted_graph()
    model = to_onnx(g)
    before = model.SerializeToString()
    path = tmp_path / "sub" / "model.onnx"
    save_onnx(model, path, external_data=True)
    assert model.SerializeToString() == before, "save_onnx must not modify the given model"
    data = tmp_path / "sub" / "model.onnx.data"
    assert data.is_file() and data.stat().st_size >= (64 * 128 + 128 * 32) * 4
    assert path.stat().st_size < 4096, "weights must not be inside the .onnx file"
    skeleton = onnx.load(str(path), load_external_data=False)
    locations = {
        t.name: {e.key: e.value for e in t.external_data}["location"]
        for t in skeleton.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    }
    assert set(locations) == {"w1", "w2"}  # b2 (128 bytes) stays inline
    assert set(locations.values()) == {"model.onnx.data"}
    onnx.checker.check_model(str(path), full_check=True)
    ref = ir.run(g, feeds)
    (got,) = OnnxRuntimeSession(path)(**feeds)
    assert_matches(got, ref[0], "ORT from a file with external data")
    back = from_onnx(path)
    assert back.to_text() == g.to_text()
    # the directory moves as a whole: the relative location still resolves
    moved = tmp_path / "moved"
    (tmp_path / "sub").rename(moved)
    assert_matches(ir.run(from_onnx(moved / "model.onnx"), feeds)[0], ref[0], "after moving")


def test_to_onnx_with_path_and_graph_save(tmp_path) -> None:
    g, feeds = _weighted_graph()
    to_onnx(g, path=tmp_path / "a.onnx", external_data=True)
    assert (tmp_path / "a.onnx.data").is_file()
    save_onnx(g, tmp_path / "b.onnx")  # small: no external data by default
    assert not (tmp_path / "b.onnx.data").exists()
    for name in ("a.onnx", "b.onnx"):
        (got,) = OnnxRuntimeSession(tmp_path / name)(feeds["x"])
        assert_matches(got, ir.run(g, feeds)[0], name)


def test_automatic_external_data_above_the_threshold(tmp_path, monkeypatch) -> None:
    import requant.backends.onnx.export as export

    monkeypatch.setattr(export, "AUTO_EXTERNAL_DATA_BYTES", 1000)
    g, feeds = _weighted_graph()
    model = to_onnx(g)  # checked from a temporary file, as a >2 GB model would be
    save_onnx(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").is_file()
    with pytest.raises(RequantError, match="external_data=True"):
        save_onnx(model, tmp_path / "n.onnx", external_data=False)
    (got,) = OnnxRuntimeSession(model)(**feeds)  # served to ORT from a temporary file
    assert_matches(got, ir.run(g, feeds)[0], "auto external")


# ----------------------------------------------------------------------------- runner


def test_runner_thread_settings() -> None:
    opts = make_session_options()
    assert opts.intra_op_num_threads == physical_cores()
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    assert opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    g, feeds = _weighted_graph()
    s = OnnxRuntimeSession(g, intra_op_threads=1)
    assert s.options.intra_op_num_threads == 1
    assert s.session.get_providers() == ["CPUExecutionProvider"]


def test_runner_call_forms() -> None:
    g = Graph("two_inputs")
    b = Builder(g)
    x = inp(b, "x", "f32", (2,))
    y = inp(b, "y", "f32", (2,))
    g.outputs.extend([b.Sub(x, y), b.Mul(x, y)])
    s = OnnxRuntimeSession(to_onnx(g))
    a, c = np.array([1, 2], np.float32), np.array([3, 5], np.float32)
    for got in (s(a, c), s(x=a, y=c), s(a, y=c), s({"x": a, "y": c}), tuple(s.run([a, c]))):
        assert isinstance(got, tuple) and len(got) == 2
        np.testing.assert_array_equal(got[0], a - c)
        np.testing.assert_array_equal(got[1], a * c)
    with pytest.raises(RequantError, match="missing model input"):
        s(a)
    with pytest.raises(RequantError, match="no input 'z'"):
        s(a, c, z=a)


def test_backends_package_import_is_cheap() -> None:
    import subprocess
    import sys

    code = ("import sys, requant.backends as b; "
            "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "assert callable(b.to_onnx) and callable(b.save_onnx) and b.OnnxRuntimeSession")
    subprocess.run([sys.executable, "-c", code], check=True)


def _optimized_ops(session: OnnxRuntimeSession, model: bytes, tmp_path) -> list[str]:
    """The node types ORT's optimised graph holds under `session`'s settings."""
    opts = make_session_options()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model, opts, providers=session.providers,
                         disabled_optimizers=list(session.disabled_optimizers))
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def test_runner_turns_off_slow_skip_layernorm_fusion(tmp_path) -> None:
    from requant.backends.onnx.runtime import SLOW_ORT_FUSIONS

    g = Graph("residual_layernorm")
    b = Builder(g)
    x = inp(b, "x", "f32", (2, 5, 16))
    skip = inp(b, "skip", "f32", (2, 5, 16))
    rng = np.random.default_rng(0)
    gamma = b.const(rng.standard_normal(16).astype(np.float32), "gamma")
    beta = b.const(rng.standard_normal(16).astype(np.float32), "beta")
    g.outputs.append(b.LayerNormalization(b.Add(x, skip), gamma, beta, axis=-1, epsilon=1e-5))
    model = to_onnx(g).SerializeToString()
    ours, anchor = OnnxRuntimeSession(model), OnnxRuntimeSession(model, disabled_optimizers=())
    assert ours.disabled_optimizers == SLOW_ORT_FUSIONS == ("SkipLayerNormFusion",)
    assert _optimized_ops(ours, model, tmp_path) == ["Add", "LayerNormalization"]
    # the case that must not match: ORT's defaults fuse the residual into SkipLayerNormalization
    assert _optimized_ops(anchor, model, tmp_path) == ["SkipLayerNormalization"]
    feeds = {n: rng.standard_normal((2, 5, 16)).astype(np.float32) for n in ("x", "skip")}
    expected = ir.run(g, feeds)[0]
    for session in (ours, anchor):  # fp32: 1e-5 relative to the output's scale
        np.testing.assert_allclose(session(**feeds)[0], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
