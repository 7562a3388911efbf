"""Shared helpers for the quantization and fold tests:
- `block()`: a small post-LN transformer block with every op the quantize pass must
  treat differently (linears, activation x activation MatMuls, LayerNorm, Softmax,
  Gelu, residual Adds), for tests/passes/test_quantize.py and test_lower.py;
- `assert_rel_close(pairs, rel)`: the fold passes' tolerance check (tests/passes/
  test_fold_*.py): max |after - before| <= rel * max |before|;
- `perturbed(case)`: a tests/models/zoo.py model with its 1-D parameters moved off 1
  and 0 (tests/models/test_canonical_forms.py, test_fold_models.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from requant.ir import Builder, Graph, tensor_type
from requant.ir.graph import Value

__all__ = ["block", "assert_rel_close", "perturbed"]

F32 = "float32"


def block() -> tuple[Graph, np.ndarray]:
    """A post-LN transformer block: LN, Q/K/V, Softmax(Q K^T) V, output dense, residual
    Add, LN, FFN with Gelu, residual Add, LN."""
    rng = np.random.default_rng(1)
    d, f, t = 16, 32, 6
    g = Graph("block")
    b = Builder(g)
    x = b.input("x", tensor_type(F32, [2, t, d]))

    def const(*shape: int) -> Value:
        return b.const((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32))

    def ln(v: Value, name: str) -> Value:
        return b.LayerNormalization(v, b.const(np.ones(d, np.float32)), b.const(np.zeros(d, np.float32)),
                                    axis=-1, _name=name)

    h = ln(x, "ln0")
    q = b.Add(b.MatMul(h, const(d, d), _name="attn.query"), const(d))
    k = b.Add(b.MatMul(h, const(d, d), _name="attn.key"), const(d))
    v = b.Add(b.MatMul(h, const(d, d), _name="attn.value"), const(d))
    scores = b.MatMul(q, b.Transpose(k, perm=[0, 2, 1]), _name="attn.scores")
    p = b.Softmax(b.Mul(scores, b.const(np.float32(0.25))), axis=-1, _name="softmax")
    ctx = b.MatMul(p, v, _name="attn.context")
    o = b.Add(b.MatMul(ctx, const(d, d), _name="attn.output"), const(d))
    h1 = ln(b.Add(o, h, _name="residual1"), "ln1")
    ff = b.Gelu(b.Add(b.MatMul(h1, const(d, f), _name="ffn.up"), const(f)), _name="gelu")
    out = ln(b.Add(b.Add(b.MatMul(ff, const(f, d), _name="ffn.down"), const(d)), h1, _name="residual2"), "ln2")
    g.outputs = [out]
    return g, rng.standard_normal((2, t, d)).astype(np.float32)


def assert_rel_close(pairs, rel: float) -> None:
    """max |after - before| <= rel * max |before|, per output and seed (`pairs` as
    canonical_testing.outputs_before_after returns them)."""
    for expected, actual in pairs:
        for e, a in zip(expected, actual):
            assert a.shape == e.shape and a.dtype == e.dtype
            err = float(np.max(np.abs(a.astype(np.float64) - e.astype(np.float64))))
            assert err <= rel * float(np.max(np.abs(e))), f"max error {err:.3g} vs scale {np.max(np.abs(e)):.3g}"


def perturbed(case: Any, seed: int = 0) -> Any:
    """Norm weights of exactly 1 and biases of exactly 0 (a fresh random init) let an
    exporter drop or merge them (and CSE merge them, and leave the folds nothing to
    fold); move every 1-D parameter of `case.module` (a zoo.ModelCase) off those values."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in case.module.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return case
