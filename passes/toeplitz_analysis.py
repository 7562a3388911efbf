"""Finding Toeplitz matrices in captured graphs, and writing their diagonals.

A matrix value M [..., n, n] is Toeplitz when M[..., i, j] depends on (i, j) only
through j - i. This module proves it, per value, from the way the graph computes it,
and emits the 2n - 1 values that define it (its "line": line[t] = M[..., i, j] at
j - i = t - (n - 1)) as a few nodes of O(n) size, so that the n x n matrix need never
exist. What is proved:

- integer index arithmetic is followed exactly as affine functions of the positions,
  `a * i + b * j + c` (Range, Unsqueeze, Squeeze, Reshape adding or dropping unit
  dims, Expand, Transpose, Add / Sub, Mul by a constant integer, Neg, integer Cast,
  and integer constants whose entries are checked to be affine); an affine index with
  a = -b is Toeplitz (the `arange(n)[None, :] - arange(n)[:, None] + offset` of
  relative-position models), any other is refused with its coefficients;
- a constant [..., n, n] is checked exactly (every diagonal bitwise equal);
- Toeplitz-ness is kept by `Gather(table, toeplitz_index)` along the table's last axis
  (per-head bias tables), by a Gather along another axis whose position axes a
  Transpose then moves last, by elementwise ops whose other operands do not depend on
  the positions (exp of a bias, comparisons making causal masks, Where, casts, bucket
  arithmetic), by Trilu (a mask on j - i), Expand / Unsqueeze of leading axes;
- everything else is refused with the reason (the op that breaks it).

The emitted line repeats the same computation on the line instead of the matrix: an
affine index becomes the constant `b * k + c` for k = -(n-1) .. n-1, a constant matrix
its diagonals, and every op on the path is emitted again with its operands in line
form (the two position axes merged into one). Relative-position attention's bias
`exp(B[h, idx(j - i)])` becomes `exp(B[h, idx_line])`, [H, 2n - 1].

`split_low_rank(W)` factors the masked scores of kernelized attention: W = A * T with
A = P @ K^T (a MatMul whose inner size m is below n) and T Toeplitz, through the
products, Where(mask, 0, .), divisions by Toeplitz values and Trilu that usually build
it (Luo et al., arXiv 2106.12566: (phi(Q) phi(K)^T * C) V with C = exp(b_(j-i))).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from requant.ir import dtypes
from requant.ir.builder import Builder
from requant.ir.graph import Node, Value
from requant.ir.ops.fft import toeplitz_line_positions

__all__ = ["Affine", "LowRankSplit", "ToeplitzAnalysis", "ELEMENTWISE_OPS"]

logger = logging.getLogger(__name__)

ELEMENTWISE_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal",
    "Sigmoid", "Tanh", "Erf", "Floor", "Ceil", "Round", "Sign", "Relu", "Softplus", "Clip", "Cast", "Where",
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Xor", "IsNaN", "IsInf",
    "Identity",
})
"""Ops whose output at a position depends on their operands at that position only."""

_MAX_AFFINE_CHECK = 1 << 24  # constant entries checked for an affine form


@dataclass(frozen=True)
class Affine:
    """An integer tensor equal to `offset + sum_d coef[d] * index[d]` (coef 0 on unit dims)."""

    coef: tuple[int, ...]
    offset: int

    def positions(self) -> tuple[int, int]:
        """(a, b): the coefficients of the row i and column j (the last two axes)."""
        padded = (0, 0) + self.coef
        return padded[-2], padded[-1]


@dataclass
class LowRankSplit:
    """W = (P @ K^T) * T: the operands of the low-rank factor and T's line emitter."""

    p: Value
    k_transposed: Value  # [..., m, n]: K^T as the graph has it
    scores: Value  # P @ K^T, [..., n, n]
    inner: list[Value]  # the values between the scores and W (W included)
    emit_factor: Callable[[Builder], Value | None]  # T's line, None when T is all ones


class _Refusal(Exception):
    """Why a value is not (provably) Toeplitz."""


def _shape(v: Value) -> tuple | None:
    s = v.type.shape
    return None if s is None or not all(isinstance(d, int) for d in s) else tuple(s)


def _scalar_const(v: Value | None) -> np.ndarray | None:
    if v is None or v.const is None or np.asarray(v.const).size != 1:
        return None
    return np.asarray(v.const).reshape(())


