"""Float kernels of the TVM backend written as one PrimFunc each: the polynomial exp
(backends/tvm/lowering/_row.py) against float64; the float32 SDPA softmax as one
scheduled row kernel, against the interpreter's reference on rows that are ordinary,
fully masked, or hold NaN / +inf, at lengths that are and are not whole vectors; the
float max pool as one NaN-propagating reduction over its taps. No timing."""

from __future__ import annotations

import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax, te, tirx  # noqa: E402

from requant.backends.tvm import pipeline, schedule_cpu, to_relax  # noqa: E402
from requant.backends.tvm.lowering._row import exp_f32  # noqa: E402
from requant.ir import Builder, Graph, run, tensor_type  # noqa: E402

RNG_SEED = 0
#: float32 SDPA on the CPU schedule vs the interpreter: the exp within 2 ulp, sums
#: reassociated over 16 lanes, e * (1 / sum) for e / sum
FP32_TOL = dict(rtol=2e-5, atol=2e-6)
EXP_ULPS = 2.0
F32_TINY = float(np.finfo(np.float32).tiny)


def _exp_kernel(n: int):
    x = te.placeholder((n,), "float32")
    y = te.compute((n,), lambda i: exp_f32(x[i]))
    return tvm.compile(te.create_prim_func([x, y]), target="llvm")


def test_exp_f32_within_two_ulp_of_float64_and_zero_below_the_normal_range() -> None:
    x = np.concatenate([np.linspace(-87.3, 88.37, 200_001),
                        np.random.default_rng(RNG_SEED).uniform(-2, 2, 10_000),
                        [0.0, -0.0, 1e-30, -1e-30, -87.4, -100.0, -np.inf]]).astype(np.float32)
    out = tvm.runtime.tensor(np.empty_like(x))
    _exp_kernel(x.size)(tvm.runtime.tensor(x), out)
    got, ref = out.numpy(), np.exp(x.astype(np.float64))
    normal = ref >= F32_TINY
    ulps = np.abs(got[normal] - ref[normal]) / np.spacing(ref[normal].astype(np.float32)).astype(np.float64)
    assert ulps.max() <= EXP_ULPS
    assert got[x == 0].tolist() == [1.0, 1.0]
    np.testing.assert_array_equal(got[~normal], 0.0)


def _sdpa_graph(shape: tuple, mask_shape: tuple | None, dtype: str = "f32") -> Graph:
    g = Graph("sdpa")
    b = Builder(g)
    q, k, v = (b.input(name, tensor_type(dtype, shape)) for name in "qkv")
    mask = b.input("mask", tensor_type(dtype, mask_shape)) if mask_shape else None
    g.outputs = [b.ScaledDotProductAttention(q, k, v, mask) if mask is not None
                 else b.ScaledDotProductAttention(q, k, v)]
    return g


def _run_cpu(graph: Graph, feed: dict) -> np.ndarray:
    vm = relax.VirtualMachine(pipeline.build_cpu(to_relax(graph)), tvm.cpu())
    out = vm["main"](*(tvm.runtime.tensor(a) for a in feed.values()))
    return (out[0] if isinstance(out, tvm.ir.Array) or not hasattr(out, "numpy") else out).numpy()


