"""ONNX -> requant IR: `from_onnx(path_or_proto)` reads a model file (or a ModelProto or
its bytes) and returns a verified `Graph`.

What it owns:
- reading the file with clear errors (missing, truncated, not ONNX; structurally
  invalid models, as onnx.checker and ONNX Runtime judge them, are refused by
  `onnx_validation.check_onnx_structure`), loading external
  data only from inside the model's directory (absolute locations, `..` escapes and
  symlinks resolving outside are refused, naming the tensor and the location);
- opsets 13 and newer of the default domain (older models go through ONNX's version
  converter first); attribute forms that later opsets turned into inputs (`axes` of
  Squeeze/Unsqueeze/Reduce*, `split` of Split, ...) become constant inputs, the
  registry's modern form; GroupNormalization-18's per-group scale/bias becomes opset 21's
  per-channel form;
- initializers and Constant nodes (every value kind) become graph constants; graph
  inputs that are also initializers are constants; model-local functions are inlined;
- dtypes, symbolic dims (`dim_param` -> str, missing -> None), node names and value
  names are kept as ONNX has them;
- ONNX ops requant has under its own name: Attention (4-D, no KV cache) becomes
  ScaledDotProductAttention;
- models quantized in ONNX Runtime's operator format: QLinearConv, QLinearMatMul,
  ConvInteger and ORT's com.microsoft QLinear* / QGemm become requant's Q/DQ form
  (`onnx_qlinear` says how and what changes);
- models written by requant's ONNX backend: a requant node the backend had to lower to
  several ONNX nodes (provenance metadata `requant.group` / `requant.node`) is restored
  as that one node, unless the group was edited since (then its nodes are read as they
  are);
- every op requant does not know is collected first and reported in one
  `UnsupportedOpError`, with its domain, count and the nodes where it appears.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from requant.backends.onnx.onnx_types import (
    META_KEY,
    PROVENANCE_GROUP_KEY,
    PROVENANCE_NODE_KEY,
    array_from_tensor,
    decode_attrs,
    decode_meta,
    get_metadata,
    dtype_from_onnx,
    value_info_type,
)
from requant.errors import RequantError, UnsupportedOpError
from requant.frontends import onnx_qlinear as qlinear
from requant.frontends.onnx_validation import check_onnx_structure
from requant.ir import dtypes, registry
from requant.ir.dtypes import DType
from requant.ir.graph import Graph, Value
from requant.ir.types import TensorType

__all__ = ["from_onnx", "load_onnx_model", "MIN_OPSET"]

logger = logging.getLogger(__name__)

MIN_OPSET = 13
"""Oldest default-domain opset read directly; older models are version-converted."""

_STANDARD_DOMAINS = ("", "ai.onnx")

# Attributes holding an ONNX element-type code, which requant spells as a dtype name.
_DTYPE_ATTRS = {
    ("Cast", "to"),
    ("EyeLike", "dtype"),
    ("RandomNormal", "dtype"),
    ("RandomUniform", "dtype"),
    ("RandomNormalLike", "dtype"),
    ("RandomUniformLike", "dtype"),
    ("Multinomial", "dtype"),
    ("Bernoulli", "dtype"),
    ("QuantizeLinear", "output_dtype"),
    ("DequantizeLinear", "output_dtype"),
}


# ----------------------------------------------------------------------------- loading


def load_onnx_model(source: Any, *, base_dir: str | os.PathLike | None = None) -> tuple[Any, Path | None, str]:
    """Parse `source` (path, ModelProto or bytes) and load its external data safely.
    Returns (model, directory external data is read from, label for messages)."""
    import onnx

    if isinstance(source, onnx.ModelProto):
        model = source
        label = "the given ModelProto"
        base = Path(base_dir) if base_dir is not None else None
        if _has_external_data(model):
            # the caller's proto must stay as it was: load the data into a copy
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            model = copy
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = "the given bytes"
        model = _parse_model(bytes(source), label)
        base = Path(base_dir) if base_dir is not None else None
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise RequantError(f"ONNX model file not found: {path}")
        if not path.is_file():
            raise RequantError(f"not an ONNX model: {path} is not a file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RequantError(f"cannot read ONNX model {path}: {exc}") from exc
        model = _parse_model(data, label)
        base = Path(base_dir) if base_dir is not None else path.resolve().parent
    else:
        raise RequantError(
            f"from_onnx takes a path, an onnx.ModelProto or bytes, got {type(source).__name__}"
        )
    _load_external_data(model, base, label)
    return model, base, label


def _parse_model(data: bytes, label: str) -> Any:
    import onnx

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # DecodeError and friends: the bytes are not a ModelProto
        raise RequantError(
            f"not an ONNX model: {label} could not be parsed ({type(exc).__name__}: {exc}); "
            f"is the file truncated or of another format?"
        ) from exc
    # Protobuf happily parses many non-ONNX byte strings into a near-empty message.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        missing = [
            what
            for what, ok in (
                ("ir_version", model.ir_version > 0),
                ("graph", model.HasField("graph")),
                ("opset_import", bool(model.opset_import)),
            )
            if not ok
        ]
        raise RequantError(
            f"not an ONNX model: {label} could not be parsed as one (no {', '.join(missing)}); "
            f"is the file truncated or of another format?"
        )
    return model


def _all_tensors(model: Any):
    """Every TensorProto of the model that may hold data: initializers, tensor
    attributes (in subgraphs and functions too)."""
    yield from _graph_tensors(model.graph)
    for fn in model.functions:
        for node in fn.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: Any):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: Any):
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def _has_external_data(model: Any) -> bool:
    return any(_is_external(t) for t in _all_tensors(model))


def _is_external(tensor: Any) -> bool:
    from onnx import TensorProto

    return tensor.data_location == TensorProto.EXTERNAL


def _load_external_data(model: Any, base: Path | None, label: str) -> None:
    """Read every external tensor's bytes into the proto, refusing locations outside
    `base` (absolute paths, `..` escapes, symlinks resolving outside)."""
    from onnx import TensorProto

    handles: dict[Path, Any] = {}
    try:
        for tensor in _all_tensors(model):
            if not _is_external(tensor):
                continue
            info = {e.key: e.value for e in tensor.external_data}
            location = info.get("location", "")
            name = tensor.name or "<unnamed>"
            if base is None:
                raise RequantError(
                    f"tensor '{name}' of {label} keeps its data in external file '{location}': "
                    f"pass the model's path, or base_dir= with the directory holding that file"
                )
            path = _safe_external_path(base, location, name, label)
            offset = int(info.get("offset", 0) or 0)
            length = info.get("length")
            fh = handles.get(path)
            if fh is None:
                try:
                    fh = handles[path] = open(path, "rb")  # noqa: SIM115 (closed in finally)
                except OSError as exc:
                    raise RequantError(
                        f"tensor '{name}' of {label}: cannot open external data file '{location}' ({path}): {exc}"
                    ) from exc
            size = os.fstat(fh.fileno()).st_size
            n = size - offset if length is None else int(length)
            if offset < 0 or n < 0 or offset + n > size:
                raise RequantError(
                    f"tensor '{name}' of {label}: external data '{location}' is {size} bytes, "
                    f"offset {offset} + length {n} reads past its end (truncated file?)"
                )
            fh.seek(offset)
            tensor.raw_data = fh.read(n)
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
    finally:
        for fh in handles.values():
            fh.close()


def _safe_external_path(base: Path, location: str, tensor: str, label: str) -> Path:
    def refuse(why: str) -> RequantError:
        return RequantError(
            f"tensor '{tensor}' of {label}: external data location '{location}' is refused: {why}; "
            f"external data must be a relative path inside the model's directory"
        )

    if not location:
        raise refuse("it is empty")
    if location.startswith(("/", "\\")) or os.path.isabs(location) or (len(location) > 1 and location[1] == ":"):
        raise refuse("it is an absolute path")
    norm = os.path.normpath(location.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or os.path.isabs(norm):
        raise refuse("it leaves the model's directory")
    root = base.resolve()
    target = (root / norm).resolve()
    if target != root and root not in target.parents:
        raise refuse(f"it resolves to {target}, outside {root} (a symlink?)")
    if not target.is_file():
        raise RequantError(
            f"tensor '{tensor}' of {label}: external data file '{location}' not found (looked for {target})"
        )
    return target


# ----------------------------------------------------------------------------- opsets


def _default_opset(model: Any) -> int | None:
    for imp in model.opset_import:
        if imp.domain in _STANDARD_DOMAINS:
            return int(imp.version)
    return None


def _upgrade_opset(model: Any, label: str) -> Any:
    version = _default_opset(model)
    if version is None or version >= MIN_OPSET:
        return model
    import onnx.version_converter

    logger.info("%s uses opset %d; converting it to opset %d", label, version, MIN_OPSET)
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise RequantError(
            f"{label} uses opset {version}; requant reads opset {MIN_OPSET} and newer and ONNX's "
            f"version converter failed on it: {exc}. Re-export the model with opset >= {MIN_OPSET}"
        ) from exc


# ----------------------------------------------------------------------------- attributes


def _attr_value(attr: Any, node_label: str) -> Any:
    from onnx import AttributeProto

    kind = attr.type
    if kind == AttributeProto.FLOAT:
        return _short_float(attr.f)
    if kind == AttributeProto.INT:
        return int(attr.i)
    if kind == AttributeProto.STRING:
        return attr.s.decode("utf-8")
    if kind == AttributeProto.TENSOR:
        arr, dt = array_from_tensor(attr.t, f"{node_label} attribute {attr.name}")
        return _readonly(arr)
    if kind == AttributeProto.FLOATS:
        return [_short_float(x) for x in attr.floats]
    if kind == AttributeProto.INTS:
        return [int(x) for x in attr.ints]
    if kind == AttributeProto.STRINGS:
        return [s.decode("utf-8") for s in attr.strings]
    if kind == AttributeProto.TENSORS:
        return [_readonly(array_from_tensor(t, f"{node_label} attribute {attr.name}")[0]) for t in attr.tensors]
    kind_name = AttributeProto.AttributeType.Name(kind)
    raise RequantError(f"{node_label}: attribute {attr.name} of kind {kind_name} is not supported")


def _short_float(x: float) -> float:
    """ONNX keeps float attributes in float32: read 1e-5 back as 1e-5, the shortest
    decimal with the same float32 bits, not as 9.99999974737875e-06."""
    return float(str(np.float32(x)))


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    arr.flags.writeable = False
    return arr


def _onnx_attr_default(op_type: str, domain: str, opset: int | None, name: str) -> tuple[bool, Any]:
    """(found, default) of attribute `name` in ONNX's own schema for this op version."""
    import onnx.defs
    from onnx import helper

    try:
        schema = onnx.defs.get_schema(op_type, max_inclusive_version=opset or onnx.defs.onnx_opset_version(),
                                      domain="" if domain in _STANDARD_DOMAINS else domain)
    except Exception:
        return False, None
    spec = schema.attributes.get(name)
    if spec is None or spec.default_value.type == 0:  # UNDEFINED: a required attribute
        return False, None
    return True, helper.get_attribute_value(spec.default_value)


