"""requant's CPU schedules (backends/tvm/schedule_cpu.py) and build pipeline
(backends/tvm/pipeline.py): scheduled results agree with numpy / TVM's default build,
the heavy kernels are parallel, vectorised and read pre-packed weights. No timing."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402
from tvm.relax import op as R  # noqa: E402

from requant.backends.tvm import pipeline, schedule_cpu  # noqa: E402
from tvm_schedule_helpers import scheduled_funcs as _scheduled_funcs  # noqa: E402

RNG_SEED = 0
FP32_TOL = dict(rtol=1e-4, atol=1e-4)


def _module(params: list, body) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def _run(ex, *arrays) -> np.ndarray:
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(a) for a in arrays)).numpy()


def _var(name: str, shape, dtype: str = "float32") -> relax.Var:
    return relax.Var(name, relax.TensorType(shape, dtype))


def _loop_kinds(func: tirx.PrimFunc) -> set[str]:
    """The loop kinds in the TVMScript of `func` ("parallel", "vectorized", ...)."""
    text = func.script()
    return {kind for kind in ("parallel", "vectorized", "unroll") if f"T.{kind}(" in text}


PARALLEL, VECTORIZED = "parallel", "vectorized"


# ----------------------------------------------------------------------------- dense


@pytest.mark.parametrize("m,k,n", [(64, 384, 384), (37, 100, 50), (5, 64, 33), (1, 16, 7)])
def test_dense_constant_weight_matches_numpy(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(RNG_SEED)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    mod = _module([_var("x", (m, k))], lambda bb, x_: R.add(R.matmul(x_, relax.const(w)), relax.const(b)))
    got = _run(pipeline.build_cpu(mod), x)
    np.testing.assert_allclose(got, x @ w + b, rtol=1e-4, atol=1e-3)


def test_dense_3d_input_with_gelu_epilogue_matches_default_build() -> None:
    rng = np.random.default_rng(RNG_SEED)
    w = (rng.standard_normal((48, 80)) * 0.2).astype(np.float32)
    x = rng.standard_normal((3, 10, 48)).astype(np.float32)
    b = rng.standard_normal(80).astype(np.float32)
    mod = _module([_var("x", (3, 10, 48))],
                  lambda bb, x_: R.nn.gelu(R.add(R.matmul(x_, R.permute_dims(relax.const(w.T.copy()))), relax.const(b))))
    np.testing.assert_allclose(_run(pipeline.build_cpu(mod), x), _run(pipeline.build_cpu(mod, schedule=False), x),
                               rtol=1e-4, atol=1e-5)


def test_dense_symbolic_batch_matches_numpy() -> None:
    rng = np.random.default_rng(RNG_SEED)
    w = rng.standard_normal((24, 40)).astype(np.float32)
    n = tirx.Var("n", "int64")
    mod = _module([_var("x", (n, 24))], lambda bb, x_: R.matmul(x_, relax.const(w)))
    ex = pipeline.build_cpu(mod)
    for rows in (1, 13, 64):
        x = rng.standard_normal((rows, 24)).astype(np.float32)
        np.testing.assert_allclose(_run(ex, x), x @ w, rtol=1e-4, atol=1e-4)


def test_dense_kernel_is_packed_parallel_and_vectorised() -> None:
    w = np.ones((64, 96), np.float32)
    funcs = _scheduled_funcs(_module([_var("x", (128, 64))], lambda bb, x_: R.matmul(x_, relax.const(w))))
    dense = [f for name, f in funcs.items() if "packed_dense" in name]
    assert len(dense) == 1
    func = dense[0]
    w_param = func.params[1]
    assert [int(d) for d in w_param.shape] == [96 // schedule_cpu.NR, 64, schedule_cpu.NR]
    assert {PARALLEL, VECTORIZED} <= _loop_kinds(func)
    assert func.attrs["tirx.is_scheduled"]


def _update_block_predicates(func: tirx.PrimFunc, block: str) -> list[str] | None:
    """The `T.where` lines of block `block` in `func`'s script (None: no such block)."""
    lines = func.script().splitlines()
    starts = [i for i, line in enumerate(lines) if f'T.sblock("{block}")' in line]
    if not starts:
        return None
    found = []
    for i in starts:
        indent = len(lines[i]) - len(lines[i].lstrip())
        for line in lines[i + 1:]:
            if line.strip() and len(line) - len(line.lstrip()) <= indent:
                break
            if "T.where(" in line:
                found.append(line.strip())
    return found


@pytest.mark.parametrize("rows", [197, 9, 1])
def test_dense_row_tail_is_padded_not_predicated(rows: int) -> None:
    """Rows (and columns) that are not a multiple of the tile: the accumulator runs over
    padded rows with no bounds check; only the write-back checks the real extent."""
    w = np.ones((64, 50), np.float32)
    funcs = _scheduled_funcs(_module([_var("x", (2, rows, 64))], lambda bb, x_: R.matmul(x_, relax.const(w))))
    (func,) = [f for name, f in funcs.items() if "packed_dense" in name]
    assert _update_block_predicates(func, "packed_dense_update") == []
    assert _update_block_predicates(func, "packed_dense_trim")  # the write-back checks rows / columns


def test_dense_row_tile_pads_few_rows() -> None:
    assert schedule_cpu.dense_row_tile(None) == schedule_cpu.MR
    for rows in range(1, schedule_cpu.MR_MAX + 1):
        assert schedule_cpu.dense_row_tile(rows) == rows
    for rows in (13, 65, 197, 394, 511):
        mr = schedule_cpu.dense_row_tile(rows)
        assert schedule_cpu.MR_MIN <= mr <= schedule_cpu.MR_MAX and -(-rows // mr) * mr - rows <= 2, (rows, mr)
    assert schedule_cpu.dense_tiles_per_block(18, 11) == 3  # 18 tiles of 11 rows: 6 blocks of 3, none spare
    assert schedule_cpu.dense_tiles_per_block(3, 8) == 3


@pytest.mark.parametrize("shape", [(2, 197, 48), (3, 13, 48), (197, 48)])
def test_dense_with_row_tail_and_epilogue_matches_default_build(shape) -> None:
    rng = np.random.default_rng(RNG_SEED)
    w = (rng.standard_normal((48, 50)) * 0.2).astype(np.float32)
    b = rng.standard_normal(50).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    mod = _module([_var("x", shape)], lambda bb, x_: R.nn.gelu(R.add(R.matmul(x_, relax.const(w)), relax.const(b))))
    np.testing.assert_allclose(_run(pipeline.build_cpu(mod), x), _run(pipeline.build_cpu(mod, schedule=False), x),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape,kernel_rows", [
    ((197, 2, 48), [394, 48]),  # sequence-first (torch MultiheadAttention's in / out projections): 2-row tiles
    ((5, 1, 3, 48), [15, 48]),  # every leading dim flattened
    ((2, 197, 48), [2, 197, 48]),  # the row axis fills whole tiles already: kept
    ((3, 6, 48), [3, 6, 48]),  # MR_MIN rows: kept
])
def test_dense_short_row_axis_runs_on_flattened_rows(shape, kernel_rows) -> None:
    """A dense whose last-but-one axis is shorter than the smallest full register tile
    (MR_MIN) runs on its leading dims flattened into rows (a reshape each side); the
    result, with its bias and GELU after, equals TVM's default build."""
    rng = np.random.default_rng(RNG_SEED)
    w = (rng.standard_normal((48, 50)) * 0.2).astype(np.float32)
    b = rng.standard_normal(50).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    mod = _module([_var("x", shape)], lambda bb, x_: R.nn.gelu(R.add(R.matmul(x_, relax.const(w)), relax.const(b))))
    # the dense kernel, and where its epilogue fused, the fused kernel too (FuseTIR leaves both)
    dense = [f for name, f in _scheduled_funcs(mod).items() if "packed_dense" in name]
    assert dense and all([int(d) for d in f.params[0].shape] == kernel_rows for f in dense)
    assert all(_update_block_predicates(f, "packed_dense_update") == [] for f in dense)
    np.testing.assert_allclose(_run(pipeline.build_cpu(mod), x), _run(pipeline.build_cpu(mod, schedule=False), x),
                               rtol=1e-4, atol=1e-5)


