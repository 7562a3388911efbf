"""The "quantize" pass with `feature_maps=True` (passes/quantize_feature_maps.py): the
outputs of integer convs, integer Adds / Muls / Sigmoids and MaxPools quantized per
tensor, ReLU absorbed into the quantizer's clamp, conv biases as int32 codes at the
accumulator's scale.

(a) stats; (b) structure: one conv -> max pool -> conv chain as Before/Expected text,
the points found in a residual block and an EfficientNet-style SiLU / squeeze-excite
block; (c) numerics in the interpreter: the exact identities the module relies on, bit
for bit (a MaxPool point's codes equal its input's codes at the maxima; a ReLU absorbed
by a zero point at the lowest code; int32 bias codes within half an accumulator step),
and the quantized graph against float within QDQ_REL; ONNX Runtime's fused integer
kernels against the interpreter on the same Q/DQ graph within ORT_CODES output steps;
(d) what must not become a point: graph outputs, an Add with a float operand, symmetric
codes past a ReLU, and the option off.

QDQ_REL = 0.05 of the float output's largest magnitude (float32 graph vs its 8-bit Q/DQ
form through three quantized tensors per layer, two or three layers deep: each code
step is 1/255 of a tensor's range, and a conv sums a few dozen of them);
HARD_COSINE = 0.998: the MobileNetV3 block's cosine to float (see its test);
ORT_CODES = 1 step of the output's scale per requantization on the path to the output:
ONNX Runtime's QLinearConv / QLinearAdd rescale with a float multiplier, so a value on
a rounding tie may land one code away from the interpreter's.
"""

from __future__ import annotations

import numpy as np
import pytest

from requant import ir
from requant.ir import Builder, Graph, tensor_type
from requant.passes.calibration import calibration_values, collect_stats
from requant.passes.quantize_feature_maps import feature_map_points, integer_conv_candidate

from canonical_testing import run_pass
from rewrite_testing import check_rewrite

F32 = "float32"
QDQ_REL = 0.05
ORT_CODES = 1
HARD_COSINE = 0.998
RNG = np.random.default_rng(11)

CHAIN = """
graph main(%x: f32[1,2,4,4]) -> (%y) {
  const %w1: f32[3,2,1,1] = [[[[0.5]], [[-0.25]]], [[[0.75]], [[0.5]]], [[[-1.0]], [[0.25]]]]
  const %b1: f32[3] = [0.1, -0.2, 0.3]
  const %w2: f32[2,3,1,1] = [[[[1.0]], [[-0.5]], [[0.25]]], [[[0.5]], [[0.5]], [[-0.75]]]]
  %c: f32[1,3,4,4] = Conv(%x, %w1, %b1) {kernel_shape=[1, 1]}
  %p: f32[1,3,2,2] = MaxPool(%c) {kernel_shape=[2, 2], strides=[2, 2]}
  %y: f32[1,2,2,2] = Conv(%p, %w2) {kernel_shape=[1, 1]}
}"""


def seeded_batches(graph: Graph, count: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{v.name: rng.standard_normal(tuple(v.type.shape)).astype(np.float32) for v in graph.inputs}
            for _ in range(count)]


def quantized(graph: Graph, batches=None, **options):
    stats = collect_stats(graph, batches or seeded_batches(graph), runner="interpreter", progress=False)
    return run_pass("quantize", graph, stats=stats, **options)


