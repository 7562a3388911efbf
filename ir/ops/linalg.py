"""Matrix products: MatMul (numpy semantics, batched, 1-D operands promoted), Gemm
(2-D, transA/transB, alpha/beta, C broadcast to (M, N)) and Einsum (numpy einsum,
explicit or implicit output, `...` broadcasting).

Floats accumulate in float32 for f16/bf16 inputs (rounded once at the end), in their
own dtype for f32/f64. Integer MatMul/Einsum accumulate in the operand dtype and wrap
(the result is the exact product modulo 2**bits); requant's integer matmul with a wide
accumulator is a separate op. Integer Gemm needs integral alpha/beta and wraps too.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from requant.ir.ops._common import attr_float, attr_int, check_input, compute_dtype, opt, same_dtype
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.shapes import broadcast_shapes, unify_dims
from requant.ir.types import Dim, TensorType

__all__: list[str] = []


def matmul_shape(ctx: InferContext, a: TensorType, b: TensorType) -> tuple[Dim, ...] | None:
    """numpy matmul's result shape (1-D operands promoted, batch dims broadcast); None
    when a rank is unknown. Shared with the integer matmuls in ops/quant.py."""
    if a.shape is None or b.shape is None:
        return None
    sa, sb = list(a.shape), list(b.shape)
    if not sa or not sb:
        raise ctx.fail("operands must have rank >= 1")
    squeeze_a, squeeze_b = len(sa) == 1, len(sb) == 1
    if squeeze_a:
        sa = [1] + sa
    if squeeze_b:
        sb = sb + [1]
    k1, k2 = sa[-1], sb[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise ctx.fail(f"inner dims differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    batch = broadcast_shapes([tuple(sa[:-2]), tuple(sb[:-2])], ctx.schema.name)
    return tuple(list(batch) + ([] if squeeze_a else [sa[-2]]) + ([] if squeeze_b else [sb[-1]]))


def _infer_matmul(ctx: InferContext) -> list[TensorType]:
    a = check_input(ctx, 0, "numeric")
    b = check_input(ctx, 1, "numeric")
    same_dtype(ctx, [0, 1])
    return [TensorType(matmul_shape(ctx, a, b), a.dtype)]


def _matmul(ins: list, attrs: dict, outs: list) -> Any:
    a, b = ins
    ct = compute_dtype(a)
    with np.errstate(over="ignore"):
        return np.matmul(a.astype(ct, copy=False), b.astype(ct, copy=False)).astype(a.dtype)


define_op("MatMul", inputs=("A", "B"), infer=_infer_matmul, kernel=_matmul)


def _infer_gemm(ctx: InferContext) -> list[TensorType]:
    a = check_input(ctx, 0, "numeric")
    b = check_input(ctx, 1, "numeric")
    same_dtype(ctx, [0, 1, 2])
    ta = attr_int(ctx, "transA", (0, 1))
    tb = attr_int(ctx, "transB", (0, 1))
    alpha, beta = attr_float(ctx, "alpha"), attr_float(ctx, "beta")
    if a.dtype.is_integer and (alpha != int(alpha) or beta != int(beta)):
        raise ctx.fail(f"integer Gemm needs integral alpha and beta, got {alpha} and {beta}")
    if a.rank is not None and a.rank != 2 or b.rank is not None and b.rank != 2:
        raise ctx.fail(f"A and B must be 2-D, got {a} and {b}")
    sa = a.shape if a.shape is not None else (None, None)
    sb = b.shape if b.shape is not None else (None, None)
    m, ka = (sa[1], sa[0]) if ta else sa
    kb, n = (sb[1], sb[0]) if tb else sb
    unify_dims(ka, kb, "Gemm", "inner dims")
    c = ctx.input(2)
    if c is not None and c.shape is not None:
        if c.rank > 2:
            raise ctx.fail(f"C must have rank <= 2, got {c}")
        out = broadcast_shapes([(m, n), c.shape], "Gemm")
        for x, y in zip(out, (m, n)):
            if isinstance(x, int) and isinstance(y, int) and x != y:
                raise ctx.fail(f"C {c} does not broadcast to ({m}, {n})")
    return [TensorType((m, n), a.dtype)]


def _gemm(ins: list, attrs: dict, outs: list) -> Any:
    a, b, c = ins[0], ins[1], opt(ins, 2)
    ct = compute_dtype(a)
    a, b = a.astype(ct, copy=False), b.astype(ct, copy=False)
    if attrs["transA"]:
        a = a.T
    if attrs["transB"]:
        b = b.T
    alpha, beta = attrs["alpha"], attrs["beta"]
    with np.errstate(over="ignore"):
        y = np.matmul(a, b)
        if alpha != 1.0:
            y = y * ct.type(alpha)
        if c is not None:
            cc = c.astype(ct, copy=False)
            y = y + (cc if beta == 1.0 else cc * ct.type(beta))
    return y.astype(outs[0].dtype.np)


define_op(
    "Gemm",
    inputs=("A", "B", "C?"),
    attrs={"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
    infer=_infer_gemm,
    kernel=_gemm,
)


def _parse_term(term: str, ctx: InferContext) -> tuple[list[str], bool]:
    ell = "..." in term
    letters = term.replace("...", "")
    if "." in letters or not all(ch.isalpha() for ch in letters):
        raise ctx.fail(f"bad einsum term {term!r}")
    if term.count("...") > 1:
        raise ctx.fail(f"more than one ellipsis in {term!r}")
    return list(term), ell


def _infer_einsum(ctx: InferContext) -> list[TensorType]:
    eq = ctx.attrs["equation"]
    if not isinstance(eq, str):
        raise ctx.fail(f"attribute equation must be a string, got {eq!r}")
    if not ctx.inputs or any(t is None for t in ctx.inputs):
        raise ctx.fail("needs one or more inputs, none omitted")
    for i in range(len(ctx.inputs)):
        check_input(ctx, i, "numeric")
    dt = same_dtype(ctx, list(range(len(ctx.inputs))))
    eq = eq.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ctx.inputs):
        raise ctx.fail(f"equation {eq!r} has {len(terms)} operands, the node has {len(ctx.inputs)}")
    dims: dict[str, Dim] = {}
    ell_shapes = []
    counts: Counter = Counter()
    unknown = False
    for term, t in zip(terms, ctx.inputs):
        _parse_term(term, ctx)
        ell = "..." in term
        letters = term.replace("...", "")
        counts.update(letters)
        if t.shape is None:
            unknown = True
            continue
        n_ell = t.rank - len(letters)
        if n_ell < 0 or (n_ell > 0 and not ell):
            raise ctx.fail(f"term {term!r} does not fit operand {t}")
        before, _, after = term.partition("...") if ell else (term, "", "")
        ell_shapes.append(tuple(t.shape[len(before) : len(before) + n_ell]))
        labeled = list(zip(before, t.shape[: len(before)])) + list(zip(after, t.shape[len(t.shape) - len(after) :]))
        for ch, d in labeled:
            prev = dims.get(ch)
            if ch in dims and isinstance(prev, int) and isinstance(d, int) and 1 in (prev, d) and prev != d:
                dims[ch] = max(prev, d)  # numpy broadcasts a size-1 label
            else:
                dims[ch] = unify_dims(prev, d, "Einsum", f"dims labelled {ch!r}") if ch in dims else d
    if arrow:
        _parse_term(rhs, ctx)
        out_terms = rhs
    else:
        singles = "".join(sorted(ch for ch, n in counts.items() if n == 1))
        out_terms = ("..." if any("..." in t for t in terms) else "") + singles
    for ch in out_terms.replace("...", ""):
        if ch not in counts:
            raise ctx.fail(f"output label {ch!r} does not appear in the inputs")
    if unknown:
        return [TensorType(None, dt)]
    ell_out = broadcast_shapes(ell_shapes, "Einsum") if ell_shapes else ()
    before, _, after = out_terms.partition("...") if "..." in out_terms else (out_terms, "", "")
    shape = [dims[ch] for ch in before] + (list(ell_out) if "..." in out_terms else []) + [dims[ch] for ch in after]
    return [TensorType(tuple(shape), dt)]


def _einsum(ins: list, attrs: dict, outs: list) -> Any:
    ct = compute_dtype(ins[0])
    with np.errstate(over="ignore"):
        y = np.einsum(attrs["equation"].replace(" ", ""), *(x.astype(ct, copy=False) for x in ins))
    return np.asarray(y).astype(ins[0].dtype)


define_op("Einsum", inputs=("Inputs*",), outputs=("Output",), attrs={"equation": REQUIRED}, infer=_infer_einsum, kernel=_einsum)