# ----------------------------------------------------------------------------- conversion


class _Converter:
    def __init__(self, model: Any, label: str, name: str | None) -> None:
        self.model = model
        self.label = label
        self.opset = _default_opset(model)
        self.graph = Graph(name or model.graph.name or "main")
        self.values: dict[str, Value] = {}
        self.declared: dict[str, TensorType] = {}
        self.value_meta: dict[str, dict[str, Any]] = {}
        og = model.graph
        # names requant must not invent: every value name the model uses
        self.reserved: set[str] = {v.name for v in og.input} | {t.name for t in og.initializer}
        self.reserved |= {t.values.name for t in og.sparse_initializer}
        self.reserved |= {o for n in og.node for o in n.output}
        self.generated: set[str] = set()

    def _new_name(self, base: str) -> str:
        """A value name for something the ONNX model leaves unnamed or implicit."""
        name, i = base, 0
        while name in self.reserved or name in self.generated:
            i += 1
            name = f"{base}_{i}"
        self.generated.add(name)
        return name

    # -- public entry -------------------------------------------------------------------
    def convert(self) -> Graph:
        og = self.model.graph
        self.restored, self.absorbed, absorbed_inits = _restorable_groups(og)
        self._check_supported(og)
        for vi in list(og.value_info) + list(og.output):
            try:
                t = value_info_type(vi)
            except RequantError:
                t = None
            if t is not None:
                self.declared[vi.name] = t
        for proto in list(og.input) + list(og.output) + list(og.value_info) + list(og.initializer):
            text = get_metadata(proto, META_KEY)
            if text:
                self.value_meta[proto.name] = _read_meta(text, proto.name)
        graph_meta = get_metadata(self.model, META_KEY)
        if graph_meta:
            self.graph.meta.update(_read_meta(graph_meta, "the graph"))
        for sparse in og.sparse_initializer:
            arr, dt = _sparse_to_dense(sparse, f"sparse initializer {sparse.values.name}")
            self._add_constant(sparse.values.name, arr, dt)
        for init in og.initializer:
            if init.name in absorbed_inits:
                continue  # a helper constant of a lowering that is restored as one node
            arr, dt = array_from_tensor(init, f"initializer {init.name}")
            self._add_constant(init.name, arr, dt)
        for vi in og.input:
            if vi.name in self.values:
                continue  # an input with a default value held by an initializer: a constant
            t = value_info_type(vi)
            if t is None:
                raise RequantError(f"{self.label}: graph input '{vi.name}' has no tensor type")
            v = self.values[vi.name] = self.graph.add_input(vi.name, t)
            v.meta.update(self.value_meta.get(vi.name, {}))
        for i, node in enumerate(og.node):
            if i in self.restored:
                self._convert_restored(self.restored[i])
            elif i not in self.absorbed:
                self._convert_node(node)
        for vi in og.output:
            v = self.values.get(vi.name)
            if v is None:
                raise RequantError(f"{self.label}: graph output '{vi.name}' is not produced by any node")
            self.graph.outputs.append(v)
        self.graph.verify()
        return self.graph

    # -- checks ---------------------------------------------------------------------------
    def _check_supported(self, og: Any) -> None:
        """Every node's op must be known: collect them all, then raise once."""
        missing: OrderedDict[tuple[str, str], list[str]] = OrderedDict()
        reasons: dict[tuple[str, str], str] = {}
        for i, node in enumerate(og.node):
            if i in self.absorbed:
                continue
            if self._schema_for(node) is not None or self._is_constant_node(node):
                continue
            if qlinear.expands(node.op_type, node.domain, self.model.producer_name):
                continue
            alias = _ALIASES.get(node.op_type) if node.domain in _STANDARD_DOMAINS else None
            if alias is not None and not registry.is_registered(alias.op):
                alias = None
            why = None if alias is None else alias.refusal(node, self.opset)
            if alias is not None and why is None:
                continue
            key = (node.domain or "", node.op_type)
            missing.setdefault(key, []).append(node.name or f"#{i} -> {', '.join(node.output)}")
            if why:
                reasons.setdefault(key, why)
        if not missing:
            return
        lines = []
        for (domain, op), where in missing.items():
            shown = ", ".join(f"'{w}'" for w in where[:10]) + (f", ... ({len(where) - 10} more)" if len(where) > 10 else "")
            why = f" ({reasons[(domain, op)]})" if (domain, op) in reasons else ""
            lines.append(f"  {op} (domain '{domain or 'ai.onnx'}'): {len(where)} node(s): {shown}{why}")
        total = sum(len(w) for w in missing.values())
        raise UnsupportedOpError(
            f"{self.label}: {len(missing)} unsupported op type(s) in {total} node(s):\n" + "\n".join(lines)
            + "\nrequant's registry lists the ops it knows (requant.ir.all_schemas())"
        )

    @staticmethod
    def _is_constant_node(node: Any) -> bool:
        return node.op_type == "Constant" and node.domain in _STANDARD_DOMAINS

    @staticmethod
    def _schema_for(node: Any) -> registry.OpSchema | None:
        domain = "" if node.domain in _STANDARD_DOMAINS else node.domain
        key = registry.op_id(domain, node.op_type)
        if not registry.is_registered(key):
            return None
        schema = registry.get_schema(key)
        return schema if schema.domain == domain else None

    # -- values -------------------------------------------------------------------------------
    def _add_constant(self, name: str, arr: np.ndarray, dt: DType) -> Value:
        if name in self.values:
            raise RequantError(f"{self.label}: value name '{name}' is defined twice")
        v = self.graph.add_constant(arr, name=name, dtype=dt)
        self.values[name] = v
        v.meta.update(self.value_meta.get(name, {}))
        return v

    def _input(self, name: str, node_label: str) -> Value | None:
        if name == "":
            return None
        v = self.values.get(name)
        if v is None:
            raise RequantError(
                f"{self.label}: node {node_label} reads '{name}', which no earlier node, input or "
                f"initializer defines (the graph is not topologically sorted or is malformed)"
            )
        return v

    # -- nodes --------------------------------------------------------------------------------
    def _convert_node(self, node: Any) -> None:
        label = f"'{node.name}' ({node.op_type})" if node.name else f"{node.op_type} -> {', '.join(node.output)}"
        if self._is_constant_node(node):
            self._convert_constant_node(node, label)
            return
        if qlinear.expands(node.op_type, node.domain, self.model.producer_name):
            self._convert_qlinear(node, label)
            return
        schema = self._schema_for(node)
        if schema is None:  # an ONNX op requant knows under another name (checked up front)
            self._convert_alias(node, _ALIASES[node.op_type], label)
            return
        inputs = [self._input(n, label) for n in node.input]
        attrs: dict[str, Any] = {}
        for attr in node.attribute:
            self._convert_attr(node, schema, attr, attrs, inputs, label)
        self._fix_op_version(node, schema, attrs, inputs, label)
        while inputs and inputs[-1] is None:
            inputs.pop()
        outputs = list(node.output)
        while outputs and outputs[-1] == "":
            outputs.pop()
        out_names = [self._claim_output(n, node, i) for i, n in enumerate(outputs)]
        try:
            created = self.graph.create_node(
                schema.id, inputs, attrs, num_outputs=len(out_names), output_names=out_names,
                name=node.name or None,
            )
        except RequantError as exc:
            raise type(exc)(f"{self.label}: node {label}: {exc}") from exc
        meta = get_metadata(node, META_KEY)
        if meta:
            created.meta.update(_read_meta(meta, label))
        for onnx_name, out in zip(outputs, created.outputs):
            if onnx_name:
                self.values[onnx_name] = out
            self._refine_type(out, onnx_name)

    def _convert_qlinear(self, node: Any, label: str) -> None:
        """An ONNX Runtime quantized operator, read in Q/DQ form (onnx_qlinear)."""
        inputs = [self._input(n, label) for n in node.input]
        attrs = {a.name: _attr_value(a, label) for a in node.attribute}
        out = self._claim_output(node.output[0], node, 0)
        try:
            created = qlinear.expand(self.graph, node.op_type, node.domain, inputs, attrs, out, self._new_name)
        except RequantError as exc:
            raise type(exc)(f"{self.label}: node {label}: {exc}") from exc
        self.values[node.output[0]] = created
        self._refine_type(created, node.output[0])

    def _convert_alias(self, node: Any, alias: _Alias, label: str) -> None:
        inputs = [self._input(n, label) for n in node.input[: alias.max_inputs]]
        while inputs and inputs[-1] is None:
            inputs.pop()
        attrs = alias.attrs({a.name: _attr_value(a, label) for a in node.attribute})
        try:
            created = self.graph.create_node(alias.op, inputs, attrs, output_names=[node.output[0]],
                                             name=node.name or None)
        except RequantError as exc:
            raise type(exc)(f"{self.label}: node {label} (as {alias.op}): {exc}") from exc
        self.values[node.output[0]] = created.outputs[0]
        self._refine_type(created.outputs[0], node.output[0])

    def _convert_restored(self, spec: dict[str, Any]) -> None:
        """A requant node recorded by the ONNX backend, restored as it was."""
        label = f"'{spec['name']}' ({spec['op']})" if spec.get("name") else spec["op"]
        inputs = [self._input(n, label) for n in spec["inputs"]]
        while inputs and inputs[-1] is None:
            inputs.pop()
        outputs = list(spec["outputs"])
        try:
            created = self.graph.create_node(
                spec["op"], inputs, decode_attrs(spec["attrs"]), num_outputs=len(outputs),
                output_names=[self._claim_output(n, None, i) for i, n in enumerate(outputs)],
                name=spec.get("name") or None,
            )
        except RequantError as exc:
            raise type(exc)(f"{self.label}: restoring node {label}: {exc}") from exc
        if spec.get("meta"):
            created.meta.update(_read_meta(spec["meta"], label))
        for name, out in zip(outputs, created.outputs):
            self.values[name] = out
            self._refine_type(out, name)

    def _claim_output(self, name: str, node: Any | None, i: int) -> str:
        if name == "":
            # an omitted output before a used one still needs a value in requant
            base = "unused" if node is None else (node.name or node.op_type)
            return self._new_name(f"{base}_unused_{i}")
        if name in self.values:
            raise RequantError(f"{self.label}: value name '{name}' is defined twice")
        return name

    def _refine_type(self, out: Value, onnx_name: str) -> None:
        """Fill dims requant's inference left unknown with what the model declares (and
        attach the value's recorded meta)."""
        out.meta.update(self.value_meta.get(onnx_name, {}))
        declared = self.declared.get(onnx_name)
        if declared is None:
            return
        inferred = out.type
        if declared.dtype != inferred.dtype:
            logger.warning(
                "%s: value '%s' is declared %s but requant infers %s; keeping the inferred type",
                self.label, onnx_name, declared, inferred,
            )
            return
        if declared.shape is None:
            return
        if inferred.shape is None:
            out.type = declared
            return
        if len(declared.shape) != len(inferred.shape):
            logger.warning("%s: value '%s' is declared %s, inferred %s", self.label, onnx_name, declared, inferred)
            return
        merged = tuple(d if i is None else i for i, d in zip(inferred.shape, declared.shape))
        if merged != inferred.shape:
            out.type = TensorType(merged, inferred.dtype)

    def _convert_constant_node(self, node: Any, label: str) -> None:
        if len(node.attribute) != 1 or len(node.output) != 1:
            raise RequantError(f"{self.label}: Constant node {label} must have one attribute and one output")
        attr = node.attribute[0]
        kind = attr.name
        if kind == "value":
            arr, dt = array_from_tensor(attr.t, f"Constant {label}")
        elif kind == "value_float":
            arr, dt = np.array(attr.f, dtype=np.float32), dtypes.float32
        elif kind == "value_floats":
            arr, dt = np.array(list(attr.floats), dtype=np.float32), dtypes.float32
        elif kind == "value_int":
            arr, dt = np.array(attr.i, dtype=np.int64), dtypes.int64
        elif kind == "value_ints":
            arr, dt = np.array(list(attr.ints), dtype=np.int64), dtypes.int64
        elif kind == "sparse_value":
            arr, dt = _sparse_to_dense(attr.sparse_tensor, f"Constant {label}")
        else:
            raise RequantError(
                f"{self.label}: Constant node {label} holds '{kind}', which has no requant dtype (strings?)"
            )
        self._add_constant(node.output[0], arr, dt)

    def _convert_attr(self, node: Any, schema: registry.OpSchema, attr: Any, attrs: dict[str, Any],
                      inputs: list[Value | None], label: str) -> None:
        name = attr.name
        if attr.ref_attr_name:
            raise RequantError(f"{self.label}: node {label} refers to function attribute '{attr.ref_attr_name}'")
        value = _attr_value(attr, label)
        if name in schema.attrs:
            default = schema.attrs[name]
            if isinstance(value, float) and isinstance(default, float) and np.float32(value) == np.float32(default):
                value = default  # the registry's exact default, not its float32 rounding
            if (node.op_type, name) in _DTYPE_ATTRS and isinstance(value, int):
                default = schema.attrs[name]
                if not isinstance(default, int) or isinstance(default, bool):
                    value = None if value == 0 and default is None else dtype_from_onnx(value, f"{label} {name}").short
            attrs[name] = value
            return
        # An attribute that the modern op takes as an input (axes, split, ...).
        in_names = [p.name for p in schema.inputs]
        if name in in_names:
            idx = in_names.index(name)
            while len(inputs) <= idx:
                inputs.append(None)
            if inputs[idx] is not None:
                raise RequantError(f"{self.label}: node {label} gives {name} both as attribute and input")
            arr = np.asarray(value, dtype=np.int64) if not isinstance(value, np.ndarray) else value
            cname = self._new_name(f"{node.name or node.op_type}_{name}")
            inputs[idx] = self.graph.add_constant(arr, name=cname)
            return
        found, default = _onnx_attr_default(node.op_type, node.domain, self.opset, name)
        if found and _same_attr(value, default):
            return  # the ONNX default, which requant's semantics already are
        raise RequantError(
            f"{self.label}: node {label}: attribute {name}={value!r} is not supported by requant's "
            f"{node.op_type} (it knows: {', '.join(sorted(schema.attrs)) or 'none'})"
        )

    def _fix_op_version(self, node: Any, schema: registry.OpSchema, attrs: dict[str, Any],
                        inputs: list[Value | None], label: str) -> None:
        """Older op versions whose meaning differs from the registry's modern form."""
        if node.op_type == "GroupNormalization" and self.opset is not None and self.opset < 21:
            self._group_norm_per_channel(attrs, inputs, label)

    def _group_norm_per_channel(self, attrs: dict[str, Any], inputs: list[Value | None], label: str) -> None:
        # opset 18-20: scale and bias have one entry per group; 21: one per channel
        x = inputs[0]
        groups = int(attrs.get("num_groups", 0))
        channels = None if x is None or x.type.shape is None else x.type.shape[1]
        for i in (1, 2):
            v = inputs[i] if i < len(inputs) else None
            if v is None:
                continue
            if v.const is None or not isinstance(channels, int) or groups <= 0:
                raise RequantError(
                    f"{self.label}: GroupNormalization {label} (opset {self.opset}) has per-group "
                    f"scale/bias; converting them needs constant parameters and a static channel count"
                )
            per_channel = np.repeat(np.asarray(v.const), channels // groups)
            name = self._new_name(f"{v.name}_per_channel")
            inputs[i] = self.graph.add_constant(per_channel, name=name, dtype=v.type.dtype)


@dataclass(frozen=True)
class _Alias:
    """An ONNX op that requant knows under its own name, in the cases `refusal` allows."""

    op: str
    max_inputs: int
    refusal: Callable[[Any, int | None], str | None]
    attrs: Callable[[dict[str, Any]], dict[str, Any]]


def _attention_refusal(node: Any, opset: int | None) -> str | None:
    """ONNX Attention maps onto ScaledDotProductAttention without a KV cache, softcap,
    sliding window or extra outputs, and with 4-D (head-split) inputs."""
    if len(node.input) > 4 and any(node.input[4:]):
        return "past_key/past_value/nonpad_kv_seqlen (KV cache) are not supported"
    if len(node.output) > 1 and any(node.output[1:]):
        return "only the Y output is supported"
    attrs = {a.name: a for a in node.attribute}
    if "q_num_heads" in attrs or "kv_num_heads" in attrs:
        return "3-D inputs (q_num_heads/kv_num_heads) are not supported; split heads first"
    for name, neutral in (("qk_matmul_output_mode", 0), ("softcap", 0.0), ("left_window_size", -1),
                          ("right_window_size", -1)):
        if name in attrs:
            from onnx import helper

            if helper.get_attribute_value(attrs[name]) != neutral:
                return f"{name} is not supported"
    return None


def _attention_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    # softmax_precision only asks for at least the input's precision: requant's kernel
    # computes in float32 or better anyway
    out = {}
    if "scale" in attrs:
        out["scale"] = float(attrs["scale"])
    if "is_causal" in attrs:
        out["is_causal"] = int(attrs["is_causal"])
    return out


_ALIASES: dict[str, _Alias] = {
    "Attention": _Alias("ScaledDotProductAttention", 4, _attention_refusal, _attention_attrs),
}


def _read_meta(text: str, where: str) -> dict[str, Any]:
    try:
        return decode_meta(text)
    except Exception as exc:  # recorded by someone else, or damaged: meta is optional
        logger.warning("ignoring unreadable requant meta of %s: %s", where, exc)
        return {}


def _restorable_groups(og: Any) -> tuple[dict[int, dict[str, Any]], set[int], set[str]]:
    """Groups of ONNX nodes that requant's backend made from one requant node (tagged
    with provenance metadata) and that are intact: consecutive, their helper values
    and helper initializers used only inside, the recorded outputs all produced.
    Returns {first node index: recorded node}, the indices of every grouped node, and
    the initializers only the groups read. Anything else is read node by node."""
    import json

    members: dict[str, list[int]] = {}
    for i, node in enumerate(og.node):
        gid = get_metadata(node, PROVENANCE_GROUP_KEY)
        if gid is not None:
            members.setdefault(gid, []).append(i)
    if not members:
        return {}, set(), set()
    readers: dict[str, set[int]] = {}
    for i, node in enumerate(og.node):
        for name in node.input:
            readers.setdefault(name, set()).add(i)
    graph_outputs = {o.name for o in og.output}
    initializers = {t.name for t in og.initializer}
    restored: dict[int, dict[str, Any]] = {}
    absorbed: set[int] = set()
    absorbed_inits: set[str] = set()
    for gid, idx in members.items():
        raw = get_metadata(og.node[idx[0]], PROVENANCE_NODE_KEY)
        try:
            spec = json.loads(raw) if raw else None
            ok = (
                spec is not None
                and idx == list(range(idx[0], idx[-1] + 1))
                and registry.is_registered(spec["op"])
            )
            if ok:  # recorded by another requant version? its op must still fit
                schema = registry.get_schema(spec["op"])
                schema.fill_attrs(decode_attrs(spec["attrs"]))
                schema.check_arity(len([n for n in spec["inputs"]]))
        except (ValueError, KeyError, TypeError, RequantError):
            ok = False
        if not ok:
            logger.debug("provenance group %s is not restorable; reading its nodes one by one", gid)
            continue
        inside = set(idx)
        produced = {o for i in idx for o in og.node[i].output if o}
        recorded_out = [o for o in spec["outputs"] if o]
        helpers = produced - set(recorded_out)
        external = {n for i in idx for n in og.node[i].input if n and n not in produced}
        helper_inits = external - set(spec["inputs"])
        intact = (
            set(recorded_out) <= produced
            and not any(readers.get(h, set()) - inside or h in graph_outputs for h in helpers)
            and all(h in initializers and not (readers.get(h, set()) - inside) and h not in graph_outputs
                    for h in helper_inits)
        )
        if not intact:
            logger.debug("provenance group %s was edited after export; reading its nodes one by one", gid)
            continue
        restored[idx[0]] = spec
        absorbed.update(idx)
        absorbed_inits |= helper_inits
    return restored, absorbed, absorbed_inits


def _same_attr(a: Any, b: Any) -> bool:
    if isinstance(a, bytes):
        a = a.decode()
    if isinstance(b, bytes):
        b = b.decode()
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _sparse_to_dense(sparse: Any, label: str) -> tuple[np.ndarray, DType]:
    values, dt = array_from_tensor(sparse.values, label)
    indices, _ = array_from_tensor(sparse.indices, label)
    dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    flat = dense.reshape(-1)
    idx = indices.astype(np.int64)
    if idx.ndim == 2:  # coordinates: (nnz, rank)
        idx = np.ravel_multi_index(tuple(idx.T), dense.shape)
    flat[idx.reshape(-1)] = values.reshape(-1)
    return dense, dt


# ----------------------------------------------------------------------------- entry point


def from_onnx(
    path_or_proto: Any,
    *,
    name: str | None = None,
    base_dir: str | os.PathLike | None = None,
    inline_functions: bool = True,
) -> Graph:
    """Read an ONNX model into a verified requant `Graph`.

    `path_or_proto`: a path to an .onnx file, an `onnx.ModelProto`, or its serialized
    bytes. External data is read relative to the model file's directory (or `base_dir`
    for protos and bytes). `name` names the graph (default: the ONNX graph's name).
    Raises `RequantError` on unreadable or unsafe input and `UnsupportedOpError`
    listing every op requant does not know.
    """
    model, _, label = load_onnx_model(path_or_proto, base_dir=base_dir)
    check_onnx_structure(model, label)  # what onnx.checker / ONNX Runtime refuse (onnx_validation.py)
    model = _upgrade_opset(model, label)
    if model.functions and inline_functions:
        import onnx.inliner

        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise RequantError(f"{label}: inlining its local functions failed: {exc}") from exc
    graph = _Converter(model, label, name).convert()
    logger.debug("read %s: %d nodes, ops %s", label, len(graph), graph.op_histogram())
    return graph
