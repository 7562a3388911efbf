"""ONNX frontend: models written with onnx.helper at opsets 13-23 (older attribute forms
included), Constant nodes of every kind, local functions, symbolic dims, low-bit dtypes,
and the inputs it must refuse with a clear error: truncated or non-ONNX files, missing
files, external data outside the model's directory, unsupported ops."""

from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import requant.ir as ir  # noqa: E402
from requant.errors import RequantError, UnsupportedOpError  # noqa: E402
from requant.frontends.onnx_frontend import from_onnx  # noqa: E402
from requant.ir import dtypes  # noqa: E402

FP32_TOL = 1e-4
"""max|a-b| <= FP32_TOL * max(1, max|ref|) between the interpreter and ONNX Runtime."""

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def make_model(nodes, inputs, outputs, initializers=(), opset=21, functions=(), extra_opsets=(), check=True):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    model = helper.make_model(graph, opset_imports=imports, functions=list(functions))
    model.ir_version = helper.find_min_ir_version_for(imports, ignore_unknown=True) if opset < 21 else model.ir_version
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def ort_run(model, feeds):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def assert_close(actual, ref, what=""):
    actual, ref = np.asarray(actual), np.asarray(ref)
    assert actual.shape == ref.shape, what
    if ref.dtype.kind == "f":
        err = float(np.max(np.abs(actual.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        assert err <= FP32_TOL * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0), f"{what}: {err}"
    else:
        np.testing.assert_array_equal(actual, ref, err_msg=what)


def check_matches_ort(model, feeds):
    graph = from_onnx(model)
    ref = ort_run(model, feeds)
    got = ir.run(graph, feeds)
    for i, (a, r) in enumerate(zip(got, ref)):
        assert_close(a, r, f"output {i}")
    return graph


RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.uniform(-2, 2, shape).astype(np.float32)


# ----------------------------------------------------------------------------- opsets


@pytest.mark.parametrize("opset", [13, 17, 18, 21, 23])
def test_small_model_at_each_opset(opset):
    w = numpy_helper.from_array(rand(4, 3), "weight")
    nodes = [
        helper.make_node("MatMul", ["x", "weight"], ["mm"], name="matmul_0"),
        helper.make_node("Relu", ["mm"], ["act"], name="relu_0"),
        helper.make_node("Softmax", ["act"], ["y"], name="softmax_0", axis=-1),
    ]
    model = make_model(nodes, [vi("x", F, ["batch", 4])], [vi("y", F, ["batch", 3])], [w], opset=opset)
    g = check_matches_ort(model, {"x": rand(5, 4)})
    assert [n.name for n in g] == ["matmul_0", "relu_0", "softmax_0"]
    assert [o.name for n in g for o in n.outputs] == ["mm", "act", "y"]
    assert g.inputs[0].type == ir.tensor_type("f32", ("batch", 4))
    assert g.outputs[0].type.shape == ("batch", 3)
    assert [v.name for v in g.constants] == ["weight"]


@pytest.mark.parametrize("opset", [13, 17])
def test_reduce_axes_attribute_becomes_an_input(opset):
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1, name="mean"),
        helper.make_node("ReduceMax", ["x"], ["mx"], axes=[0, 2], keepdims=0, name="max"),
        helper.make_node("ReduceSum", ["x", "ax"], ["s"], keepdims=0, name="sum"),  # input since 13
        helper.make_node("ReduceL2", ["x"], ["l2"], name="l2_all"),  # no axes: every axis
    ]
    ax = numpy_helper.from_array(np.array([2], np.int64), "ax")
    model = make_model(nodes, [vi("x", F, [2, 3, 4])],
                       [vi("m", F, [2, 1, 4]), vi("mx", F, [3]), vi("s", F, [2, 3]), vi("l2", F, [1, 1, 1])], [ax],
                       opset=opset)
    g = check_matches_ort(model, {"x": rand(2, 3, 4)})
    mean = next(n for n in g if n.name == "mean")
    assert "axes" not in mean.attrs and mean.inputs[1].is_constant
    assert mean.inputs[1].const.tolist() == [1]
    assert g.outputs[0].type.shape == (2, 1, 4)
    assert len(next(n for n in g if n.name == "l2_all").inputs) == 1


