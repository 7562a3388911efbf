"""requant IR -> ONNX: `to_onnx(graph)` builds a checked `onnx.ModelProto`;
`save_onnx(model_or_graph, path)` writes it, with the weights as external data when asked
or when they would not fit protobuf's 2 GB limit.

What it owns:
- the opset choice: by default the newest opset at which the installed ONNX Runtime can
  run every node the lowering emits (a CPU kernel for that op version and those element
  types, or an ONNX function body that ORT expands, which is probed); without
  onnxruntime, `FALLBACK_OPSET`;
- graph inputs/outputs as typed value infos (symbolic dims -> dim_param, unknown dims
  empty), constants as initializers (scalars and small shape tensors too), nodes through
  the lowering table (`lowering/`), every op the table cannot lower reported at once;
- the external-data layout: one `<model file name>.data` next to the model, referenced
  by a relative location, written without copying or mutating the in-memory model;
- checking: `onnx.checker.check_model(full_check=True)` on the proto, or on the saved
  file when the model is too large to serialize in one piece;
- initializers by reference (`to_onnx(..., by_reference={})`): large constants stay the
  graph's numpy arrays instead of being copied into the proto (a model past protobuf's
  2 GB limit would otherwise be held twice more, as bytes and as the message); their
  initializers carry dims, type and the external-data location `BY_REFERENCE`, the
  dict maps their names to the arrays, and `save_onnx(..., arrays=)` writes them into
  the external-data file as if they had been inline.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from requant.backends.onnx.lowering import LOWERINGS, EmitContext, Unsupported, onnx_schema
from requant.backends.onnx.onnx_types import (
    META_KEY,
    PROVENANCE_GROUP_KEY,
    PROVENANCE_NODE_KEY,
    dtype_to_onnx,
    encode_attrs,
    encode_meta,
    make_value_info,
    set_metadata,
    tensor_from_array,
)
from requant.errors import RequantError, UnsupportedOpError
from requant.ir import dtypes
from requant.ir.graph import Graph

__all__ = [
    "to_onnx",
    "save_onnx",
    "MIN_OPSET",
    "FALLBACK_OPSET",
    "PROTOBUF_LIMIT_BYTES",
    "AUTO_EXTERNAL_DATA_BYTES",
    "max_supported_opset",
    "ort_supports",
    "ort_missing_ops",
    "initializer_bytes",
    "BY_REFERENCE",
    "BY_REFERENCE_MIN_BYTES",
    "with_arrays_inline",
]

BY_REFERENCE = "requant:by-reference"
"""The external-data location of an initializer whose data is a numpy array held
outside the proto (`to_onnx(..., by_reference=)`); no file has this name."""

BY_REFERENCE_MIN_BYTES = 1 << 16
"""Constants smaller than this are copied into the proto even when exporting by reference."""

# numpy dtypes whose bytes are the ONNX raw_data of the same element type (no packing)
_BY_REFERENCE_DTYPES = {np.dtype(t) for t in (np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16,
                                               np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.bool_)}

logger = logging.getLogger(__name__)

MIN_OPSET = 13
FALLBACK_OPSET = 21
"""Default opset when onnxruntime is not installed to say what it supports."""

PROTOBUF_LIMIT_BYTES = 2**31
AUTO_EXTERNAL_DATA_BYTES = PROTOBUF_LIMIT_BYTES - 2**26
"""Initializer bytes above which weights go to external data (64 MiB left for the rest)."""

EXTERNAL_SIZE_THRESHOLD = 1024
"""Tensors smaller than this stay inside the .onnx file when writing external data."""

# Oldest IR version that can hold each element type (ONNX IR changelog).
_IR_FOR_DTYPE = {dtypes.bfloat16: 4, dtypes.fp8_e4m3: 9, dtypes.fp8_e5m2: 9,
                 dtypes.int4: 10, dtypes.uint4: 10, dtypes.fp4_e2m1: 11}


# ----------------------------------------------------------------------------- ONNX Runtime


@dataclass(frozen=True)
class _Kernel:
    lo: int
    hi: int
    constraints: dict[str, frozenset[str]]


@lru_cache(maxsize=1)
def _ort_kernels() -> dict[tuple[str, str], list[_Kernel]] | None:
    """CPU kernels of the installed onnxruntime: (domain, op) -> version ranges and the
    element types each type parameter admits."""
    try:
        from onnxruntime.capi import _pybind_state as C
    except Exception:  # onnxruntime missing or without the introspection hook
        return None
    table: dict[tuple[str, str], list[_Kernel]] = {}
    try:
        defs = C.get_all_opkernel_def()
    except Exception:
        return None
    for d in defs:
        if d.provider != "CPUExecutionProvider":
            continue
        domain = "" if d.domain in ("", "ai.onnx") else d.domain
        lo, hi = d.version_range
        constraints = {k: frozenset(v) for k, v in d.type_constraints.items()}
        table.setdefault((domain, d.op_name), []).append(_Kernel(lo, hi, constraints))
    return table


def _ort_type(t: Any) -> str:
    from onnx import TensorProto

    return f"tensor({TensorProto.DataType.Name(dtype_to_onnx(t.dtype)).lower()})"


_ORT_NO_END = 2**31 - 1


def ort_supports(op_type: str, opset: int, domain: str = "", node: Any | None = None,
                 types: dict[str, Any] | None = None) -> bool | None:
    """Whether ONNX Runtime's CPU provider has a kernel for `op_type` as of `opset` (the
    op version in force then) and, given an ONNX `node` and requant `types` by value
    name, for the element types it is used with; None when onnxruntime is not installed.
    Ops that ORT runs only by expanding their ONNX function body are not counted here:
    whether that works depends on the opset and the node (see `_ort_runs_node`)."""
    kernels = _ort_kernels()
    if kernels is None:
        return None
    if op_type == "Constant" and domain in ("", "ai.onnx"):
        return True  # ORT turns Constant nodes into initializers, no kernel needed
    candidates = kernels.get((domain, op_type), [])
    schema = None
    if domain in ("", "ai.onnx"):
        schema = onnx_schema(op_type, opset)
        if schema is None:
            return False
        # ORT registers its newest kernel of an op "from version N, no end", but uses it
        # for op version N only: a later op version (QuantizeLinear-28 over a kernel
        # registered from 25) finds no kernel at load time.
        v = schema.since_version
        candidates = [k for k in candidates if k.lo == v or (k.lo <= v <= k.hi and k.hi != _ORT_NO_END)]
    if not candidates:
        return False
    if node is None or types is None or schema is None:
        return True
    wanted: list[tuple[str, str]] = []  # (type parameter, element type)
    for names, params in ((node.input, schema.inputs), (node.output, schema.outputs)):
        for i, name in enumerate(names):
            if not name or name not in types or not params:
                continue
            param = params[min(i, len(params) - 1)]
            wanted.append((param.type_str, _ort_type(types[name])))
    return any(
        all(k.constraints.get(tp) is None or et in k.constraints[tp] for tp, et in wanted) for k in candidates
    )


_PROBES: dict[tuple, bool] = {}


def _ort_runs_node(node: Any, types: dict[str, Any], opset: int) -> bool:
    """Whether ORT can load a model made of `node` alone, its inputs and outputs typed as
    in the requant graph: the test for ops ORT runs through their function bodies (e.g.
    Swish runs at opset 24 but not at 28, where its body's opset no longer matches)."""
    import onnx
    from onnx import helper

    names = [n for n in list(node.input) + list(node.output) if n]
    if any(n not in types for n in names):
        return True  # a helper value of a decomposition: nothing to probe with
    probe = onnx.NodeProto()
    probe.CopyFrom(node)
    probe.name = ""
    rename = {n: f"v{i}" for i, n in enumerate(dict.fromkeys(names))}
    del probe.input[:]
    probe.input.extend(rename.get(n, "") for n in node.input)
    del probe.output[:]
    probe.output.extend(rename.get(n, "") for n in node.output)
    key = (probe.SerializeToString(deterministic=True), opset,
           tuple(str(types[n]) for n in names))
    if key in _PROBES:
        return _PROBES[key]
    ins = [make_value_info(rename[n], types[n]) for n in dict.fromkeys(i for i in node.input if i)]
    outs = [make_value_info(rename[n], types[n]) for n in node.output if n]
    model = helper.make_model(helper.make_graph([probe], "probe", ins, outs),
                              opset_imports=[helper.make_opsetid("", opset)])
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 4
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        ok = True
    except Exception as exc:
        logger.debug("ORT cannot run %s at opset %d: %s", node.op_type, opset, exc)
        ok = False
    _PROBES[key] = ok
    return ok


def ort_missing_ops(nodes: list[Any], types: dict[str, Any], opset: int) -> list[str]:
    """The op types among `nodes` that ONNX Runtime cannot run at `opset` (empty when
    onnxruntime is not installed)."""
    missing: dict[str, None] = {}
    for node in nodes:
        domain = node.domain or ""
        label = f"{domain + '.' if domain else ''}{node.op_type}"
        has = ort_supports(node.op_type, opset, domain, node, types)
        if has is None or has:
            continue
        schema = onnx_schema(node.op_type, opset) if domain in ("", "ai.onnx") else None
        if schema is not None and (schema.has_function or schema.has_context_dependent_function):
            if _ort_runs_node(node, types, opset):
                continue
        ins = [str(types[n].dtype) for n in node.input if n in types]
        outs = [str(types[n].dtype) for n in node.output if n in types]
        missing[f"{label}({', '.join(ins)} -> {', '.join(outs)})" if ins or outs else label] = None
    return list(missing)


def max_supported_opset() -> int:
    """Newest default-domain opset both onnx and the installed onnxruntime know."""
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    kernels = _ort_kernels()
    if kernels is None:
        return min(newest, FALLBACK_OPSET)
    ort_max = max(k.lo for (domain, _), ks in kernels.items() if domain == "" for k in ks)
    return min(newest, ort_max)


# ----------------------------------------------------------------------------- lowering


@dataclass
class _Lowered:
    opset: int
    ctx: EmitContext
    recorded_inputs: set[str]  # inputs named by provenance records (kept as initializers)


def _check_lowerable(graph: Graph) -> None:
    """Collect every node the table cannot lower and raise once."""
    bad: OrderedDict[str, list[str]] = OrderedDict()
    for node in graph:
        entry = LOWERINGS.get(node.op)
        if entry is None or isinstance(entry, Unsupported):
            bad.setdefault(node.op, []).append(node.label)
    if not bad:
        return
    lines = []
    for op, where in bad.items():
        entry = LOWERINGS.get(op)
        why = entry.reason if isinstance(entry, Unsupported) else "no entry in the ONNX lowering table"
        shown = ", ".join(where[:5]) + (f", ... ({len(where) - 5} more)" if len(where) > 5 else "")
        lines.append(f"  {op}: {len(where)} node(s) ({shown}): {why}")
    raise UnsupportedOpError(f"graph '{graph.name}' cannot be exported to ONNX:\n" + "\n".join(lines))


def _lower(graph: Graph, opset: int) -> _Lowered:
    taken = {v.name for v in graph.values()}
    ctx = EmitContext(opset, taken)
    groups = 0
    recorded_inputs: set[str] = set()
    for node in graph:
        emitter = LOWERINGS.lookup(node.op)
        ins = [None if v is None else v.name for v in node.inputs]
        outs = [o.name for o in node.outputs]
        start = len(ctx.nodes)
        try:
            emitter(ctx, node, ins, outs)
        except RequantError:
            raise
        except Exception as exc:
            raise RequantError(f"exporting {node.label} to ONNX (opset {opset}) failed: {exc}") from exc
        emitted = ctx.nodes[start:]
        if not _is_verbatim(node, ins, outs, emitted):
            groups += 1
            _record_provenance(node, ins, outs, emitted, groups)
            recorded_inputs.update(i for i in ins if i)
        elif node.meta:
            set_metadata(emitted[0], META_KEY, encode_meta(node.meta))
    return _Lowered(opset, ctx, recorded_inputs)


def _is_verbatim(node: Any, ins: list, outs: list, emitted: list) -> bool:
    """The node became one ONNX node of the same op, inputs and outputs (so reading the
    ONNX back gives it again without help)."""
    if len(emitted) != 1 or node.op == "Constant":
        return False
    (proto,) = emitted
    trimmed = list(ins)
    while trimmed and trimmed[-1] is None:
        trimmed.pop()
    return (proto.op_type == node.op and not proto.domain and list(proto.output) == outs
            and list(proto.input) == ["" if i is None else i for i in trimmed]
            and {a.name for a in proto.attribute} == {k for k, v in node.attrs.items() if v is not None})


def _record_provenance(node: Any, ins: list, outs: list, emitted: list, group: int) -> None:
    """Tag the ONNX nodes made from one requant node so the frontend can restore it."""
    import json

    spec = json.dumps({
        "op": node.op,
        "name": node.name,
        "inputs": ["" if i is None else i for i in ins],
        "outputs": outs,
        "attrs": encode_attrs(node.attrs),
        "meta": encode_meta(node.meta),
    }, separators=(",", ":"))
    for i, proto in enumerate(emitted):
        set_metadata(proto, PROVENANCE_GROUP_KEY, str(group))
        if i == 0:
            set_metadata(proto, PROVENANCE_NODE_KEY, spec)


def _choose_and_lower(graph: Graph) -> _Lowered:
    """Lower at the newest opset ONNX Runtime runs every emitted op at."""
    hi = max_supported_opset()
    types = {v.name: v.type for v in graph.values()}
    first: _Lowered | None = None
    first_missing: list[str] = []
    for opset in range(hi, MIN_OPSET - 1, -1):
        try:
            lowered = _lower(graph, opset)
        except UnsupportedOpError:
            if first is None:
                raise
            break  # older opsets lack something this graph needs: keep the newest
        missing = ort_missing_ops(lowered.ctx.nodes, types, opset)
        if not missing:
            if opset != hi:
                logger.info("exporting at opset %d: ONNX Runtime lacks newer kernels for the ops used", opset)
            return lowered
        if first is None:
            first, first_missing = lowered, missing
    assert first is not None
    logger.warning(
        "no opset in %d..%d has ONNX Runtime kernels for every op of graph '%s' (missing at %d: %s); "
        "exporting at opset %d", MIN_OPSET, hi, graph.name, hi, ", ".join(first_missing), hi,
    )
    return first


# ----------------------------------------------------------------------------- to_onnx


def initializer_bytes(model_or_graph: Any) -> int:
    """Bytes of tensor data a model (or a graph's constants) carries."""
    if isinstance(model_or_graph, Graph):
        return int(sum(np.asarray(v.const).nbytes for v in model_or_graph.constants))
    total = 0
    for t in model_or_graph.graph.initializer:
        total += len(t.raw_data) if t.raw_data else _typed_bytes(t)
    return total


def _typed_bytes(t: Any) -> int:
    return 8 * (len(t.float_data) + len(t.int32_data) + len(t.int64_data) + len(t.double_data) + len(t.uint64_data))


def _ir_version(opsets: dict[str, int], graph: Graph) -> int:
    from onnx import helper

    ir = helper.find_min_ir_version_for([helper.make_opsetid(d, v) for d, v in opsets.items()], ignore_unknown=True)
    for v in graph.values():
        ir = max(ir, _IR_FOR_DTYPE.get(v.dtype, 3))
    return ir


def to_onnx(
    graph: Graph,
    *,
    opset: int | None = None,
    external_data: bool | None = None,
    path: str | os.PathLike | None = None,
    check: bool = True,
    value_info: bool = True,
    producer: str = "requant",
    by_reference: dict[str, np.ndarray] | None = None,
) -> Any:
    """Export `graph` as an `onnx.ModelProto`.

    opset: default-domain opset; None picks the newest one the installed ONNX Runtime
        runs every emitted op at (`max_supported_opset()` and down).
    path: also write the model there (see `save_onnx`); the check then reads the file.
    external_data: with `path`, True writes weights to `<file>.data`, False never, None
        when they exceed `AUTO_EXTERNAL_DATA_BYTES`. Without `path` it only matters for
        the check: a model that large is checked from a temporary file.
    check: run `onnx.checker.check_model(..., full_check=True)`.
    value_info: record the types of intermediate values too (so that symbolic dims only
        the source model knew survive a round trip).
    by_reference: a dict to fill with the large constants left out of the proto (module
        docstring); the check is skipped (it needs the data: run the model instead).
    """
    import onnx
    from onnx import helper

    graph.verify()
    _check_lowerable(graph)
    if opset is None:
        lowered = _choose_and_lower(graph)
    else:
        newest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= opset <= newest:
            raise RequantError(f"opset {opset} is outside what requant writes ({MIN_OPSET}..{newest})")
        lowered = _lower(graph, opset)
    ctx = lowered.ctx

    # a constant a lowering folded into an attribute (Reduce*'s axes below opset 18) is
    # read by no ONNX node but named by the provenance record that restores the node
    used = {i for n in ctx.nodes for i in n.input if i} | {v.name for v in graph.outputs} | lowered.recorded_inputs
    initializers = [_with_meta(_initializer(v, by_reference), v) for v in graph.constants if v.name in used]
    initializers += [t for t in ctx.initializers if t.name in used]
    inputs = [_with_meta(make_value_info(v.name, v.type), v) for v in graph.inputs]
    outputs = [_with_meta(make_value_info(v.name, v.type), v) for v in graph.outputs]
    infos = []
    io = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    for node in graph:
        for o in node.outputs:
            # a value's meta rides on its value info, so values with meta get one
            if o.name not in io and ((value_info and o.type.shape is not None) or o.meta):
                infos.append(_with_meta(make_value_info(o.name, o.type), o))
    onnx_graph = helper.make_graph(ctx.nodes, graph.name, inputs, outputs, initializer=initializers, value_info=infos)
    opsets = dict(ctx.domains)
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        producer_name=producer,
        ir_version=_ir_version(opsets, graph),
    )
    set_metadata(model, META_KEY, encode_meta(graph.meta))
    logger.debug("exported graph '%s' at opset %d: %d ONNX nodes", graph.name, lowered.opset, len(ctx.nodes))
    _fill_unknown_ranks(model, graph)

    if check and by_reference is None:
        try:
            _check(model, graph.name, path, external_data)
        except RequantError as exc:
            if not infos:
                raise
            # requant's and ONNX's shape inference disagree on an intermediate value:
            # the model is valid without the recorded intermediate types
            del model.graph.value_info[:]
            _check(model, graph.name, path, external_data)
            logger.warning("graph '%s': dropped intermediate value_info that ONNX's checker rejects: %s",
                           graph.name, exc)
    elif path is not None:
        save_onnx(model, path, external_data=True if by_reference else external_data, arrays=by_reference)
    return model