def test_conv_maxpool_conv_chain_structure_and_stats() -> None:
    stats = collect_stats(ir.parse(CHAIN), seeded_batches(ir.parse(CHAIN)), runner="interpreter", progress=False)
    check_rewrite("quantize", CHAIN, """
    graph main(%x: f32[1,2,4,4]) -> (%y) {
      const %w1_q: i8[3,2,1,1] = ...
      const %w1_scale: f32[3] = ...
      const %x_scale: f32[] = ...
      const %x_zero_point: u8[] = ...
      const %w2_q: i8[2,3,1,1] = ...
      const %w2_scale: f32[2] = ...
      const %p_scale: f32[] = ...
      const %p_zero_point: u8[] = ...
      const %c_scale: f32[] = ...
      const %c_zero_point: u8[] = ...
      const %b1_q: i32[3] = ...
      const %b1_scale: f32[3] = ...
      %x_q: u8[1,2,4,4] = QuantizeLinear(%x, %x_scale, %x_zero_point)
      %w1_dq: f32[3,2,1,1] = DequantizeLinear(%w1_q, %w1_scale, _) {axis=0}
      %x_dq: f32[1,2,4,4] = DequantizeLinear(%x_q, %x_scale, %x_zero_point)
      %b1_dq: f32[3] = DequantizeLinear(%b1_q, %b1_scale) {axis=0}     // int32 at s_x * s_w1
      %c: f32[1,3,4,4] = Conv(%x_dq, %w1_dq, %b1_dq) {kernel_shape=[1, 1]}
      %c_q: u8[1,3,4,4] = QuantizeLinear(%c, %c_scale, %c_zero_point)  // the conv's output point
      %c_dq: f32[1,3,4,4] = DequantizeLinear(%c_q, %c_scale, %c_zero_point)
      %p: f32[1,3,2,2] = MaxPool(%c_dq) {kernel_shape=[2, 2], strides=[2, 2]}
      %p_q: u8[1,3,2,2] = QuantizeLinear(%p, %p_scale, %p_zero_point)  // the pool's input's scale
      %w2_dq: f32[2,3,1,1] = DequantizeLinear(%w2_q, %w2_scale, _) {axis=0}
      %p_dq: f32[1,3,2,2] = DequantizeLinear(%p_q, %p_scale, %p_zero_point)
      %y: f32[1,2,2,2] = Conv(%p_dq, %w2_dq) {kernel_shape=[1, 1]}     // a graph output stays float
    }""", options={"stats": stats, "feature_maps": True},
        stats={"ops_quantized": 2, "weights_quantized": 2, "activations_quantized": 2, "embeddings_quantized": 0,
               "feature_maps_quantized": 1, "biases_quantized": 1, "hard_activations_integer": 0,
               "tensors_quantized": 5, "skipped": 0,
               "bytes_before": 60, "bytes_after": 71},
        tolerances={F32: (QDQ_REL, QDQ_REL * 4.0)})


def test_maxpool_point_reuses_its_input_codes_exactly() -> None:
    graph = ir.parse(CHAIN)
    result = quantized(graph, feature_maps=True)
    g = result.graph
    consts = {v.name: v.const for v in g.constants}
    assert consts["p_scale"] == consts["c_scale"] and consts["p_zero_point"] == consts["c_zero_point"]
    for feeds in seeded_batches(g, seed=5):
        c_q, p_q = _probe(g, feeds)
        pooled = c_q.reshape(1, 3, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 3, 2, 2, 4).max(-1)
        np.testing.assert_array_equal(p_q, pooled)  # bit for bit: max commutes with a monotone quantizer


def _probe(g: Graph, feeds) -> list[np.ndarray]:
    """The codes of c_q and p_q: the graph with them added as outputs."""
    probe = g.clone()
    values = {v.name: v for n in probe for v in n.outputs}
    probe.outputs = [values["c_q"], values["p_q"]]
    return ir.run(probe, feeds)


def test_int32_bias_within_half_an_accumulator_step() -> None:
    result = quantized(ir.parse(CHAIN), feature_maps=True)
    consts = {v.name: v.const for v in result.graph.constants}
    step = np.float32(consts["x_scale"]) * consts["w1_scale"]
    np.testing.assert_array_equal(consts["b1_scale"], step.astype(np.float32))
    dequantized = consts["b1_q"].astype(np.float64) * consts["b1_scale"]
    assert np.all(np.abs(dequantized - [0.1, -0.2, 0.3]) <= consts["b1_scale"] / 2 * (1 + 1e-6))


# -- points of real blocks -----------------------------------------------------------------------


