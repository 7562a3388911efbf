"""Shared pieces of the one-node op tests (tests/ir/test_ops.py, test_quant_ops.py): the
oracle that runs an ONNX model, and the check that a kernel's array fits its inferred type."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from requant.ir.registry import get_schema

__all__ = ["ONNX_DTYPE", "ML_STORAGE", "run_oracle", "run_one_node", "input_bindings", "check_type"]

ONNX_DTYPE = {
    "f64": TensorProto.DOUBLE, "f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
    "i64": TensorProto.INT64, "i32": TensorProto.INT32, "i16": TensorProto.INT16, "i8": TensorProto.INT8,
    "u64": TensorProto.UINT64, "u32": TensorProto.UINT32, "u16": TensorProto.UINT16, "u8": TensorProto.UINT8,
    "bool": TensorProto.BOOL, "fp8_e4m3": TensorProto.FLOAT8E4M3FN, "fp8_e5m2": TensorProto.FLOAT8E5M2,
    "fp4_e2m1": TensorProto.FLOAT4E2M1, "i4": TensorProto.INT4, "u4": TensorProto.UINT4,
}
ML_STORAGE = {"i4": ml_dtypes.int4, "u4": ml_dtypes.uint4}  # numpy storage ONNX takes 4-bit ints in


def run_oracle(model: Any, feed: dict[str, np.ndarray], oracle: str) -> list[np.ndarray]:
    """Outputs of `model` from onnx's ReferenceEvaluator, or from ONNX Runtime when
    `oracle == "ort"` (where the reference implementation is wrong or lacks the op)."""
    if oracle == "ort":
        import onnxruntime

        model.ir_version = min(model.ir_version, 10)
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return list(session.run(None, feed))
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(model).run(None, feed))


def input_bindings(case: Any) -> dict[str, int]:
    """{symbol: size} of the symbols in the declared shapes of `case`'s graph inputs (an
    op_cases.Case), read off their values: what `check_type` starts from."""
    bindings: dict[str, int] = {}
    for x in case.inputs:
        if x is not None and not x.const and isinstance(x.shape, tuple):
            for d, n in zip(x.shape, x.value.shape):
                if isinstance(d, str):
                    bindings[d] = n
    return bindings


def check_type(t, arr: np.ndarray, bindings: dict[str, int], where: str) -> None:
    """`arr` has the dtype and shape of inferred type `t`; a symbol binds one size."""
    assert arr.dtype == t.dtype.np, f"{where}: kernel gave {arr.dtype}, type says {t.dtype}"
    if t.shape is None:
        return
    assert len(t.shape) == arr.ndim, f"{where}: inferred {t}, got shape {arr.shape}"
    for d, n in zip(t.shape, arr.shape):
        if isinstance(d, int):
            assert d == n, f"{where}: inferred {t}, got shape {arr.shape}"
        elif isinstance(d, str):
            assert bindings.setdefault(d, n) == n, f"{where}: symbol {d} is {bindings[d]} and {n}"


def run_one_node(case: Any, out_types: list, attrs: dict[str, Any], domain: str = "") -> list[np.ndarray]:
    """The oracle's outputs for `case` (an op_cases.Case) built as a one-node ONNX model:
    inputs x0, x1, ... (constants as initializers), outputs y0, y1, ... of `out_types`."""
    names, inits, graph_inputs, feed = [], [], [], {}
    for i, x in enumerate(case.inputs):
        if x is None:
            names.append("")
            continue
        name = f"x{i}"
        names.append(name)
        arr = x.value.astype(ML_STORAGE[x.dt]) if x.dt in ML_STORAGE else x.value
        if x.const:
            inits.append(numpy_helper.from_array(arr, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, ONNX_DTYPE[x.dt], list(arr.shape)))
            feed[name] = arr
    while names and names[-1] == "":
        names.pop()
    outs = [f"y{j}" for j in range(len(out_types))]
    schema = get_schema(case.op)  # ONNX names an op of another domain by (domain, bare name)
    node = helper.make_node(schema.name, names, outs, domain=domain or None, **attrs)
    graph = helper.make_graph(
        [node], "case", graph_inputs,
        [helper.make_tensor_value_info(o, ONNX_DTYPE[t.dtype.short], None) for o, t in zip(outs, out_types)],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", case.opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return run_oracle(helper.make_model(graph, opset_imports=opsets), feed, case.oracle)