def test_opset_11_split_squeeze_attributes_are_converted():
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 3], name="split"),
        helper.make_node("Unsqueeze", ["a"], ["u"], axes=[0], name="unsq"),
        helper.make_node("Squeeze", ["u"], ["y"], axes=[0], name="sq"),
    ]
    model = make_model(nodes, [vi("x", F, [2, 4])], [vi("y", F, [2, 1]), vi("b", F, [2, 3])], opset=11)
    x = rand(2, 4)
    g = from_onnx(model)
    assert g.op_histogram() == {"Split": 1, "Squeeze": 1, "Unsqueeze": 1}
    y, b = ir.run(g, {"x": x})
    np.testing.assert_array_equal(y, x[:, :1])
    np.testing.assert_array_equal(b, x[:, 1:])


def test_legacy_attribute_forms_at_a_modern_opset_are_read_as_inputs():
    # Some exporters keep writing `split`/`axes` as attributes after the move to inputs.
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[3, 1]),
        helper.make_node("Unsqueeze", ["b"], ["u"], axes=[0]),
    ]
    model = make_model(nodes, [vi("x", F, [2, 4])], [vi("a", F, None), vi("u", F, None)], opset=13, check=False)
    x = rand(2, 4)
    a, u = ir.run(from_onnx(model), {"x": x})
    np.testing.assert_array_equal(a, x[:, :3])
    np.testing.assert_array_equal(u, x[None, :, 3:])


def test_group_norm_opset_18_per_group_params_become_per_channel():
    scale = numpy_helper.from_array(np.array([0.5, 2.0], np.float32), "scale")
    bias = numpy_helper.from_array(np.array([0.1, -0.3], np.float32), "bias")
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["y"], num_groups=2, epsilon=1e-5)
    # opset 18's GroupNormalization is deprecated: onnx.checker refuses it, requant reads it
    model = make_model([node], [vi("x", F, [2, 4, 3])], [vi("y", F, [2, 4, 3])], [scale, bias], opset=18,
                       check=False)
    x = rand(2, 4, 3)
    g = from_onnx(model)
    (y,) = ir.run(g, {"x": x})
    xs = x.reshape(2, 2, -1)
    ref = ((xs - xs.mean(-1, keepdims=True)) / np.sqrt(xs.var(-1, keepdims=True) + 1e-5)).reshape(2, 4, 3)
    ref = ref * np.array([0.5, 0.5, 2, 2], np.float32)[:, None] + np.array([0.1, 0.1, -0.3, -0.3], np.float32)[:, None]
    assert_close(y, ref, "group norm")


def test_cast_to_is_a_dtype_name_and_float_attributes_read_exactly():
    nodes = [
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["h"], ["i"], to=TensorProto.INT32),
        helper.make_node("LeakyRelu", ["x"], ["l"], alpha=0.1),
    ]
    model = make_model(nodes, [vi("x", F, [3])], [vi("i", TensorProto.INT32, [3]), vi("l", F, [3])])
    g = check_matches_ort(model, {"x": np.array([1.7, -2.2, 300.0], np.float32)})
    casts = [n for n in g if n.op == "Cast"]
    assert [ir.dtype(n.attrs["to"]).short for n in casts] == ["f16", "i32"]
    assert next(n for n in g if n.op == "LeakyRelu").attrs["alpha"] == 0.1


# ----------------------------------------------------------------------------- constants


def test_constant_nodes_of_every_kind_become_graph_constants():
    nodes = [
        helper.make_node("Constant", [], ["c_tensor"], value=numpy_helper.from_array(np.arange(3, dtype=np.float32))),
        helper.make_node("Constant", [], ["c_float"], value_float=0.5),
        helper.make_node("Constant", [], ["c_floats"], value_floats=[1.0, 2.0, 3.0]),
        helper.make_node("Constant", [], ["c_int"], value_int=2),
        helper.make_node("Constant", [], ["c_ints"], value_ints=[1, 3]),
        helper.make_node("Constant", [], ["c_sparse"], sparse_value=helper.make_sparse_tensor(
            numpy_helper.from_array(np.array([5.0], np.float32)), numpy_helper.from_array(np.array([1], np.int64)), [3])),
        helper.make_node("Add", ["x", "c_tensor"], ["a"]),
        helper.make_node("Mul", ["a", "c_float"], ["b"]),
        helper.make_node("Add", ["b", "c_floats"], ["c"]),
        helper.make_node("Add", ["c", "c_sparse"], ["d"]),
        helper.make_node("Mul", ["c_int", "c_ints"], ["e"]),
    ]
    model = make_model(nodes, [vi("x", F, [3])], [vi("d", F, [3]), vi("e", I64, [2])])
    g = check_matches_ort(model, {"x": rand(3)})
    assert g.op_histogram() == {"Add": 3, "Mul": 2}
    consts = {v.name: v for v in g.constants}
    assert consts["c_float"].type == ir.tensor_type("f32", ())
    assert consts["c_int"].type == ir.tensor_type("i64", ())
    assert consts["c_ints"].const.tolist() == [1, 3]
    assert consts["c_sparse"].const.tolist() == [0.0, 5.0, 0.0]


