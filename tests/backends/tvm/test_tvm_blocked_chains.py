"""Channel blocks carried from a conv to the depthwise conv it feeds
(backends/tvm/blocked_chains.py, PackConstantWeights and the ConvTile / DepthwiseTile
schedules): which chains are found, the rewritten Relax function, the kernels' blocked
layouts, and agreement with TVM's default (unscheduled) build. No timing."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402
from tvm.relax import op as R  # noqa: E402

from requant.backends.tvm import pipeline, schedule_cpu  # noqa: E402
from tvm_schedule_helpers import scheduled_funcs  # noqa: E402
from requant.backends.tvm.blocked_chains import (  # noqa: E402
    blocked_constant, find_blocked_chains, per_channel_constant, per_channel_tensor)

RNG_SEED = 0
CONV_REL_TOL = 1e-5  # fp32: vs the unscheduled build, relative to the output's scale


def _module(x_shape, body) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def _activation(bb, y, kind: str):
    if kind == "silu":
        return bb.emit(R.multiply(y, R.sigmoid(y)))
    if kind == "relu6":
        return bb.emit(R.clip(y, 0.0, 6.0))
    if kind == "nan_relu":  # requant's ReLU lowering keeps NaN
        return bb.emit(R.where(R.isnan(y), y, R.maximum(y, relax.const(0.0, "float32"))))
    if kind == "hardswish":
        gate = bb.emit(R.divide(R.clip(R.add(y, relax.const(3.0, "float32")), 0.0, 6.0), relax.const(6.0, "float32")))
        return bb.emit(R.multiply(y, gate))
    return y


def _inverted_residual(x_shape, expand: int, k: int, stride: int, act: str = "silu", *,
                       head_groups: int = 1, leak: str | None = None) -> tvm.IRModule:
    """expansion conv (1 x 1) + bias + activation -> depthwise k x k conv + bias +
    activation; `leak` makes the expansion's activation also reach the output
    ("output") or a spatial mean ("mean"), `head_groups` > 1 makes the head grouped."""
    rng = np.random.default_rng(RNG_SEED + 3)
    c = x_shape[1]
    w1 = (rng.standard_normal((expand, c // head_groups, 1, 1)) * 0.3).astype(np.float32)
    b1 = rng.standard_normal((1, expand, 1, 1)).astype(np.float32)
    w2 = (rng.standard_normal((expand, 1, k, k)) * 0.3).astype(np.float32)
    b2 = rng.standard_normal((1, expand, 1, 1)).astype(np.float32)

    def body(bb, x):
        y = bb.emit(R.nn.conv2d(x, relax.const(w1), groups=head_groups))
        y = _activation(bb, bb.emit(R.add(y, relax.const(b1))), act)
        z = bb.emit(R.nn.conv2d(y, relax.const(w2), strides=[stride, stride], padding=[k // 2] * 4, groups=expand))
        z = _activation(bb, bb.emit(R.add(z, relax.const(b2))), act)
        if leak == "output":
            return relax.Tuple([z, y])
        if leak == "mean":
            return relax.Tuple([z, bb.emit(R.mean(y, axis=[2, 3], keepdims=True))])
        return z

    return _module(x_shape, body)


def _packed(mod: tvm.IRModule) -> tvm.IRModule:
    with pipeline.host_llvm_target():
        return tvm.transform.Sequential([relax.transform.FoldConstant(), schedule_cpu.PackConstantWeights()])(mod)


def _bindings_text(func: relax.Function) -> str:
    """One line per binding: the op (a call_tir's kernel name) and the output shape."""
    lines = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call):
                continue
            if isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.call_tir":
                op = value.args[0].name_hint
            else:
                op = value.op.name.removeprefix("relax.")
            shape = tuple(int(d) for d in value.ty.shape.values) if isinstance(value.ty, relax.TensorType) else ()
            lines.append(f"{op} -> {shape}")
    return "\n".join(lines)


def _assert_close_to_default(mod: tvm.IRModule, x: np.ndarray) -> None:
    got = pipeline.build_cpu(mod)
    ref = pipeline.build_cpu(mod, schedule=False)
    vm_got, vm_ref = relax.VirtualMachine(got, tvm.cpu()), relax.VirtualMachine(ref, tvm.cpu())
    outs_got, outs_ref = vm_got["main"](tvm.runtime.tensor(x)), vm_ref["main"](tvm.runtime.tensor(x))
    if not isinstance(outs_ref, tvm.runtime.Tensor):
        pairs = [(g.numpy(), r.numpy()) for g, r in zip(outs_got, outs_ref)]
    else:
        pairs = [(outs_got.numpy(), outs_ref.numpy())]
    for g, r in pairs:
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=0, atol=CONV_REL_TOL * np.abs(r).max())


