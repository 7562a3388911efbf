"""Invalid ONNX is refused as onnx.checker and ONNX Runtime refuse it (issue 16, items 8
and 9): each case is a small valid model with one defect; `from_onnx` and
`requant.compile` raise an `InvalidModelError` naming the tensor, input or opset, and
never a numpy, protobuf or memory error. The valid model itself reads, so each refusal
is the defect's."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import requant
from requant.errors import InvalidModelError
from requant.frontends import from_onnx


def valid_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _negative_initializer_dims(m: onnx.ModelProto) -> None:
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.float_data[:] = [1.0] * 16
    w.dims[:] = [-1, 4]  # numpy would reshape the 16 values to [4, 4] silently


def _short_initializer(m: onnx.ModelProto) -> None:
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]


def _input_twice(m: onnx.ModelProto) -> None:
    m.graph.input.append(helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 4]))


def _output_redefines_input(m: onnx.ModelProto) -> None:
    m.graph.node.append(helper.make_node("Relu", ["y"], ["x"], name="again"))


def _opset(version: int) -> Callable[[onnx.ModelProto], None]:
    def edit(m: onnx.ModelProto) -> None:
        m.opset_import[0].version = version

    return edit


def _no_default_domain(m: onnx.ModelProto) -> None:
    m.opset_import[0].domain = "com.example"


def _domain_twice(m: onnx.ModelProto) -> None:
    m.opset_import.append(helper.make_opsetid("ai.onnx", 18))


def _negative_input_dim(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -2


def _huge_sparse(m: onnx.ModelProto) -> None:
    sparse = onnx.SparseTensorProto()
    sparse.values.CopyFrom(numpy_helper.from_array(np.ones(1, np.float32), "s"))
    sparse.indices.CopyFrom(numpy_helper.from_array(np.zeros(1, np.int64), "s_idx"))
    sparse.dims[:] = [1 << 17, 1 << 15]  # 16 GiB dense from a few bytes
    m.graph.sparse_initializer.append(sparse)


def _sparse_index_outside(m: onnx.ModelProto) -> None:
    sparse = onnx.SparseTensorProto()
    sparse.values.CopyFrom(numpy_helper.from_array(np.ones(1, np.float32), "s"))
    sparse.indices.CopyFrom(numpy_helper.from_array(np.array([99], np.int64), "s_idx"))
    sparse.dims[:] = [4, 4]
    m.graph.sparse_initializer.append(sparse)


def _sparse_values_without_indices(m: onnx.ModelProto) -> None:
    sparse = onnx.SparseTensorProto()
    sparse.values.CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), "s"))
    sparse.indices.CopyFrom(numpy_helper.from_array(np.array([1], np.int64), "s_idx"))
    sparse.dims[:] = [4, 4]
    m.graph.sparse_initializer.append(sparse)


def _graph_name_not_utf8(m: onnx.ModelProto) -> None:
    data = m.SerializeToString().replace(b"\x12\x01g", b"\x12\x01\x80")  # graph name "g" -> byte 0x80
    m.ParseFromString(data)


CASES: dict[str, tuple[Callable[[onnx.ModelProto], None], str]] = {
    "initializer with dims [-1, 4]": (_negative_initializer_dims, r"initializer 'w' has negative dims \[-1, 4\]"),
    "initializer shorter than its dims": (_short_initializer, r"initializer 'w' has dims \[4, 4\] \(16 elements\) "
                                                              r"but holds 15"),
    "graph input declared twice": (_input_twice, "graph input 'x' is declared twice"),
    "node output redefines an input": (_output_redefines_input, "value 'x' is defined twice"),
    "opset 99": (_opset(99), "default-domain opset 99 does not exist"),
    "opset 0": (_opset(0), "default-domain opset 0 does not exist"),
    "no default-domain import": (_no_default_domain, "no entry for the default ONNX domain"),
    "default domain imported twice": (_domain_twice, "names domain 'ai.onnx' twice"),
    "negative input dim": (_negative_input_dim, "graph input 'x' has dim 0 = -2"),
    "sparse initializer of 16 GiB": (_huge_sparse, r"sparse initializer 's' expands to .* 16\.0 GiB"),
    "sparse index outside its dims": (_sparse_index_outside, "sparse initializer 's' has indices outside"),
    "sparse values without indices": (_sparse_values_without_indices, "has 3 values for 1 indices"),
    "graph name not UTF-8": (_graph_name_not_utf8, r"the graph name is not valid UTF-8 \(b'\\x80'\)"),
}


def test_the_valid_model_reads() -> None:
    g = from_onnx(valid_model())
    assert g.op_histogram() == {"MatMul": 1}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_onnx_is_refused_with_one_line(case: str, tmp_path) -> None:
    edit, message = CASES[case]
    model = valid_model()
    edit(model)
    with pytest.raises(InvalidModelError, match=message) as info:
        from_onnx(model)
    assert "\n" not in str(info.value)
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidModelError, match=message):
        requant.compile(str(path), "cpu-fp32")


def test_onnx_checker_agrees_on_the_cases_it_covers() -> None:
    """Where onnx.checker has an opinion it is ours (opset 99 and the sizes of sparse
    tensors it does not check; ONNX Runtime refuses those)."""
    for case in ("initializer with dims [-1, 4]", "graph input declared twice", "no default-domain import"):
        model = valid_model()
        CASES[case][0](model)
        with pytest.raises(onnx.checker.ValidationError):
            onnx.checker.check_model(model)