def conv(b: Builder, x, c_in: int, c_out: int, k: int = 3, group: int = 1, bias: bool = True):
    w = b.const((RNG.standard_normal((c_out, c_in // group, k, k)) / np.sqrt(c_in * k * k / group))
                .astype(np.float32))
    ins = [x, w] + ([b.const((0.1 * RNG.standard_normal(c_out)).astype(np.float32))] if bias else [])
    return b.Conv(*ins, kernel_shape=[k, k], pads=[k // 2] * 4, group=group)


def residual_block() -> Graph:
    """conv -> relu -> conv (+ the block input) -> relu -> max pool -> conv -> graph output."""
    g = Graph("residual")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [2, 4, 8, 8]))
    stem = b.Relu(conv(b, x, 4, 8))
    body = conv(b, b.Relu(conv(b, stem, 8, 8)), 8, 8)
    out = b.Relu(b.Add(body, stem))
    g.outputs = [conv(b, b.MaxPool(out, kernel_shape=[2, 2], strides=[2, 2]), 8, 4, k=1)]
    return g


def squeeze_excite_block() -> Graph:
    """EfficientNet's MBConv: conv -> SiLU -> depthwise conv -> SiLU -> x * sigmoid(gate)
    (gate from the pooled map through two 1x1 convs) -> 1x1 projection (+ input)."""
    g = Graph("mbconv")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [2, 4, 8, 8]))
    e = conv(b, x, 4, 16, k=1)
    e = b.Mul(e, b.Sigmoid(e))
    d = conv(b, e, 16, 16, group=16)
    d = b.Mul(d, b.Sigmoid(d))
    pooled = b.ReduceMean(d, b.const(np.array([2, 3], np.int64)), keepdims=1)
    s = conv(b, pooled, 16, 4, k=1)
    gate = b.Sigmoid(conv(b, b.Mul(s, b.Sigmoid(s)), 4, 16, k=1))
    y = b.Add(conv(b, b.Mul(d, gate), 16, 4, k=1), x)
    g.outputs = [b.Relu(y)]
    return g


def _kinds(graph: Graph) -> list[tuple[str, str]]:
    return [(p.kind, p.value.producer.op) for p in feature_map_points(graph, integer_conv_candidate)]


def test_residual_block_points() -> None:
    # conv+relu (stem), conv+relu, conv (into the Add), Add+relu, MaxPool; the head's
    # conv output is the graph output
    assert _kinds(residual_block()) == [("conv", "Relu"), ("conv", "Relu"), ("conv", "Conv"), ("add", "Relu"),
                                        ("maxpool", "MaxPool")]


def test_squeeze_excite_block_points() -> None:
    kinds = _kinds(squeeze_excite_block())
    # SiLU = x * sigmoid(x): Sigmoid and Mul of points are integer ops; so is the pooling,
    # a ReduceMean over H and W (GlobalAveragePool), whose codes the SE convs read
    assert kinds == [("conv", "Conv"), ("sigmoid", "Sigmoid"), ("mul", "Mul"),
                     ("conv", "Conv"), ("sigmoid", "Sigmoid"), ("mul", "Mul"),
                     ("reducemean", "ReduceMean"), ("conv", "Conv"), ("sigmoid", "Sigmoid"), ("mul", "Mul"),
                     ("conv", "Conv"), ("sigmoid", "Sigmoid"), ("mul", "Mul"),
                     ("conv", "Conv")]
    # the projection's Add with the block input: x is a graph input, not a point
    graph = squeeze_excite_block()
    assert all(p.node.op != "Add" for p in feature_map_points(graph, integer_conv_candidate))


def test_calibration_observes_every_point_but_pools() -> None:
    graph = residual_block()
    names = calibration_values(graph)
    for p in feature_map_points(graph, integer_conv_candidate):
        assert (p.value.name in names) or p.kind == "maxpool"


@pytest.mark.parametrize("block", [residual_block, squeeze_excite_block])
def test_quantized_blocks_stay_close_to_float(block) -> None:
    graph = block()
    reference = graph.clone()
    result = quantized(graph, batches=seeded_batches(graph, 4, seed=1), feature_maps=True)
    points = feature_map_points(reference, integer_conv_candidate)
    # every conv with an output point (the residual block's head writes the graph output)
    assert result.stats["biases_quantized"] == sum(1 for p in points if p.kind == "conv")
    assert result.stats["skipped"] == 0
    hist = result.graph.op_histogram()
    assert hist["QuantizeLinear"] >= len(points)
    for feeds in seeded_batches(graph, 2, seed=9):  # held-out inputs
        want, got = ir.run(reference, feeds)[0], ir.run(result.graph, feeds)[0]
        assert np.abs(got - want).max() <= QDQ_REL * np.abs(want).max()


def _head_conv_step(g: Graph) -> float:
    """What one code of the head conv's input moves its output by, at most (the residual
    block's output is that conv's, on a dequantized point)."""
    last = next(n for n in g if n.op == "Conv" and g.is_output(n.outputs[0]))
    s_in = float(last.inputs[0].producer.inputs[1].const)
    w_dq = last.inputs[1].producer
    w = np.abs(w_dq.inputs[0].const.astype(np.float64) * w_dq.inputs[1].const.reshape(-1, 1, 1, 1))
    return s_in * float(w.reshape(w.shape[0], -1).sum(1).max())


def _add_point_step(g: Graph) -> float:
    """The squeeze-excite block ends in Relu(DQ(projection codes) + x): one code's scale."""
    add = next(n for n in g if n.op == "Add")
    dq = next(v.producer for v in add.inputs if v.producer is not None and v.producer.op == "DequantizeLinear")
    return float(dq.inputs[1].const)


@pytest.mark.parametrize("block,census,step", [
    # three integer convs, the residual Add and the pool on codes; the head conv writes the
    # (float) graph output, so it runs in float on its dequantized input
    # (a MaxPool of dequantized codes cannot see a NaN: it exports without the NaN guard)
    (residual_block, {"QLinearConv": 3, "QLinearAdd": 1, "NhwcMaxPool": 1, "MaxPool": 0, "IsNaN": 0},
     _head_conv_step),
    # every conv integer; three SiLUs as QLinearSigmoid + QLinearMul, the gate and its multiply too
    # (the pooling, a ReduceMean over H and W, exports as GlobalAveragePool: QLinearGlobalAveragePool)
    (squeeze_excite_block, {"QLinearConv": 5, "QLinearSigmoid": 4, "QLinearMul": 4, "QLinearGlobalAveragePool": 1,
                            "ReduceMean": 0}, _add_point_step),
    # hard swish / hard sigmoid as QLinearAdd (x + 3, clamped by the quantizer) + QLinearMul
    ("hard_swish_block", {"QLinearConv": 4, "QLinearAdd": 3, "QLinearMul": 3, "HardSigmoid": 0, "Mul": 0},
     _head_conv_step),
])
def test_ort_integer_kernels_match_the_interpreter(block, census, step) -> None:
    pytest.importorskip("onnxruntime")
    from requant.backends.onnx.runtime import OnnxRuntimeSession, optimized_ops
    from requant.passes import PassManager, get_pass

    graph = globals()[block]() if isinstance(block, str) else block()
    result = quantized(graph, batches=seeded_batches(graph, 4, seed=1), feature_maps=True)
    g = PassManager([get_pass("lower_quant"), get_pass("cse"), get_pass("dce")], verify=True).run(result.graph).graph
    ops = optimized_ops(g)
    assert {k: ops.get(k, 0) for k in census} == census, ops
    assert "Relu" not in ops or block is squeeze_excite_block, ops  # ReLUs went into the quantizers
    session = OnnxRuntimeSession(g)
    for feeds in seeded_batches(g, 2, seed=9):
        want, got = ir.run(g, feeds)[0], session(**feeds)[0]
        assert np.abs(got - want).max() <= ORT_CODES * step(g)


# -- must not become points ------------------------------------------------------------------------


def test_option_off_leaves_outputs_and_biases_float() -> None:
    result = quantized(ir.parse(CHAIN))
    assert "feature_maps_quantized" not in result.stats
    g = result.graph
    assert all(v.dtype.name != "int32" for v in g.constants)
    conv1 = next(n for n in g if n.op == "Conv")
    assert all(r.op == "MaxPool" for r, _ in conv1.outputs[0].uses)  # no Q after the first conv


def test_add_with_a_float_operand_and_graph_outputs_are_not_points() -> None:
    g = Graph("no_points")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [1, 4, 6, 6]))
    bias_map = b.input("m", tensor_type(F32, [1, 4, 6, 6]))
    c = conv(b, x, 4, 4)
    added = b.Add(c, bias_map)  # the other operand is a graph input, not a point
    g.outputs = [b.Relu(added), conv(b, x, 4, 4)]
    kinds = _kinds(g)
    assert kinds == [("conv", "Conv")]  # only the first conv: the second's output is a graph output