def test_int8_dense_short_row_axis_runs_on_flattened_rows() -> None:
    rng = np.random.default_rng(RNG_SEED)
    w = rng.integers(-128, 128, (64, 40)).astype(np.int8)
    mod = _module([_var("x", (13, 2, 64), "uint8")],
                  lambda bb, x_: R.matmul(R.astype(x_, "int32"), R.astype(relax.const(w), "int32")))
    (func,) = [f for name, f in _scheduled_funcs(mod).items() if "u8s8" in name]
    assert [int(d) for d in func.params[0].shape] == [26, 64]
    x = rng.integers(0, 256, (13, 2, 64)).astype(np.uint8)
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod), x),
                                  (x.astype(np.int64) @ w.astype(np.int64)).astype(np.int32))


def test_pack_weight_fp32_layout() -> None:
    w = np.arange(5 * 40, dtype=np.float32).reshape(5, 40)
    p = schedule_cpu.pack_weight_fp32(w, nr=16)
    assert p.shape == (3, 5, 16)
    assert p[1, 2, 3] == w[2, 16 + 3]
    assert (p[2, :, 8:] == 0).all()  # padded columns


def test_non_constant_weight_is_not_packed() -> None:
    funcs = _scheduled_funcs(_module([_var("a", (16, 8)), _var("b", (8, 32))], lambda bb, a, b: R.matmul(a, b)))
    assert not any("packed" in name for name in funcs)


# ----------------------------------------------------------------------------- batch matmul