def _initializer(v: Any, by_reference: dict[str, np.ndarray] | None) -> Any:
    """The TensorProto of constant `v`: its data inline, or by reference (module docstring)."""
    arr = np.asarray(v.const)
    if by_reference is None or arr.nbytes < BY_REFERENCE_MIN_BYTES or arr.dtype not in _BY_REFERENCE_DTYPES \
            or arr.dtype != v.dtype.np:
        return tensor_from_array(v.const, v.dtype, v.name)
    from onnx import TensorProto

    proto = TensorProto()
    proto.name = v.name
    proto.data_type = dtype_to_onnx(v.dtype)
    proto.dims.extend(arr.shape)
    proto.data_location = TensorProto.EXTERNAL
    entry = proto.external_data.add()
    entry.key, entry.value = "location", BY_REFERENCE
    by_reference[v.name] = arr
    return proto


def _with_meta(proto: Any, value: Any) -> Any:
    if value.meta:
        set_metadata(proto, META_KEY, encode_meta(value.meta))
    return proto


def _check(model: Any, name: str, path: str | os.PathLike | None, external_data: bool | None) -> None:
    """Save when a path is given, then run the full check on the proto or the file."""
    if path is not None:
        save_onnx(model, path, external_data=external_data)
        _check_file(Path(path))
    elif initializer_bytes(model) > AUTO_EXTERNAL_DATA_BYTES:
        # check_model(proto) would serialize more than protobuf can hold
        with tempfile.TemporaryDirectory(prefix="requant_check_") as tmp:
            file = Path(tmp) / "model.onnx"
            save_onnx(model, file, external_data=True)
            _check_file(file)
    else:
        _check_proto(model, name)