def test_sparse_initializer_is_densified():
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "s"),
                                       numpy_helper.from_array(np.array([[0, 1], [1, 2]], np.int64)), [2, 3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "s"], ["y"])], "g", [vi("x", F, [2, 3])],
                              [vi("y", F, [2, 3])], sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    g = from_onnx(model)
    (c,) = g.constants
    assert c.name == "s"
    np.testing.assert_array_equal(c.const, [[0, 1.5, 0], [0, 0, -2.0]])


def test_graph_input_with_initializer_is_a_constant():
    w = numpy_helper.from_array(np.full((3,), 2.0, np.float32), "w")
    model = make_model([helper.make_node("Mul", ["x", "w"], ["y"])], [vi("x", F, [3]), vi("w", F, [3])],
                       [vi("y", F, [3])], [w], opset=13)
    g = from_onnx(model)
    assert [v.name for v in g.inputs] == ["x"]
    assert [v.name for v in g.constants] == ["w"]


@pytest.mark.parametrize(
    "np_dtype,onnx_type,rq",
    [
        ("bfloat16", TensorProto.BFLOAT16, dtypes.bfloat16),
        ("float8_e4m3fn", TensorProto.FLOAT8E4M3FN, dtypes.fp8_e4m3),
        ("float8_e5m2", TensorProto.FLOAT8E5M2, dtypes.fp8_e5m2),
        ("float4_e2m1fn", TensorProto.FLOAT4E2M1, dtypes.fp4_e2m1),
        ("int4", TensorProto.INT4, dtypes.int4),
        ("uint4", TensorProto.UINT4, dtypes.uint4),
    ],
)
def test_low_bit_initializers_keep_their_dtype(np_dtype, onnx_type, rq):
    import ml_dtypes

    values = np.array([0, 1, 2, 3, 4, 6] if rq != dtypes.int4 else [-8, -1, 0, 3, 5, 7])
    t = numpy_helper.from_array(values.astype(getattr(ml_dtypes, np_dtype)), "w")
    assert t.data_type == onnx_type
    model = make_model([helper.make_node("Cast", ["w"], ["y"], to=F)], [], [vi("y", F, [6])], [t], opset=23)
    g = from_onnx(model)
    (w,) = g.constants
    assert w.dtype == rq
    assert w.const.dtype == rq.np
    (y,) = ir.run(g, {})
    np.testing.assert_array_equal(y, values.astype(np.float32))


def test_bf16_and_fp8_graph_io_types():
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E4M3FN)]
    model = make_model(nodes, [vi("x", TensorProto.BFLOAT16, [2])], [vi("y", TensorProto.FLOAT8E4M3FN, [2])])
    g = from_onnx(model)
    assert g.inputs[0].dtype == dtypes.bfloat16 and g.outputs[0].dtype == dtypes.fp8_e4m3


# ----------------------------------------------------------------------------- dims, functions


def test_symbolic_and_unknown_dims():
    node = helper.make_node("Relu", ["x"], ["y"])
    x = helper.make_tensor_value_info("x", F, ["batch", None, 8])
    model = make_model([node], [x], [vi("y", F, ["batch", None, 8])])
    g = from_onnx(model)
    assert g.inputs[0].type.shape == ("batch", None, 8)
    assert g.outputs[0].type.shape == ("batch", None, 8)
    no_shape = make_model([node], [vi("x", F, None)], [vi("y", F, None)], check=False)
    assert from_onnx(no_shape).inputs[0].type.shape is None