@pytest.mark.parametrize("tokens", [5, 16, 64, 197])
def test_sdpa_softmax_row_kernel_matches_interpreter_on_hostile_rows(tokens: int) -> None:
    rng = np.random.default_rng(RNG_SEED + tokens)
    shape = (2, 3, tokens, 8)
    feed = {n: rng.standard_normal(shape).astype(np.float32) for n in "qkv"}
    mask = rng.standard_normal((2, 3, tokens, tokens)).astype(np.float32)
    mask[0, 0, 1, :] = -np.inf          # fully masked: 0
    mask[0, 1, 2, tokens // 2] = np.nan  # NaN in the row: 0 (the sum is NaN there)
    mask[1, 2, 0, -1] = np.inf          # +inf in the row: 0
    mask[1, 0, 3, ::2] = -np.inf        # partly masked: an ordinary row
    feed["mask"] = mask
    graph = _sdpa_graph(shape, mask.shape)
    got, want = _run_cpu(graph, feed), run(graph, feed)[0]
    assert not np.isnan(want).any()
    np.testing.assert_array_equal(got[0, 0, 1], 0.0)
    np.testing.assert_array_equal(got[0, 1, 2], 0.0)
    np.testing.assert_array_equal(got[1, 2, 0], 0.0)
    np.testing.assert_allclose(got, want, **FP32_TOL)


def _scheduled(graph: Graph) -> list[tirx.PrimFunc]:
    target = pipeline.host_llvm_target()
    seq = tvm.transform.Sequential([
        relax.transform.FoldConstant(), schedule_cpu.FastMath(), relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
        schedule_cpu.schedule_cpu_module(target)])
    with target:
        out = seq(to_relax(graph))
    return {gv.name_hint: f for gv, f in out.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_sdpa_softmax_is_one_parallel_row_kernel_with_vector_exponentials() -> None:
    """197 tokens: 12 whole vectors and a padded one per row."""
    funcs = _scheduled(_sdpa_graph((2, 3, 197, 8), None))
    softmax = [f for name, f in funcs.items() if "attention_softmax" in name]
    assert len(softmax) == 1
    assert not [name for name in funcs if name.startswith(("max", "sum")) or "exp" in name]
    text = softmax[0].script()
    assert "T.parallel(" in text
    # the exponentials (padded to whole vectors) run 16 lanes wide
    assert f"T.vectorized(T.int64({schedule_cpu.LANES}))" in text
    # the row's max, exponentials and sum run over whole vectors, the last one (whose
    # reads are clamped to the row) apart; each lane partial one vector per step
    for stage in ("row_stage_lanes_top_update_ax4", "row_stage_exp_ax3_0", "row_stage_lanes_total_update_ax4"):
        assert f'"{stage}0_partition"' in text and f'"{stage}1_partition"' in text
    lines = text.splitlines()
    updates = [i for i, line in enumerate(lines) if re.search(r'sblock\("row_stage_lanes_\w+_update_ax4\d"\)', line)]
    assert len(updates) == 4
    assert all(f"T.vectorized(T.int64({schedule_cpu.LANES}))" in lines[i - 1] for i in updates)
    # no "local" buffer: TVM allocates one per row as a workspace (a call each)
    assert 'scope="local"' not in text


def test_float64_sdpa_keeps_the_relax_softmax() -> None:
    funcs = _scheduled(_sdpa_graph((1, 2, 7, 4), None, "f64"))
    assert not [name for name in funcs if "attention_softmax" in name]
    rng = np.random.default_rng(RNG_SEED)
    graph = _sdpa_graph((1, 2, 7, 4), None, "f64")
    feed = {n: rng.standard_normal((1, 2, 7, 4)) for n in "qkv"}
    np.testing.assert_allclose(_run_cpu(graph, feed), run(graph, feed)[0], rtol=1e-12)


def _pool_graph(dtype: str, shape: tuple, **attrs) -> Graph:
    g = Graph("pool")
    b = Builder(g)
    g.outputs = [b.MaxPool(b.input("x", tensor_type(dtype, shape)), **attrs)]
    return g


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),            # ResNet's stem pool
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),                  # windows past the input
    dict(kernel_shape=[2, 3], strides=[1, 2], dilations=[2, 1], pads=[1, 0, 0, 2]),
])
def test_max_pool_is_one_kernel_that_propagates_nan(attrs: dict) -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    x[0, 0, 4, 4] = np.nan
    x[1, 2, 0, 0] = np.nan   # in the corner windows, next to the padding
    x[1, 1, 5, :] = np.inf
    x[0, 2] = -np.inf        # a plane of -inf: its max is -inf, not the padding's
    graph = _pool_graph("f32", x.shape, **attrs)
    funcs = _scheduled(graph)
    pools = [f for name, f in funcs.items() if schedule_cpu.WINDOW_BLOCK in name]
    assert len(pools) == 1 and not [name for name in funcs if "isnan" in name]
    assert f"T.parallel(T.int64({x.shape[0] * x.shape[1]}))" in pools[0].script()  # every plane a task
    got, want = _run_cpu(graph, {"x": x}), run(graph, {"x": x})[0]
    assert np.isnan(want).any()
    np.testing.assert_array_equal(got, want)  # a max selects one of its inputs: exact


def _conv_activation_graph(activation: str, shape: tuple) -> Graph:
    """x -> Conv 1x1 -> `activation` against constants (Relu; Clip to [0, 6]; Max with a
    constant 0; Max with the conv's input, which is no constant)."""
    rng = np.random.default_rng(RNG_SEED)
    g = Graph("conv_act")
    b = Builder(g)
    x = b.input("x", tensor_type("f32", shape))
    y = b.Conv(x, b.const(rng.standard_normal((shape[1], shape[1], 1, 1)).astype(np.float32) * 0.3),
               kernel_shape=[1, 1])
    if activation == "Relu":
        y = b.Relu(y)
    elif activation == "Clip":
        y = b.Clip(y, b.const(np.array(0.0, np.float32)), b.const(np.array(6.0, np.float32)))
    elif activation == "MaxConst":
        y = b.Max(y, b.const(np.zeros((1, shape[1], 1, 1), np.float32)))
    else:
        y = b.Max(y, x)
    g.outputs = [y]
    return g