@pytest.mark.parametrize("shape_a,shape_b", [((2, 3, 64, 32), (2, 3, 32, 64)), ((2, 3, 13, 7), (2, 3, 7, 19))])
def test_batch_matmul_matches_numpy(shape_a, shape_b) -> None:
    rng = np.random.default_rng(RNG_SEED)
    a = rng.standard_normal(shape_a).astype(np.float32)
    b = rng.standard_normal(shape_b).astype(np.float32)
    mod = _module([_var("a", shape_a), _var("b", shape_b)],
                  lambda bb, a_, b_: R.multiply(R.matmul(a_, b_), relax.const(0.5, "float32")))
    ex = pipeline.build_cpu(mod)
    np.testing.assert_allclose(_run(ex, a, b), 0.5 * (a @ b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tokens", [64, 197])
def test_batch_matmul_is_padded_parallel_and_vectorised(tokens: int) -> None:
    """Attention's QK^T at 197 tokens: rows and columns padded, no bounds check in the
    accumulator update."""
    funcs = _scheduled_funcs(_module([_var("a", (4, tokens, 32)), _var("b", (4, 32, tokens))],
                                     lambda bb, a, b: R.matmul(a, b)))
    (func,) = [f for name, f in funcs.items() if "padded_bmm" in name]
    assert {PARALLEL, VECTORIZED} <= _loop_kinds(func)
    assert _update_block_predicates(func, "padded_bmm_update") == []


def test_batch_matmul_symbolic_and_broadcast_batches_match_numpy() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n = tirx.Var("n", "int64")
    mod = _module([_var("a", (n, 3, 13, 8)), _var("b", (n, 3, 8, 21))], lambda bb, a_, b_: R.matmul(a_, b_))
    ex = pipeline.build_cpu(mod)
    for batch in (1, 2):
        a = rng.standard_normal((batch, 3, 13, 8)).astype(np.float32)
        b = rng.standard_normal((batch, 3, 8, 21)).astype(np.float32)
        np.testing.assert_allclose(_run(ex, a, b), a @ b, rtol=1e-4, atol=1e-4)
    # batch dims that broadcast: not the padded kernel, TVM's matmul (MatmulTile)
    a = rng.standard_normal((2, 5, 8)).astype(np.float32)
    b = rng.standard_normal((1, 8, 7)).astype(np.float32)
    mod = _module([_var("a", a.shape), _var("b", b.shape)], lambda bb, a_, b_: R.matmul(a_, b_))
    assert not any("padded_bmm" in name for name in _scheduled_funcs(mod))
    np.testing.assert_allclose(_run(pipeline.build_cpu(mod), a, b), a @ b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("vnni", [True, False])
@pytest.mark.parametrize("tokens,depth,zero_point", [(64, 32, 7), (17, 17, 0), (5, 6, 255)])
def test_int8_batch_matmul_kernel_is_exact(tokens: int, depth: int, zero_point: int, vnni: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Integer attention, (uint8 - zero point) @ int8 in int32 (QK^T: depth 32; PV over 17
    tokens: a depth that is no multiple of 4): the int8 batch matmul kernel, on a VNNI
    CPU each 16 x 4 step one vpdpbusd, else a vector loop; the same integers as numpy."""
    if vnni and not _VNNI_HOST:
        pytest.skip("this CPU has no AVX-512 VNNI")
    rules = [r for r in schedule_cpu.default_rules() if not isinstance(r, schedule_cpu.BatchMatmulVNNI)]
    monkeypatch.setattr(schedule_cpu, "default_rules", lambda: [schedule_cpu.BatchMatmulVNNI(vnni=vnni), *rules])
    rng = np.random.default_rng(RNG_SEED)
    a = rng.integers(0, 256, (2, 3, tokens, depth)).astype(np.uint8)
    a[0, 0, 0, :] = 255
    b = rng.integers(-128, 128, (2, 3, depth, tokens)).astype(np.int8)
    b[0, 0, :, 0] = -128

    def body(bb, a_, b_):
        a32 = R.subtract(R.astype(a_, "int32"), relax.const(zero_point, "int32"))
        return R.matmul(a32, R.astype(b_, "int32"), out_dtype="int32")

    mod = _module([_var("a", a.shape, "uint8"), _var("b", b.shape, "int8")], body)
    (func,) = [f for name, f in _scheduled_funcs(mod).items() if "padded_bmm_u8s8" in name]
    assert (schedule_cpu.VNNI_INTRINSIC in func.script()) == vnni
    assert PARALLEL in _loop_kinds(func)
    want = (a.astype(np.int64) - zero_point) @ b.astype(np.int64)
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod, vnni=True), a, b), want.astype(np.int32))


def test_int32_batch_matmul_of_wider_operands_takes_the_padded_kernel_and_is_exact() -> None:
    """int16 operands (no vpdpbusd form): the int32 padded batch matmul, exact."""
    rng = np.random.default_rng(RNG_SEED)
    a = rng.integers(-3000, 3000, (2, 3, 17, 9)).astype(np.int16)
    b = rng.integers(-3000, 3000, (2, 3, 9, 17)).astype(np.int16)
    mod = _module([_var("a", a.shape, "int16"), _var("b", b.shape, "int16")],
                  lambda bb, a_, b_: R.matmul(R.astype(a_, "int32"), R.astype(b_, "int32"), out_dtype="int32"))
    names = list(_scheduled_funcs(mod))
    assert any("padded_bmm" in name for name in names) and not any("u8s8" in name for name in names)
    want = a.astype(np.int64) @ b.astype(np.int64)
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod), a, b), want.astype(np.int32))


# ----------------------------------------------------------------------------- softmax, LayerNorm, GELU


def test_softmax_layernorm_gelu_match_default_build() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((4, 10, 96)).astype(np.float32)
    gamma = rng.standard_normal(96).astype(np.float32)
    beta = rng.standard_normal(96).astype(np.float32)

    def body(bb, x_):
        s = bb.emit(R.nn.softmax(x_, axis=-1))
        ln = bb.emit(R.nn.layer_norm(R.add(x_, s), relax.const(gamma), relax.const(beta), [-1]))
        return R.nn.gelu(ln)

    mod = _module([_var("x", x.shape)], body)
    got = _run(pipeline.build_cpu(mod), x)
    ref = _run(pipeline.build_cpu(mod, schedule=False), x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)  # fast exp/erf: ~1e-7 relative


def test_sigmoid_takes_the_polynomial_exp_and_matches_float64() -> None:
    """float32 sigmoid (SiLU's gate) -> 1 / (1 + fast_exp(-x)): vectorised, within a few
    float32 ulps of the float64 value, saturating cleanly at both ends."""
    x = np.concatenate([np.random.default_rng(RNG_SEED).standard_normal(4000) * 8,
                        [-200.0, -89.0, -88.0, -30.0, -1e-3, 0.0, 1e-3, 30.0, 88.0, 89.0, 200.0]]).astype(np.float32)
    x = x.reshape(1, -1)
    mod = _module([_var("x", x.shape)], lambda bb, x_: R.multiply(x_, R.sigmoid(x_)))
    names = "".join(_scheduled_funcs(mod))
    assert "fast_exp" in names and "tir_sigmoid" not in names
    got = _run(pipeline.build_cpu(mod), x)
    ref = x.astype(np.float64) / (1.0 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-30)


def test_sigmoid_between_dequantize_and_quantize_takes_the_polynomial_exp() -> None:
    """In a quantized module too (uint8 codes -> sigmoid -> uint8 codes): the quantize reads
    its input once, so the polynomial exp inlined between the two stays one copy (with an
    isnan test in the quantize it doubled, and TVM's simplifier ran for minutes)."""
    codes = np.arange(256, dtype=np.uint8).reshape(1, -1)

    def body(bb, x_):
        gate = bb.emit(R.sigmoid(R.multiply(R.astype(x_, "float32"), relax.const(0.25, "float32"))))
        r = bb.emit(R.round(R.multiply(gate, relax.const(255.0, "float32"))))
        return R.astype(R.minimum(R.maximum(r, relax.const(0.0, "float32")), relax.const(255.0, "float32")), "uint8")

    mod = _module([_var("x", codes.shape, "uint8")], body)
    assert "fast_exp" in "".join(_scheduled_funcs(mod))
    gate = 1 / (1 + np.exp(-codes.astype(np.float64) * 0.25))
    got = _run(pipeline.build_cpu(mod), codes).astype(np.int64)
    # the float32 gate is within 1e-6 relative of float64: a code moves only where 255 x gate
    # lies that close to a rounding tie
    near_tie = np.abs(np.abs(gate * 255 - np.floor(gate * 255)) - 0.5) < 255 * 1e-6
    want = np.round(gate * 255).astype(np.int64)
    assert np.all((got == want) | near_tie)
    assert (got == want).mean() > 0.99


def test_sigmoid_of_float64_keeps_the_exact_form() -> None:
    x = np.linspace(-40, 40, 64).reshape(1, -1)
    mod = _module([_var("x", x.shape, "float64")], lambda bb, x_: R.sigmoid(x_))
    assert "fast_exp" not in "".join(_scheduled_funcs(mod))
    np.testing.assert_allclose(_run(pipeline.build_cpu(mod), x), 1 / (1 + np.exp(-x)), rtol=1e-14)


def test_row_reductions_and_elementwise_are_parallel_and_vectorised() -> None:
    def body(bb, x_):
        s = bb.emit(R.nn.softmax(x_, axis=-1))
        return R.add(R.nn.layer_norm(s, relax.const(np.ones(64, np.float32)), relax.const(np.zeros(64, np.float32)),
                                     [-1]), relax.const(1.0, "float32"))

    funcs = _scheduled_funcs(_module([_var("x", (8, 16, 64))], body))
    assert funcs
    for name, func in funcs.items():
        assert PARALLEL in _loop_kinds(func), name
        assert VECTORIZED in _loop_kinds(func), name


@pytest.mark.parametrize("shape,axes,dtype", [((2, 8, 32, 32), [2, 3], "float32"), ((3, 5, 112), [2], "float32"),
                                             ((2, 4, 14, 14), [2, 3], "float64"), ((4, 96), [1], "int32")])
def test_long_row_reductions_sum_in_vector_lanes(shape, axes: list, dtype: str) -> None:
    """A row reduced over its trailing contiguous axes runs as lane-wise partial sums
    (`x_red_rf`: 16, 8 or 4 lanes, vectorised) then one sum of the lanes; float results
    within rounding of the float64 sum, integers exact."""
    rng = np.random.default_rng(RNG_SEED)
    x = (rng.integers(-1000, 1000, shape) if dtype == "int32" else rng.standard_normal(shape) * 10 + 3).astype(dtype)
    mod = _module([_var("x", shape, dtype)], lambda bb, x_: R.sum(x_, axis=axes, keepdims=True))
    funcs = _scheduled_funcs(mod)
    text = "".join(f.script() for f in funcs.values())
    assert '_rf_update"' in text and VECTORIZED in _loop_kinds(next(iter(funcs.values())))
    got = _run(pipeline.build_cpu(mod), x)
    want = x.astype(np.float64 if dtype != "int32" else np.int64).sum(axis=tuple(axes), keepdims=True)
    if dtype == "int32":
        np.testing.assert_array_equal(got, want)
    else:
        # each of 4 to 16 lanes adds at most total/4 terms in order, then the lanes are
        # added: the usual bound on such a sum's rounding error
        total = int(np.prod([shape[a] for a in axes]))
        bound = (total / 4 + 16) * np.finfo(dtype).eps * np.abs(x).sum(axis=tuple(axes), keepdims=True)
        assert np.all(np.abs(got - want) <= bound)


@pytest.mark.parametrize("shape,axes", [((2, 16, 7, 7), [2, 3]), ((2, 64, 8, 8), [1])])
def test_reductions_without_whole_lane_runs_stay_scalar_and_correct(shape, axes: list) -> None:
    """49 elements per row (no 4-lane split twice over), or a reduction over a non-trailing
    axis (not contiguous per output): no lane partials; the sum is still right."""
    x = np.random.default_rng(RNG_SEED).standard_normal(shape).astype(np.float32)
    mod = _module([_var("x", shape)], lambda bb, x_: R.sum(x_, axis=axes, keepdims=True))
    assert "_rf" not in "".join(f.script() for f in _scheduled_funcs(mod).values())
    np.testing.assert_allclose(_run(pipeline.build_cpu(mod), x),
                               x.astype(np.float64).sum(axis=tuple(axes), keepdims=True), **FP32_TOL)


def test_round_takes_the_vector_round_half_to_even() -> None:
    """relax.round (every quantizer's rounding) legalizes to `tirx.round`, LLVM's vector
    nearbyint, not `tirx.nearbyint` (which reached LLVM as gathers): values half to even,
    -0, NaN and infinities kept, a tail past the last whole vector included. TVM's own
    build (schedule=False) keeps its legalization."""
    ties = [k + 0.5 for k in range(-20, 20)]
    x = np.array(ties + [-0.0, 0.49999997, -0.49999997, 8388607.5, 1e30, np.inf, -np.inf, np.nan, 2.5000002],
                 np.float32).reshape(1, -1)
    mod = _module([_var("x", x.shape)], lambda bb, x_: R.round(x_))
    text = "".join(f.script() for f in _scheduled_funcs(mod).values())
    assert "T.round(" in text and "T.nearbyint(" not in text
    for ex in (pipeline.build_cpu(mod), pipeline.build_cpu(mod, schedule=False)):
        got = _run(ex, x)
        np.testing.assert_array_equal(got, np.round(x))
        np.testing.assert_array_equal(np.signbit(got), np.signbit(np.round(x)))


@pytest.mark.parametrize("dtype", ["float16", "float64", "int32"])
def test_round_of_other_dtypes_is_half_to_even_or_identity(dtype: str) -> None:
    """The same legalization on float16 / float64; an integer tensor is its own rounding."""
    x = ((np.arange(111).reshape(3, 37) - 55) * (0.5 if dtype.startswith("float") else 1)).astype(dtype)
    got = _run(pipeline.build_cpu(_module([_var("x", x.shape, dtype)], lambda bb, x_: R.round(x_))), x)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, np.round(x))


def _nan_probe(dtype: str) -> np.ndarray:
    """NaNs (quiet, signalling, negative, every payload bit set), infinities, the
    largest finite values, zeros, subnormals and ordinary values of `dtype`."""
    np_dtype = np.dtype(dtype)
    info = np.finfo(np_dtype)
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[np_dtype.itemsize]
    bits = 8 * np_dtype.itemsize
    exponent = ((1 << (bits - 1 - info.nmant)) - 1) << info.nmant  # all exponent bits set: inf
    nans = np.array([exponent | 1, exponent | (1 << (info.nmant - 1)), (1 << bits) - 1,
                     (1 << (bits - 1)) | exponent | 1], dtype=uint).view(np_dtype)
    values = np.array([np.inf, -np.inf, info.max, -info.max, 0.0, -0.0, info.smallest_subnormal,
                       -info.smallest_subnormal, 1.5, -2.0], dtype=np_dtype)
    return np.concatenate([nans, values, np.linspace(-3, 3, 18).astype(np_dtype)]).reshape(2, 16)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_isnan_tests_the_bits_in_vectors(dtype: str) -> None:
    """relax.isnan legalizes to a compare of the value's bits without its sign against
    infinity's (TVM does not vectorise `tirx.isnan`: a 16-lane loop holding one went
    lane by lane): exact on every NaN payload, infinities, subnormals and zeros, and
    the NaN-keeping ReLU of requant's lowering keeps NaN."""
    x = _nan_probe(dtype)
    mod = _module([_var("x", x.shape, dtype)], lambda bb, x_: R.isnan(x_))
    relu = _module([_var("x", x.shape, dtype)], lambda bb, x_: R.where(
        R.isnan(x_), x_, R.maximum(x_, relax.const(0.0, dtype))))
    text = "".join(f.script() for f in _scheduled_funcs(relu).values())
    assert "T.isnan(" not in text and "T.reinterpret(" in text
    nan = np.isnan(x)
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod), x), nan)
    got = _run(pipeline.build_cpu(relu), x)
    np.testing.assert_array_equal(got, np.where(nan, x, np.maximum(x, 0)))
    np.testing.assert_array_equal(got[nan].view(np.uint8), x[nan].view(np.uint8))  # the NaNs' own bits


def test_isnan_of_integers_is_false() -> None:
    """An integer tensor is never NaN (no bit test on integer codes)."""
    ints = np.array([[-(2 ** 31), 0x7F800001, 0x7FC00000, -1] * 4], dtype=np.int32)
    mod = _module([_var("x", ints.shape, "int32")], lambda bb, x_: R.isnan(x_))
    assert "T.reinterpret(" not in "".join(f.script() for f in _scheduled_funcs(mod).values())
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod), ints), np.zeros(ints.shape, bool))