def test_symmetric_codes_do_not_absorb_relu() -> None:
    g = residual_block()
    points = feature_map_points(g, integer_conv_candidate, absorb_activations=False)
    # the conv's own output is the point; the Relu after it is a float op between a DQ and a Q
    assert [(p.kind, p.value.producer.op) for p in points][:2] == [("conv", "Conv"), ("float", "Relu")]


def test_signed_activation_codes_make_no_points_and_say_why() -> None:
    result = quantized(residual_block(), feature_maps=True, activation_scheme="int8")
    assert result.stats["feature_maps_quantized"] == 0 and result.stats["biases_quantized"] == 0
    reasons = [s["reason"] for s in result.graph.meta["quant_skipped"]]
    assert any("uint8 activation codes only" in r for r in reasons)


# -- hard sigmoid / hard swish in integer form --------------------------------------------------------


def hard_swish_block() -> Graph:
    """MobileNetV3's block: conv -> HardSwish -> depthwise conv -> HardSwish -> x * HardSigmoid(gate)
    (the squeeze-excite gate) -> 1x1 projection -> graph output."""
    g = Graph("hardswish")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [2, 4, 8, 8]))
    e = b.HardSwish(conv(b, x, 4, 16, k=1))
    d = b.HardSwish(conv(b, e, 16, 16, group=16))
    pooled = b.ReduceMean(d, b.const(np.array([2, 3], np.int64)), keepdims=1)
    gate = b.HardSigmoid(conv(b, b.Relu(conv(b, pooled, 16, 4, k=1)), 4, 16, k=1), alpha=1 / 6, beta=0.5)
    g.outputs = [conv(b, b.Mul(d, gate), 16, 4, k=1)]
    return g