# ----------------------------------------------------------------------------- the rewrite

BEFORE = """\
nn.conv2d -> (2, 96, 14, 14)
add -> (2, 96, 14, 14)
sigmoid -> (2, 96, 14, 14)
multiply -> (2, 96, 14, 14)
nn.conv2d -> (2, 96, 7, 7)
add -> (2, 96, 7, 7)
sigmoid -> (2, 96, 7, 7)
multiply -> (2, 96, 7, 7)"""

EXPECTED = """\
packed_conv2d_2x16x14x14_96c -> (2, 6, 14, 14, 16)
add -> (2, 6, 14, 14, 16)
sigmoid -> (2, 6, 14, 14, 16)
multiply -> (2, 6, 14, 14, 16)
packed_dw_conv2d_2x6x14x14x16 -> (2, 96, 7, 7)
add -> (2, 96, 7, 7)
sigmoid -> (2, 96, 7, 7)
multiply -> (2, 96, 7, 7)"""


def test_expansion_to_depthwise_carries_channel_blocks() -> None:
    """Before / Expected: the expansion conv writes [N, C/16, H, W, 16], its bias and
    SiLU run on that layout, the depthwise conv reads it; the depthwise output is NCHW."""
    mod = _inverted_residual((2, 16, 14, 14), 96, 3, 2)
    assert _bindings_text(mod["main"]) == BEFORE
    after = _packed(mod)
    assert _bindings_text(after["main"]) == EXPECTED
    chains = find_blocked_chains(relax.transform.FoldConstant()(mod)["main"])
    assert (len(chains.heads), len(chains.members), len(chains.ends)) == (1, 3, 1)
    # the bias constant of the chain is re-laid out as [1, C/16, 1, 1, 16]
    bias_add = after["main"].body.blocks[0].bindings[1].value
    assert schedule_cpu.constant_array(bias_add.args[1]).shape == (1, 6, 1, 1, 16)


@pytest.mark.parametrize("x_shape,expand,k,stride,act", [
    ((2, 16, 14, 14), 96, 3, 2, "silu"),       # ob = 32, stride 2
    ((1, 24, 28, 28), 144, 5, 1, "hardswish"),  # 5 x 5, 144 = 9 blocks of 16 (ob 16)
    ((2, 8, 7, 7), 48, 3, 1, "relu6"),          # 7-wide map, clip bounds as scalars
    ((1, 32, 9, 11), 64, 3, 2, "none"),         # bias only, odd sizes
    ((2, 16, 14, 14), 32, 3, 1, "nan_relu"),    # ReLU as where(isnan(y), y, max(y, 0))
])
def test_blocked_chain_matches_default_build(x_shape, expand: int, k: int, stride: int, act: str) -> None:
    mod = _inverted_residual(x_shape, expand, k, stride, act)
    assert len(find_blocked_chains(relax.transform.FoldConstant()(mod)["main"]).heads) == 1
    x = np.random.default_rng(RNG_SEED).standard_normal(x_shape).astype(np.float32)
    _assert_close_to_default(mod, x)