def test_symbolic_elementwise_and_softmax_are_correct() -> None:
    n = tirx.Var("n", "int64")
    mod = _module([_var("x", (n, 40))], lambda bb, x_: R.nn.softmax(R.add(x_, relax.const(1.0, "float32")), axis=-1))
    ex = pipeline.build_cpu(mod)
    x = np.random.default_rng(RNG_SEED).standard_normal((7, 40)).astype(np.float32)
    e = np.exp(x + 1 - (x + 1).max(-1, keepdims=True))
    np.testing.assert_allclose(_run(ex, x), e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- int8


def _int8_module(x_dtype: str, m: int, k: int, w: np.ndarray, zero_point: int | None):
    def body(bb, x_):
        a = R.astype(x_, "int32")
        if zero_point is not None:
            a = R.subtract(a, relax.const(zero_point, "int32"))
        return R.matmul(a, R.astype(relax.const(w), "int32"))

    return _module([_var("x", (m, k), x_dtype)], body)


@pytest.mark.parametrize("x_dtype,zero_point,m,k,n", [
    ("uint8", None, 64, 384, 96), ("uint8", 128, 13, 64, 40), ("int8", None, 9, 32, 17), ("int8", 3, 70, 128, 64)])
def test_int8_matmul_is_exact(x_dtype: str, zero_point: int | None, m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(RNG_SEED)
    lo, hi = (0, 256) if x_dtype == "uint8" else (-128, 128)
    x = rng.integers(lo, hi, (m, k)).astype(x_dtype)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    mod = _int8_module(x_dtype, m, k, w, zero_point)
    ref = (x.astype(np.int64) - (zero_point or 0)) @ w.astype(np.int64)
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod), x), ref.astype(np.int32))


def test_int8_matmul_row_tail_and_symbolic_rows_are_exact() -> None:
    rng = np.random.default_rng(RNG_SEED)
    w = rng.integers(-128, 128, (64, 40)).astype(np.int8)
    rows = tirx.Var("n", "int64")
    for shape in [(2, 197, 64), (rows, 64)]:
        mod = _module([_var("x", shape, "uint8")],
                      lambda bb, x_: R.matmul(R.astype(x_, "int32"), R.astype(relax.const(w), "int32")))
        ex = pipeline.build_cpu(mod)
        for n in (1, 13) if shape[0] is rows else (None,):
            x = rng.integers(0, 256, (n, 64) if n else shape).astype(np.uint8)
            np.testing.assert_array_equal(_run(ex, x), (x.astype(np.int64) @ w.astype(np.int64)).astype(np.int32))


def test_int8_matmul_kernel_reads_vnni_layout_and_is_vectorised() -> None:
    w = np.ones((64, 32), np.int8)
    funcs = _scheduled_funcs(_int8_module("uint8", 16, 64, w, None))
    (func,) = [f for name, f in funcs.items() if "u8s8" in name]
    assert [int(d) for d in func.params[1].shape] == [2, 16, 64]
    assert func.params[0].dtype == "uint8" and func.params[1].dtype == "int8"
    step = "packed_dense_u8s8_update_o" if _VNNI_HOST else "packed_dense_u8s8_update"
    assert _update_block_predicates(func, step) == []
    assert PARALLEL in _loop_kinds(func)


def test_pack_weight_int8_layout() -> None:
    rng = np.random.default_rng(RNG_SEED)
    w = rng.integers(-128, 128, (8, 20)).astype(np.int8)
    packed = schedule_cpu.pack_weight_int8(w)
    assert packed.shape == (2, 2, 64)
    for j, k in [(0, 0), (5, 3), (17, 6), (19, 7)]:  # column j, depth k -> [j//16, k//4, (j%16)*4 + k%4]
        assert packed[j // 16, k // 4, (j % 16) * 4 + k % 4] == w[k, j]
    assert not packed[1, :, 4 * 4:].any()  # padded columns are zero


_VNNI_HOST = schedule_cpu._has_vnni(pipeline.host_llvm_target())


@pytest.mark.skipif(not _VNNI_HOST, reason="this CPU has no AVX-512 VNNI")
def test_int8_matmul_is_one_vpdpbusd_per_16x4_step() -> None:
    """The scheduled kernel calls the VNNI intrinsic (no 4 x 16 scalar loop left) and
    LLVM emits the instruction."""
    if not _VNNI_HOST:
        pytest.skip("this CPU has no AVX-512 VNNI")
    w = np.ones((64, 32), np.int8)
    mod = _int8_module("uint8", 16, 64, w, None)
    (func,) = [f for name, f in _scheduled_funcs(mod).items() if "u8s8" in name]
    text = func.script()
    assert schedule_cpu.VNNI_INTRINSIC in text and "packed_dense_u8s8_update\")" not in text
    asm = pipeline.build_cpu(mod).mod.imports[0].inspect_source("asm")
    assert "vpdpbusd" in asm


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_matmul_exact_with_and_without_vnni(vnni: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if vnni and not _VNNI_HOST:
        pytest.skip("this CPU has no AVX-512 VNNI")
    rules = [schedule_cpu.MatmulVNNI(vnni=vnni)] + schedule_cpu.default_rules()[1:]
    monkeypatch.setattr(schedule_cpu, "default_rules", lambda: list(rules))
    rng = np.random.default_rng(RNG_SEED)
    x = rng.integers(0, 256, (2, 21, 96)).astype(np.uint8)
    w = rng.integers(-128, 128, (96, 48)).astype(np.int8)
    mod = _module([_var("x", x.shape, "uint8")],
                  lambda bb, x_: R.matmul(R.astype(x_, "int32"), R.astype(relax.const(w), "int32")))
    text = "".join(f.script() for name, f in _scheduled_funcs(mod).items() if "u8s8" in name)
    assert (schedule_cpu.VNNI_INTRINSIC in text) == vnni
    ref = x.astype(np.int64) @ w.astype(np.int64)
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod), x), ref.astype(np.int32))