@pytest.mark.parametrize("activation, nan_tests", [("Relu", 1), ("Clip", 1), ("MaxConst", 1), ("MaxInput", 2)])
def test_max_against_a_constant_tests_only_the_other_operand_for_nan(activation: str, nan_tests: int) -> None:
    """Against NaN-free constants, max / min and Clip test only x for NaN (one isnan; a
    Clip's max and min share it); against a computed operand both are tested."""
    x = np.random.default_rng(RNG_SEED).standard_normal((2, 8, 6, 6)).astype(np.float32) * 4
    x[0, 3, 2, 2] = np.nan   # NaN in every output channel at that pixel
    x[1, 0, 5, 1] = np.inf
    x[1, 1, 0, 0] = -np.inf
    graph = _conv_activation_graph(activation, x.shape)
    text = "".join(f.script() for f in _scheduled(graph).values())
    assert text.count("T.isnan(") == nan_tests
    with np.errstate(invalid="ignore"):  # inf * 0-weight sums in the reference
        want = run(graph, {"x": x})[0]
    got = _run_cpu(graph, {"x": x})
    assert np.isnan(want[0, :, 2, 2]).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    keep = ~np.isnan(want)
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, atol=1e-5)


def test_integer_max_pool_keeps_the_relax_pool() -> None:
    x = np.random.default_rng(RNG_SEED).integers(-128, 128, (1, 2, 6, 6)).astype(np.int8)
    graph = _pool_graph("i8", x.shape, kernel_shape=[2, 2], strides=[2, 2])
    assert not [name for name in _scheduled(graph) if schedule_cpu.WINDOW_BLOCK in name]
    np.testing.assert_array_equal(_run_cpu(graph, {"x": x}), run(graph, {"x": x})[0])


def _layer_norm_graph(shape: tuple, axis: int = -1, bias: bool = True, outputs: int = 1) -> Graph:
    rng = np.random.default_rng(RNG_SEED)
    g = Graph("ln")
    b = Builder(g)
    affine = shape[axis:]
    scale = b.const((1 + 0.1 * rng.standard_normal(affine)).astype(np.float32))
    shift = b.const((0.1 * rng.standard_normal(affine)).astype(np.float32)) if bias else None
    x = b.input("x", tensor_type("f32", shape))
    ln = b.LayerNormalization(x, scale, shift, axis=axis, epsilon=1e-5, _outputs=outputs) if bias else \
        b.LayerNormalization(x, scale, axis=axis, epsilon=1e-5, _outputs=outputs)
    g.outputs = list(ln) if outputs > 1 else [ln]
    return g


@pytest.mark.parametrize("width,bias", [(384, True), (80, True), (100, False), (7, True)])
def test_layer_norm_row_kernel_matches_interpreter(width: int, bias: bool) -> None:
    """16, 16, 4 and 1 lanes; a row holding inf or NaN is NaN, as in the reference."""
    rng = np.random.default_rng(RNG_SEED + width)
    x = (rng.standard_normal((3, 5, width)) * 3 + 1).astype(np.float32)
    x[0, 1, 0] = np.inf
    x[2, 4, width // 2] = np.nan
    graph = _layer_norm_graph(x.shape, bias=bias)
    funcs = _scheduled(graph)
    kernels = [f for name, f in funcs.items() if "layer_norm" in name]
    assert len(kernels) == 1 and not [name for name in funcs if name.startswith("mean")]
    assert "T.parallel(" in kernels[0].script()
    with np.errstate(invalid="ignore"):  # the reference's inf - inf
        want = run(graph, {"x": x})[0]
    got = _run_cpu(graph, {"x": x})
    assert np.isnan(want[0, 1]).all() and np.isnan(want[2, 4]).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, **FP32_TOL)


@pytest.mark.parametrize("case", ["two_axes", "mean_output"])
def test_layer_norm_over_several_axes_or_with_statistics_keeps_the_relax_ops(case: str) -> None:
    x = np.random.default_rng(RNG_SEED).standard_normal((2, 4, 6)).astype(np.float32)
    graph = _layer_norm_graph(x.shape, axis=1) if case == "two_axes" else _layer_norm_graph(x.shape, outputs=2)
    assert not [name for name in _scheduled(graph) if name.startswith("layer_norm")]
    got = _run_cpu(graph, {"x": x})
    np.testing.assert_allclose(got, run(graph, {"x": x})[0], **FP32_TOL)