def _fill_unknown_ranks(model: Any, graph: Graph) -> None:
    """ONNX requires a shape (a rank at least) on graph inputs and outputs. Outputs whose
    rank requant could not infer get it from ONNX's shape inference; what stays unknown
    is an error naming the values."""
    unknown_out = [i for i, v in enumerate(graph.outputs) if v.type.shape is None]
    if unknown_out and initializer_bytes(model) <= AUTO_EXTERNAL_DATA_BYTES:
        import onnx.shape_inference

        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception as exc:  # shape inference is a best effort here
            logger.debug("ONNX shape inference failed: %s", exc)
        else:
            found = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
            for i in unknown_out:
                vi = found.get(model.graph.output[i].name)
                if vi is not None and vi.type.tensor_type.HasField("shape"):
                    model.graph.output[i].type.tensor_type.shape.CopyFrom(vi.type.tensor_type.shape)
    missing = [f"input %{vi.name}" for vi in model.graph.input if not vi.type.tensor_type.HasField("shape")]
    missing += [f"output %{vi.name}" for vi in model.graph.output if not vi.type.tensor_type.HasField("shape")]
    if missing:
        raise RequantError(
            f"graph '{graph.name}': ONNX needs the rank of every graph input and output, unknown for "
            f"{', '.join(missing)}; give those values a shape (dims may be symbols or unknown)"
        )