def test_zero_point_behind_a_cast_is_folded_into_the_int8_kernel() -> None:
    """to_relax writes the activation zero point as astype(uint8 scalar, int32), which
    FoldConstant leaves alone: the packer still sees it as a constant."""
    rng = np.random.default_rng(RNG_SEED)
    x = rng.integers(0, 256, (12, 32)).astype(np.uint8)
    w = rng.integers(-128, 128, (32, 16)).astype(np.int8)
    zp = np.array(131, np.uint8)

    def body(bb, x_):
        a = R.subtract(R.astype(x_, "int32"), R.astype(relax.const(zp), "int32"))
        return R.matmul(a, R.astype(relax.const(w), "int32"))

    mod = _module([_var("x", x.shape, "uint8")], body)
    assert any("u8s8" in name for name in _scheduled_funcs(mod))
    ref = (x.astype(np.int64) - 131) @ w.astype(np.int64)
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod), x), ref.astype(np.int32))


def test_int8_weights_out_of_range_fall_back_to_int32_matmul() -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.integers(0, 256, (8, 16)).astype(np.uint8)
    w = rng.integers(-300, 300, (16, 24)).astype(np.int32)
    mod = _module([_var("x", (8, 16), "uint8")], lambda bb, x_: R.matmul(R.astype(x_, "int32"), relax.const(w)))
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod), x), x.astype(np.int32) @ w)


def _int8_conv_module(x_shape, x_dtype: str, w: np.ndarray, zero_point: int, strides, padding) -> tvm.IRModule:
    """What the Conv lowering writes for DQ(codes) -> Conv(DQ(int8 weights)): the codes
    minus the zero point convolved with the int8 codes into int32."""
    def body(bb, x_):
        a = R.astype(x_, "int32")
        if zero_point:
            a = R.subtract(a, relax.const(zero_point, "int32"))
        return R.nn.conv2d(a, relax.const(w.astype(np.int32)), strides=list(strides), padding=list(padding),
                           out_dtype="int32")

    return _module([_var("x", x_shape, x_dtype)], body)


INT8_CONV_CASES = [  # n, c, h, w, o, k, strides, padding, zero point, activation dtype
    (2, 8, 10, 10, 16, 3, (1, 1), (1, 1, 1, 1), 0, "uint8"),
    (1, 3, 13, 11, 8, 3, (2, 2), (1, 1, 1, 1), 7, "uint8"),       # RGB: 3 channels of a 4-channel block
    (2, 16, 9, 9, 64, 1, (1, 1), (0, 0, 0, 0), 128, "uint8"),     # 1x1, two 32-channel tiles
    (1, 24, 7, 7, 40, 3, (1, 1), (1, 2, 0, 1), -3, "int8"),       # signed codes, asymmetric padding
]


@pytest.mark.parametrize("n,c,h,w,o,k,strides,padding,zero_point,x_dtype,vnni",
                         [(*case, True) for case in INT8_CONV_CASES] + [(*case, False) for case in INT8_CONV_CASES[1::2]])
