"""Pass "toeplitz_fft": Toeplitz products and kernelized attention with relative positions
in FFT form, where a cost model from measured per-backend crossovers says it pays.

Rewrites (exact up to float rounding; passes/toeplitz_analysis.py proves the Toeplitz
structure and emits its 2n - 1 diagonal values, the "line" c):
- `MatMul(T, Y)` with T [..., n, n] Toeplitz (`T[i, j] = c_(j-i)`, e.g. `exp(B[h, idx])`
  with `idx = j - i + offset`) -> `ToeplitzMatMulFFT(Y, S, axis=-2, n_fft=L)`;
- kernelized attention with relative positions, `W = (P @ K^T) * T` (T Toeplitz, masked
  causally or not, one T per head) read by `MatMul(W, V)` and `ReduceSum(W, axes=-1)`
  (numerator and normaliser) -> `ToeplitzLowRankMatMulFFT(P, K, V, S)` and the same with
  a column of ones: `z_i = P_i^T [sum_j c_(j-i) K_j V_j^T] / P_i^T [sum_j c_(j-i) K_j]`
  (Luo et al., "Stable, Fast and Accurate: Kernelized Attention with Relative Positional
  Encoding", NeurIPS 2021, arXiv 2106.12566), O(n m e log n) instead of O(n^2 (m + e));
- a depthwise 1-D `Conv` (group = channels, stride 1, any padding and dilation, bias)
  -> `ToeplitzMatMulFFT` along the sequence axis with one spectrum per channel (the
  long convolutions of Hyena / H3 / CKConv-style models).

In every case S = RFFT(h, L) is the spectrum of the circulant of size L (the smallest
power of two >= 2n - 1) whose top-left n x n block is T: `h[r] = c_(-r)`, `h[L - r] =
c_r` (`requant.ir.ops.fft.circulant_column`), emitted as a Gather of the line and an
RFFT, which constant folding turns into a constant when the bias is one. Products whose
Toeplitz factor is one-sided (causal) compute in float64 when the attention normalises
them: causal row sums grow with i, and an FFT's rounding error is relative to the
largest of them, so in float32 the first rows' ratio would lose up to 1e-3.

Refused, with the reason in the stats: an index that depends on i and j separately, a
matrix that is not provably Toeplitz, softmax attention with a relative bias (no FFT
form: softmax does not factor over positions), a scores tensor that something else
also reads, symbolic lengths, strided convolutions. The cost model keeps the quadratic
form where `rho * fft_flops >= quadratic_flops`, rho being the measured ratio of the
backend's time per FFT-form flop to its time per quadratic-form flop
(passes/toeplitz_fft_crossovers.py, re-measured by `python -m
requant.tools.bench.toeplitz_fft --write-crossovers`); `policy="always"` rewrites every
match.

Options: `backend` ("onnx" | "tvm": whose measurements decide), `policy` ("cost" |
"always"). Stats: `rewritten`, `kept_quadratic` (the cost model's choice), `refused`,
and `decisions`, one line per candidate node: what it is, n, and why it was or was not
rewritten (what the compile report prints).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from requant.errors import RequantError
from requant.ir import dtypes
from requant.ir.builder import Builder
from requant.ir.graph import Graph, Node, Value
from requant.ir.ops.fft import circulant_gather_index, fft_length
from requant.ir.registry import run_kernel
from requant.passes.dce import dead_code_elimination
from requant.passes.manager import PassResult, graph_pass
from requant.passes.toeplitz_analysis import ELEMENTWISE_OPS, LowRankSplit, ToeplitzAnalysis
from requant.passes.toeplitz_fft_crossovers import CROSSOVERS

__all__ = ["toeplitz_fft", "quadratic_flops", "fft_flops", "PATTERNS", "POLICIES"]

logger = logging.getLogger(__name__)

PASS = "toeplitz_fft"
PATTERNS = ("toeplitz_matmul", "kernelized_attention", "long_conv")
POLICIES = ("cost", "always")
_SEARCH_DEPTH = 24  # producers looked through to tell a positional matrix from any other
# ops a positional matrix is built through (with the elementwise ones): refusals are
# reported for matrices built this way from positions, not for every square MatMul operand
_POSITIONWISE = frozenset({"Gather", "Transpose", "Expand", "Unsqueeze", "Reshape", "Squeeze", "Softmax"})


# ----------------------------------------------------------------------------- the cost model


def fft_flops(n_fft: int, columns: int) -> float:
    """Forward and inverse real FFTs of `columns` columns of n_fft points (2.5 L log2 L each)."""
    return 5.0 * n_fft * math.log2(max(n_fft, 2)) * columns


def quadratic_flops(pattern: str, n: int, **dims: int) -> float:
    """Flops of the quadratic form per batch instance: `e` output columns, `m` features,
    `k` kernel taps (long_conv)."""
    if pattern == "toeplitz_matmul":
        return 2.0 * n * n * dims["e"]
    if pattern == "kernelized_attention":
        return 2.0 * n * n * (dims["m"] + dims["e"]) + 2.0 * n * n
    if pattern == "long_conv":
        return 2.0 * n * dims["k"]
    raise ValueError(f"unknown pattern {pattern!r}")


@dataclass
class _Plan:
    """One candidate node: what it is and how to rewrite it."""

    node: Node
    pattern: str
    n: int
    n_fft: int
    quadratic: float
    fft: float
    precision: str  # "f32" | "f64" (the FFT's compute dtype)
    rewrite: Callable[[], None]
    undo: Callable[[], None] | None = None  # takes out what planning emitted, when not rewritten

    @property
    def cost_key(self) -> str:
        return self.pattern + ("_f64" if self.precision == "f64" and self.pattern == "kernelized_attention" else "")


def _rho(backend: str, key: str) -> float:
    table = CROSSOVERS.get(backend)
    if table is None:
        raise RequantError(f"pass '{PASS}': no crossover measurements for backend {backend!r} "
                           f"(passes/toeplitz_fft_crossovers.py has {', '.join(CROSSOVERS)})")
    return float(table[key]["rho"])


# ----------------------------------------------------------------------------- shared emission


def _static(v: Value) -> tuple[int, ...] | None:
    s = v.type.shape
    return tuple(s) if s is not None and all(isinstance(d, int) for d in s) else None


def _i64(b: Builder, values) -> Value:
    return b.const(np.asarray(values, np.int64))


def _spectrum(b: Builder, line: Value, n: int, n_fft: int, dt: dtypes.DType) -> Value:
    """RFFT of the circulant first column of Toeplitz lines [..., 2n - 1] -> [..., bins, 2]."""
    lead = _static(line)[:-1]
    zero = b.const(np.zeros(lead + (1,), line.dtype.np), dtype=line.dtype)
    padded = b.Concat(line, zero, axis=-1)
    column = b.Gather(padded, _i64(b, circulant_gather_index(n, n_fft)), axis=len(lead))
    if column.dtype != dt:
        column = b.Cast(column, to=dt.name)
    return b.RFFT(column, axis=-1)


def _constant_value(v: Value, memo: dict[int, np.ndarray | None]) -> np.ndarray | None:
    """v's value when it follows from constants alone (the few line nodes), else None."""
    if v.const is not None:
        return np.asarray(v.const)
    key = id(v)
    if key in memo:
        return memo[key]
    memo[key] = None
    node = v.producer
    if node is None:
        return None
    ins = [None if x is None else _constant_value(x, memo) for x in node.inputs]
    if any(x is None and orig is not None for x, orig in zip(ins, node.inputs)):
        return None
    outs = run_kernel(node.op, ins, node.attrs, [o.type for o in node.outputs])
    memo[key] = outs[v.index]
    return memo[key]