def test_hard_activations_of_points_take_integer_form() -> None:
    graph = hard_swish_block()
    reference = graph.clone()
    result = quantized(graph, batches=seeded_batches(graph, 4, seed=1), feature_maps=True)
    assert result.stats["hard_activations_integer"] == 3  # two HardSwish, one HardSigmoid gate
    hist = result.graph.op_histogram()
    assert "HardSwish" not in hist and "HardSigmoid" not in hist
    # each: Add(x, DQ(3)) -> Q(6/255, 0) -> DQ(1/255, 0) [-> Mul(x, .) for HardSwish]
    gates = [n for n in result.graph if n.op == "QuantizeLinear" and n.outputs[0].name.endswith("_gate_q")]
    assert len(gates) == 3
    for q in gates:
        np.testing.assert_array_equal(q.inputs[1].const, np.float32(6.0 / 255.0))
        assert int(q.inputs[2].const) == 0
        dq = q.outputs[0].uses[0][0]
        np.testing.assert_allclose(dq.inputs[1].const, 1.0 / 255.0, rtol=1e-6)
    # x * gate multiplies two quantized maps, twice per block, so the largest error swings
    # with the seed (0.02 to 0.17 of the output's scale, float islands alike); the cosine
    # to float is the stable measure: HARD_COSINE
    for feeds in seeded_batches(graph, 2, seed=9):
        want, got = ir.run(reference, feeds)[0].reshape(-1), ir.run(result.graph, feeds)[0].reshape(-1)
        assert float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))) >= HARD_COSINE


def test_the_gate_is_relu6_of_x_plus_3_over_6_within_half_a_step() -> None:
    """The integer hard sigmoid alone, on a dense grid of x: |DQ(Q(x + 3)) - hsig(x)| <= 1/510."""
    g = Graph("gate")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [1, 1, 1, 601]))
    c = conv(b, x, 1, 1, k=1, bias=False)
    gate = b.HardSigmoid(c, alpha=1 / 6, beta=0.5)
    g.outputs = [conv(b, b.Mul(c, gate), 1, 1, k=1, bias=False)]
    from requant.passes.quantize_feature_maps import integer_hard_activation

    hsig = next(n for n in g if n.op == "HardSigmoid")
    assert integer_hard_activation(g, hsig, lambda n, i: n.inputs[i]) is not None
    probe = g.clone()
    gate_value = next(n for n in probe if n.op == "DequantizeLinear" and n.outputs[0].name.endswith("_gate"))
    probe.outputs = [gate_value.outputs[0], next(n for n in probe if n.op == "Conv").outputs[0]]
    xs = np.linspace(-5.0, 5.0, 601, dtype=np.float32).reshape(1, 1, 1, 601)
    got, pre = ir.run(probe, {"x": xs})
    want = np.clip(pre / 6.0 + 0.5, 0.0, 1.0)
    assert np.abs(got - want).max() <= 1.0 / 510.0 + 1e-6


