"""Feature-map quantization for convolutional networks: which activations the "quantize"
pass (option `feature_maps=True`) quantizes besides the inputs of MatMul / Gemm / Conv,
so that a runtime keeps feature maps in 8 bits from one integer kernel to the next, and
the int32 biases integer convolutions add to their accumulators.

A quantized input alone leaves a convolution's output float, and ONNX Runtime runs such
a `DQ -> Conv` in float (with its Q/DQ in front). Its integer kernels are fused from
complete quantized patterns: `DQ -> Conv -> Q` (QLinearConv), `DQ, DQ -> Add / Mul -> Q`
(QLinearAdd / QLinearMul), `DQ -> Sigmoid / LeakyRelu / AveragePool /
GlobalAveragePool -> Q` (their QLinear forms), and a `DQ -> MaxPool -> Q` whose two sides
share scale and zero point becomes a MaxPool on the codes. So the pass also quantizes,
per tensor, these *feature-map points* (each a value whose readers all read a
DequantizeLinear of one shared QuantizeLinear), found in graph order:

- the output of an *integer conv* (a Conv whose activation input gets 8-bit integer
  codes per tensor);
- the output of an *integer op*: Add or Mul whose two inputs are points (broadcasting
  allowed: a squeeze-and-excite gate [N, C, 1, 1]), or Sigmoid, LeakyRelu,
  AveragePool, GlobalAveragePool of a point (a ReduceMean over the two spatial axes
  with keepdims counts as GlobalAveragePool: the ONNX backend emits it as one);
- the output of a MaxPool of a point, with the input's scale and zero point: max
  commutes with a monotone quantizer, `Q(MaxPool(DQ(q))) = MaxPool(q)`, so the pooled
  codes equal the input's codes at the maxima, exactly;
- the output of an elementwise op of one point that an integer op or conv reads:
  HardSigmoid and HardSwish take an integer form (below); the others (Gelu, Tanh, ...:
  no integer kernel) run in float between the point's DequantizeLinear and their own
  QuantizeLinear, and their readers stay integer.
With an asymmetric activation scheme, a conv's or integer op's point moves past a chain
of single-reader `Relu` / `Clip(min >= 0)`: the calibrated range of a ReLU output starts
at 0, so the zero point is the lowest code and the quantizer's own clamp is the
activation, `Q(Relu(y)) = clamp(round(y / s) + 0, 0, 255)` (ONNX Runtime then drops the
Relu / Clip and runs the conv or add with the activation fused). Not points: graph
outputs (their names and types stay), values an integer op reads together with a
constant or a float value. The quantize pass makes points for uint8 activation codes
only (signed feature maps passed through a Reshape trip ONNX Runtime's own Q/DQ
rewrites, and x86's integer kernels take unsigned activations).

Hard sigmoid and hard swish of a point (`integer_hard_activation`, MobileNetV3's
activations): `HardSigmoid(x) = clip(alpha x + beta, 0, 1)` is `alpha * clip(x + c, 0,
1/alpha)` with `c = beta / alpha`, and a uint8 quantizer with zero point 0 and scale
`(1/alpha) / 255` clamps to exactly [0, 1/alpha], so

    r = Q(x + DQ(c), (1/alpha) / 255, 0)          c = 3, 1/alpha = 6 for MobileNetV3
    HardSigmoid(x) ~= DQ(r, alpha (1/alpha) / 255, 0)    HardSwish(x) ~= x * that

within half a step (1/510) of the gate; ONNX Runtime runs the Add as QLinearAdd and the
product as QLinearMul, where a float HardSwish between a DequantizeLinear and a
QuantizeLinear is four passes over the map.

Biases (`quantize_conv_bias`): the float bias b of an integer conv with an output point
(one that runs as an integer kernel) becomes int32 codes
`round(b / (s_a * s_w[o]))` with scale `s_a * s_w[o]` (the accumulator's scale: the
activation's scale times output channel o's weight scale, in float32 as the kernels form
it) under a DequantizeLinear on axis 0; the rounding moves each output by at most half
an accumulator step, `s_a * s_w[o] / 2`. (Integer-only inference as in Jacob et al.,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", CVPR 2018, sections 2.2-2.4; ONNX Runtime fuses DQ -> Conv -> Q only with a
bias in this form.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from requant.ir import dtypes
from requant.ir.graph import Graph, Node, Value
from requant.ir.ops.reduce import is_spatial_mean
from requant.passes.fold_common import unused_name

__all__ = [
    "FeatureMapPoint",
    "feature_map_points",
    "feature_map_calibration_values",
    "integer_conv_candidate",
    "quantize_conv_bias",
    "point_readers",
    "integer_hard_activation",
]

logger = logging.getLogger(__name__)

_INT32_MAX = np.iinfo(np.int32).max


@dataclass(frozen=True)
class FeatureMapPoint:
    """One value to quantize per tensor: `kind` "conv", "add" or "maxpool" (the node
    whose output it is, after any absorbed Relu / Clip), and for "maxpool" the point
    whose scale and zero point it shares (`same_as`)."""

    value: Value
    kind: str
    node: Node
    same_as: Value | None = None


def _is_nonnegative_clip(node: Node) -> bool:
    """Clip(x, lo, hi) with a constant lo >= 0 (ReLU6 and its kin)."""
    lo = node.inputs[1] if len(node.inputs) > 1 else None
    return lo is not None and lo.const is not None and float(np.min(lo.const)) >= 0.0


def _after_activation(graph: Graph, v: Value, absorb: bool) -> Value:
    """`v` moved forward through single-reader Relu / Clip(min >= 0) nodes when `absorb`."""
    while absorb and len(v.uses) == 1 and not graph.is_output(v):
        reader = v.uses[0][0]
        if reader.op != "Relu" and not (reader.op == "Clip" and _is_nonnegative_clip(reader)):
            break
        v = reader.outputs[0]
    return v


def integer_conv_candidate(node: Node) -> bool:
    """A float Conv with a constant weight reading an activation (what an integer conv
    can be, whatever the quantize options)."""
    if node.op != "Conv" or len(node.inputs) < 2:
        return False
    x, w = node.inputs[0], node.inputs[1]
    return x is not None and w is not None and w.const is not None and x.const is None and x.dtype.is_float


# ops with an 8-bit integer form taking all their activation inputs as codes
_INTEGER_UNARY = frozenset({"Sigmoid", "LeakyRelu", "AveragePool", "GlobalAveragePool"})
_INTEGER_BINARY = frozenset({"Add", "Mul"})
# elementwise ops of one input without one: float between a point's DQ and their own Q
_FLOAT_ELEMENTWISE = frozenset({"HardSwish", "HardSigmoid", "Gelu", "Tanh", "Relu", "Clip", "Elu", "Selu",
                                "Softplus", "Swish", "Mish", "Sigmoid", "LeakyRelu"})
_INTEGER_READERS = frozenset({"Conv", "MaxPool"}) | _INTEGER_UNARY | _INTEGER_BINARY


def _integer_unary(node: Node) -> bool:
    """An op of one map with an integer form; a spatial ReduceMean is GlobalAveragePool."""
    return node.op in _INTEGER_UNARY or is_spatial_mean(node)


def _integer_reader(node: Node) -> bool:
    return node.op in _INTEGER_READERS or is_spatial_mean(node)


def feature_map_points(graph: Graph, is_integer_conv: Callable[[Node], bool], absorb_activations: bool = True
                       ) -> list[FeatureMapPoint]:
    """The feature-map points of `graph` (module docstring) in graph order, given which
    convs will be integer; `absorb_activations`: move points past Relu / Clip(min >= 0)
    (right for asymmetric activation codes only)."""
    points: dict[int, FeatureMapPoint] = {}
    found: list[FeatureMapPoint] = []

    def add(v: Value, kind: str, node: Node, same_as: Value | None = None) -> None:
        if graph.is_output(v) or not v.dtype.is_float or id(v) in points:
            return
        p = FeatureMapPoint(v, kind, node, same_as)
        points[id(v)] = p
        found.append(p)

    def is_point(v: Value | None) -> bool:
        return v is not None and id(v) in points

    for node in graph:
        if len(node.outputs) != 1 or not node.inputs:
            continue
        out, first = node.outputs[0], node.inputs[0]
        if node.op == "Conv":
            if is_integer_conv(node):
                add(_after_activation(graph, out, absorb_activations), "conv", node)
        elif node.op in _INTEGER_BINARY:
            if len(node.inputs) == 2 and all(is_point(v) for v in node.inputs):
                add(_after_activation(graph, out, absorb_activations), node.op.lower(), node)
        elif not is_point(first) or len([v for v in node.inputs if v is not None and v.const is None]) != 1:
            continue
        elif node.op == "MaxPool":
            add(out, "maxpool", node, same_as=points[id(first)].value)
        elif _integer_unary(node):
            add(out, node.op.lower(), node)
        elif node.op in _FLOAT_ELEMENTWISE and any(_integer_reader(r) for r, _ in out.uses):
            add(out, "float", node)
    return found


def feature_map_calibration_values(graph: Graph) -> list[str]:
    """Names of the points calibration must observe, every candidate conv counted as
    integer (MaxPool points take their input's range and need no statistics)."""
    return [p.value.name for p in feature_map_points(graph, integer_conv_candidate) if p.kind != "maxpool"]


def _dequantized(v: Value | None) -> tuple[Value, Value, Value | None] | None:
    """(codes, scale, zero point) of a DequantizeLinear output with constant scale."""
    node = None if v is None else v.producer
    if node is None or node.op != "DequantizeLinear":
        return None
    scale = node.inputs[1]
    if scale is None or scale.const is None:
        return None
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    return node.inputs[0], scale, zp


def quantize_conv_bias(graph: Graph, conv: Node, created_by: str = "quantize") -> str | None:
    """An integer conv's constant float bias -> DQ(int32 codes, s_a * s_w, axis=0)
    (module docstring); None when done, else why not."""
    if len(conv.inputs) < 3 or conv.inputs[2] is None:
        return "no bias"
    bias = conv.inputs[2]
    if bias.const is None or not bias.dtype.is_float:
        return f"bias %{bias.name} is not a constant float"
    act, weight = _dequantized(conv.inputs[0]), _dequantized(conv.inputs[1])
    if act is None or weight is None:
        return "the activation or the weight is not dequantized from 8-bit codes"
    if act[0].dtype not in (dtypes.uint8, dtypes.int8) or weight[0].dtype not in (dtypes.int8, dtypes.uint8):
        return "the activation or the weight codes are not 8-bit integers"
    s_a = np.asarray(act[1].const, np.float32)
    if s_a.size != 1:
        return "the activation is not quantized per tensor"
    b = np.asarray(bias.const, np.float64).reshape(-1)
    s_w = np.broadcast_to(np.asarray(weight[1].const, np.float32).reshape(-1), b.shape)
    scale = (s_a.reshape(()) * s_w).astype(np.float32)  # rounded once, as the kernels form it
    codes = np.rint(b / scale.astype(np.float64))
    if np.any(np.abs(codes) > _INT32_MAX):
        return "the bias does not fit int32 codes at the accumulator's scale"
    q = graph.add_constant(codes.astype(np.int32), name=unused_name(graph, f"{bias.name}_q"), dtype=dtypes.int32)
    s = graph.add_constant(scale, name=unused_name(graph, f"{bias.name}_scale"))
    q.meta["quant"] = {"dtype": "i32", "granularity": "channel", "axis": 0, "symmetric": True}
    dq = graph.create_node("DequantizeLinear", [q, s], {"axis": 0}, before=conv, meta={"created_by": created_by},
                           output_names=[unused_name(graph, f"{bias.name}_dq")]).output
    dq.meta["quant"] = dict(q.meta["quant"])
    conv.set_input(2, dq)
    if not bias.uses and not graph.is_output(bias) and bias in graph.constants:
        graph.remove_constant(bias)
    return None


def point_readers(point: Value, skip: Sequence[str] = ("QuantizeLinear",)) -> list[tuple[Node, int]]:
    """The (node, input index) reading `point` that still read it in float (not the Q
    nodes quantizing it)."""
    return [(n, i) for n, i in point.uses if n.op not in skip]


def integer_hard_activation(graph: Graph, node: Node, quantize_input: Callable[[Node, int], Value],
                            created_by: str = "quantize") -> Value | None:
    """HardSigmoid / HardSwish `node` of a point -> its integer form (module docstring);
    `quantize_input(reader, index)` puts the point's Q/DQ in front of a new reader. The
    value that replaces the node's output (HardSwish: the product, to be quantized as a
    point; HardSigmoid: the gate's codes, each reader given its own DequantizeLinear), or
    None when the node does not fit (a non-positive alpha, no reader)."""
    if node.op == "HardSigmoid":
        alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    elif node.op == "HardSwish":
        alpha, beta = 1.0 / 6.0, 0.5
    else:
        return None
    x, out = node.inputs[0], node.outputs[0]
    if alpha <= 0.0 or not out.uses or graph.is_output(out):
        return None
    meta = {"created_by": created_by}
    offset = graph.create_node("DequantizeLinear", [
        graph.add_constant(np.asarray(1, np.uint8), base=f"{out.name}_offset_q", dtype=dtypes.uint8),
        graph.add_constant(np.asarray(beta / alpha, np.float32), base=f"{out.name}_offset_scale")],
        before=node, meta=meta, output_names=[unused_name(graph, f"{out.name}_offset")]).output
    shifted = graph.create_node("Add", [x, offset], before=node, meta=meta,
                                output_names=[unused_name(graph, f"{out.name}_shifted")])
    quantize_input(shifted, 0)
    top = np.float32(1.0 / alpha / 255.0)
    zero = graph.add_constant(np.asarray(0, np.uint8), base=f"{out.name}_gate_zero_point", dtype=dtypes.uint8)
    codes = graph.create_node("QuantizeLinear", [shifted.output, graph.add_constant(top, base=f"{out.name}_clip_scale"),
                                                 zero], before=node, meta=meta,
                              output_names=[unused_name(graph, f"{out.name}_gate_q")]).output
    codes.meta["quant"] = {"dtype": "u8", "granularity": "tensor", "symmetric": False}
    gate_scale = graph.add_constant(np.float32(top * np.float32(alpha)), base=f"{out.name}_gate_scale")

    def gate(before: Node) -> Value:
        dq = graph.create_node("DequantizeLinear", [codes, gate_scale, zero], before=before, meta=meta,
                               output_names=[unused_name(graph, f"{out.name}_gate")]).output
        dq.meta["quant"] = dict(codes.meta["quant"])
        return dq

    if node.op == "HardSwish":
        product = graph.create_node("Mul", [x, gate(node)], before=node, meta=meta,
                                    output_names=[unused_name(graph, f"{out.name}_product")])
        quantize_input(product, 0)
        graph.replace_value(out, product.output)
        graph.remove_node(node)
        return product.output
    for reader, index in list(out.uses):  # one DequantizeLinear per reader, the Q/DQ convention
        reader.set_input(index, gate(reader))
    graph.remove_node(node)
    return codes
