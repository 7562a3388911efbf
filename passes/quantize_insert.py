"""The graph edits of the "quantize" pass: put a quantized copy of a value in front of
one input of one node, leaving every other reader of the value as it was.

- `QuantEditor.weight(node, index, scheme)`: a constant float weight W -> a new constant
  holding its codes (int8 / int4 / fp8 storage; round to nearest, or what
  `precomputed[(id(W), scheme)]` holds: GPTQ's), scale (and zero point when asymmetric)
  constants, and `DequantizeLinear(codes, scale[, zero_point]) {axis, block_size}`
  feeding the node; a simulated format's weight whose values `precomputed_values` holds
  (GPTQ on NVFP4 / MXFP4 grids) becomes that constant instead of a FakeQuantize. Codes
  are made once per (weight, scheme) and shared; each reader
  gets its own DequantizeLinear (the Q/DQ convention ONNX Runtime and `lower_quant`
  match on: a DequantizeLinear has one reader).
- `QuantEditor.activation(node, index, scheme, lo, hi)`: a float activation x ->
  `QuantizeLinear(x, scale, zero_point)` right after x is computed (one per x and
  scheme, shared by its readers) and one `DequantizeLinear` per reader, just before it.
- `QuantEditor.dynamic(node, index)`: x -> `DynamicQuantizeLinear(x)` (uint8, scale and
  zero point computed per call, shared) and a `DequantizeLinear` per reader.
- `QuantEditor.simulated(node, index, scheme, lo, hi)`: formats ONNX Runtime has no
  Q/DQ for (fp4_e2m1, FloatFormat, MX, NV, per-token integers) -> requant's
  `FakeQuantize(x[, scale])` with the scheme's op attributes; MX and per-token scales
  come from the data (per-token with its `clip` ratio), NV takes the float32 tensor
  scale as its input (from the range), the others a scale per tensor / channel / group.
Every value that holds codes or quantized values gets `meta["quant"] =
scheme.to_attrs()`; nodes get `meta["created_by"] = "quantize"`. Original constants
left without readers are removed by `drop_unused`.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from requant.ir import dtypes
from requant.ir.graph import Graph, Node, Value
from requant.ir.quant_formats import QuantScheme, choose_qparams, quantize, tensor_ranges
from requant.passes.fold_common import unused_name

__all__ = ["QuantEditor", "uses_qdq", "constant_bytes"]

logger = logging.getLogger(__name__)

_CREATED_BY = {"created_by": "quantize"}


def uses_qdq(scheme: QuantScheme) -> bool:
    """Whether a scheme is written as QuantizeLinear/DequantizeLinear (integers and
    fp8 at tensor/channel/group granularity) rather than FakeQuantize."""
    if scheme.is_block_format or scheme.granularity == "token":
        return False
    return scheme.dtype.is_integer or scheme.dtype in (dtypes.fp8_e4m3, dtypes.fp8_e5m2)


def constant_bytes(graph: Graph) -> int:
    """Bytes of the constant payloads at their dtypes' widths (int4 counts half a byte)."""
    bits = 0
    for v in graph.constants:
        bits += int(v.const.size) * v.dtype.bits
    return (bits + 7) // 8