# -- short convolutions stay float -----------------------------------------------------------------


@pytest.mark.parametrize("c_in,k,integer", [(3, 3, False), (3, 7, True), (16, 1, True), (4, 3, True)])
def test_min_conv_reduction_keeps_short_spatial_convs_float(c_in: int, k: int, integer: bool) -> None:
    """3 x 3 x 3 = 27 products per output stays float under 32; 7 x 7 x 3 = 147, a 1 x 1
    conv (no im2col) and 3 x 3 x 4 = 36 are quantized."""
    g = Graph("stem")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [1, c_in, 8, 8]))
    g.outputs = [conv(b, b.Relu(conv(b, x, c_in, 8, k=k)), 8, 4, k=1)]
    result = quantized(g, feature_maps=True, min_conv_reduction=32)
    first = next(n for n in result.graph if n.op == "Conv")
    assert (first.inputs[1].producer is not None) is integer  # a DequantizeLinear of int8 codes
    reasons = [s["reason"] for s in result.graph.meta["quant_skipped"]]
    assert any("fewer than min_conv_reduction=32" in r for r in reasons) is (not integer)


# -- depthwise convs reading float maps stay float -------------------------------------------------

# a depthwise conv on the graph input (a float map), a 1 x 1 conv, a depthwise conv on
# that conv's codes, a 1 x 1 conv to the output
DEPTHWISE_ENTRY = """
graph main(%x: f32[1,2,4,4]) -> (%y) {
  const %wd: f32[2,1,3,3] = [[[[0.5, -0.25, 0.5], [0.25, 1.0, -0.5], [0.5, 0.25, -0.25]]], [[[-0.5, 0.25, 0.75], [1.0, -0.25, 0.5], [0.25, 0.5, 0.25]]]]
  const %w1: f32[3,2,1,1] = [[[[0.5]], [[-0.25]]], [[[0.75]], [[0.5]]], [[[-1.0]], [[0.25]]]]
  const %we: f32[3,1,3,3] = [[[[0.25, 0.5, -0.25], [0.5, 1.0, 0.5], [-0.25, 0.5, 0.25]]], [[[0.5, -0.5, 0.25], [0.25, 0.75, -0.25], [0.5, 0.25, 0.5]]], [[[-0.25, 0.25, 0.5], [0.5, 0.5, 0.25], [0.25, -0.5, 1.0]]]]
  const %w2: f32[2,3,1,1] = [[[[1.0]], [[-0.5]], [[0.25]]], [[[0.5]], [[0.5]], [[-0.75]]]]
  %d: f32[1,2,4,4] = Conv(%x, %wd) {kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2}
  %r: f32[1,2,4,4] = Relu(%d)
  %c: f32[1,3,4,4] = Conv(%r, %w1) {kernel_shape=[1, 1]}
  %e: f32[1,3,4,4] = Conv(%c, %we) {kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=3}
  %y: f32[1,2,4,4] = Conv(%e, %w2) {kernel_shape=[1, 1]}
}"""
ENTRY_REASON = "depthwise Conv reading a float map stays float"


