"""The Hadamard op's row kernel on TVM (backends/tvm/lowering/rotation.py `_row_kernel`,
scheduled by schedule_cpu.HadamardRows): its factors multiply back to H_n / sqrt(n); it
agrees with the interpreter for every base order of the rotation issue and their
multiples by powers of two (and symbolic rows); it is one parallel, vectorised kernel
with the next quantizer fused into it, block-diagonal rotations too (the block's factors
only); a rotation along an inner axis keeps the matmul form. No timing."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402

from requant.backends.tvm import pipeline, schedule_cpu, to_relax  # noqa: E402
from requant.backends.tvm.lowering.rotation import ROW_FACTOR_MAX, row_factors  # noqa: E402
from requant.ir import Builder, Graph, run, tensor_type  # noqa: E402
from requant.ir.hadamard import factor_matrix, hadamard_unsupported, normalized_hadamard  # noqa: E402

RNG_SEED = 0
#: float32 sums of at most n products in another order than the interpreter's butterflies,
#: relative to the row's largest output (an output near 0 is a cancellation)
F32_REL_TOL = 2e-6
BASE_ORDERS = (12, 20, 28, 36, 44, 52, 60, 108, 140, 148)
ORDERS = sorted({2, 4, 8, 16, 32, 64, 128, 256, 2048} | {k * 2 ** m for k in BASE_ORDERS for m in (0, 1, 5)})


def _graph(shape: tuple, axis: int = -1, quantize: bool = False, block: int = 0) -> Graph:
    g = Graph("hadamard")
    b = Builder(g)
    y = b.Hadamard(b.input("x", tensor_type("f32", shape)), axis=axis, **({"block": block} if block else {}))
    if quantize:
        y = b.QuantizeLinear(y, b.const(np.array(0.02, np.float32)), b.const(np.array(128, np.uint8)))
    g.outputs = [y]
    return g


def _scheduled(graph: Graph) -> dict[str, tirx.PrimFunc]:
    target = pipeline.host_llvm_target()
    seq = tvm.transform.Sequential([
        relax.transform.FoldConstant(), relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(), relax.transform.FuseTIR(), schedule_cpu.schedule_cpu_module(target)])
    with target:
        out = seq(to_relax(graph))
    return {gv.name_hint: f for gv, f in out.functions_items() if isinstance(f, tirx.PrimFunc)}


def _run_cpu(graph: Graph, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(pipeline.build_cpu(to_relax(graph)), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return (out[0] if not hasattr(out, "numpy") else out).numpy()


@pytest.mark.parametrize("n", ORDERS)
def test_row_factors_multiply_back_to_the_normalised_hadamard(n: int) -> None:
    assert hadamard_unsupported(n) is None
    factors = row_factors(n)
    assert int(np.prod(factors)) == n
    assert all(f <= ROW_FACTOR_MAX for f in factors[1:])  # only a base order K may be larger
    dense = np.ones((1, 1))
    for f in factors:
        dense = np.kron(dense, factor_matrix(f))
    np.testing.assert_allclose(dense, normalized_hadamard(n), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", ORDERS)
def test_row_kernel_matches_the_interpreter_for_every_order(n: int) -> None:
    x = np.random.default_rng(RNG_SEED + n).standard_normal((5, n)).astype(np.float32)
    x[2] *= 1e3  # rows of different magnitudes
    graph = _graph(x.shape)
    want = run(graph, {"x": x})[0]
    got = _run_cpu(graph, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=F32_REL_TOL * np.abs(want).max(axis=1, keepdims=True).max())
    np.testing.assert_allclose(got[:2], want[:2], rtol=0, atol=F32_REL_TOL * np.abs(want[:2]).max())


def test_row_kernel_is_one_parallel_vectorised_kernel_with_the_quantizer_fused() -> None:
    graph = _graph((64, 1536), quantize=True)
    funcs = _scheduled(graph)
    assert len(funcs) == 1
    (name, func), = funcs.items()
    text = func.script()
    assert "hadamard_rows" in name and "cast" in name  # the quantizer is the kernel's epilogue
    assert [f"{schedule_cpu.HADAMARD_STAGE}{t}" in text for t in range(4)] == [True, True, True, False]  # 12, 8, 16
    assert "T.parallel(T.int64(64))" in text and "T.vectorized(T.int64(16))" in text
    assert 'scope="local"' in text  # the rows between stages stay on the task's stack
    x = np.random.default_rng(RNG_SEED).standard_normal((64, 1536)).astype(np.float32)
    want = run(graph, {"x": x})[0].astype(np.int64)
    got = _run_cpu(graph, x).astype(np.int64)
    # a code may move by one where the float32 product lands within rounding of a tie
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.999


def test_block_diagonal_row_kernel_takes_the_block_factors_with_the_quantizer_fused() -> None:
    graph = _graph((64, 1536), quantize=True, block=32)
    funcs = _scheduled(graph)
    assert len(funcs) == 1
    (name, func), = funcs.items()
    text = func.script()
    assert "hadamard_rows" in name and "cast" in name
    assert [f"{schedule_cpu.HADAMARD_STAGE}{t}" in text for t in range(3)] == [True, True, False]  # 2, 16
    x = np.random.default_rng(RNG_SEED).standard_normal((64, 1536)).astype(np.float32)
    want = run(graph, {"x": x})[0].astype(np.int64)
    got = _run_cpu(graph, x).astype(np.int64)
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.999  # ties may round either way
    # the float rotation itself, every run of 32 on its own
    plain = _graph((5, 96), block=32)
    x = np.random.default_rng(RNG_SEED).standard_normal((5, 96)).astype(np.float32)
    want = run(plain, {"x": x})[0]
    np.testing.assert_allclose(_run_cpu(plain, x), want, rtol=0, atol=F32_REL_TOL * np.abs(want).max())
    np.testing.assert_allclose(want, x @ np.kron(np.eye(3), normalized_hadamard(32)), rtol=0, atol=1e-5)


def test_symbolic_rows_match_the_interpreter() -> None:
    g = Graph("hadamard")
    b = Builder(g)
    g.outputs = [b.Hadamard(b.input("x", tensor_type("f32", ("batch", "seq", 384))), axis=-1)]
    assert [n for n in _scheduled(g) if "hadamard_rows" in n]
    vm = relax.VirtualMachine(pipeline.build_cpu(to_relax(g)), tvm.cpu())
    for shape in [(1, 1, 384), (3, 7, 384)]:
        x = np.random.default_rng(RNG_SEED).standard_normal(shape).astype(np.float32)
        want = run(g, {"x": x})[0]
        got = vm["main"](tvm.runtime.tensor(x))[0].numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=F32_REL_TOL * np.abs(want).max())


def test_rotation_along_an_inner_axis_keeps_the_matmul_form() -> None:
    graph = _graph((2, 12, 3, 32), axis=1)
    assert not [n for n in _scheduled(graph) if "hadamard_rows" in n]
    x = np.random.default_rng(RNG_SEED).standard_normal((2, 12, 3, 32)).astype(np.float32)
    want = run(graph, {"x": x})[0]
    np.testing.assert_allclose(_run_cpu(graph, x), want, rtol=0, atol=F32_REL_TOL * np.abs(want).max())