def _one_sided(line: np.ndarray | None) -> bool:
    """Whether Toeplitz lines are zero on one side of the diagonal (causal), or unknown."""
    if line is None:
        return True
    n = (line.shape[-1] + 1) // 2
    return not np.any(line[..., n:]) or not np.any(line[..., : n - 1])


def _replace(graph: Graph, old: Value, new: Value) -> None:
    graph.replace_value(old, new)


class _Emission:
    """A builder before `anchor` whose nodes and constants `undo` removes again."""

    def __init__(self, graph: Graph, anchor: Node) -> None:
        self.graph = graph
        self.builder = Builder(graph, before=anchor, meta={"created_by": PASS})
        self._constants = set(map(id, graph.constants))

    def undo(self) -> None:
        for node in reversed(self.builder.created):
            if node.graph is self.graph and not any(o.uses for o in node.outputs):
                self.graph.remove_node(node)
        for value in [c for c in self.graph.constants if id(c) not in self._constants]:
            if not value.uses and not self.graph.is_output(value):
                self.graph.remove_constant(value)


# ----------------------------------------------------------------------------- candidates


class _Finder:
    """Finds the candidates of one graph and says why others are refused."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.analyses: dict[int, ToeplitzAnalysis] = {}

    def analysis(self, n: int) -> ToeplitzAnalysis:
        return self.analyses.setdefault(n, ToeplitzAnalysis(n))

    def forget_lines(self) -> None:
        """Drop the analyses' emitted lines (after an undo took some of them out)."""
        for analysis in self.analyses.values():
            analysis.forget_lines()

    def builder(self, node: Node) -> Builder:
        return Builder(self.graph, before=node, meta={"created_by": PASS})

    # -- MatMul(W, Y): Toeplitz matmul or kernelized attention --------------------------

    def matmul(self, node: Node) -> _Plan | str | None:
        w, y = node.inputs
        ws = w.type.shape
        if ws is None or len(ws) < 2 or ws[-1] != ws[-2] or y.type.shape is None or len(y.type.shape) < 2:
            return None
        if not isinstance(ws[-1], int):
            return f"{_describe(node)}: sequence length {ws[-1]} is symbolic" if self._positional(w) else None
        n = ws[-1]
        if n < 2 or _static(w) is None or _static(y) is None:
            return None
        analysis = self.analysis(n)
        split = analysis.split_low_rank(w)
        if isinstance(split, LowRankSplit):
            return self._attention(node, w, split, analysis)
        reason = analysis.explain(w)
        if reason is None:
            return self._toeplitz_matmul(node, w, y, analysis)
        if not self._positional(w):
            return None
        # the low-rank analysis says more when it got past W's own op (a softmax, an index)
        generic = split.endswith("not a product of a low-rank matrix and a Toeplitz one") or \
            split.endswith("is not a low-rank product times a Toeplitz matrix")
        return f"{_describe(node)} [{n}x{n}]: {reason if generic else split}"

    def _toeplitz_matmul(self, node: Node, w: Value, y: Value, analysis: ToeplitzAnalysis) -> _Plan | str:
        n, e = _static(w)[-1], _static(y)[-1]
        others = [u for u in w.users if u is not node] + (["a graph output"] if self.graph.is_output(w) else [])
        if others:
            return f"{_describe(node)} [{n}x{n}]: the Toeplitz matrix is also read elsewhere, so it stays quadratic"
        n_fft = fft_length(n)
        dt = y.dtype

        def rewrite() -> None:
            b = self.builder(node)
            line = analysis.line(w, b)
            spectrum = b.Unsqueeze(_spectrum(b, line, n, n_fft, dt), _i64(b, [-2]))
            out = b.ToeplitzMatMulFFT(y, spectrum, axis=-2, n_fft=n_fft)
            _replace(self.graph, node.outputs[0], out)

        return _Plan(node, "toeplitz_matmul", n, n_fft, quadratic_flops("toeplitz_matmul", n, e=e),
                     fft_flops(n_fft, e), "f32", rewrite)

    def _attention(self, node: Node, w: Value, split: LowRankSplit, analysis: ToeplitzAnalysis) -> _Plan | str:
        n = _static(w)[-1]
        readers = self._attention_readers(w)
        if isinstance(readers, str):
            return f"{_describe(node)} [{n}x{n}]: {readers}"
        inner = set(map(id, split.inner))
        for value in split.inner[:-1]:
            if self.graph.is_output(value) or any(id(o) not in inner for u in value.users for o in u.outputs):
                return f"{_describe(node)} [{n}x{n}]: %{value.name} is also read outside the attention, so it stays"
        matmuls, sums = readers
        m = _static(split.p)[-1]
        e = sum(_static(mm.inputs[1])[-1] for mm in matmuls) + len(sums)
        n_fft = fft_length(n)
        dt = w.dtype
        first = _first(self.graph, matmuls + sums)
        # the factor's line goes in now, before the first reader, so that its values can
        # say whether it is one-sided; a plan the cost model turns down takes it out again
        emitted = _Emission(self.graph, first)
        line = split.emit_factor(emitted.builder)
        if line is None:
            line = emitted.builder.const(np.ones(2 * n - 1, dt.np), dtype=dt)
            precision = "f32"
        else:
            precision = "f64" if _one_sided(_constant_value(line, {})) else "f32"
        compute = dtypes.float64 if precision == "f64" else dt

        def rewrite() -> None:
            b = self.builder(first)
            spectrum = _spectrum(b, line, n, n_fft, compute)
            p, k = split.p, _keys(b, split.k_transposed)
            if compute != dt:
                p, k = b.Cast(p, to=compute.name), b.Cast(k, to=compute.name)
            for reader in matmuls + sums:
                rb = self.builder(reader)
                if reader.op == "MatMul":
                    v = reader.inputs[1]
                    v = rb.Cast(v, to=compute.name) if compute != dt else v
                else:
                    v = rb.const(np.ones((n, 1), compute.np), dtype=compute)
                out = rb.ToeplitzLowRankMatMulFFT(p, k, v, spectrum, n_fft=n_fft)
                out = rb.Cast(out, to=dt.name) if compute != dt else out
                if reader.op == "ReduceSum" and not int(reader.attrs.get("keepdims", 1)):
                    out = rb.Squeeze(out, _i64(rb, [-1]))
                _replace(self.graph, reader.outputs[0], out)

        return _Plan(node, "kernelized_attention", n, n_fft, quadratic_flops("kernelized_attention", n, m=m, e=e),
                     fft_flops(n_fft, m * e), precision, rewrite, emitted.undo)

    def _attention_readers(self, w: Value) -> tuple[list[Node], list[Node]] | str:
        """The MatMul(W, V) and ReduceSum(W, axes=-1) nodes reading W, or why W has others."""
        if self.graph.is_output(w):
            return "the masked scores are a graph output"
        matmuls, sums = [], []
        rank = len(_static(w))
        for user, index in w.uses:
            if user.op == "MatMul" and index == 0:
                matmuls.append(user)
            elif user.op == "ReduceSum" and _reduces_last_axis(user, rank):
                sums.append(user)
            else:
                return f"the masked scores are also read by {user.label}"
        return list(dict.fromkeys(matmuls)), list(dict.fromkeys(sums))

    def _positional(self, v: Value) -> bool:
        """Whether v is computed from positions (a Range, an index Gather, a constant
        n x n) through ops that act position by position (elementwise, shape, Gather,
        Trilu, Softmax), i.e. whether a refusal is worth reporting. A MatMul or any other
        mixing op on the way means v is data (attention scores, activations), not a
        positional matrix, and the walk stops there."""
        seen, stack = set(), [(v, 0)]
        while stack:
            x, depth = stack.pop()
            if x is None or id(x) in seen or depth > _SEARCH_DEPTH:
                continue
            seen.add(id(x))
            shape = x.type.shape
            if x.const is not None and shape is not None and len(shape) >= 2 and shape[-1] == shape[-2] != 1:
                return True
            node = x.producer
            if node is None:
                continue
            if node.op in ("Range", "Trilu") or (node.op == "Gather" and node.inputs[1].dtype.is_integer
                                                  and node.inputs[1].type.rank == 2):
                return True
            if node.op in _POSITIONWISE or node.op in ELEMENTWISE_OPS:
                stack.extend((i, depth + 1) for i in node.inputs)
        return False

    # -- softmax attention with a relative bias: refused --------------------------------

    def sdpa(self, node: Node) -> str | None:
        if len(node.inputs) < 4 or node.inputs[3] is None or node.inputs[3].dtype == dtypes.bool_:
            return None
        mask = node.inputs[3]
        shape = _static(mask)
        if shape is None or len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] < 2:
            return None
        if self.analysis(shape[-1]).explain(mask) is None and self._positional(mask):
            return (f"{_describe(node)} [{shape[-1]}x{shape[-1]}]: softmax attention with a relative bias has no FFT "
                    f"form (softmax does not factor over positions)")
        return None

    # -- long depthwise convolutions -------------------------------------------------------

    def _zero_padding(self, x: Value) -> tuple[Value, tuple[int, int]] | None:
        """(the unpadded input, (begin, end)) when x is a constant-zero Pad of the last axis
        only that nothing else reads, else None."""
        node = x.producer
        if node is None or node.op != "Pad" or node.attrs.get("mode", "constant") != "constant":
            return None
        if len(x.uses) != 1 or self.graph.is_output(x):
            return None
        ins = list(node.inputs) + [None] * (4 - len(node.inputs))
        data, pads, value, axes = ins[:4]
        if pads is None or pads.const is None or (value is not None and (value.const is None or np.any(value.const))):
            return None
        rank = len(x.type.shape)
        axes = list(range(rank)) if axes is None else (
            [int(a) % rank for a in np.asarray(axes.const).reshape(-1)] if axes.const is not None else None)
        if axes is None:
            return None
        widths = [int(p) for p in np.asarray(pads.const).reshape(-1)]
        begin = dict(zip(axes, widths[: len(axes)]))
        end = dict(zip(axes, widths[len(axes):]))
        if any((begin[a] or end[a]) for a in axes if a != rank - 1) or min(begin.get(rank - 1, 0), end.get(rank - 1, 0)) < 0:
            return None
        return data, (begin.get(rank - 1, 0), end.get(rank - 1, 0))

    def conv(self, node: Node) -> _Plan | str | None:
        x, w = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        xs, ws = x.type.shape, w.type.shape
        if xs is None or ws is None or len(xs) != 3 or len(ws) != 3:
            return None
        channels = ws[0]
        if int(node.attrs.get("group", 1)) != channels or ws[1] != 1 or xs[1] != channels:
            return None  # not depthwise (or a channel multiplier): a dense conv is not one Toeplitz per channel
        if not isinstance(xs[2], int):
            return f"{_describe(node)}: sequence length {xs[2]} is symbolic"
        if _static(x) is None or _static(w) is None:
            return None
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", None):
            return f"{_describe(node)}: auto_pad={node.attrs['auto_pad']} (make the padding explicit)"
        strides = list(node.attrs.get("strides") or [1])
        if strides != [1]:
            return f"{_describe(node)}: stride {strides[0]} (a strided convolution is not one Toeplitz product)"
        dilation = int((node.attrs.get("dilations") or [1])[0])
        pads = list(node.attrs.get("pads") or [0, 0])
        taps = ws[2]
        absorbed = self._zero_padding(x)
        if absorbed is not None:  # F.pad(x, (taps - 1, 0)) then conv: the zeros are offsets, not samples
            x, (begin, end) = absorbed
            pads = [pads[0] + begin, pads[1] + end]
            xs = x.type.shape
        n = xs[2]
        n_out = n + pads[0] + pads[1] - dilation * (taps - 1)
        if n_out < 1:
            return None
        size = max(n, n_out)
        n_fft = fft_length(size)
        dt = x.dtype

        def rewrite() -> None:
            b = self.builder(node)
            # offset j - i = k * dilation - pad_begin holds tap k; every other offset is 0
            offsets = np.arange(-(size - 1), size)
            tap = offsets + pads[0]
            valid = (tap % dilation == 0) & (tap >= 0) & (tap < dilation * taps)
            index = np.where(valid, tap // dilation, taps)  # taps: the appended zero
            weights = b.Reshape(w, _i64(b, [channels, taps]))
            weights = b.Concat(weights, b.const(np.zeros((channels, 1), dt.np), dtype=dt), axis=1)
            line = b.Gather(weights, _i64(b, index), axis=1)  # [C, 2 size - 1]
            spectrum = _spectrum(b, line, size, n_fft, dt)  # [C, bins, 2]
            signal = x
            if n < size:
                signal = b.Concat(x, b.const(np.zeros((xs[0], channels, size - n), dt.np), dtype=dt), axis=2) \
                    if isinstance(xs[0], int) else b.Pad(x, _i64(b, [0, 0, 0, 0, 0, size - n]))
            y = b.ToeplitzMatMulFFT(signal, spectrum, axis=-1, n_fft=n_fft)
            if n_out < size:
                y = b.Slice(y, _i64(b, [0]), _i64(b, [n_out]), _i64(b, [2]))
            if bias is not None:
                y = b.Add(y, b.Reshape(bias, _i64(b, [channels, 1])))
            _replace(self.graph, node.outputs[0], y)

        return _Plan(node, "long_conv", size, n_fft, quadratic_flops("long_conv", n_out, k=taps), fft_flops(n_fft, 1),
                     "f32", rewrite)


def _keys(b: Builder, kt: Value) -> Value:
    """K [..., n, m] from K^T [..., m, n] (the transpose the scores read, undone)."""
    node = kt.producer
    rank = len(_static(kt))
    swap = list(range(rank - 2)) + [rank - 1, rank - 2]
    if node is not None and node.op == "Transpose" and list(node.attrs.get("perm") or []) == swap:
        return node.inputs[0]
    return b.Transpose(kt, perm=swap)


def _reduces_last_axis(node: Node, rank: int) -> bool:
    axes = node.inputs[1] if len(node.inputs) > 1 else None
    if axes is None or axes.const is None:
        return False
    values = [int(a) % rank for a in np.asarray(axes.const).reshape(-1)]
    return values == [rank - 1]


def _first(graph: Graph, nodes: list[Node]) -> Node:
    """The earliest of `nodes` in graph order (new nodes must precede every reader)."""
    wanted = set(map(id, nodes))
    for node in graph:
        if id(node) in wanted:
            return node
    return nodes[0]


def _describe(node: Node) -> str:
    return f"%{node.outputs[0].name} ({node.op})"


# ----------------------------------------------------------------------------- the pass


@graph_pass(PASS, "Toeplitz / relative-position attention / long depthwise conv products -> FFT form, "
                  "where the measured per-backend cost model says it pays")
def toeplitz_fft(graph: Graph, backend: str = "onnx", policy: str = "cost") -> PassResult:
    """`backend`: whose measured crossovers decide ("onnx" | "tvm"); `policy`: "cost" (the
    cost model decides) or "always" (every match is rewritten)."""
    if policy not in POLICIES:
        raise RequantError(f"pass '{PASS}': policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if backend not in CROSSOVERS:
        raise RequantError(f"pass '{PASS}': backend must be one of {', '.join(CROSSOVERS)}, got {backend!r}")
    finder = _Finder(graph)
    decisions: list[str] = []
    stats = {"rewritten": 0, "kept_quadratic": 0, "refused": 0}
    for node in list(graph):
        if node.graph is not graph:
            continue  # replaced by an earlier rewrite
        if node.op == "MatMul":
            found = finder.matmul(node)
        elif node.op == "Conv":
            found = finder.conv(node)
        elif node.op == "ScaledDotProductAttention":
            found = finder.sdpa(node)
        else:
            continue
        if found is None:
            continue
        if isinstance(found, str):
            stats["refused"] += 1
            decisions.append(f"refused {found}")
            continue
        speedup = found.quadratic / (_rho(backend, found.cost_key) * found.fft)
        what = f"{_describe(found.node)} {found.pattern.replace('_', ' ')} n={found.n}"
        if policy == "cost" and speedup <= 1.0:
            if found.undo is not None:
                found.undo()
                finder.forget_lines()
            stats["kept_quadratic"] += 1
            decisions.append(f"kept {what}: the FFT form would be {1 / speedup:.2f}x slower on {backend} (cost model)")
            continue
        found.rewrite()
        stats["rewritten"] += 1
        precision = " in float64" if found.precision == "f64" else ""
        decisions.append(f"rewrote {what} to the FFT form (n_fft={found.n_fft}{precision}; "
                         f"cost model: {speedup:.2f}x on {backend})")
    if stats["rewritten"]:
        dead_code_elimination.fn(graph)
    for line in decisions:
        logger.info("%s: %s", PASS, line)
    if decisions:
        stats["decisions"] = "; ".join(decisions)
    return PassResult(graph, stats["rewritten"] > 0, stats)