def test_float_depthwise_entry_moves_the_integer_region_to_the_next_dense_conv() -> None:
    graph = ir.parse(DEPTHWISE_ENTRY)
    stats = collect_stats(graph, seeded_batches(graph), runner="interpreter", progress=False)
    result = check_rewrite("quantize", DEPTHWISE_ENTRY, """
    graph main(%x: f32[1,2,4,4]) -> (%y) {
      const %wd: f32[2,1,3,3] = ...
      const %w1_q: i8[3,2,1,1] = ...
      const %w1_scale: f32[3] = ...
      const %r_scale: f32[] = ...
      const %r_zero_point: u8[] = ...
      const %we_q: i8[3,1,3,3] = ...
      const %we_scale: f32[3] = ...
      const %c_scale: f32[] = ...
      const %c_zero_point: u8[] = ...
      const %w2_q: i8[2,3,1,1] = ...
      const %w2_scale: f32[2] = ...
      const %e_scale: f32[] = ...
      const %e_zero_point: u8[] = ...
      %d: f32[1,2,4,4] = Conv(%x, %wd) {kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2}   // float weights
      %r: f32[1,2,4,4] = Relu(%d)
      %r_q: u8[1,2,4,4] = QuantizeLinear(%r, %r_scale, %r_zero_point)   // the region starts here
      %w1_dq: f32[3,2,1,1] = DequantizeLinear(%w1_q, %w1_scale, _) {axis=0}
      %r_dq: f32[1,2,4,4] = DequantizeLinear(%r_q, %r_scale, %r_zero_point)
      %c: f32[1,3,4,4] = Conv(%r_dq, %w1_dq) {kernel_shape=[1, 1]}
      %c_q: u8[1,3,4,4] = QuantizeLinear(%c, %c_scale, %c_zero_point)
      %we_dq: f32[3,1,3,3] = DequantizeLinear(%we_q, %we_scale, _) {axis=0}
      %c_dq: f32[1,3,4,4] = DequantizeLinear(%c_q, %c_scale, %c_zero_point)
      %e: f32[1,3,4,4] = Conv(%c_dq, %we_dq) {kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=3}  // on codes: integer
      %e_q: u8[1,3,4,4] = QuantizeLinear(%e, %e_scale, %e_zero_point)
      %w2_dq: f32[2,3,1,1] = DequantizeLinear(%w2_q, %w2_scale, _) {axis=0}
      %e_dq: f32[1,3,4,4] = DequantizeLinear(%e_q, %e_scale, %e_zero_point)
      %y: f32[1,2,4,4] = Conv(%e_dq, %w2_dq) {kernel_shape=[1, 1]}
    }""", options={"stats": stats, "feature_maps": True, "float_depthwise_entry": True},
        stats={"ops_quantized": 3, "weights_quantized": 3, "activations_quantized": 3, "embeddings_quantized": 0,
               "feature_maps_quantized": 0, "biases_quantized": 0, "hard_activations_integer": 0,
               "tensors_quantized": 6, "skipped": 1, "bytes_before": 228, "bytes_after": 158},
        tolerances={F32: (QDQ_REL, QDQ_REL * 4.0)})
    skipped = result.graph.meta["quant_skipped"]
    assert [s["node"] for s in skipped] == ["d"] and ENTRY_REASON in skipped[0]["reason"]


def test_float_depthwise_entry_in_a_mobilenet_block_keeps_close_to_float() -> None:
    """Stem-like conv -> HardSwish -> depthwise (float: the stem is short and stays float)
    -> squeeze-excite -> 1 x 1: every dense conv after the depthwise one integer, and the
    output within HARD_COSINE of float."""
    g = Graph("stem_block")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [2, 3, 8, 8]))
    s = b.HardSwish(conv(b, x, 3, 16))  # 27 products per output: float under min_conv_reduction=32
    d = b.Relu(conv(b, s, 16, 16, group=16))
    pooled = b.ReduceMean(d, b.const(np.array([2, 3], np.int64)), keepdims=1)
    gate = b.HardSigmoid(conv(b, b.Relu(conv(b, pooled, 16, 4, k=1)), 4, 16, k=1), alpha=1 / 6, beta=0.5)
    g.outputs = [conv(b, b.Relu(conv(b, b.Mul(d, gate), 16, 16, k=1)), 16, 4, k=1)]
    reference = g.clone()
    result = quantized(g, batches=seeded_batches(g, 4, seed=1), feature_maps=True, min_conv_reduction=32,
                       float_depthwise_entry=True)
    reasons = [s["reason"] for s in result.graph.meta["quant_skipped"]]
    assert sum(ENTRY_REASON in r for r in reasons) == 1 and sum("min_conv_reduction" in r for r in reasons) == 1
    convs = [n for n in result.graph if n.op == "Conv"]
    integer = [n.inputs[1].producer is not None for n in convs]  # weights behind a DequantizeLinear
    assert integer == [False, False, True, True, True, True]  # stem, depthwise; SE x2, projection, head
    for feeds in seeded_batches(g, 2, seed=9):
        want, got = ir.run(reference, feeds)[0].reshape(-1), ir.run(result.graph, feeds)[0].reshape(-1)
        assert float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))) >= HARD_COSINE