class ToeplitzAnalysis:
    """Proofs and line emission for one sequence length n (module docstring). Results
    are memoised per value; `explain` has no side effects, `line` emits nodes."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._affine: dict[int, Affine | None] = {}
        self._reasons: dict[int, str | None] = {}
        self._lines: dict[int, Value] = {}

    # ------------------------------------------------------------------ affine index arithmetic

    def affine(self, v: Value) -> Affine | None:
        key = id(v)
        if key not in self._affine:
            self._affine[key] = self._affine_of(v)
        return self._affine[key]

    def _affine_of(self, v: Value) -> Affine | None:
        shape = _shape(v)
        if shape is None or not v.dtype.is_integer:
            return None
        if v.const is not None:
            return _fit_affine(np.asarray(v.const))
        node = v.producer
        if node is None:
            return None
        op, ins = node.op, node.inputs
        if op == "Range":
            start, delta = _scalar_const(ins[0]), _scalar_const(ins[2])
            if start is None or delta is None:
                return None
            return Affine((int(delta) if shape[0] > 1 else 0,), int(start))
        if op in ("Identity", "Cast"):
            inner = self.affine(ins[0]) if ins[0].dtype.is_integer else None
            return inner
        if op == "Neg":
            inner = self.affine(ins[0])
            return None if inner is None else Affine(tuple(-c for c in inner.coef), -inner.offset)
        if op in ("Add", "Sub"):
            a, b = self.affine(ins[0]), self.affine(ins[1])
            if a is None or b is None:
                return None
            sign = 1 if op == "Add" else -1
            rank = len(shape)
            ca, cb = (0,) * (rank - len(a.coef)) + a.coef, (0,) * (rank - len(b.coef)) + b.coef
            return Affine(tuple(_unit0(x + sign * y, d) for x, y, d in zip(ca, cb, shape)), a.offset + sign * b.offset)
        if op == "Mul":
            for x, s in ((ins[0], ins[1]), (ins[1], ins[0])):
                factor = _scalar_const(s)
                inner = self.affine(x)
                if factor is not None and inner is not None and np.issubdtype(factor.dtype, np.integer):
                    rank = len(shape)
                    coef = (0,) * (rank - len(inner.coef)) + tuple(c * int(factor) for c in inner.coef)
                    return Affine(coef, inner.offset * int(factor))
            return None
        if op in ("Unsqueeze", "Squeeze", "Reshape", "Expand"):
            inner = self.affine(ins[0])
            if inner is None:
                return None
            return _reshaped_affine(inner, _shape(ins[0]), shape)
        if op == "Transpose":
            inner = self.affine(ins[0])
            perm = node.attrs.get("perm")
            if inner is None:
                return None
            perm = list(perm) if perm is not None else list(range(len(shape)))[::-1]
            return Affine(tuple(inner.coef[p] for p in perm), inner.offset)
        return None

    # ------------------------------------------------------------------ Toeplitz proofs

    def explain(self, v: Value) -> str | None:
        """None when v is proved Toeplitz (or does not depend on the positions), else
        why not."""
        key = id(v)
        if key not in self._reasons:
            try:
                self._check(v)
                self._reasons[key] = None
            except _Refusal as exc:
                self._reasons[key] = str(exc)
        return self._reasons[key]

    def is_toeplitz(self, v: Value) -> bool:
        return self.explain(v) is None

    def pair_axis(self, v: Value) -> int:
        """Where the two position axes are in v (rank - 2 unless a Gather placed them)."""
        shape = _shape(v)
        node = v.producer
        if node is not None and node.op == "Gather" and _shape(node.inputs[1]) is not None \
                and len(_shape(node.inputs[1])) == 2 and not self._position_free(node.inputs[1]):
            return int(node.attrs.get("axis", 0)) % len(_shape(node.inputs[0]))
        if node is not None and node.op == "Transpose" and self.is_toeplitz(node.inputs[0]):
            inner = self.pair_axis(node.inputs[0])
            perm = list(node.attrs.get("perm") or range(len(shape))[::-1])
            return perm.index(inner)
        return len(shape) - 2

    def _position_free(self, v: Value) -> bool:
        """v does not depend on the positions: its shape is 1 on both position axes."""
        shape = _shape(v)
        return shape is not None and (len(shape) < 2 and int(np.prod(shape)) == 1 or shape[-2:] == (1, 1))

    def _label(self, v: Value) -> str:
        node = v.producer
        return f"%{v.name}" + (f" ({node.op})" if node is not None else "")

    def _check(self, v: Value) -> None:
        n = self.n
        shape = _shape(v)
        if shape is None:
            raise _Refusal(f"{self._label(v)} has a symbolic shape")
        if self._position_free(v):
            return
        aff = self.affine(v)
        if aff is not None and len(shape) >= 2:
            a, b = aff.positions()
            if any(c != 0 for c in aff.coef[:-2]):
                raise _Refusal(f"index {self._label(v)} also varies along a leading axis")
            if a != -b:
                raise _Refusal(f"index {self._label(v)} is {a}*i + {b}*j + {aff.offset}: not a function of j - i")
            return
        if v.const is not None:
            if len(shape) < 2 or shape[-2:] != (n, n):
                raise _Refusal(f"constant {self._label(v)} {list(shape)} is not an n x n ({n}) matrix")
            c = np.asarray(v.const)
            if not np.array_equal(c[..., 1:, 1:], c[..., :-1, :-1], equal_nan=True):
                raise _Refusal(f"constant {self._label(v)} is not Toeplitz (its diagonals are not constant)")
            return
        node = v.producer
        if node is None:
            raise _Refusal(f"graph input {self._label(v)} [{n}, {n}] is not known to be Toeplitz")
        op = node.op
        if op in ELEMENTWISE_OPS:
            for x in node.inputs:
                if x is None:
                    continue
                reason = self.explain(x)
                if reason is not None:
                    raise _Refusal(reason)
                xs = _shape(x)
                if not self._position_free(x) and self.pair_axis(x) - len(xs) != self.pair_axis(v) - len(shape):
                    raise _Refusal(f"{self._label(v)} mixes operands whose position axes are not aligned")
            if self.pair_axis(v) != len(shape) - 2:
                raise _Refusal(f"{self._label(v)}: elementwise op on positions that are not the last axes")
            return
        if op == "Gather":
            table, index = node.inputs
            reason = self.explain(index)
            if reason is not None:
                raise _Refusal(reason)
            if _shape(index) is None or len(_shape(index)) != 2 or self._position_free(index):
                raise _Refusal(f"Gather index {self._label(index)} is not a 2-D [n, n] position index")
            if _shape(table) is None:
                raise _Refusal(f"Gather table {self._label(table)} has a symbolic shape")
            return
        if op == "Transpose":
            reason = self.explain(node.inputs[0])
            if reason is not None:
                raise _Refusal(reason)
            inner = self.pair_axis(node.inputs[0])
            perm = list(node.attrs.get("perm") or range(len(shape))[::-1])
            at = perm.index(inner)
            if at + 1 >= len(perm) or perm[at + 1] != inner + 1:
                raise _Refusal(f"{self._label(v)} swaps or separates the position axes (the transpose of a "
                               f"Toeplitz matrix would need its line reversed)")
            return
        if op == "Trilu":
            reason = self.explain(node.inputs[0])
            if reason is not None:
                raise _Refusal(reason)
            if len(node.inputs) > 1 and node.inputs[1] is not None and _scalar_const(node.inputs[1]) is None:
                raise _Refusal(f"{self._label(v)}: Trilu's k is computed at run time")
            return
        if op in ("Expand", "Unsqueeze", "Reshape", "Squeeze"):
            x = node.inputs[0]
            reason = self.explain(x)
            if reason is not None:
                raise _Refusal(reason)
            xs = _shape(x)
            if not self._position_free(x) and (xs[-2:] != shape[-2:] or self.pair_axis(x) != len(xs) - 2):
                raise _Refusal(f"{self._label(v)} reshapes the position axes")
            return
        raise _Refusal(f"{self._label(v)} is computed by {op}, which does not keep a matrix Toeplitz")

    # ------------------------------------------------------------------ line emission

    def forget_lines(self) -> None:
        """Forget the emitted lines (they were taken out of the graph)."""
        self._lines.clear()

    def line(self, v: Value, b: Builder) -> Value:
        """v's line [..., 2n - 1] (or v's position-free form [..., 1]) emitted with `b`;
        v must be proved (explain(v) is None)."""
        key = id(v)
        if key not in self._lines:
            self._lines[key] = self._emit(v, b)
        return self._lines[key]

    def _emit(self, v: Value, b: Builder) -> Value:
        n = self.n
        shape = _shape(v)
        if self._position_free(v):
            if len(shape) < 2:
                return v
            if v.const is not None:
                return b.const(np.asarray(v.const).reshape(shape[:-1]), dtype=v.dtype)
            return b.Reshape(v, b.const(np.asarray(shape[:-1], np.int64)))
        rows, cols = toeplitz_line_positions(n)
        aff = self.affine(v)
        if aff is not None and len(shape) >= 2:
            _, coef_j = aff.positions()
            k = np.arange(-(n - 1), n, dtype=np.int64)
            values = (aff.offset + coef_j * k).reshape((1,) * (len(shape) - 2) + (2 * n - 1,))
            return b.const(values.astype(v.dtype.np), dtype=v.dtype)
        if v.const is not None:
            c = np.asarray(v.const)
            return b.const(np.ascontiguousarray(c[..., rows, cols]), dtype=v.dtype)
        node = v.producer
        op = node.op
        if op in ELEMENTWISE_OPS:
            return b.node(op, *[None if x is None else self.line(x, b) for x in node.inputs], **node.attrs).outputs[0]
        if op == "Gather":
            table, index = node.inputs
            axis = int(node.attrs.get("axis", 0))
            return b.Gather(table, self.line(index, b), axis=axis)
        if op == "Transpose":
            x = node.inputs[0]
            inner = self.pair_axis(x)
            perm = list(node.attrs.get("perm") or range(len(shape))[::-1])
            merged = [p if p <= inner else p - 1 for p in perm if p != inner + 1]
            return b.Transpose(self.line(x, b), perm=merged)
        if op == "Trilu":
            x_line = self.line(node.inputs[0], b)
            offset = 0 if len(node.inputs) < 2 or node.inputs[1] is None else int(_scalar_const(node.inputs[1]))
            k = np.arange(-(n - 1), n)
            keep = k >= offset if int(node.attrs.get("upper", 1)) else k <= offset
            zero = b.const(np.zeros((), v.dtype.np), dtype=v.dtype)
            return b.Where(b.const(keep), x_line, zero)
        # Expand / Unsqueeze / Reshape / Squeeze of leading axes: the same on the line
        x_line = self.line(node.inputs[0], b)
        target = shape[:-2] + (2 * n - 1,)
        if _shape(x_line) == target:
            return x_line
        if op == "Expand":
            return b.Expand(x_line, b.const(np.asarray(target, np.int64)))
        return b.Reshape(x_line, b.const(np.asarray(target, np.int64)))

    # ------------------------------------------------------------------ kernelized attention

    def split_low_rank(self, w: Value) -> LowRankSplit | str:
        """W = (P @ K^T) * T (module docstring), or why W is not of that form."""
        try:
            p, kt, scores, inner, emit = self._split(w)
        except _Refusal as exc:
            return str(exc)
        return LowRankSplit(p, kt, scores, inner, emit)

    def _split(self, v: Value):
        n = self.n
        node = v.producer
        if node is None:
            raise _Refusal(f"{self._label(v)} is not computed from a low-rank product")
        if node.op == "MatMul":
            p, kt = node.inputs
            ps, ks = _shape(p), _shape(kt)
            if ps is None or ks is None or len(ps) < 2 or len(ks) < 2 or ps[-2] != n or ks[-1] != n:
                raise _Refusal(f"{self._label(v)} is not P [.., n, m] @ K^T [.., m, n]")
            if ps[-1] >= n:
                raise _Refusal(f"{self._label(v)} has rank {ps[-1]} >= n = {n}: not low-rank")
            return p, kt, v, [v], lambda b: None
        if node.op == "Mul":
            split_refusals = []
            for x, t in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
                try:
                    p, kt, scores, inner, emit = self._split(x)
                except _Refusal as exc:
                    split_refusals.append(str(exc))
                    continue
                reason = self.explain(t)
                if reason is not None:  # a low-rank side times something that is not Toeplitz: why
                    raise _Refusal(reason)
                return p, kt, scores, inner + [v], _times(emit, lambda b, t=t: self.line(t, b))
            toeplitz_sides = [x for x, t in zip(node.inputs, node.inputs[::-1]) if self.is_toeplitz(t)]
            if toeplitz_sides:  # a Toeplitz factor, but the other side is not a low-rank product
                raise _Refusal(split_refusals[0] if len(split_refusals) == 2 else split_refusals[-1])
            raise _Refusal(f"{self._label(v)} is not a low-rank product times a Toeplitz matrix")
        if node.op == "Div":
            x, t = node.inputs
            if self.is_toeplitz(t):
                p, kt, scores, inner, emit = self._split(x)
                return p, kt, scores, inner + [v], _times(emit, lambda b, t=t: b.Reciprocal(self.line(t, b)))
            raise _Refusal(f"{self._label(v)} divides by something that is not Toeplitz: {self.explain(t)}")
        if node.op == "Where":
            cond, x, y = node.inputs
            if not self.is_toeplitz(cond):
                raise _Refusal(f"mask of {self._label(v)}: {self.explain(cond)}")
            for scores_side, other, keep_when in ((x, y, True), (y, x, False)):
                zero = _scalar_const(other)
                if zero is None or float(zero) != 0.0:
                    continue
                p, kt, scores, inner, emit = self._split(scores_side)

                def mask(b: Builder, cond=cond, keep_when=keep_when, dt=v.dtype) -> Value:
                    one = b.const(np.ones((), dt.np), dtype=dt)
                    zero_v = b.const(np.zeros((), dt.np), dtype=dt)
                    line = self.line(cond, b)
                    return b.Where(line, one, zero_v) if keep_when else b.Where(line, zero_v, one)

                return p, kt, scores, inner + [v], _times(emit, mask)
            raise _Refusal(f"{self._label(v)} selects between two non-zero values")
        if node.op == "Trilu":
            p, kt, scores, inner, emit = self._split(node.inputs[0])
            offset = 0 if len(node.inputs) < 2 or node.inputs[1] is None else int(_scalar_const(node.inputs[1]))
            k = np.arange(-(n - 1), n)
            keep = (k >= offset) if int(node.attrs.get("upper", 1)) else (k <= offset)
            dt = v.dtype
            return p, kt, scores, inner + [v], _times(emit, lambda b: b.const(keep.astype(dt.np), dtype=dt))
        if node.op == "Softmax":
            raise _Refusal(f"{self._label(v)} is a softmax: softmax attention has no FFT form (it does not "
                           f"factor over positions)")
        raise _Refusal(f"{self._label(v)} is computed by {node.op}, not a product of a low-rank matrix and a "
                       f"Toeplitz one")


def _times(first: Callable, second: Callable) -> Callable[[Builder], Value | None]:
    """The emitter of the product of two factor lines (None meaning all ones)."""

    def emit(b: Builder) -> Value | None:
        x, y = first(b), second(b)
        if x is None:
            return y
        if y is None:
            return x
        return b.Mul(x, y)

    return emit


def _unit0(c: int, dim: int) -> int:
    return 0 if dim == 1 else c


def _fit_affine(c: np.ndarray) -> Affine | None:
    """The affine form of an integer constant, checked on every entry, or None."""
    if not np.issubdtype(c.dtype, np.integer) or c.size == 0 or c.size > _MAX_AFFINE_CHECK:
        return None
    c = c.astype(np.int64)
    origin = c[(0,) * c.ndim] if c.ndim else c
    coef = []
    for d, size in enumerate(c.shape):
        if size == 1:
            coef.append(0)
            continue
        step = [0] * c.ndim
        step[d] = 1
        coef.append(int(c[tuple(step)] - origin))
    predicted = np.full(c.shape, int(origin), np.int64)
    for d, k in enumerate(coef):
        if k:
            shape = [1] * c.ndim
            shape[d] = c.shape[d]
            predicted = predicted + k * np.arange(c.shape[d], dtype=np.int64).reshape(shape)
    if not np.array_equal(predicted, c):
        return None
    return Affine(tuple(coef), int(origin))


def _reshaped_affine(inner: Affine, src: tuple | None, dst: tuple) -> Affine | None:
    """An affine form carried through a reshape that only adds or drops unit dims (or a
    broadcast, whose new dims do not vary)."""
    if src is None:
        return None
    varying = [(d, c) for d, c in zip(src, inner.coef) if d != 1]
    dst_varying = [i for i, d in enumerate(dst) if d != 1]
    coef = [0] * len(dst)
    # a broadcast (Expand) keeps the source's axes right-aligned; a unit-dim reshape keeps their order
    src_right = (1,) * (len(dst) - len(src)) + src if len(dst) >= len(src) else None
    if src_right is not None and all(s == d or s == 1 for s, d in zip(src_right, dst)):
        padded = (0,) * (len(dst) - len(src)) + inner.coef
        return Affine(tuple(c if s != 1 else 0 for c, s in zip(padded, src_right)), inner.offset)
    if [d for d, _ in varying] != [dst[i] for i in dst_varying]:
        return None
    for i, (_, c) in zip(dst_varying, varying):
        coef[i] = c
    return Affine(tuple(coef), inner.offset)