class QuantEditor:
    """Inserts quantization nodes into one graph, caching what readers share."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._codes: dict[tuple[int, QuantScheme], tuple[Value, Value, Value | None]] = {}
        self._quantized: dict[tuple[int, QuantScheme | None], tuple[Value, Value, Value | None]] = {}
        self.replaced_constants: dict[int, Value] = {}
        # (id(weight), scheme) -> (codes, scale, zero point) chosen elsewhere (GPTQ)
        self.precomputed: dict[tuple[int, QuantScheme], tuple] = {}
        # (id(weight), scheme) -> the dequantized values of a simulated format chosen
        # elsewhere (GPTQ on NVFP4 grids): the reader takes them as a constant
        self.precomputed_values: dict[tuple[int, QuantScheme], np.ndarray] = {}

    # -- weights ----------------------------------------------------------------------------
    def weight(self, node: Node, index: int, scheme: QuantScheme) -> Value:
        """Quantize constant input `index` of `node` (codes shared per weight and scheme)."""
        w = node.inputs[index]
        assert w is not None and w.const is not None
        if not uses_qdq(scheme):
            return self._simulate_constant(node, index, scheme)
        key = (id(w), scheme)
        if key not in self._codes:
            if key in self.precomputed:
                codes, scale, zp = self.precomputed[key]
            else:
                lo, hi = tensor_ranges(w.const, scheme)
                scale, zp = choose_qparams(scheme, lo, hi)
                codes = quantize(w.const, scheme, scale, zp)
            g = self.graph
            q = g.add_constant(codes, name=unused_name(g, f"{w.name}_q"), dtype=scheme.dtype)
            s = g.add_constant(scale, name=unused_name(g, f"{w.name}_scale"))
            z = None
            if zp is not None and not _all_zero_signed(zp, scheme):
                z = g.add_constant(zp, name=unused_name(g, f"{w.name}_zero_point"), dtype=scheme.dtype)
            q.meta["quant"] = scheme.to_attrs()
            self._codes[key] = (q, s, z)
            self.replaced_constants[id(w)] = w
        q, s, z = self._codes[key]
        return self._dequantize(node, index, q, s, z, scheme)

    def _simulate_constant(self, node: Node, index: int, scheme: QuantScheme) -> Value:
        w = node.inputs[index]
        assert w is not None and w.const is not None
        key = (id(w), scheme)
        values = self.precomputed_values.get(key)
        if isinstance(values, np.ndarray):  # the first reader: make the constant, shared by the others
            g = self.graph
            values = g.add_constant(np.asarray(values, np.float32),
                                    name=unused_name(g, f"{w.name}_{scheme.granularity}fp4"))
            values.meta["quant"] = scheme.to_attrs()
            self.precomputed_values[key] = values
            self.replaced_constants[id(w)] = w
        if values is not None:
            node.set_input(index, values)
            return values
        lo, hi = (None, None) if scheme.granularity == "mx" else tensor_ranges(w.const, scheme)
        self.replaced_constants.setdefault(id(w), w)
        return self.simulated(node, index, scheme, lo, hi)

    # -- activations ----------------------------------------------------------------------
    def activation(self, node: Node, index: int, scheme: QuantScheme, lo: float, hi: float) -> Value:
        """Q (shared by x's readers) + DQ (this reader's), one scale for [lo, hi]."""
        x = node.inputs[index]
        assert x is not None
        key = (id(x), scheme)
        if key not in self._quantized:
            scale, zp = choose_qparams(scheme, np.float32(lo), np.float32(hi))
            g = self.graph
            s = g.add_constant(np.asarray(scale, np.float32).reshape(()), name=unused_name(g, f"{x.name}_scale"))
            z = g.add_constant(np.asarray(zp).reshape(()), name=unused_name(g, f"{x.name}_zero_point"),
                               dtype=scheme.dtype) if zp is not None else None
            attrs: dict[str, object] = {"output_dtype": scheme.dtype.name} if z is None else {}
            q = g.create_node("QuantizeLinear", [x, s, z], attrs, meta=_CREATED_BY,
                              output_names=[unused_name(g, f"{x.name}_q")], **self._after(x)).output
            q.meta["quant"] = scheme.to_attrs()
            self._quantized[key] = (q, s, z)
        q, s, z = self._quantized[key]
        return self._dequantize(node, index, q, s, z, scheme)

    def dynamic(self, node: Node, index: int, scheme: QuantScheme) -> Value:
        x = node.inputs[index]
        assert x is not None
        key = (id(x), None)
        if key not in self._quantized:
            g = self.graph
            names = [unused_name(g, f"{x.name}_{suffix}") for suffix in ("q", "scale", "zero_point")]
            dq = g.create_node("DynamicQuantizeLinear", [x], meta=_CREATED_BY, output_names=names, **self._after(x))
            q, s, z = dq.outputs
            q.meta["quant"] = dict(scheme.to_attrs(), dynamic=True)
            self._quantized[key] = (q, s, z)
        q, s, z = self._quantized[key]
        return self._dequantize(node, index, q, s, z, scheme, dynamic=True)

    def simulated(self, node: Node, index: int, scheme: QuantScheme, lo, hi, clip: float = 1.0) -> Value:
        """FakeQuantize in front of one reader (module docstring)."""
        x = node.inputs[index]
        assert x is not None
        g = self.graph
        inputs: list[Value | None] = [x]
        if scheme.granularity == "nv":
            amax = max(abs(float(np.min(lo))), abs(float(np.max(hi))))
            scale, _ = choose_qparams(scheme, np.float32(-amax), np.float32(amax))
            inputs.append(g.add_constant(np.asarray(scale, np.float32).reshape(()),
                                         name=unused_name(g, f"{x.name}_scale")))
        elif scheme.granularity not in ("mx", "token"):
            scale, zp = choose_qparams(scheme, np.asarray(lo, np.float32), np.asarray(hi, np.float32))
            inputs.append(g.add_constant(np.asarray(scale, np.float32), name=unused_name(g, f"{x.name}_scale")))
            if zp is not None and not scheme.symmetric:
                inputs.append(g.add_constant(zp, name=unused_name(g, f"{x.name}_zero_point"), dtype=scheme.dtype))
        attrs = dict(scheme.op_attrs(), **({"clip": float(clip)} if scheme.granularity == "token" else {}))
        out = g.create_node("FakeQuantize", inputs, attrs, meta=_CREATED_BY, before=node,
                            output_names=[unused_name(g, f"{x.name}_fq")]).output
        out.meta["quant"] = scheme.to_attrs()
        node.set_input(index, out)
        return out

    # -- shared -----------------------------------------------------------------------------
    def _dequantize(self, node: Node, index: int, q: Value, s: Value, z: Value | None, scheme: QuantScheme,
                    dynamic: bool = False) -> Value:
        attrs: dict[str, int] = {}
        if scheme.granularity in ("channel", "group"):
            attrs["axis"] = int(scheme.axis)
        if scheme.granularity == "group":
            attrs["block_size"] = int(scheme.group_size)
        g = self.graph
        x = node.inputs[index]
        assert x is not None
        out = g.create_node("DequantizeLinear", [q, s, z], attrs, meta=_CREATED_BY, before=node,
                            output_names=[unused_name(g, f"{x.name}_dq")]).output
        out.meta["quant"] = dict(scheme.to_attrs(), dynamic=True) if dynamic else scheme.to_attrs()
        if x.type != out.type and x.type.shape is not None:
            out.type = x.type  # keep the symbolic dims the reader was typed with
        node.set_input(index, out)
        return out

    def _after(self, x: Value) -> dict[str, Node]:
        """Where a node computing from x goes: right after x's producer, or first."""
        if x.producer is not None:
            return {"after": x.producer}
        first = next(iter(self.graph), None)
        return {"before": first} if first is not None else {}

    def drop_unused(self) -> int:
        """Remove the float constants quantization replaced that nothing reads now."""
        removed = 0
        for v in self.replaced_constants.values():
            if not v.uses and not self.graph.is_output(v) and v in self.graph.constants:
                self.graph.remove_constant(v)
                removed += 1
        return removed


def _all_zero_signed(zp: np.ndarray, scheme: QuantScheme) -> bool:
    """A symmetric signed scheme's zero point is all 0: DequantizeLinear can omit it."""
    return scheme.symmetric and scheme.dtype.kind == "int" and not np.any(np.asarray(zp).astype(np.int64))


def with_axis(scheme: QuantScheme, channel_axis: int, group_axis: int) -> QuantScheme:
    """`scheme` with the axis a given weight layout needs (channel or group axis)."""
    if scheme.granularity == "channel":
        return replace(scheme, axis=channel_axis)
    if scheme.granularity == "group":
        return replace(scheme, axis=group_axis)
    if scheme.is_block_format:
        return replace(scheme, axis=group_axis)
    return scheme
