"""Structural checks on an ONNX model before requant reads it: what `onnx.checker` and
ONNX Runtime refuse, refused here too, with an `InvalidModelError` naming the tensor,
input or opset and what to do.

`check_onnx_structure(model, label)` refuses:
- names, op types and domains that are not valid UTF-8 (protobuf returns them as bytes);
- opset imports without the default domain ("" / "ai.onnx"), a domain imported twice,
  or a default-domain version that ONNX does not define (below 1 or above the newest
  opset of the installed onnx);
- a value name defined twice in the main graph: two graph inputs, two initializers, a
  node output that is also a graph input, initializer or another node's output (the
  SSA rule; an input with a default value in an initializer of the same name is ONNX's
  one allowed overlap);
- a negative dim in an initializer, a sparse initializer, a Constant's tensor or a
  graph input/output, and tensors whose data does not have the element count their
  dims say (numpy would otherwise reshape them silently);
- a sparse initializer whose dense form would exceed `MAX_DENSE_BYTES`, or whose
  indices fall outside it, before anything is allocated (a few bytes of sparse tensor
  can ask for many GiB).
Tensors stored as external data are checked for their dims only here; their bytes are
checked when they are read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

from requant.errors import InvalidModelError

__all__ = ["check_onnx_structure", "MAX_DENSE_BYTES"]

logger = logging.getLogger(__name__)

MAX_DENSE_BYTES = 1 << 32
"""The largest dense form of a sparse tensor requant expands (4 GiB)."""

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _newest_opset() -> int:
    import onnx.defs

    return int(onnx.defs.onnx_opset_version())


def _check_opsets(model: Any, label: str) -> None:
    seen: dict[str, int] = {}
    for imp in model.opset_import:
        domain = "" if imp.domain in _DEFAULT_DOMAINS else imp.domain
        if domain in seen:
            raise InvalidModelError(f"{label}: opset_import names domain {imp.domain!r} twice "
                                    f"(versions {seen[domain]} and {imp.version}); keep one")
        seen[domain] = int(imp.version)
    if "" not in seen:
        raise InvalidModelError(f"{label}: opset_import has no entry for the default ONNX domain (''); "
                                f"re-export the model, or add one, e.g. onnx.helper.make_opsetid('', 17)")
    version, newest = seen[""], _newest_opset()
    if not 1 <= version <= newest:
        raise InvalidModelError(f"{label}: default-domain opset {version} does not exist (the installed onnx "
                                f"defines 1..{newest}); re-export the model with a real opset")


def _element_size(data_type: int) -> float:
    from onnx import helper

    try:
        np_type = helper.tensor_dtype_to_np_dtype(data_type)
    except Exception:  # an unknown element type: reading the tensor reports it
        return 1.0
    bits = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2}.get(data_type)  # int4/uint4/fp4, 2-bit types
    return bits / 8 if bits else float(np_type.itemsize)


def _stored_count(tensor: Any) -> int | None:
    """Elements the tensor's inline data holds, or None when it cannot be told cheaply."""
    from onnx import TensorProto

    if tensor.data_location == TensorProto.EXTERNAL:
        return None
    if tensor.HasField("raw_data"):
        size = _element_size(tensor.data_type)
        return None if size < 1 else len(tensor.raw_data) // int(size)
    for name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        n = len(getattr(tensor, name))
        if n:
            complex_pair = tensor.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128)
            return n // 2 if complex_pair else n
    return 0


def _check_tensor(tensor: Any, what: str, label: str) -> None:
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise InvalidModelError(f"{label}: {what} '{tensor.name}' has negative dims {dims}; dims are >= 0")
    count = math.prod(dims)
    stored = _stored_count(tensor)
    if stored is None or tensor.data_type in (21, 22, 23, 25, 26):  # packed low-bit: checked on reading
        return
    if stored != count and not (stored == 0 and count == 0):
        raise InvalidModelError(f"{label}: {what} '{tensor.name}' has dims {dims} ({count} elements) but holds "
                                f"{stored}; the tensor is corrupt")