def _squeeze_excite_block(x_shape, expand: int, k: int, stride: int) -> tvm.IRModule:
    """EfficientNet's block: expansion + SiLU -> depthwise + SiLU -> squeeze-and-excite
    (spatial mean, two 1 x 1 convs, sigmoid gate times the map) -> projection conv."""
    rng = np.random.default_rng(RNG_SEED + 4)
    c = x_shape[1]
    squeezed = max(1, c // 4)
    weights = [(rng.standard_normal(shape) * 0.3).astype(np.float32) for shape in (
        (expand, c, 1, 1), (expand, 1, k, k), (squeezed, expand, 1, 1), (expand, squeezed, 1, 1), (c, expand, 1, 1))]
    biases = [rng.standard_normal((1, w.shape[0], 1, 1)).astype(np.float32) for w in weights]

    def conv(bb, x, i, **kw):
        return bb.emit(R.add(bb.emit(R.nn.conv2d(x, relax.const(weights[i]), **kw)), relax.const(biases[i])))

    def body(bb, x):
        y = _activation(bb, conv(bb, x, 0), "silu")
        y = _activation(bb, conv(bb, y, 1, strides=[stride, stride], padding=[k // 2] * 4, groups=expand), "silu")
        gate = _activation(bb, conv(bb, bb.emit(R.mean(y, axis=[2, 3], keepdims=True)), 2), "silu")
        gate = bb.emit(R.sigmoid(conv(bb, gate, 3)))
        return conv(bb, bb.emit(R.multiply(y, gate)), 4)

    return _module(x_shape, body)


def test_squeeze_excite_block_carries_blocks_through_the_gate() -> None:
    """Two chains: expansion -> depthwise, and depthwise -> projection through the
    SiLU, the spatial mean (an exit: [N, C/16, 1, 1, 16] reshaped to [N, C, 1, 1] for
    the squeeze convs) and the gate product (the gate reshaped into blocks)."""
    mod = _squeeze_excite_block((2, 16, 14, 14), 96, 3, 2)
    chains = find_blocked_chains(relax.transform.FoldConstant()(mod)["main"])
    assert (len(chains.heads), len(chains.ends), len(chains.exits)) == (2, 2, 1)
    lines = _bindings_text(_packed(mod)["main"]).splitlines()
    assert "packed_dw_conv2d_2x6x14x14x16c -> (2, 6, 7, 7, 16)" in lines  # reads and writes blocks
    assert "mean -> (2, 6, 1, 1, 16)" in lines and "reshape -> (2, 96, 1, 1)" in lines
    assert "reshape -> (2, 6, 1, 1, 16)" in lines  # the gate
    assert "packed_conv2d_2x6x7x7x16_16 -> (2, 16, 7, 7)" in lines  # the projection reads blocks
    _assert_close_to_default(mod, np.random.default_rng(RNG_SEED).standard_normal((2, 16, 14, 14)).astype(np.float32))


PADDED_SE_EXPECTED = """\
packed_conv2d_2x24x14x14_72c -> (2, 5, 14, 14, 16)
add -> (2, 5, 14, 14, 16)
sigmoid -> (2, 5, 14, 14, 16)
multiply -> (2, 5, 14, 14, 16)
packed_dw_conv2d_2x5x14x14x16c -> (2, 5, 7, 7, 16)
add -> (2, 5, 7, 7, 16)
sigmoid -> (2, 5, 7, 7, 16)
multiply -> (2, 5, 7, 7, 16)
mean -> (2, 5, 1, 1, 16)
reshape -> (2, 80, 1, 1)
strided_slice -> (2, 72, 1, 1)
packed_conv2d_2x72x1x1_6 -> (2, 6, 1, 1)
add -> (2, 6, 1, 1)
sigmoid -> (2, 6, 1, 1)
multiply -> (2, 6, 1, 1)
packed_conv2d_2x6x1x1_72 -> (2, 72, 1, 1)
add -> (2, 72, 1, 1)
sigmoid -> (2, 72, 1, 1)
nn.pad -> (2, 80, 1, 1)
reshape -> (2, 5, 1, 1, 16)
multiply -> (2, 5, 7, 7, 16)
packed_conv2d_2x5x7x7x16_24 -> (2, 24, 7, 7)
add -> (2, 24, 7, 7)"""


def test_channels_that_do_not_fill_blocks_carry_padding_lanes() -> None:
    """Before: the squeeze-and-excite block of the first test at MobileNetV3's 72
    channels. Expected: 5 blocks carried from the expansion through the depthwise conv
    to the projection; the mean's 80 lanes sliced back to 72 for the squeeze convs
    (6 channels: too few to pad into a block, they stay NCHW); the 72-channel gate
    zero-padded to 80 and reshaped into blocks. Agrees with the default build."""
    mod = _squeeze_excite_block((2, 24, 14, 14), 72, 3, 2)
    assert _bindings_text(mod["main"]).splitlines()[:9] == [
        f"{op} -> (2, 72, {hw}, {hw})" for hw in (14, 7) for op in ("nn.conv2d", "add", "sigmoid", "multiply")
    ] + ["mean -> (2, 72, 1, 1)"]
    assert _bindings_text(_packed(mod)["main"]) == PADDED_SE_EXPECTED
    _assert_close_to_default(mod, np.random.default_rng(RNG_SEED).standard_normal((2, 24, 14, 14)).astype(np.float32))


def test_padding_lanes_never_reach_a_result() -> None:
    """A chain op that makes NaN in every padding lane (y / y: the head's padding lanes
    are 0 / 0) and none in the real ones: the depthwise conv, the ungrouped end conv
    and the mean exit read only the 40 real lanes, so every output is finite and equal
    to the default build's."""
    rng = np.random.default_rng(RNG_SEED)
    w1 = rng.standard_normal((40, 16, 1, 1)).astype(np.float32)
    dw = (rng.standard_normal((40, 1, 3, 3)) * 0.3).astype(np.float32)
    w3 = (rng.standard_normal((8, 40, 3, 3)) * 0.1).astype(np.float32)

    def body(bb, x):
        y = bb.emit(R.nn.conv2d(x, relax.const(w1)))
        y = bb.emit(R.add(R.divide(y, y), y))  # 1 + y on real lanes, NaN on padding lanes
        z = bb.emit(R.nn.conv2d(y, relax.const(dw), padding=[1] * 4, groups=40))
        m = bb.emit(R.mean(z, axis=[2, 3], keepdims=True))
        return relax.Tuple([bb.emit(R.nn.conv2d(z, relax.const(w3), padding=[1] * 4)), m])

    mod = _module((2, 16, 14, 14), body)
    chains = find_blocked_chains(relax.transform.FoldConstant()(mod)["main"])
    assert (len(chains.heads), len(chains.ends), len(chains.exits)) == (2, 2, 1)
    x = rng.standard_normal((2, 16, 14, 14)).astype(np.float32)
    outs = relax.VirtualMachine(pipeline.build_cpu(mod), tvm.cpu())["main"](tvm.runtime.tensor(x))
    assert all(np.isfinite(o.numpy()).all() for o in outs)
    _assert_close_to_default(mod, x)


def test_spatial_mean_exit_and_ungrouped_padded_consumer_match_default_build() -> None:
    """A chain value also averaged over the map (the mean leaves the chain), and a
    chain that ends in an ungrouped 3 x 3 conv with padding (its padded copy stays in
    blocks)."""
    mean_leak = _inverted_residual((2, 16, 14, 14), 96, 3, 1, leak="mean")
    chains = find_blocked_chains(relax.transform.FoldConstant()(mean_leak)["main"])
    assert (len(chains.heads), len(chains.exits)) == (1, 1)
    x = np.random.default_rng(RNG_SEED).standard_normal((2, 16, 14, 14)).astype(np.float32)
    _assert_close_to_default(mean_leak, x)

    rng = np.random.default_rng(RNG_SEED)
    w1 = rng.standard_normal((32, 16, 1, 1)).astype(np.float32)
    w2 = (rng.standard_normal((24, 32, 3, 3)) * 0.1).astype(np.float32)
    plain = _module((2, 16, 14, 14), lambda bb, x_: R.nn.conv2d(
        bb.emit(R.nn.relu(bb.emit(R.nn.conv2d(x_, relax.const(w1))))), relax.const(w2), padding=[1] * 4))
    lines = _bindings_text(_packed(plain)["main"]).splitlines()
    assert lines[0] == "packed_conv2d_2x16x14x14_32c -> (2, 2, 14, 14, 16)"
    assert lines[-1] == "packed_conv2d_2x2x14x14x16_24 -> (2, 24, 14, 14)"
    _assert_close_to_default(plain, x)


@pytest.mark.parametrize("case", ["output", "grouped_head", "full_constant", "channel_mean", "spatial_gate"])
def test_chains_that_cannot_carry_blocks_stay_nchw(case: str) -> None:
    """A value of the chain that is a function output, a grouped head, a constant that
    varies along more than channels, a mean over channels, a computed operand that
    varies over the map: no chain, every value NCHW, and the result still agrees with
    the default build."""
    x_shape = (2, 16, 14, 14)
    if case == "output":
        mod = _inverted_residual(x_shape, 96, 3, 1, leak=case)
    elif case == "grouped_head":
        mod = _inverted_residual(x_shape, 96, 3, 1, head_groups=2)
    else:
        rng = np.random.default_rng(RNG_SEED)
        w1 = rng.standard_normal((32, 16, 1, 1)).astype(np.float32)
        dw = (rng.standard_normal((32, 1, 3, 3)) * 0.1).astype(np.float32)
        full = rng.standard_normal((1, 32, 14, 14)).astype(np.float32)

        def body(bb, x):
            y = bb.emit(R.nn.conv2d(x, relax.const(w1)))
            if case == "full_constant":
                y = bb.emit(R.add(y, relax.const(full)))
            elif case == "channel_mean":
                y = bb.emit(R.multiply(y, bb.emit(R.mean(y, axis=[1], keepdims=True))))
            else:  # a spatial gate [N, 1, H, W], computed
                y = bb.emit(R.multiply(y, bb.emit(R.sigmoid(R.mean(x, axis=[1], keepdims=True)))))
            return R.nn.conv2d(y, relax.const(dw), padding=[1] * 4, groups=32)

        mod = _module(x_shape, body)
    assert not find_blocked_chains(relax.transform.FoldConstant()(mod)["main"])
    lines = _bindings_text(_packed(mod)["main"]).splitlines()
    assert sum(line.startswith("packed_") for line in lines) == 2  # both convs still packed kernels
    assert all(line.split(" -> ")[1].count(",") == 3 for line in lines)  # every value 4-D (NCHW)
    _assert_close_to_default(mod, np.random.default_rng(RNG_SEED).standard_normal(x_shape).astype(np.float32))


def test_per_channel_constants_and_their_blocked_layout() -> None:
    shape = (2, 32, 7, 7)
    assert per_channel_constant(np.zeros((1, 32, 1, 1)), shape)
    assert per_channel_constant(np.zeros((32, 1, 1)), shape)
    assert per_channel_constant(np.zeros(()), shape)
    assert not per_channel_constant(np.zeros((1, 32, 7, 7)), shape)
    assert not per_channel_constant(np.zeros((2, 32, 1, 1)), shape)
    assert not per_channel_constant(np.zeros((1, 1, 1, 1, 1)), shape)
    bias = np.arange(32, dtype=np.float32).reshape(1, 32, 1, 1)
    blocked = blocked_constant(bias, 32)
    assert blocked.shape == (1, 2, 1, 1, 16)
    assert blocked[0, 1, 0, 0, 3] == bias[0, 19, 0, 0]
    assert blocked_constant(np.float32(2.0), 32) == np.float32(2.0)
    assert per_channel_tensor(relax.TensorType((2, 32, 1, 1), "float32"), shape)
    assert not per_channel_tensor(relax.TensorType((2, 1, 7, 7), "float32"), shape)
    assert not per_channel_tensor(relax.TensorType((3, 32, 1, 1), "float32"), shape)


# ----------------------------------------------------------------------------- the kernels


def _kernel_run(func: tirx.PrimFunc, *arrays, out_shape) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    args = [tvm.runtime.tensor(a) for a in arrays] + [tvm.runtime.tensor(np.zeros(out_shape, np.float32))]
    lib["main"](*args)
    return args[-1].numpy()


def _to_blocks(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // 16, 16, h, w).transpose(0, 1, 3, 4, 2))


@pytest.mark.parametrize("out_channels,width", [(96, 14), (48, 7), (40, 7)])
def test_conv_kernel_writes_channel_blocks(out_channels: int, width: int) -> None:
    """`packed_conv2d_func(out_blocked=True)`: out[n, k, h, w, l] is channel 16 k + l
    of the NCHW conv (exact against numpy's float64 sum at fp32 tolerance); 40
    channels fill 3 blocks, the last 8 lanes the zero-padded weights' zeros."""
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((2, 8, 5, width)).astype(np.float32)
    w = rng.standard_normal((out_channels, 8, 1, 1)).astype(np.float32)
    ob, _ = schedule_cpu.conv_tile(out_channels, width)
    func = schedule_cpu.packed_conv2d_func(x.shape, out_channels, [1, 1], [1, 1], [0, 0, 0, 0], [1, 1], out_blocked=True)
    blocks = -(-out_channels // 16)
    got = _kernel_run(func, x, schedule_cpu.pack_conv_weight(w, ob), out_shape=(2, blocks, 5, width, 16))
    ref = np.einsum("nchw,oc->nohw", x.astype(np.float64), w[:, :, 0, 0].astype(np.float64))
    ref = np.pad(ref, [(0, 0), (0, blocks * 16 - out_channels), (0, 0), (0, 0)])
    np.testing.assert_allclose(got, _to_blocks(ref), rtol=1e-5, atol=1e-5)


def test_depthwise_kernel_reads_channel_blocks() -> None:
    """`packed_depthwise_conv2d_func(in_blocked=True)` on the blocked input equals the
    NCHW kernel on the same map."""
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((2, 32, 9, 9)).astype(np.float32)
    w = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    geometry = dict(kernel=[3, 3], strides=[2, 2], padding=[1, 1, 1, 1], dilation=[1, 1])
    packed_w = schedule_cpu.pack_depthwise_weight(w)
    plain = _kernel_run(schedule_cpu.packed_depthwise_conv2d_func(x.shape, **geometry), x, packed_w, out_shape=(2, 32, 5, 5))
    blocked = _kernel_run(schedule_cpu.packed_depthwise_conv2d_func((2, 2, 9, 9, 16), **geometry, in_blocked=True),
                          _to_blocks(x), packed_w, out_shape=(2, 32, 5, 5))
    np.testing.assert_array_equal(blocked, plain)


def test_kernels_read_only_the_real_lanes_of_a_padded_block() -> None:
    """A 24-channel map carried in 2 blocks whose padding lanes hold NaN: the
    depthwise kernel (`in_channels=24`) gives the NCHW kernel's output, and the
    ungrouped kernel's reduction (`in_channels=24`) never reads a padding lane (NaN
    times a zero weight would be NaN); a block count that cannot carry the channels is
    refused."""
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((2, 24, 9, 9)).astype(np.float32)
    blocked = _to_blocks(np.pad(x, [(0, 0), (0, 8), (0, 0), (0, 0)], constant_values=np.nan))
    geometry = dict(kernel=[3, 3], strides=[2, 2], padding=[1, 1, 1, 1], dilation=[1, 1])
    dw = rng.standard_normal((24, 1, 3, 3)).astype(np.float32)
    packed_dw = schedule_cpu.pack_depthwise_weight(dw)
    plain = _kernel_run(schedule_cpu.packed_depthwise_conv2d_func(x.shape, **geometry), x, packed_dw,
                        out_shape=(2, 24, 5, 5))
    got = _kernel_run(schedule_cpu.packed_depthwise_conv2d_func(blocked.shape, **geometry, in_blocked=True,
                                                                in_channels=24), blocked, packed_dw, out_shape=(2, 24, 5, 5))
    np.testing.assert_array_equal(got, plain)
    w = rng.standard_normal((32, 24, 3, 3)).astype(np.float32)
    ob, _ = schedule_cpu.conv_tile(32, 5)
    args = ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1])
    plain = _kernel_run(schedule_cpu.packed_conv2d_func(x.shape, 32, *args), x, schedule_cpu.pack_conv_weight(w, ob),
                        out_shape=(2, 32, 5, 5))
    got = _kernel_run(schedule_cpu.packed_conv2d_func(blocked.shape, 32, *args, in_blocked=True, in_channels=24),
                      blocked, schedule_cpu.pack_conv_weight(w, ob), out_shape=(2, 32, 5, 5))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not carried in 2 blocks"):
        schedule_cpu.packed_conv2d_func(blocked.shape, 32, *args, in_blocked=True, in_channels=40)


def test_blocked_conv_epilogue_writes_whole_channel_vectors() -> None:
    """The scheduled head of a chain: its SiLU runs in 16-lane vectors straight into
    the [N, C/16, H, W, 16] output (no NCHW buffer, no transposing copy)."""
    funcs = scheduled_funcs(_inverted_residual((2, 16, 14, 14), 96, 3, 1))
    (head,) = [f for name, f in funcs.items() if name.startswith("fused_packed_conv2d_2x16x14x14_96c")]
    text = head.script()
    assert "T.vectorized(T.int64(16))" in text
    assert "(T.int64(2), T.int64(96), T.int64(14), T.int64(14))" not in text  # no NCHW buffer
    assert [int(d) for d in head.params[-1].shape] == [2, 6, 14, 14, 16]


def test_spatial_mean_of_blocks_accumulates_channel_vectors_per_block() -> None:
    """The squeeze-and-excite mean of a blocked map (BlockedMapReduction): parallel
    over (batch, channel block), the block's 16 channels one vector summed over the
    pixels in a per-task buffer (not "local": TVM would allocate it as a workspace per
    task), then divided."""
    funcs = scheduled_funcs(_squeeze_excite_block((2, 16, 14, 14), 96, 3, 2))
    (mean,) = [f for name, f in funcs.items() if name.startswith("mean")]
    text = mean.script()
    assert [int(d) for d in mean.params[0].shape] == [2, 6, 7, 7, 16]
    assert "T.parallel(T.int64(12))" in text  # 2 images x 6 channel blocks
    assert "T.vectorized(T.int64(16))" in text and 'scope="local"' not in text