def test_declared_value_info_fills_dims_inference_cannot_know():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    model = make_model(nodes, [vi("x", F, ["n", 4])], [vi("y", F, ["n", 4])])
    g = from_onnx(model)
    assert g.outputs[0].type.shape == ("n", 4)


def test_local_functions_are_inlined():
    body = [
        helper.make_node("Mul", ["a", "a"], ["sq"]),
        helper.make_node("Add", ["sq", "a"], ["out"]),
    ]
    fn = helper.make_function("custom", "SquarePlus", ["a"], ["out"], body,
                              [helper.make_opsetid("", 21)])
    nodes = [helper.make_node("SquarePlus", ["x"], ["y"], domain="custom", name="call")]
    model = make_model(nodes, [vi("x", F, [3])], [vi("y", F, [3])], opset=21, functions=[fn],
                       extra_opsets=[("custom", 1)])
    g = check_matches_ort(model, {"x": rand(3)})
    assert g.op_histogram() == {"Add": 1, "Mul": 1}
    assert g.outputs[0].name == "y"


# ----------------------------------------------------------------------------- bad input


def _save(model, path):
    onnx.save_model(model, str(path))
    return path


def _relu_model():
    return make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", F, [2])], [vi("y", F, [2])])


def test_truncated_file_is_a_clear_error(tmp_path):
    path = _save(_relu_model(), tmp_path / "m.onnx")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 5):
        bad = tmp_path / f"cut_{cut}.onnx"
        bad.write_bytes(data[:cut])
        with pytest.raises(RequantError, match=r"not an ONNX model: .*cut_\d+\.onnx.*could not be parsed") as info:
            from_onnx(bad)
        assert "DecodeError" not in type(info.value).__name__