def _check_sparse(sparse: Any, label: str) -> None:
    import numpy as np

    name = sparse.values.name
    dims = list(sparse.dims)
    if any(d < 0 for d in dims):
        raise InvalidModelError(f"{label}: sparse initializer '{name}' has negative dims {dims}")
    dense = math.prod(dims) * _element_size(sparse.values.data_type)
    if dense > MAX_DENSE_BYTES:
        raise InvalidModelError(f"{label}: sparse initializer '{name}' expands to {dims} = {dense / 2**30:.1f} GiB "
                                f"dense, more than requant expands ({MAX_DENSE_BYTES >> 30} GiB)")
    _check_tensor(sparse.values, "sparse values of", label)
    _check_tensor(sparse.indices, "sparse indices of", label)
    if sparse.indices.data_location == 1 or sparse.values.data_location == 1:
        return  # external: checked when read
    from onnx import numpy_helper

    count = math.prod(dims)
    try:
        idx = numpy_helper.to_array(sparse.indices).astype(np.int64)
        nvalues = int(numpy_helper.to_array(sparse.values).size)
    except Exception as exc:
        raise InvalidModelError(f"{label}: sparse initializer '{name}': unreadable values or indices: {exc}") from exc
    if idx.ndim == 2 and idx.shape[1] == len(dims):
        entries, bad = idx.shape[0], bool(idx.size and (np.any(idx < 0) or np.any(idx >= np.asarray(dims))))
    elif idx.ndim == 1:
        entries, bad = idx.shape[0], bool(idx.size and (idx.min() < 0 or idx.max() >= count))
    else:
        entries, bad = -1, True
    if bad:
        raise InvalidModelError(f"{label}: sparse initializer '{name}' has indices outside its dims {dims}")
    if entries != nvalues:
        raise InvalidModelError(f"{label}: sparse initializer '{name}' has {nvalues} values for {entries} indices")


def _constant_tensors(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t


def _check_value_dims(value_info: Any, what: str, label: str) -> None:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return
    for axis, dim in enumerate(t.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value < 0:
            raise InvalidModelError(f"{label}: {what} '{value_info.name}' has dim {axis} = {dim.dim_value}; "
                                    f"a dim is >= 0, or a name for a size chosen at run time")


def _check_names(graph: Any, label: str) -> None:
    defined: dict[str, str] = {}

    def define(name: str, what: str) -> None:
        if not name:
            return
        if name in defined:
            raise InvalidModelError(f"{label}: value '{name}' is defined twice (as {defined[name]} and as {what}); "
                                    f"ONNX graphs define each name once")
        defined[name] = what

    initializers = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    seen_inputs: set[str] = set()
    for vi in graph.input:
        if vi.name in seen_inputs:
            raise InvalidModelError(f"{label}: graph input '{vi.name}' is declared twice")
        seen_inputs.add(vi.name)
        if vi.name not in initializers:  # an input whose default value is an initializer: one value
            define(vi.name, "a graph input")
    for t in graph.initializer:
        define(t.name, "an initializer")
    for s in graph.sparse_initializer:
        define(s.values.name, "a sparse initializer")
    for node in graph.node:
        for out in node.output:
            define(out, f"an output of node '{node.name or node.op_type}'")


def _strings(model: Any) -> Iterator[tuple[str, Any]]:
    """(what, value) of the string fields requant reads as names."""
    g = model.graph
    yield "the graph name", g.name
    for imp in model.opset_import:
        yield "an opset domain", imp.domain
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        yield "a value name", vi.name
    for t in list(g.initializer) + [s.values for s in g.sparse_initializer]:
        yield "an initializer name", t.name
    for node in g.node:
        yield "a node name", node.name
        yield "an op type", node.op_type
        yield "an op domain", node.domain
        for name in list(node.input) + list(node.output):
            yield "a value name", name
        for attr in node.attribute:
            yield "an attribute name", attr.name


def _check_text(model: Any, label: str) -> None:
    # protobuf hands back bytes for a string field that is not valid UTF-8
    for what, value in _strings(model):
        if not isinstance(value, str):
            raise InvalidModelError(f"{label}: {what} is not valid UTF-8 ({bytes(value)[:40]!r}); the file is corrupt")


def check_onnx_structure(model: Any, label: str) -> None:
    """Refuse what `onnx.checker` / ONNX Runtime refuse (module docstring)."""
    _check_text(model, label)
    _check_opsets(model, label)
    graph = model.graph
    _check_names(graph, label)
    for vi in graph.input:
        _check_value_dims(vi, "graph input", label)
    for vi in graph.output:
        _check_value_dims(vi, "graph output", label)
    for tensor in graph.initializer:
        _check_tensor(tensor, "initializer", label)
    for tensor in _constant_tensors(graph):
        _check_tensor(tensor, "Constant tensor", label)
    for sparse in graph.sparse_initializer:
        _check_sparse(sparse, label)
