"""Shared helpers of the lowering tests (tests/passes/test_lower_integer.py,
tests/backends/onnx/test_lower_quant*.py): a quantized linear layer, the float32
rounding bound the lowerings are held to, and running a graph in ONNX Runtime.

Bound (passes/lower_integer.py derives it): for y = A @ W (+ b) with K terms,
|lowered - qdq| <= (K + 3) u (|DQ(a)| @ |DQ(W)|) + 2 u |y| (+ 1e-7 absolute), u = 2^-24.
It holds whichever float32 matmul kernel (AVX2, AVX-512, ...) each side runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from requant.ir import Builder, Graph, run, tensor_type
from requant.ir.quant_formats import dequantize_linear
from requant.passes import PassResult, get_pass
from requant.passes.calibration import collect_stats

from canonical_testing import run_pass

__all__ = ["quantized_linear", "dq_operands", "assert_within_rounding", "ort_run", "check_lowering", "probe", "U"]

F32 = "float32"
U = 2.0**-24


def quantized_linear(k: int = 64, n: int = 24, rows: tuple[int, ...] = (2, 7), seed: int = 0, bias: bool = True,
                     gemm: bool = False, trans_b: bool = False, **qopts) -> tuple[Graph, np.ndarray]:
    """A linear layer after "quantize" (Q/DQ form); returns it and a seeded input."""
    rng = np.random.default_rng(seed)
    g = Graph("linear")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [*rows, k]))
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    c = b.const((0.1 * rng.standard_normal(n)).astype(np.float32), name="b")
    if gemm:
        y = b.Gemm(x, b.const(w.T.copy() if trans_b else w, name="w"), c if bias else None, transB=int(trans_b))
    else:
        y = b.MatMul(x, b.const(w, name="w"), _name="fc")
        if bias:
            y = b.Add(y, c)
    g.outputs = [b.Relu(y)]
    xs = rng.standard_normal((*rows, k)).astype(np.float32)
    xs[..., 5] *= 8.0  # an outlier channel, as in transformers
    stats = None
    if not qopts.get("weight_only") and not qopts.get("dynamic"):
        stats = collect_stats(g, [{"x": xs}], runner="interpreter")
    get_pass("quantize", stats=stats, **qopts)(g)
    return g, xs


def dq_operands(g: Graph, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|DQ(a)| and |DQ(W)| of the Q/DQ graph's (single) quantized MatMul/Gemm, in float64."""
    (mm,) = [n for n in g if n.op in ("MatMul", "Gemm")]
    a_node, w_node = mm.inputs[0].producer, mm.inputs[1].producer
    w = dequantize_linear(*[v.const for v in w_node.inputs if v is not None], axis=w_node.attrs.get("axis", 1),
                          block_size=w_node.attrs.get("block_size", 0))
    if mm.op == "Gemm" and mm.attrs.get("transB", 0):
        w = w.T
    # run the Q/DQ graph up to the activation's DequantizeLinear output
    probe = g.clone()
    probe.outputs = [next(v for v in probe.values() if v.name == mm.inputs[0].name)]
    a = run(probe, [xs])[0] if a_node is not None else xs
    return np.abs(a.astype(np.float64)), np.abs(w.astype(np.float64))


def assert_within_rounding(actual: np.ndarray, qdq: np.ndarray, a: np.ndarray, w: np.ndarray) -> None:
    k = w.shape[0]
    bound = (k + 3) * U * (a @ w) + 2 * U * np.abs(qdq.astype(np.float64)) + 1e-7
    err = np.abs(actual.astype(np.float64) - qdq)
    assert np.all(err <= bound), f"max error {err.max():.3g}, max excess {np.max(err - bound):.3g}"


def ort_run(g: Graph, *inputs: np.ndarray) -> np.ndarray:
    pytest.importorskip("onnxruntime")
    from requant.backends.onnx import OnnxRuntimeSession, to_onnx

    return OnnxRuntimeSession(to_onnx(g))(*inputs)[0]


def check_lowering(pass_name: str, g: Graph, xs: np.ndarray, **options) -> PassResult:
    """Lower `g` with `pass_name`; assert the interpreter and ONNX Runtime agree with the
    Q/DQ graph within `assert_within_rounding`."""
    qdq = run(g, [xs])[0]
    a, w = dq_operands(g, xs)
    result = run_pass(pass_name, g, **options)
    assert_within_rounding(run(g, [xs])[0], qdq, a, w)
    assert_within_rounding(ort_run(g, xs), qdq, a, w)
    return result


def probe(g: Graph, name: str) -> Graph:
    """A copy of `g` whose only output is the value `name`."""
    c = g.clone()
    c.outputs = [next(v for v in c.values() if v.name == name)]
    get_pass("dce")(c)
    return c
