"""The harness the op-case tests share (the cases: tests/op_cases/): the one comparison
of two results under a case's tolerance (`compare`), the check that an array fits its
inferred type (`check_type`), the oracle's outputs for a case (`oracle_outputs`: a
one-node ONNX model run by ONNX's reference or ONNX Runtime, or the numpy reference of
tests/op_references.py), and the pytest parameters of a list of cases for one backend
(`case_params`: ids, strict xfails for known failures); and the opset an export opset
marker of a case stands for (`export_opset`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from op_cases import QDQ_OPSET, Case, Tol

from requant.ir import dtypes
from requant.ir.registry import get_schema

__all__ = [
    "onnx_dtype", "ML_STORAGE", "compare", "check_type", "input_bindings", "oracle_outputs", "case_params",
    "run_oracle", "export_opset", "qdq_opset",
]

_ONNX_DTYPE_NAMES = {
    "f64": "DOUBLE", "f32": "FLOAT", "f16": "FLOAT16", "bf16": "BFLOAT16", "i64": "INT64", "i32": "INT32",
    "i16": "INT16", "i8": "INT8", "u64": "UINT64", "u32": "UINT32", "u16": "UINT16", "u8": "UINT8", "bool": "BOOL",
    "fp8_e4m3": "FLOAT8E4M3FN", "fp8_e5m2": "FLOAT8E5M2", "fp4_e2m1": "FLOAT4E2M1", "i4": "INT4", "u4": "UINT4",
}
ML_STORAGE = {"i4": ml_dtypes.int4, "u4": ml_dtypes.uint4}  # numpy storage ONNX takes 4-bit ints in
_DTYPE_ATTRS = ("to", "output_dtype")  # attributes that name a dtype: ONNX takes its TensorProto code


def onnx_dtype(short: str) -> int:
    """The onnx.TensorProto code of a requant dtype (short name); imports onnx."""
    from onnx import TensorProto

    return getattr(TensorProto, _ONNX_DTYPE_NAMES[short])


# ----------------------------------------------------------------------------- comparison


def compare(got: np.ndarray, want: np.ndarray, dt: str, tol: Mapping[str, Tol], where: str) -> None:
    """`got` equals `want` (what the oracle or the interpreter gave) in shape and, within
    `tol[dt]`, in value: floats within the bound `Tol` states, NaN where NaN,
    infinities equal; every other dtype (and floats without an entry) exactly, fp8/fp4
    and 4-bit integers compared as values with the sign of zero."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{where}: shape {got.shape}, expected {want.shape}"
    if dt in ML_STORAGE or dt.startswith("fp") or dt.startswith("ff_"):
        a, w = got.astype(np.float64), want.astype(np.float64)
        np.testing.assert_array_equal(a, w, err_msg=where)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(w), err_msg=f"{where}: signs of zero")
        return
    if got.dtype.kind not in "fV":
        np.testing.assert_array_equal(got, want.astype(got.dtype), err_msg=where)
        return
    a, w = got.astype(np.float64), want.astype(np.float64)
    if dt not in tol:
        np.testing.assert_array_equal(a, w, err_msg=f"{where} (exact)")
        return
    assert np.array_equal(np.isnan(a), np.isnan(w)), f"{where}: NaNs differ\n{a}\n{w}"
    inf = np.isinf(w)
    np.testing.assert_array_equal(a[inf], w[inf], err_msg=f"{where}: infinities differ")
    finite = np.isfinite(w)
    if not finite.any():
        return
    t = tol[dt]
    scale = max(1.0, float(np.max(np.abs(w[finite])))) if t.scale_atol else 1.0
    err = np.abs(a[finite] - w[finite])
    bound = t.atol * scale + t.rtol * np.abs(w[finite])
    if np.any(err > bound):
        worst = int(np.argmax(err - bound))
        raise AssertionError(
            f"{where}: |got - want| = {err[worst]:.3g} where want = {w[finite][worst]:.6g} "
            f"(bound {bound[worst]:.3g}: {t}, {dt})"
        )


# ----------------------------------------------------------------------------- types


def input_bindings(case: Case) -> dict[str, int]:
    """{symbol: size} of the symbols in the declared shapes of `case`'s graph inputs,
    read off their values: what `check_type` starts from."""
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


# ----------------------------------------------------------------------------- oracles