def test_int8_conv2d_is_exact(n, c, h, w, o, k, strides, padding, zero_point, x_dtype, vnni: bool,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The padding is the zero point's code (a 0 after subtracting it), signed codes go
    through the +128 shift, every output bit for bit equal to the unscheduled build."""
    if vnni and not _VNNI_HOST:
        pytest.skip("this CPU has no AVX-512 VNNI")
    rules = [schedule_cpu.MatmulVNNI(vnni=vnni), schedule_cpu.ConvVNNI(vnni=vnni)] + schedule_cpu.default_rules()[2:]
    monkeypatch.setattr(schedule_cpu, "default_rules", lambda: list(rules))
    rng = np.random.default_rng(RNG_SEED)
    wt = rng.integers(-128, 128, (o, c, k, k)).astype(np.int8)
    lo, hi = (0, 256) if x_dtype == "uint8" else (-128, 128)
    x = rng.integers(lo, hi, (n, c, h, w)).astype(x_dtype)
    mod = _int8_conv_module(x.shape, x_dtype, wt, zero_point, strides, padding)
    funcs = _scheduled_funcs(mod)
    (func,) = [f for name, f in funcs.items() if "packed_conv2d_u8s8" in name]
    assert (schedule_cpu.VNNI_INTRINSIC in func.script()) == vnni
    step = "packed_conv2d_u8s8_update_o" if vnni else "packed_conv2d_u8s8_update"
    assert _update_block_predicates(func, step) == []
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod), x), _run(pipeline.build_cpu(mod, schedule=False), x))


def test_pack_conv_weight_int8_layout() -> None:
    rng = np.random.default_rng(RNG_SEED)
    w = rng.integers(-128, 128, (20, 6, 3, 3)).astype(np.int8)
    p = schedule_cpu.pack_conv_weight_int8(w)
    assert p.shape == (2, 2, 3, 3, 64)  # 20 channels -> one 32-wide tile (two of 16); 6 -> two 4-channel blocks
    for o, c, r, s in [(0, 0, 0, 0), (17, 5, 2, 1), (19, 3, 1, 2)]:
        assert p[o // 16, c // 4, r, s, (o % 16) * 4 + c % 4] == w[o, c, r, s]
    assert not p[1, :, :, :, 4 * 4:].any()  # padded output channels
    assert not p[:, 1, :, :, :].reshape(2, 9, 16, 4)[..., 2:].any()  # padded input channels 6, 7


# ----------------------------------------------------------------------------- pipeline helpers


def test_thread_pool_defaults_to_every_usable_cpu_unpinned() -> None:
    import os

    # set on import of pipeline unless the user set them; TVM alone would use half the cores on x86
    assert int(os.environ["TVM_NUM_THREADS"]) >= 1 and "TVM_BIND_THREADS" in os.environ
    assert pipeline.tvm_threads() >= 1


def test_host_target_and_breakdown() -> None:
    target = pipeline.host_llvm_target(threads=2)
    assert target.kind.name == "llvm" and str(target.attrs["mcpu"])
    w = np.ones((32, 64), np.float32)
    mod = _module([_var("x", (16, 32))], lambda bb, x_: R.nn.softmax(R.matmul(x_, relax.const(w)), axis=-1))
    ex = pipeline.build_cpu(mod)
    x = np.ones((16, 32), np.float32)
    assert pipeline.time_module(ex, [x], repeat=2) > 0
    kinds, kernels = pipeline.profile_by_kind(ex, [x], runs=1)
    names = {k.kind for k in kinds}
    assert {"matmul", "softmax"} <= names
    assert abs(sum(k.share for k in kinds) - 1.0) < 1e-6
    assert "| op kind |" in pipeline.format_breakdown(kinds)


@pytest.mark.parametrize("name,kind", [
    ("fused_packed_dense_64x64x384_1536_add_fast_erf", "matmul"), ("matmul1", "batch_matmul"),
    ("fused_padded_bmm_2x12x197x64_197_multiply_add", "batch_matmul"),
    ("fused_matmul_multiply_add1", "batch_matmul"), ("fast_softmax", "softmax"), ("layer_norm", "layer_norm"),
    ("fused_reshape_transpose1", "reshape/transpose"), ("add3", "elementwise"), ("gelu", "gelu"),
    ("vm.builtin.alloc_storage", "other")])
def test_kernel_kind(name: str, kind: str) -> None:
    assert pipeline.kernel_kind(name) == kind


# ----------------------------------------------------------------------------- conv2d

CONV_REL_TOL = 1e-5  # fp32: vs the unscheduled build, relative to the output's scale


def _conv_module(x_shape, w: np.ndarray, *, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1,
                 epilogue: str = "bias_relu") -> tvm.IRModule:
    """conv2d with a constant weight (+ bias + ReLU, or + bias + residual add)."""
    b = np.random.default_rng(RNG_SEED + 1).standard_normal((1, w.shape[0], 1, 1)).astype(np.float32)

    def body(bb, x_):
        y = bb.emit(R.nn.conv2d(x_, relax.const(w), strides=list(strides), padding=list(padding),
                                dilation=list(dilation), groups=groups))
        y = bb.emit(R.add(y, relax.const(b)))
        if epilogue == "bias_relu":
            return R.nn.relu(y)
        return R.add(y, R.multiply(y, relax.const(0.5, "float32")))  # a residual-style second operand

    return _module([_var("x", x_shape)], body)


def _assert_close_to_default(mod: tvm.IRModule, x: np.ndarray) -> None:
    got = _run(pipeline.build_cpu(mod), x)
    ref = _run(pipeline.build_cpu(mod, schedule=False), x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=CONV_REL_TOL * np.abs(ref).max())


@pytest.mark.parametrize("n,c,h,w,o,k,strides,padding,dilation,groups", [
    (2, 8, 10, 10, 16, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),      # 3x3 same
    (1, 3, 13, 11, 8, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),       # odd sizes, stride 2, 8 < 16 output channels
    (2, 16, 9, 9, 64, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),       # 1x1, no padding
    (1, 32, 15, 17, 32, 3, (2, 1), (1, 0, 1, 2), (1, 1), 1),     # asymmetric stride and padding
    (1, 16, 11, 11, 48, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),     # dilation, 48 = 3 blocks of 16
    (2, 32, 12, 12, 32, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),     # 2 groups of 16 output channels
    (1, 24, 7, 7, 40, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),       # 7 wide, 40 channels (padded block)
])
def test_conv2d_matches_default_build(n, c, h, w, o, k, strides, padding, dilation, groups) -> None:
    rng = np.random.default_rng(RNG_SEED)
    wt = rng.standard_normal((o, c // groups, k, k)).astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    mod = _conv_module(x.shape, wt, strides=strides, padding=padding, dilation=dilation, groups=groups)
    assert any("packed_conv2d" in name for name in _scheduled_funcs(mod))
    _assert_close_to_default(mod, x)


def test_conv2d_residual_epilogue_matches_default_build() -> None:
    rng = np.random.default_rng(RNG_SEED)
    wt = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 32, 14, 14)).astype(np.float32)
    _assert_close_to_default(_conv_module(x.shape, wt, padding=(1, 1, 1, 1), epilogue="residual"), x)


def test_conv2d_symbolic_batch_matches_numpy_reference() -> None:
    rng = np.random.default_rng(RNG_SEED)
    wt = rng.standard_normal((32, 8, 3, 3)).astype(np.float32)
    batch = tirx.Var("n", "int64")
    mod = _conv_module((batch, 8, 10, 10), wt, padding=(1, 1, 1, 1))
    ex, ref_ex = pipeline.build_cpu(mod), pipeline.build_cpu(mod, schedule=False)
    for rows in (1, 3):
        x = rng.standard_normal((rows, 8, 10, 10)).astype(np.float32)
        ref = _run(ref_ex, x)
        np.testing.assert_allclose(_run(ex, x), ref, rtol=0, atol=CONV_REL_TOL * np.abs(ref).max())


def test_conv2d_kernel_is_packed_parallel_and_vectorised() -> None:
    wt = np.ones((64, 16, 3, 3), np.float32)
    mod = _conv_module((2, 16, 56, 56), wt, padding=(1, 1, 1, 1))
    funcs = _scheduled_funcs(mod)
    fused = [f for name, f in funcs.items() if name.startswith("fused_packed_conv2d")]
    assert len(fused) == 1
    func = fused[0]
    ob, owt = schedule_cpu.conv_tile(64, 56)
    assert (ob, owt) == (32, 8)
    assert [int(d) for d in func.params[1].shape] == [64 // ob, 16, 3, 3, ob]  # OIHW{ob}o
    assert {PARALLEL, VECTORIZED, "unroll"} <= _loop_kinds(func)
    assert func.attrs["tirx.is_scheduled"]
    text = func.script()
    assert "packed_conv2d_update" in text  # the register tile, in the fused kernel
    assert 'scope="local"' not in text  # TVM allocates a "local" tile as a workspace per parallel task


def test_pack_conv_weight_layout_and_tiles() -> None:
    w = np.arange(20 * 3 * 2 * 2, dtype=np.float32).reshape(20, 3, 2, 2)
    p = schedule_cpu.pack_conv_weight(w, 16)
    assert p.shape == (2, 3, 2, 2, 16)
    for o, i, r, s in [(0, 0, 0, 0), (17, 2, 1, 0), (19, 1, 0, 1)]:
        assert p[o // 16, i, r, s, o % 16] == w[o, i, r, s]
    assert not p[1, ..., 4:].any()  # padded output channels are zero
    # ResNet widths divide exactly; the tile stays within the accumulator budget
    assert schedule_cpu.conv_tile(128, 28) == (32, 7)
    assert schedule_cpu.conv_tile(48, 56) == (16, 14)
    for ob_in, width in [(64, 13), (16, 100), (8, 3)]:
        ob, owt = schedule_cpu.conv_tile(ob_in, width)
        assert owt * ob // schedule_cpu.LANES <= schedule_cpu.CONV_ACCUMULATORS and 1 <= owt <= width


@pytest.mark.parametrize("case", ["dynamic_weight", "narrow_groups"])
def test_conv2d_not_packed_still_matches_default_build(case: str) -> None:
    """A weight that is an input, and groups of a few channels, keep TVM's conv (and its
    fallback schedule)."""
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    if case == "dynamic_weight":
        wt = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
        mod = _module([_var("x", x.shape), _var("w", wt.shape)],
                      lambda bb, x_, w_: R.nn.relu(R.nn.conv2d(x_, w_, padding=[1, 1, 1, 1])))
        args = (x, wt)
    else:  # groups of 3 channels: they do not tile a 16-channel block
        x = rng.standard_normal((2, 12, 9, 9)).astype(np.float32)
        wt = rng.standard_normal((12, 3, 3, 3)).astype(np.float32)
        mod = _conv_module(x.shape, wt, padding=(1, 1, 1, 1), groups=4)
        args = (x,)
    assert not any("packed" in name for name in _scheduled_funcs(mod))
    ref = _run(pipeline.build_cpu(mod, schedule=False), *args)
    np.testing.assert_allclose(_run(pipeline.build_cpu(mod), *args), ref, rtol=0, atol=CONV_REL_TOL * np.abs(ref).max())


@pytest.mark.parametrize("n,c,h,w,width,strides", [
    (2, 48, 10, 10, 8, (1, 1)),     # RegNet-style groups of 8 channels
    (1, 20, 9, 9, 4, (2, 2)),       # groups of 4, 20 channels: the last block padded, stride 2
    (1, 104, 7, 7, 8, (1, 1)),      # 13 groups of 8 over 7 blocks
])
def test_narrow_grouped_conv2d_matches_default_build(n, c, h, w, width, strides) -> None:
    rng = np.random.default_rng(RNG_SEED)
    wt = rng.standard_normal((c, width, 3, 3)).astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    mod = _conv_module(x.shape, wt, strides=strides, padding=(1, 1, 1, 1), groups=c // width)
    assert any("packed_conv2d" in name for name in _scheduled_funcs(mod))
    _assert_close_to_default(mod, x)


def test_densify_narrow_groups_is_block_diagonal() -> None:
    rng = np.random.default_rng(RNG_SEED)
    w = rng.standard_normal((24, 8, 3, 3)).astype(np.float32)  # 3 groups of 8
    dense = schedule_cpu.densify_narrow_groups(w, 3)
    assert dense.shape == (24, 16, 3, 3)
    np.testing.assert_array_equal(dense[:8, :8], w[:8])       # group 0: block 0, channels 0..7
    np.testing.assert_array_equal(dense[8:16, 8:], w[8:16])   # group 1: block 0, channels 8..15
    np.testing.assert_array_equal(dense[16:, :8], w[16:])     # group 2: block 1, channels 0..7
    assert not dense[:8, 8:].any() and not dense[8:16, :8].any() and not dense[16:, 8:].any()
    assert schedule_cpu.densify_narrow_groups(np.zeros((12, 3, 3, 3), np.float32), 4) is None  # 3 does not divide 16
    assert schedule_cpu.densify_narrow_groups(np.zeros((16, 1, 3, 3), np.float32), 8) is None  # a channel multiplier


@pytest.mark.parametrize("n,c,h,w,k,strides,padding,dilation", [
    (2, 32, 12, 12, 3, (1, 1), (1, 1, 1, 1), (1, 1)),      # 3x3 same
    (1, 24, 13, 11, 3, (2, 2), (1, 1, 1, 1), (1, 1)),      # stride 2, odd sizes, 24 = a padded channel block
    (2, 40, 7, 7, 5, (1, 1), (2, 2, 2, 2), (1, 1)),        # 5x5 on a 7-wide map
    (1, 16, 15, 9, 3, (2, 1), (0, 1, 2, 0), (1, 1)),       # asymmetric stride and padding
    (1, 16, 11, 11, 3, (1, 1), (2, 2, 2, 2), (2, 2)),      # dilation
])
def test_depthwise_conv2d_matches_default_build(n, c, h, w, k, strides, padding, dilation) -> None:
    rng = np.random.default_rng(RNG_SEED)
    wt = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    mod = _conv_module(x.shape, wt, strides=strides, padding=padding, dilation=dilation, groups=c)
    assert any("packed_dw_conv2d" in name for name in _scheduled_funcs(mod))
    _assert_close_to_default(mod, x)


def test_depthwise_conv2d_residual_epilogue_and_symbolic_batch() -> None:
    rng = np.random.default_rng(RNG_SEED)
    wt = rng.standard_normal((48, 1, 3, 3)).astype(np.float32)
    _assert_close_to_default(_conv_module((2, 48, 14, 14), wt, padding=(1, 1, 1, 1), groups=48, epilogue="residual"),
                             rng.standard_normal((2, 48, 14, 14)).astype(np.float32))
    mod = _conv_module((tirx.Var("n", "int64"), 48, 9, 9), wt, padding=(1, 1, 1, 1), groups=48)
    ex, ref_ex = pipeline.build_cpu(mod), pipeline.build_cpu(mod, schedule=False)
    for rows in (1, 3):
        x = rng.standard_normal((rows, 48, 9, 9)).astype(np.float32)
        ref = _run(ref_ex, x)
        np.testing.assert_allclose(_run(ex, x), ref, rtol=0, atol=CONV_REL_TOL * np.abs(ref).max())


def test_depthwise_kernel_is_blocked_parallel_and_vectorised() -> None:
    wt = np.ones((40, 1, 3, 3), np.float32)
    funcs = _scheduled_funcs(_conv_module((2, 40, 28, 28), wt, padding=(1, 1, 1, 1), groups=40))
    (func,) = [f for name, f in funcs.items() if name.startswith("fused_packed_dw_conv2d")]
    assert [int(d) for d in func.params[1].shape] == [3, 3, 3, schedule_cpu.LANES]  # [C/16, KH, KW, 16]
    assert {PARALLEL, VECTORIZED, "unroll"} <= _loop_kinds(func)
    assert 'scope="local"' not in func.script()  # the tile on the task's stack, not a workspace per task
    assert _update_block_predicates(func, "packed_dw_conv2d_update") == []


def test_pack_depthwise_weight_layout() -> None:
    w = np.arange(20 * 1 * 3 * 3, dtype=np.float32).reshape(20, 1, 3, 3)
    p = schedule_cpu.pack_depthwise_weight(w)
    assert p.shape == (2, 3, 3, 16)
    for c, r, s in [(0, 0, 0), (17, 2, 1), (19, 1, 2)]:
        assert p[c // 16, r, s, c % 16] == w[c, 0, r, s]
    assert not p[1, ..., 4:].any()  # padded channels are zero
    assert schedule_cpu.depthwise_owt(56) == 14 and schedule_cpu.depthwise_owt(7) == 7


def test_small_cnn_tvm_cpu_fp32_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    import sys
    from pathlib import Path

    import requant

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models"))
    import zoo

    case = zoo.small_cnn()
    cm = requant.compile(case.module, target="tvm-cpu-fp32", example_inputs=case.example_inputs)
    for seed in range(2):
        x = torch.randn(*case.example_inputs[0].shape, generator=torch.Generator().manual_seed(seed))
        ref = case.module(x).detach().numpy()
        np.testing.assert_allclose(cm(x.numpy())[0], ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def _row_scaled(stage_name: str) -> tvm.IRModule:
    """y = x * (100000 // (1 + row sum of |x|)): a reduction, a per-row value named
    `stage_name`, an elementwise output, all in one TE PrimFunc."""
    from tvm import te

    def build(x):
        rows, n = x.shape
        k = te.reduce_axis((0, n), name="k")
        total = te.compute((rows,), lambda r: te.sum(tirx.abs(x[r, k]), axis=k), name="row_total")
        factor = te.compute((rows,), lambda r: tirx.floordiv(tirx.const(100000, "int64"), total[r] + 1), name=stage_name)
        return te.compute(x.shape, lambda r, j: x[r, j] * factor[r], name="scaled")

    return _module([_var("x", (8, 48), "int64")], lambda bb, x_: bb.emit_te(build, x_, primfunc_name_hint="scaled"))


@pytest.mark.parametrize("kept", [True, False])
def test_row_stage_blocks_are_computed_once_per_row(kept: bool) -> None:
    """A spatial block named ROW_STAGE... (a row kernel's per-row value) stays a block of
    its own at the row; one named otherwise is inlined into every element that reads it."""
    name = f"{schedule_cpu.ROW_STAGE}_factor" if kept else "factor"
    mod = _row_scaled(name)
    (func,) = [f for n, f in _scheduled_funcs(mod).items() if "scaled" in n]
    assert (f'T.sblock("{name}")' in func.script()) is kept
    assert PARALLEL in _loop_kinds(func)
    x = np.random.default_rng(RNG_SEED).integers(-1000, 1000, (8, 48)).astype(np.int64)
    want = x * (100000 // (1 + np.abs(x).sum(axis=1, keepdims=True)))
    np.testing.assert_array_equal(_run(pipeline.build_cpu(mod), x), want)


@pytest.mark.parametrize("channels,side,weight_major", [(512, 7, True), (64, 56, False), (256, 14, True)])
def test_conv_with_large_weights_runs_channel_blocks_first_and_matches_default_build(
        channels: int, side: int, weight_major: bool) -> None:
    """Weights above CONV_WEIGHT_MAJOR_BYTES and the input: the parallel loop starts
    with the channel blocks; the result is the same either way."""
    rng = np.random.default_rng(RNG_SEED)
    w = (rng.standard_normal((channels, channels, 3, 3)) * 0.05).astype(np.float32)
    x = rng.standard_normal((2, channels, side, side)).astype(np.float32)
    assert (w.nbytes > schedule_cpu.CONV_WEIGHT_MAJOR_BYTES) == weight_major
    mod = _module([_var("x", x.shape)], lambda bb, x_: R.nn.conv2d(x_, relax.const(w), padding=[1, 1, 1, 1]))
    conv = [f for name, f in _scheduled_funcs(mod).items() if "packed_conv2d" in name]
    assert len(conv) == 1
    # the tiled output's parallel loop (the NCHW copy of the tile's axes: batch ax0,
    # channels ax1, rows ax2): "ax1_0_ax0_ax2_fused" (channel blocks first) or
    # "ax0_ax1_0_ax2_fused"
    tile_loops = [line.split()[1] for line in conv[0].script().splitlines()
                  if "T.parallel(" in line and "_ax2_fused" in line]
    assert tile_loops == ["ax1_0_ax0_ax2_fused" if weight_major else "ax0_ax1_0_ax2_fused"]
    np.testing.assert_allclose(_run(pipeline.build_cpu(mod), x), _run(pipeline.build_cpu(mod, schedule=False), x),
                               rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- conv epilogues


def _se_module(n: int, c: int, hw: int, r: int) -> tvm.IRModule:
    """Squeeze-excitation: mean over the map -> 1 x 1 conv -> ReLU -> 1 x 1 conv -> sigmoid,
    times the map (FuseOps fuses the second conv, its sigmoid and the broadcast product)."""
    rng = np.random.default_rng(RNG_SEED + 2)
    w1 = rng.standard_normal((r, c, 1, 1)).astype(np.float32) * 0.1
    w2 = rng.standard_normal((c, r, 1, 1)).astype(np.float32) * 0.1

    def body(bb, x_):
        pooled = bb.emit(R.mean(x_, axis=[2, 3], keepdims=True))
        squeezed = bb.emit(R.nn.relu(R.nn.conv2d(pooled, relax.const(w1))))
        return R.multiply(x_, R.sigmoid(R.nn.conv2d(squeezed, relax.const(w2))))

    return _module([_var("x", (n, c, hw, hw))], body)


def _fused_conv_text(mod: tvm.IRModule, out_channels: int) -> str:
    (func,) = [f for name, f in _scheduled_funcs(mod).items()
               if name.startswith("fused_packed_conv2d") and f"_{out_channels}_" in name]
    return func.script()


def test_squeeze_excitation_gate_is_computed_once_per_channel_then_broadcast() -> None:
    mod = _se_module(2, 64, 28, 8)
    text = _fused_conv_text(mod, 64)
    # the gate (conv + sigmoid) lands in a 2 x 64 x 1 x 1 buffer of its own; the product
    # with the 28 x 28 map is a loop nest after it, not the conv's tile loops
    assert "T.sblock_alloc_buffer((T.int64(2), T.int64(64), T.int64(1), T.int64(1))" in text
    x = np.random.default_rng(RNG_SEED).standard_normal((2, 64, 28, 28)).astype(np.float32)
    got = _run(pipeline.build_cpu(mod), x)
    ref = _run(pipeline.build_cpu(mod, schedule=False), x)
    np.testing.assert_allclose(got, ref, rtol=0, atol=CONV_REL_TOL * np.abs(ref).max())


@pytest.mark.parametrize("hw,vectors", [
    (14, ["T.vectorized(T.int64(14))"]),
    (7, ["T.vectorized(T.int64(7))"]),
    (28, ["T.vectorized(T.int64(16))", "T.vectorized(T.int64(16), T.int64(28))"]),
    (56, ["T.vectorized(T.int64(16))", "T.vectorized(T.int64(48), T.int64(56))"]),
    (32, ["T.vectorized(T.int64(16))"]),
])
def test_rows_of_small_feature_maps_are_vectorised(hw: int, vectors: list[str]) -> None:
    """The squeeze-excitation product over a 14-, 7-, 28-, 56- or 32-wide map, and an
    elementwise kernel on its own over such a map, run their rows in vectors (one
    padded vector of 14 or 7; 16-lane vectors, then the rest of the row as one padded
    vector), not as a scalar loop of the row's width."""
    mod = _se_module(2, 32, hw, 8)
    text = _fused_conv_text(mod, 32)
    product_loops = text[text.rindex('T.sblock("T_divide")'):]  # after the gate: the product with the map
    assert all(v in product_loops for v in vectors), product_loops
    x = np.random.default_rng(RNG_SEED).standard_normal((2, 32, hw, hw)).astype(np.float32)
    got = _run(pipeline.build_cpu(mod), x)
    ref = _run(pipeline.build_cpu(mod, schedule=False), x)
    np.testing.assert_allclose(got, ref, rtol=0, atol=CONV_REL_TOL * np.abs(ref).max())

    alone = _module([_var("x", (2, 32, hw, hw))], lambda bb, x_: R.multiply(R.nn.relu(x_), x_))
    (func,) = _scheduled_funcs(alone).values()
    assert all(v in func.script() for v in vectors) and PARALLEL in _loop_kinds(func)
    np.testing.assert_array_equal(_run(pipeline.build_cpu(alone), x), np.maximum(x, 0) * x)


def test_softmax_rows_not_a_multiple_of_16_run_in_16_lane_vectors() -> None:
    """Attention rows of 196 tokens: the row's elementwise part runs 12 vectors of 16
    and a padded tail of 4, not 49 vectors of 4; the result matches numpy."""
    x = np.random.default_rng(RNG_SEED).standard_normal((2, 3, 196, 196)).astype(np.float32)
    mod = _module([_var("x", x.shape)], lambda bb, x_: R.nn.softmax(x_, axis=-1))
    (func,) = _scheduled_funcs(mod).values()
    text = func.script()
    assert "T.vectorized(T.int64(16))" in text and "T.vectorized(T.int64(192), T.int64(196))" in text
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(_run(pipeline.build_cpu(mod), x), e / e.sum(axis=-1, keepdims=True), **FP32_TOL)


def test_conv_epilogue_of_the_convs_own_shape_stays_in_the_tile() -> None:
    """No broadcast after the conv: the epilogue is applied to the register tile in
    16-channel vectors (no NCHW buffer of the conv's shape), then copied out with the
    tile's 7 columns as one vector."""
    rng = np.random.default_rng(RNG_SEED)
    wt = rng.standard_normal((64, 32, 1, 1)).astype(np.float32)

    def body(bb, x_):
        y = bb.emit(R.nn.conv2d(x_, relax.const(wt)))
        return R.multiply(y, R.sigmoid(y))

    mod = _module([_var("x", (2, 32, 14, 14))], body)
    assert schedule_cpu.conv_tile(64, 14) == (32, 7)
    text = _fused_conv_text(mod, 64)
    assert "T.sblock_alloc_buffer((T.int64(2), T.int64(64)" not in text
    epilogue_loops = text.split('T.sblock("T_multiply")')[0].rsplit("T.sblock(", 1)[1]
    assert "T.vectorized(T.int64(16))" in epilogue_loops
    assert "T.vectorized(T.int64(7))" in text
    x = rng.standard_normal((2, 32, 14, 14)).astype(np.float32)
    _assert_close_to_default(mod, x)
