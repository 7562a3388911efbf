"""ONNX <-> requant value conversions: dtype enums, tensor types (dim_value / dim_param /
unknown dims), tensors (numpy payloads incl. the sub-byte and low-bit float formats) and
attribute values. The ONNX format's type table lives with its writer, the ONNX backend;
the ONNX frontend reads files through the same table, importing it from here (a frontend
may use a backend's format helpers, a backend never imports a frontend).

Sub-byte integers are stored widened in requant (int4 in int8, uint4 in uint8) and as
ml_dtypes' packed int4/uint4 in ONNX tensors; the conversions here move between the two.
A `FloatFormat` dtype (LLM-FP4's parametric float) has no ONNX equivalent: its values are
held in float32, so it is exported as FLOAT.

Provenance: when the backend lowers one requant node to several ONNX nodes (or to a
different op), it tags them with `requant.group` and records the original node (op,
name, inputs, outputs, attributes as JSON from `encode_attrs`) in `requant.node`
metadata, so that the frontend can restore the node exactly. requant's `meta` dicts
(graph, node, value) travel the same way, under `requant.meta`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from requant.errors import RequantError
from requant.ir import dtypes
from requant.ir.dtypes import DType, FloatFormat
from requant.ir.types import TensorType

__all__ = [
    "ONNX_TO_DTYPE",
    "DTYPE_TO_ONNX",
    "dtype_from_onnx",
    "dtype_to_onnx",
    "type_from_onnx",
    "value_info_type",
    "make_value_info",
    "array_from_tensor",
    "tensor_from_array",
    "encode_attrs",
    "decode_attrs",
    "PROVENANCE_GROUP_KEY",
    "PROVENANCE_NODE_KEY",
    "META_KEY",
    "encode_meta",
    "decode_meta",
    "get_metadata",
    "set_metadata",
]

logger = logging.getLogger(__name__)

# TensorProto.DataType numbers, spelled out so this table is readable without onnx.
ONNX_TO_DTYPE: dict[int, DType] = {
    1: dtypes.float32,
    2: dtypes.uint8,
    3: dtypes.int8,
    4: dtypes.uint16,
    5: dtypes.int16,
    6: dtypes.int32,
    7: dtypes.int64,
    9: dtypes.bool_,
    10: dtypes.float16,
    11: dtypes.float64,
    12: dtypes.uint32,
    13: dtypes.uint64,
    16: dtypes.bfloat16,
    17: dtypes.fp8_e4m3,  # FLOAT8E4M3FN
    19: dtypes.fp8_e5m2,  # FLOAT8E5M2
    21: dtypes.uint4,
    22: dtypes.int4,
    23: dtypes.fp4_e2m1,  # FLOAT4E2M1
}
DTYPE_TO_ONNX: dict[DType, int] = {d: code for code, d in ONNX_TO_DTYPE.items()}

_ONNX_NAMES = {
    0: "UNDEFINED", 8: "STRING", 14: "COMPLEX64", 15: "COMPLEX128", 18: "FLOAT8E4M3FNUZ",
    20: "FLOAT8E5M2FNUZ", 24: "FLOAT8E8M0", 25: "UINT2", 26: "INT2", 27: "FLOAT6E2M3", 28: "FLOAT6E3M2",
}


def dtype_from_onnx(code: int, where: str = "") -> DType:
    found = ONNX_TO_DTYPE.get(int(code))
    if found is None:
        name = _ONNX_NAMES.get(int(code), str(code))
        at = f" ({where})" if where else ""
        raise RequantError(f"ONNX element type {name}{at} has no requant dtype")
    return found


def dtype_to_onnx(dt: DType) -> int:
    if isinstance(dt, FloatFormat):
        return 1  # values live on the format's grid, stored in float32
    code = DTYPE_TO_ONNX.get(dt)
    if code is None:
        raise RequantError(f"dtype {dt} has no ONNX element type")
    return code


def type_from_onnx(type_proto: Any, where: str = "") -> TensorType | None:
    """A TypeProto's tensor type; None when it says nothing usable (no elem_type)."""
    if type_proto is None or type_proto.WhichOneof("value") != "tensor_type":
        if type_proto is not None and type_proto.WhichOneof("value") is not None:
            raise RequantError(f"{where}: only tensor types are supported, got {type_proto.WhichOneof('value')}")
        return None
    tt = type_proto.tensor_type
    if tt.elem_type == 0:
        return None
    dt = dtype_from_onnx(tt.elem_type, where)
    if not tt.HasField("shape"):
        return TensorType(None, dt)
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        kind = d.WhichOneof("value")
        if kind == "dim_value":
            dims.append(int(d.dim_value))
        elif kind == "dim_param" and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorType(tuple(dims), dt)


def value_info_type(value_info: Any) -> TensorType | None:
    return type_from_onnx(value_info.type if value_info.HasField("type") else None, value_info.name)