def test_text_png_and_empty_files_are_not_onnx(tmp_path):
    txt = tmp_path / "notes.onnx"
    txt.write_text("this is a text file, not a model\n" * 20)
    png = tmp_path / "picture.onnx"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00" + bytes(64))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for path in (txt, png, empty):
        with pytest.raises(RequantError, match=rf"not an ONNX model: .*{path.name}.*could not be parsed"):
            from_onnx(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(RequantError, match="not found.*nothing.onnx"):
        from_onnx(tmp_path / "nothing.onnx")
    with pytest.raises(RequantError, match="is not a file"):
        from_onnx(tmp_path)


def _external_model(tmp_path, location: str, write_file: bool = True):
    """A model whose initializer 'w' lives in external file `location`."""
    w = np.arange(8, dtype=np.float32)
    tensor = numpy_helper.from_array(w, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(w.nbytes))):
        e = tensor.external_data.add()
        e.key, e.value = k, v
    if write_file:
        target = (tmp_path / "model_dir" / location) if not os.path.isabs(location) else None
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(w.tobytes())
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [vi("x", F, [8])], [vi("y", F, [8])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    (tmp_path / "model_dir").mkdir(exist_ok=True)
    path = tmp_path / "model_dir" / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, w


def test_external_data_inside_the_directory_loads(tmp_path):
    path, w = _external_model(tmp_path, "weights/w.bin")
    g = from_onnx(path)
    (const,) = g.constants
    assert const.name == "w"
    np.testing.assert_array_equal(const.const, w)
    np.testing.assert_array_equal(ir.run(g, {"x": np.ones(8, np.float32)})[0], w + 1)


@pytest.mark.parametrize("location", ["../x", "a/../../x", "/abs/x", "weights/../../../etc/passwd"])
def test_external_data_outside_the_directory_is_refused(tmp_path, location):
    if location.startswith("..") or location.startswith("a/"):
        (tmp_path / "x").write_bytes(bytes(32))  # the escape target exists: still refused
    path, _ = _external_model(tmp_path, location, write_file=False)
    with pytest.raises(RequantError, match=rf"tensor 'w'.*'{location}' is refused"):
        from_onnx(path)


def test_external_data_symlink_escaping_the_directory_is_refused(tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(bytes(32))
    path, _ = _external_model(tmp_path, "link.bin", write_file=False)
    os.symlink(outside, tmp_path / "model_dir" / "link.bin")
    with pytest.raises(RequantError, match=r"tensor 'w'.*'link.bin' is refused.*outside"):
        from_onnx(path)


def test_missing_external_file_is_a_clear_error(tmp_path):
    path, _ = _external_model(tmp_path, "gone.bin", write_file=False)
    with pytest.raises(RequantError, match=r"tensor 'w'.*external data file 'gone.bin' not found"):
        from_onnx(path)


def test_truncated_external_file_is_a_clear_error(tmp_path):
    path, _ = _external_model(tmp_path, "w.bin")
    (tmp_path / "model_dir" / "w.bin").write_bytes(bytes(10))
    with pytest.raises(RequantError, match=r"tensor 'w'.*reads past its end"):
        from_onnx(path)


def test_proto_with_external_data_needs_a_base_dir(tmp_path):
    path, w = _external_model(tmp_path, "w.bin")
    proto = onnx.load(str(path), load_external_data=False)
    with pytest.raises(RequantError, match="base_dir"):
        from_onnx(proto)
    g = from_onnx(proto, base_dir=path.parent)
    np.testing.assert_array_equal(next(iter(g.constants)).const, w)
    assert proto.graph.initializer[0].data_location == TensorProto.EXTERNAL  # caller's proto untouched


def test_unsupported_ops_are_listed_with_counts_and_node_names():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("LpNormalization", ["a"], ["b"], name="lpn_1"),
        helper.make_node("Hardmax", ["b"], ["c"], name="hm_1"),
        helper.make_node("LpNormalization", ["c"], ["d"], name="lpn_2"),
        helper.make_node("FusedThing", ["d"], ["e"], domain="com.example", name="fused_1"),
        helper.make_node("Hardmax", ["e"], ["f"]),  # no name: labelled by position and outputs
    ]
    model = make_model(nodes, [vi("x", F, [2, 3])], [vi("f", F, [2, 3])], extra_opsets=[("com.example", 1)],
                       check=False)
    with pytest.raises(UnsupportedOpError) as info:
        from_onnx(model)
    msg = str(info.value)
    assert "3 unsupported op type(s) in 5 node(s)" in msg
    assert "LpNormalization (domain 'ai.onnx'): 2 node(s): 'lpn_1', 'lpn_2'" in msg
    assert "Hardmax (domain 'ai.onnx'): 2 node(s): 'hm_1', '#5 -> f'" in msg
    assert "FusedThing (domain 'com.example'): 1 node(s): 'fused_1'" in msg


@pytest.mark.parametrize("opset", [23, 24])
def test_onnx_attention_reads_as_scaled_dot_product_attention(opset):
    nodes = [
        helper.make_node("Attention", ["q", "k", "v", "mask"], ["y"], is_causal=1, name="attn"),
        helper.make_node("Attention", ["q", "k", "v"], ["z"], scale=0.25, name="attn_scaled"),
    ]
    shapes = {"q": [1, 4, 3, 8], "k": [1, 2, 3, 8], "v": [1, 2, 3, 8]}
    inputs = [vi(n, F, s) for n, s in shapes.items()] + [vi("mask", TensorProto.BOOL, [1, 1, 3, 3])]
    model = make_model(nodes, inputs, [vi("y", F, [1, 4, 3, 8]), vi("z", F, [1, 4, 3, 8])], opset=opset)
    feeds = {n: rand(*s) for n, s in shapes.items()}
    feeds["mask"] = np.array([[[[True, False, True], [True, True, False], [False, True, True]]]])
    g = check_matches_ort(model, feeds)
    assert g.op_histogram() == {"ScaledDotProductAttention": 2}
    first = next(n for n in g if n.name == "attn")
    assert first.attrs == {"is_causal": 1}


def test_onnx_attention_with_kv_cache_is_refused_with_the_reason():
    node = helper.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y", "pk_out", "pv_out"], name="cached")
    inputs = [vi(n, F, [1, 2, 3, 8]) for n in ("q", "k", "v", "pk", "pv")]
    model = make_model([node], inputs, [vi("y", F, [1, 2, 3, 8])], opset=23, check=False)
    with pytest.raises(UnsupportedOpError, match=r"Attention \(domain 'ai.onnx'\): 1 node\(s\): 'cached' \(past_key"):
        from_onnx(model)


def test_bytes_input_and_graph_name():
    model = _relu_model()
    g = from_onnx(model.SerializeToString(), name="renamed")
    assert g.name == "renamed" and g.op_histogram() == {"Relu": 1}