@pytest.mark.parametrize("option", [True, False])
def test_depthwise_convs_on_codes_or_with_the_option_off_stay_integer(option: bool) -> None:
    """hard_swish_block's depthwise conv reads its expansion conv's codes: integer with
    the option on or off; DEPTHWISE_ENTRY's first depthwise conv is integer with it off."""
    graph = hard_swish_block()
    result = quantized(graph, batches=seeded_batches(graph, 4, seed=1), feature_maps=True,
                       float_depthwise_entry=option)
    assert not any(ENTRY_REASON in s["reason"] for s in result.graph.meta["quant_skipped"])
    assert all(n.inputs[1].producer is not None for n in result.graph if n.op == "Conv")
    if not option:
        g = quantized(ir.parse(DEPTHWISE_ENTRY), feature_maps=True).graph
        assert g.meta["quant_skipped"] == []
        assert all(n.inputs[1].producer is not None for n in g if n.op == "Conv")


def test_a_grouped_conv_that_is_not_depthwise_is_not_an_entry() -> None:
    """group 2 over 4 channels (two inputs per group) reading the graph input stays integer."""
    g = Graph("grouped")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [1, 4, 6, 6]))
    g.outputs = [conv(b, b.Relu(conv(b, x, 4, 4, group=2)), 4, 2, k=1)]
    result = quantized(g, feature_maps=True, float_depthwise_entry=True)
    assert result.graph.meta["quant_skipped"] == []
    assert all(n.inputs[1].producer is not None for n in result.graph if n.op == "Conv")


# -- spatial means -----------------------------------------------------------------------------------


def _head(axes: list[int], keepdims: int = 1) -> Graph:
    """conv -> HardSwish -> ReduceMean(axes) -> 1 x 1 conv: MobileNetV3's last conv and pool."""
    g = Graph("head")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [2, 4, 6, 6]))
    h = b.HardSwish(conv(b, x, 4, 8, k=1))
    pooled = b.ReduceMean(h, b.const(np.array(axes, np.int64)), keepdims=keepdims)
    g.outputs = [conv(b, pooled, 8, 3, k=1) if keepdims and len(axes) == 2 else pooled]
    return g


def test_a_spatial_mean_of_a_point_is_a_point_and_its_hard_swish_integer() -> None:
    # the mean is GlobalAveragePool, an integer op: the HardSwish before it has an
    # integer reader, so it takes its integer form, and the mean's codes feed the conv
    assert _kinds(_head([2, 3])) == [("conv", "Conv"), ("float", "HardSwish"), ("reducemean", "ReduceMean")]
    assert _kinds(_head([-1, -2])) == _kinds(_head([2, 3]))
    graph = _head([2, 3])
    reference = graph.clone()
    result = quantized(graph, batches=seeded_batches(graph, 4, seed=1), feature_maps=True)
    assert result.stats["hard_activations_integer"] == 1
    mean = next(n for n in result.graph if n.op == "ReduceMean")
    assert [r.op for r, _ in mean.outputs[0].uses] == ["QuantizeLinear"]
    for feeds in seeded_batches(graph, 2, seed=9):
        want, got = ir.run(reference, feeds)[0].reshape(-1), ir.run(result.graph, feeds)[0].reshape(-1)
        assert float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))) >= HARD_COSINE


@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([2, 3], 0), ([3], 1)])
def test_other_means_are_not_points(axes: list[int], keepdims: int) -> None:
    # a mean over channels, without keepdims or over one axis is no GlobalAveragePool, and
    # a HardSwish read only by it stays float
    assert _kinds(_head(axes, keepdims)) == [("conv", "Conv")]