def _check_proto(model: Any, name: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise RequantError(f"exported ONNX model of graph '{name}' does not pass onnx.checker: {exc}") from exc


def _check_file(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise RequantError(f"exported ONNX model {path} does not pass onnx.checker: {exc}") from exc


# ----------------------------------------------------------------------------- saving


def save_onnx(
    model_or_graph: Any,
    path: str | os.PathLike,
    external_data: bool | None = None,
    *,
    size_threshold: int = EXTERNAL_SIZE_THRESHOLD,
    opset: int | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a ModelProto (or a Graph, exported first) to `path`.

    external_data: True puts every initializer of at least `size_threshold` bytes into one
    file `<path name>.data` next to the model (relative location); False keeps all in
    the .onnx file (an error above protobuf's 2 GB limit); None decides by size
    (`AUTO_EXTERNAL_DATA_BYTES`). The given model is neither copied nor modified.
    arrays: the data of a model exported by reference (`to_onnx(..., by_reference=)`),
    written into the external-data file (which such a model always uses).
    """
    import onnx

    path = Path(path)
    if isinstance(model_or_graph, Graph):
        model = to_onnx(model_or_graph, opset=opset, external_data=external_data, check=False)
    else:
        model = model_or_graph
    size = initializer_bytes(model) + sum(int(a.nbytes) for a in (arrays or {}).values())
    if external_data is None:
        external_data = size > AUTO_EXTERNAL_DATA_BYTES or bool(arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    if arrays and not external_data:
        raise RequantError(f"cannot save {path} without external data: the model was exported by reference "
                           f"(its weights are arrays outside the proto); use external_data=True (or None)")
    if not external_data:
        if size > AUTO_EXTERNAL_DATA_BYTES:
            raise RequantError(
                f"cannot save {path} without external data: {size} bytes of weights exceed protobuf's "
                f"2 GB limit; use external_data=True (or None)"
            )
        onnx.save_model(model, str(path))
        return path
    _save_with_external_data(model, path, size_threshold, arrays or {})
    return path


def _copy_fields(src: Any, dst: Any, skip: set[str]) -> None:
    """Copy a protobuf message's set fields except `skip` (no deep copy of the skipped)."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        target = getattr(dst, field.name)
        if _is_repeated(field):
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _is_repeated(field: Any) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 5; older ones only have label
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


_DATA_FIELDS = {"raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"}


def _by_reference(tensor: Any) -> bool:
    return any(e.key == "location" and e.value == BY_REFERENCE for e in tensor.external_data)


def with_arrays_inline(model: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """A copy of a model exported by reference with its arrays written into its
    initializers (a model that fits in one protobuf, for callers that want it whole)."""
    import onnx
    from onnx import TensorProto

    whole = onnx.ModelProto()
    _copy_fields(model, whole, {"graph"})
    _copy_fields(model.graph, whole.graph, {"initializer"})
    for tensor in model.graph.initializer:
        out = whole.graph.initializer.add()
        if not _by_reference(tensor):
            out.CopyFrom(tensor)
            continue
        _copy_fields(tensor, out, _DATA_FIELDS | {"external_data", "data_location"})
        out.data_location = TensorProto.DEFAULT
        out.raw_data = np.ascontiguousarray(arrays[tensor.name]).tobytes()
    return whole


def _save_with_external_data(model: Any, path: Path, size_threshold: int,
                             arrays: Mapping[str, np.ndarray]) -> None:
    """A weightless skeleton of `model` goes to `path`, the bytes to `<name>.data` (those
    of tensors exported by reference from `arrays`, without copying them)."""
    import onnx
    from onnx import TensorProto

    location = f"{path.name}.data"
    data_path = path.parent / location
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, {"graph"})
    _copy_fields(model.graph, skeleton.graph, {"initializer"})
    offset = 0
    with open(data_path, "wb") as fh:
        for tensor in model.graph.initializer:
            out = skeleton.graph.initializer.add()
            # typed fields (float_data, ...) are only used by small tensors: keep them inline
            raw = tensor.raw_data if tensor.raw_data else None
            if _by_reference(tensor):
                if tensor.name not in arrays:
                    raise RequantError(f"cannot save {path}: initializer '{tensor.name}' was exported by reference "
                                       f"and its array was not given")
                raw = memoryview(np.ascontiguousarray(arrays[tensor.name])).cast("B")
            if raw is None or len(raw) < size_threshold:
                out.CopyFrom(tensor)
                continue
            _copy_fields(tensor, out, _DATA_FIELDS | {"external_data", "data_location"})
            pad = (-offset) % 4096  # page-aligned, so runtimes can mmap each tensor
            if pad:
                fh.write(b"\0" * pad)
                offset += pad
            fh.write(raw)
            out.data_location = TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = out.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
    onnx.save_model(skeleton, str(path))
    logger.debug("wrote %s with %d bytes of external data in %s", path, offset, location)