def run_oracle(model: Any, feed: dict[str, np.ndarray], oracle: str) -> list[np.ndarray]:
    """Outputs of ONNX `model` from onnx's ReferenceEvaluator, or from ONNX Runtime when
    `oracle == "ort"`."""
    if oracle == "ort":
        import onnxruntime

        model.ir_version = min(model.ir_version, 10)
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return list(session.run(None, feed))
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(model).run(None, feed))


def _onnx_attr(name: str, value: Any) -> Any:
    from onnx import numpy_helper

    if name in _DTYPE_ATTRS and isinstance(value, str):
        return onnx_dtype(dtypes.dtype(value).short)
    if isinstance(value, (np.ndarray, np.generic)):
        return numpy_helper.from_array(np.asarray(value))
    return value


def _one_node_model(case: Case, out_types: list) -> tuple[Any, dict[str, np.ndarray]]:
    """`case` as a one-node ONNX model written with onnx.helper (not requant's exporter):
    inputs x0, x1, ... (constants as initializers), outputs y0, y1, ... of `out_types`."""
    from onnx import helper, numpy_helper

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
            graph_inputs.append(helper.make_tensor_value_info(name, onnx_dtype(x.dt), list(arr.shape)))
            feed[name] = arr
    while names and names[-1] == "":
        names.pop()
    schema = get_schema(case.op)  # ONNX names an op of another domain by (domain, bare name)
    attrs = {k: _onnx_attr(k, v) for k, v in case.attrs.items() if v is not None}
    outs = [f"y{j}" for j in range(len(out_types))]
    node = helper.make_node(schema.name, names, outs, domain=schema.domain or None, **attrs)
    graph = helper.make_graph(
        [node], "case", graph_inputs,
        [helper.make_tensor_value_info(o, onnx_dtype(t.dtype.short), None) for o, t in zip(outs, out_types)],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", case.oracle_opset)]
    if schema.domain:
        opsets.append(helper.make_opsetid(schema.domain, 1))
    return helper.make_model(graph, opset_imports=opsets), feed


def oracle_outputs(case: Case, out_types: list) -> list[np.ndarray]:
    """What `case.oracle` computes for the case's node (outputs of `out_types`)."""
    if case.oracle == "numpy":
        from op_references import NUMPY_REFERENCES

        return NUMPY_REFERENCES[case.op]([None if x is None else x.value for x in case.inputs], dict(case.attrs))
    if case.oracle not in ("reference", "ort"):
        raise ValueError(f"{case}: no oracle to run ({case.oracle!r})")
    model, feed = _one_node_model(case, out_types)
    return run_oracle(model, feed, case.oracle)


# ----------------------------------------------------------------------------- parameters


def case_params(cases: Iterable[Case], backends: str | tuple[str, ...], variants: Any = None) -> list:
    """pytest parameters, one per case (or per (case, variant) when `variants(case)`
    lists variants: the export opsets), with the case's id, and a strict xfail where the
    case records a known failure of one of `backends` (at that variant, for a key
    "backend@variant")."""
    backends = (backends,) if isinstance(backends, str) else backends

    def marks(case: Case, variant: Any = None) -> list:
        keys = [b for b in backends] + [f"{b}@{variant}" for b in backends if variant is not None]
        return [pytest.mark.xfail(reason=case.known_failures[k], strict=True) for k in keys if k in case.known_failures]

    if variants is None:
        return [pytest.param(case, id=str(case), marks=marks(case)) for case in cases]
    return [pytest.param(case, v, id=f"{case}-opset{v or 'default'}", marks=marks(case, v))
            for case in cases for v in variants(case)]


# ----------------------------------------------------------------------------- export opsets


@lru_cache(maxsize=1)
def qdq_opset() -> int:
    """Newest opset <= max_supported_opset() whose QuantizeLinear and DequantizeLinear
    ONNX Runtime loads (ORT matches a kernel registered "since v" only to op version v)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from requant.backends.onnx import max_supported_opset

    for opset in range(max_supported_opset(), 12, -1):
        nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s"], ["y"])]
        graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                                  [numpy_helper.from_array(np.array(0.5, np.float32), "s")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return opset
        except Exception:  # noqa: BLE001 (ORT raises its own exception types for a missing kernel)
            continue
    raise RuntimeError("ONNX Runtime runs QuantizeLinear at no opset")


def export_opset(marker: int | str | None) -> int | None:
    """The `opset=` for to_onnx of one of a case's export opsets (QDQ_OPSET resolved)."""
    return qdq_opset() if marker == QDQ_OPSET else marker
