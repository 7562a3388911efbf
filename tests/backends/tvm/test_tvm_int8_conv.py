"""The TVM lowering of a quantized Conv (backends/tvm/lowering/conv.py): a Conv reading a
DequantizeLinear of 8-bit activation codes and a DequantizeLinear of constant int8
weight codes runs as an integer conv (int32 accumulation, the packed int8 / VNNI
kernel), equal to the interpreter's float conv of the dequantized operands within the
float32 rounding bound; Convs of other forms keep the float conv."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from canonical_testing import build_graph  # noqa: E402
from tvm import relax  # noqa: E402
from tvm_testing import run_tvm  # noqa: E402

from requant.backends.tvm import to_relax  # noqa: E402
from requant.backends.tvm.pipeline import build_cpu  # noqa: E402
from requant.ir import run  # noqa: E402

U8, F32 = "uint8", "float32"
SEED = 0
U = 2.0 ** -24  # float32 unit roundoff


def _quantized_conv(w_codes: np.ndarray, w_scale: np.ndarray, *, zero_point: int = 7, bias: bool = True,
                    w_zero: np.ndarray | None = None, group: int = 1, abs_operands: bool = False):
    """Conv(DQ(x codes, 0.05, zero_point), DQ(W codes, w_scale, axis 0) [, bias]) -> Relu."""
    rng = np.random.default_rng(SEED + 1)
    b = rng.standard_normal(w_codes.shape[0]).astype(np.float32)

    def body(bld, x):
        s_x = bld.const(np.array(0.05, np.float32))
        zp = bld.const(np.array(zero_point, np.uint8))
        xf = bld.DequantizeLinear(x, s_x, zp)
        w_inputs = [bld.const(w_codes), bld.const(w_scale)] + ([bld.const(w_zero)] if w_zero is not None else [])
        wf = bld.DequantizeLinear(*w_inputs, axis=0)
        if abs_operands:  # |x| conv |W|: the magnitude the rounding bound scales with
            return bld.Conv(bld.Abs(xf), bld.Abs(wf), pads=[1, 1, 1, 1], group=group)
        inputs = [xf, wf] + ([bld.const(b)] if bias else [])
        return bld.Relu(bld.Conv(*inputs, pads=[1, 1, 1, 1], group=group))

    channels = w_codes.shape[1] * group
    return build_graph({"x": (U8, [2, channels, 9, 9])}, body)


def _int32_convs(graph) -> int:
    mod = to_relax(graph)
    return sum(1 for block in mod["main"].body.blocks for b in block.bindings
               if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.nn.conv2d"
               and b.value.attrs.out_dtype == "int32")


def _weights(out_channels: int = 16, channels: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    codes = rng.integers(-127, 128, (out_channels, channels, 3, 3)).astype(np.int8)
    return codes, rng.uniform(0.001, 0.02, out_channels).astype(np.float32)


def test_quantized_conv_runs_as_integer_conv_within_the_rounding_bound() -> None:
    codes, scale = _weights()
    g = _quantized_conv(codes, scale)
    assert _int32_convs(g) == 1
    x = np.random.default_rng(SEED + 2).integers(0, 256, (2, 8, 9, 9)).astype(np.uint8)
    got = run_tvm(relax.VirtualMachine(build_cpu(to_relax(g)), tvm.cpu()), g, {"x": x})[0]
    want = run(g, {"x": x})[0]
    # float conv: K = 8 x 3 x 3 rounded products and sums; integer conv: exact, then int32 ->
    # float32, the scale product and the bias add (lower_integer's bound, ReLU keeps it)
    magnitude = run(_quantized_conv(codes, scale, abs_operands=True), {"x": x})[0]
    bound = (8 * 9 + 3) * U * magnitude + 2 * U * np.abs(want) + 1e-30
    assert np.all(np.abs(got - want) <= bound), float(np.max(np.abs(got - want) / bound))


@pytest.mark.parametrize("case", ["weight_zero_point", "groups", "per_tensor_scale"])
def test_which_convs_run_as_integer_convs(case: str) -> None:
    codes, scale = _weights()
    if case == "weight_zero_point":  # a non-zero weight zero point: the float conv stays
        g = _quantized_conv(codes, scale, w_zero=np.full(16, 3, np.int8))
        assert _int32_convs(g) == 0
    elif case == "groups":  # grouped convs keep the float conv (and its fast kernels)
        g = _quantized_conv(codes[:, :4], scale, group=2)
        assert _int32_convs(g) == 0
    else:  # one weight scale for the tensor: integer as well
        g = _quantized_conv(codes, scale[:1].reshape(()))
        assert _int32_convs(g) == 1
    x = np.random.default_rng(SEED + 3).integers(0, 256, (2, g.inputs[0].type.shape[1], 9, 9)).astype(np.uint8)
    got = run_tvm(relax.VirtualMachine(build_cpu(to_relax(g)), tvm.cpu()), g, {"x": x})[0]
    want = run(g, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ----------------------------------------------------------------------------- quantize epilogues
# Operands on power-of-two grids make both convs exact in float32 (every product a multiple of
# 2^-12, every partial sum far below 2^24 of them), so everything after them is the same float32
# operations in the same order: the build must give the interpreter's codes exactly.


def _exact_conv_weights(out_channels: int = 16, channels: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED + 4)
    codes = rng.integers(-127, 128, (out_channels, channels, 3, 3)).astype(np.int8)
    return codes, (2.0 ** -rng.integers(6, 9, out_channels)).astype(np.float32)


def _quantized_hardswish_conv():
    """int8 Conv -> Q/DQ -> the quantized HardSwish requant's quantize pass writes (x + 3
    quantized on [0, 6] to saturate, dequantized as / 6, times x) -> Q: three quantizes in
    one conv epilogue."""
    codes, scale = _exact_conv_weights()
    bias = np.random.default_rng(SEED + 5).integers(-64, 64, codes.shape[0]).astype(np.float32) / 4096

    def body(b, x):
        s = lambda v: b.const(np.array(v, np.float32))  # noqa: E731
        z = lambda v: b.const(np.array(v, np.uint8))  # noqa: E731
        xf = b.DequantizeLinear(x, s(2.0 ** -4), z(7))
        wf = b.DequantizeLinear(b.const(codes), b.const(scale), axis=0)
        y = b.Conv(xf, wf, b.const(bias), pads=[1, 1, 1, 1])
        yd = b.DequantizeLinear(b.QuantizeLinear(y, s(0.06), z(120)), s(0.06), z(120))
        gate = b.DequantizeLinear(b.QuantizeLinear(b.Add(yd, s(3.0)), s(6 / 255), z(0)), s(1 / 255), z(0))
        return b.QuantizeLinear(b.Mul(yd, gate), s(0.03), z(10))

    return build_graph({"x": (U8, [2, 8, 9, 9])}, body)


def test_a_quantized_hardswish_in_an_int8_conv_epilogue_gives_the_interpreters_codes() -> None:
    g = _quantized_hardswish_conv()
    assert _int32_convs(g) == 1
    x = np.random.default_rng(SEED + 6).integers(0, 256, (2, 8, 9, 9)).astype(np.uint8)
    got = run_tvm(relax.VirtualMachine(build_cpu(to_relax(g)), tvm.cpu()), g, {"x": x})[0]
    want = run(g, {"x": x})[0]
    assert len(np.unique(want)) > 20  # the codes span the range, not one saturated value
    np.testing.assert_array_equal(got, want)


def _isnan_calls(mod) -> int:
    return sum(1 for block in mod["main"].body.blocks for b in block.bindings
               if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.isnan")


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantize_after_a_float_conv_sends_nan_to_the_lowest_code(dtype: str) -> None:
    """NaN -> the lowest code and +-inf -> the end codes in a fused conv epilogue, without an
    isnan test (the saturating max gives it: the quantize reads its input once)."""
    codes, scale = _exact_conv_weights()
    w = codes.astype(np.float32) * scale[:, None, None, None]

    def body(b, x):
        zp = np.array(7 if dtype == "uint8" else -3, dtype)
        return b.QuantizeLinear(b.Conv(x, b.const(w), pads=[1, 1, 1, 1]), b.const(np.array(0.05, np.float32)),
                                b.const(zp))

    g = build_graph({"x": (F32, [2, 8, 9, 9])}, body)
    assert _isnan_calls(to_relax(g)) == 0
    x = np.random.default_rng(SEED + 7).integers(-128, 128, (2, 8, 9, 9)).astype(np.float32) / 16
    x[0, 0, 1, 1], x[0, 3, 7, 2], x[1, 5, 4, 4] = np.nan, np.inf, -np.inf
    got = run_tvm(relax.VirtualMachine(build_cpu(to_relax(g)), tvm.cpu()), g, {"x": x})[0]
    want = run(g, {"x": x})[0]
    lowest = np.iinfo(dtype).min
    assert (want[0, :, 0:3, 0:3] == lowest).all()  # the NaN's 3 x 3 neighbourhood
    assert (want == np.iinfo(dtype).max).any() and (want == lowest).sum() > 9 * 16
    np.testing.assert_array_equal(got, want)
