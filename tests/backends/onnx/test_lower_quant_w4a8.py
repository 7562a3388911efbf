"""lower_quant's W4A8 forms (backends/onnx/lower_quant.py): int4 weights per output channel
with static uint8 activations become MatMulIntegerToFloat / QAttention on `Cast(int4
codes, int8)` (the file keeps the 4-bit codes; ONNX Runtime folds the Cast when it loads
the model), and MatMulNBits takes `accuracy_level`.

(a) stats, (b) structure (the Cast of an int4 constant in front of the integer kernel,
QAttention's concatenated weights int4 too), (c) numerics: the interpreter and ONNX
Runtime on the lowered graph against the Q/DQ graph within the float32 rounding bound of
tests/lower_testing.py; accuracy_level 4 is ORT's own int8 activation path, compared
within 2% of the output scale (it quantizes the activation per block of K), (d) a group
scheme with quantized activations still has no integer kernel, and an accuracy level
outside 0..4 is refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from canonical_testing import run_pass
from lower_testing import check_lowering, ort_run, quantized_linear
from requant import ir
from requant.errors import RequantError
from requant.ir import run
from rotation_testing import attention
from requant.passes import get_pass
from requant.passes.calibration import collect_stats

MS = "com.microsoft."


def test_int4_channel_weights_with_u8_activations_use_the_int8_kernel():
    g, xs = quantized_linear(weight_scheme="int4-channel")
    result = check_lowering("lower_quant", g, xs)
    assert result.stats[f"op:{MS}MatMulIntegerToFloat"] == 1 and result.stats["skipped"] == 0
    (node,) = [n for n in g if n.op == f"{MS}MatMulIntegerToFloat"]
    cast = node.inputs[1].producer
    assert cast.op == "Cast" and cast.attrs["to"] in ("int8", 3) or str(cast.attrs["to"]).endswith("int8")
    assert cast.inputs[0].const is not None and cast.inputs[0].dtype.name == "int4"


def test_qattention_keeps_int4_codes():
    g = ir.parse(attention(causal=False))
    x = np.random.default_rng(3).standard_normal((1, 3, 8)).astype(np.float32)
    stats = collect_stats(g, [{"x": x}], runner="interpreter")
    get_pass("quantize", stats=stats, weight_scheme="int4-channel")(g)
    want = run(g, {"x": x})[0]
    result = run_pass("lower_quant", g)
    assert result.stats["op:com.microsoft.QAttention"] == 1
    (node,) = [n for n in g if n.op == "com.microsoft.QAttention"]
    w = node.inputs[1]
    assert w.producer.op == "Cast" and w.producer.inputs[0].dtype.name == "int4"
    assert w.producer.inputs[0].type.shape == (8, 24)
    scale = float(np.max(np.abs(want)))
    for got in (run(g, {"x": x})[0], ort_run(g, x)):
        assert float(np.max(np.abs(got - want))) <= 1e-5 * max(1.0, scale)


def test_matmul_nbits_accuracy_level_four():
    g, xs = quantized_linear(k=128, weight_only=True, weight_scheme="int4-g32")
    qdq = run(g, [xs])[0]
    result = run_pass("lower_quant", g, accuracy_level=4)
    assert result.stats[f"op:{MS}MatMulNBits"] == 1
    (node,) = [n for n in g if n.op == f"{MS}MatMulNBits"]
    assert node.attrs["accuracy_level"] == 4
    got = ort_run(g, xs)
    assert float(np.max(np.abs(got - qdq))) <= 0.02 * float(np.max(np.abs(qdq)))


def test_group_weights_with_quantized_activations_and_bad_levels():
    g, xs = quantized_linear(k=64, weight_scheme="int4-g32")
    result = run_pass("lower_quant", g)
    assert result.stats["skipped"] == 1
    assert "group-quantized weights" in g.meta["lower_skipped"][0]["reason"]
    with pytest.raises(RequantError, match="accuracy_level must be 0..4"):
        run_pass("lower_quant", quantized_linear(weight_only=True, weight_scheme="int4-g32")[0], accuracy_level=5)