def make_value_info(name: str, t: TensorType) -> Any:
    from onnx import helper

    shape = None if t.shape is None else [d if d is not None else None for d in t.shape]
    # helper.make_tensor_value_info writes ints as dim_value, strs as dim_param and None
    # as an empty dim (unknown), which is exactly requant's dim model.
    return helper.make_tensor_value_info(name, dtype_to_onnx(t.dtype), shape)


def array_from_tensor(tensor: Any, where: str = "") -> tuple[np.ndarray, DType]:
    """A TensorProto (data loaded) as (numpy array in requant storage, requant dtype)."""
    from onnx import numpy_helper

    dt = dtype_from_onnx(tensor.data_type, where or tensor.name)
    try:
        arr = numpy_helper.to_array(tensor)
    except Exception as exc:
        raise RequantError(f"tensor '{tensor.name or where}': cannot read its data: {exc}") from exc
    if arr.dtype != dt.np:
        # int4/uint4 come back as ml_dtypes' packed types; requant stores them widened
        arr = arr.astype(dt.np)
    return arr, dt


def tensor_from_array(array: np.ndarray, dt: DType, name: str = "") -> Any:
    """A TensorProto holding `array` (requant storage) as ONNX element type of `dt`."""
    from onnx import numpy_helper

    arr = np.asarray(array)
    if dt in (dtypes.int4, dtypes.uint4):
        import ml_dtypes

        arr = arr.astype(ml_dtypes.int4 if dt == dtypes.int4 else ml_dtypes.uint4)
    elif isinstance(dt, FloatFormat):
        arr = arr.astype(np.float32)
    elif arr.dtype != dt.np:
        arr = arr.astype(dt.np)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    return numpy_helper.from_array(arr, name)


# ----------------------------------------------------------------------------- provenance

PROVENANCE_GROUP_KEY = "requant.group"
PROVENANCE_NODE_KEY = "requant.node"
META_KEY = "requant.meta"
"""metadata_props key holding a node's, value's (value info, initializer) or, on the
model, the graph's requant `meta` as JSON."""


def encode_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """requant attribute values as JSON-able data that `decode_attrs` restores exactly
    (arrays bit for bit, dtypes, types, ints vs floats)."""
    return {k: _encode(v) for k, v in attrs.items()}


def decode_attrs(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _decode(v) for k, v in data.items()}


def _encode(v: Any) -> Any:
    import base64

    if isinstance(v, DType):
        return {"$dtype": v.short}
    if isinstance(v, TensorType):
        shape = None if v.shape is None else list(v.shape)
        return {"$type": {"dtype": v.dtype.short, "shape": shape}}
    if isinstance(v, np.ndarray):
        dt = dtypes.from_numpy(v.dtype)
        data = base64.b64encode(np.ascontiguousarray(v).tobytes()).decode("ascii")
        return {"$array": {"dtype": dt.short, "shape": list(v.shape), "data": data}}
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    if isinstance(v, dict) and all(isinstance(k, str) and not k.startswith("$") for k in v):
        return {k: _encode(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise RequantError(f"value {v!r} ({type(v).__name__}) cannot be recorded")


def _decode(v: Any) -> Any:
    import base64

    if isinstance(v, list):
        return [_decode(x) for x in v]
    if isinstance(v, dict):
        if "$dtype" in v:
            return dtypes.dtype(v["$dtype"])
        if "$type" in v:
            t = v["$type"]
            return TensorType(None if t["shape"] is None else tuple(t["shape"]), dtypes.dtype(t["dtype"]))
        if "$array" in v:
            a = v["$array"]
            arr = np.frombuffer(base64.b64decode(a["data"]), dtype=dtypes.dtype(a["dtype"]).np)
            arr = arr.reshape(tuple(a["shape"])).copy()
            arr.flags.writeable = False
            return arr
        return {k: _decode(x) for k, x in v.items()}
    return v


def encode_meta(meta: dict[str, Any]) -> str | None:
    """A `meta` dict as JSON (entries that cannot be recorded are left out, as the text
    form does); None when nothing is left."""
    import json

    kept = {}
    for key, value in meta.items():
        try:
            encoded = _encode(value)
            json.dumps(encoded)
        except (RequantError, TypeError, ValueError):
            logger.debug("meta entry %r is not recorded in ONNX", key)
            continue
        kept[key] = encoded
    return json.dumps(kept, separators=(",", ":")) if kept else None


def decode_meta(text: str) -> dict[str, Any]:
    import json

    return {k: _decode(v) for k, v in json.loads(text).items()}


def get_metadata(proto: Any, key: str) -> str | None:
    for entry in proto.metadata_props:
        if entry.key == key:
            return entry.value
    return None


def set_metadata(proto: Any, key: str, value: str | None) -> None:
    if value is None:
        return
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, value
