"""ONNX lowering of the FFT family (`requant.ir.ops.fft`) to ONNX's `DFT` (opset 17: axis
as an attribute; opset 20: axis as an input), which ONNX Runtime runs on the CPU.

- RFFT: `DFT(onesided=1)` of X with a trailing axis of 1 (a real signal in ONNX's complex
  convention), `dft_length` = n.
- IRFFT: the bins cut or zero-padded to n//2 + 1 (ONNX Runtime's one-sided inverse
  misreads other counts), `DFT(inverse=1, onesided=1)` (real output of n samples, 1/n
  normalised, bins 0 and n/2 taken as real), the trailing axis of 1 squeezed.
- ToeplitzMatMulFFT: RFFT of X at n_fft, the complex product with S (real and
  imaginary parts split and recombined), the one-sided inverse DFT, the first n
  entries along the axis.
- ToeplitzLowRankMatMulFFT: the m x e columns K_j[r] V_j[s] as a broadcast product
  [..., n, m, e], their Toeplitz products as above along the sequence axis, then the
  contraction with P_i as a MatMul of [..., n, 1, m] by [..., n, m, e].

ONNX Runtime's DFT has float and double kernels: f16/bf16 operands compute in float32
(as requant's reference kernels do) and are rounded once. Ranks must be known (the DFT
axis is counted from the front at opset 17).
"""

from __future__ import annotations

import logging

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.graph import Node, Value

__all__: list[str] = []

logger = logging.getLogger(__name__)

DFT_OPSET = 17
_HALF = (dtypes.float16, dtypes.bfloat16)


def _check_opset(ctx: EmitContext, node: Node) -> None:
    if ctx.opset < DFT_OPSET:
        raise UnsupportedOpError(f"{node.label}: ONNX has DFT only from opset {DFT_OPSET}; target opset is "
                                 f"{ctx.opset} (use opset >= {DFT_OPSET})")


def _rank(node: Node, value: Value | None, what: str) -> int:
    if value is None or value.type.shape is None:
        raise UnsupportedOpError(f"{node.label}: the ONNX lowering needs {what} of known rank (DFT counts its axis "
                                 f"from the front); give the graph inputs shapes")
    return len(value.type.shape)


class _Emit:
    """The helpers one FFT node's decomposition shares: names, int64 constants, DFT."""

    def __init__(self, ctx: EmitContext, node: Node) -> None:
        self.ctx = ctx
        self.node = node
        self.compute = dtypes.float32 if node.inputs[0].dtype in _HALF else node.inputs[0].dtype

    def name(self, part: str) -> str | None:
        return self.ctx.sub_name(self.node, part)

    def i64(self, value, tag: str) -> str:
        return self.ctx.const(np.asarray(value, np.int64), dtypes.int64, tag)

    def op(self, op_type: str, inputs: list, part: str, **attrs) -> str:
        return self.ctx.emit(op_type, inputs, name=self.name(part), **attrs)[0]

    def to_compute(self, x: str, value: Value, part: str) -> str:
        if value.dtype == self.compute:
            return x
        return self.op("Cast", [x], part, to=dtype_to_onnx(self.compute))

    def from_compute(self, y: str, out: str) -> None:
        """Write `y` (compute dtype) to the node's output name `out`, rounded once."""
        want = self.node.outputs[0].dtype
        if want == self.compute:
            self.ctx.emit("Identity", [y], [out], name=self.name("out"))
        else:
            self.ctx.emit("Cast", [y], [out], name=self.name("out"), to=dtype_to_onnx(want))

    def dft(self, x: str, axis: int, length: int | None, part: str, *, inverse: int = 0) -> str:
        """ONNX DFT of the complex-convention tensor x along `axis` (>= 0, not counting
        the trailing complex axis), one-sided."""
        dft_length = None if length is None else self.i64(length, "dft_length")
        if self.ctx.opset >= 20:
            return self.op("DFT", [x, dft_length, self.i64(axis, "dft_axis")], part, inverse=inverse, onesided=1)
        return self.op("DFT", [x, dft_length], part, axis=axis, inverse=inverse, onesided=1)

    def unsqueeze(self, x: str, axes: list[int], part: str) -> str:
        return self.op("Unsqueeze", [x, self.i64(axes, "axes")], part)

    def squeeze(self, x: str, axes: list[int], part: str) -> str:
        return self.op("Squeeze", [x, self.i64(axes, "axes")], part)

    def complex_mul(self, a: str, b: str, part: str) -> str:
        """(a_re + i a_im) (b_re + i b_im) for tensors with a trailing complex axis, b
        broadcasting against a."""
        parts = []
        for x, tag in ((a, "a"), (b, "b")):
            re = self.op("Slice", [x, self.i64([0], "zero"), self.i64([1], "one"), self.i64([-1], "last")], f"{part}_{tag}_re")
            im = self.op("Slice", [x, self.i64([1], "one"), self.i64([2], "two"), self.i64([-1], "last")], f"{part}_{tag}_im")
            parts.append((re, im))
        (ar, ai), (br, bi) = parts
        re = self.op("Sub", [self.op("Mul", [ar, br], f"{part}_rr"), self.op("Mul", [ai, bi], f"{part}_ii")], f"{part}_re")
        im = self.op("Add", [self.op("Mul", [ar, bi], f"{part}_ri"), self.op("Mul", [ai, br], f"{part}_ir")], f"{part}_im")
        return self.op("Concat", [re, im], f"{part}_product", axis=-1)

    def first(self, x: str, axis: int, count: int, part: str) -> str:
        """The first `count` entries of x along `axis`."""
        return self.op("Slice", [x, self.i64([0], "zero"), self.i64([count], "count"), self.i64([axis], "axis")], part)


@LOWERINGS.lowers("RFFT")
def _rfft(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """DFT(onesided=1) of X with a trailing axis of 1."""
    _check_opset(ctx, node)
    rank = _rank(node, node.inputs[0], "X")
    e = _Emit(ctx, node)
    axis = int(node.attrs.get("axis", -1)) % rank
    x = e.unsqueeze(e.to_compute(ins[0], node.inputs[0], "x"), [rank], "real")
    n = int(node.attrs.get("n", 0)) or None
    e.from_compute(e.dft(x, axis, n, "dft"), outs[0])


@LOWERINGS.lowers("IRFFT")
def _irfft(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """DFT(inverse=1, onesided=1): n real samples from the one-sided spectrum."""
    _check_opset(ctx, node)
    rank = _rank(node, node.inputs[0], "X") - 1
    e = _Emit(ctx, node)
    axis = int(node.attrs.get("axis", -1)) % rank
    n = int(node.attrs.get("n", 0))
    bins = node.inputs[0].type.shape[axis]
    if not n:
        if not isinstance(bins, int):
            raise UnsupportedOpError(f"{node.label}: IRFFT with n=0 and a symbolic number of bins: give n")
        n = 2 * (bins - 1)
    x = e.to_compute(ins[0], node.inputs[0], "x")
    want = n // 2 + 1
    if not isinstance(bins, int):
        raise UnsupportedOpError(f"{node.label}: the ONNX lowering needs a static number of bins")
    # ONNX Runtime's one-sided inverse misreads spectra with fewer bins than n//2 + 1:
    # the bins are cut or zero-padded to exactly that many first
    if bins > want:
        x = e.first(x, axis, want, "bins")
    elif bins < want:
        pads = [0] * (2 * (rank + 1))
        pads[rank + 1 + axis] = want - bins
        x = e.op("Pad", [x, e.i64(pads, "pads")], "bins")
    y = e.dft(x, axis, n, "idft", inverse=1)
    e.from_compute(e.squeeze(y, [rank], "real"), outs[0])


@LOWERINGS.lowers("ToeplitzMatMulFFT")
def _toeplitz(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """RFFT(X, n_fft) * S, one-sided inverse DFT, first n entries along the axis."""
    _check_opset(ctx, node)
    x_rank = _rank(node, node.inputs[0], "X")
    out_rank = _rank(node, node.outputs[0], "the output")
    e = _Emit(ctx, node)
    n_fft = int(node.attrs["n_fft"])
    axis = int(node.attrs.get("axis", -2)) % x_rank
    n = node.inputs[0].type.shape[axis]
    if not isinstance(n, int):
        raise UnsupportedOpError(f"{node.label}: the ONNX lowering needs a static length along axis {axis}")
    x = e.unsqueeze(e.to_compute(ins[0], node.inputs[0], "x"), [x_rank], "real")
    spectrum = e.dft(x, axis, n_fft, "dft")
    s = e.to_compute(ins[1], node.inputs[1], "s")
    product = e.complex_mul(spectrum, s, "mul")
    out_axis = axis + out_rank - x_rank  # S may add leading dims
    y = e.dft(product, out_axis, n_fft, "idft", inverse=1)
    y = e.first(y, out_axis, n, "first_n")
    e.from_compute(e.squeeze(y, [out_rank], "real"), outs[0])


@LOWERINGS.lowers("ToeplitzLowRankMatMulFFT")
def _toeplitz_low_rank(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """The columns K_j[r] V_j[s] [..., n, m, e], their Toeplitz products along the
    sequence axis, contracted with P_i by a MatMul."""
    _check_opset(ctx, node)
    p_rank = _rank(node, node.inputs[0], "P")
    k_rank = _rank(node, node.inputs[1], "K")
    v_rank = _rank(node, node.inputs[2], "V")
    out_rank = _rank(node, node.outputs[0], "the output")
    e = _Emit(ctx, node)
    n_fft = int(node.attrs["n_fft"])
    n = node.inputs[0].type.shape[-2]
    if not isinstance(n, int):
        raise UnsupportedOpError(f"{node.label}: the ONNX lowering needs a static sequence length")
    p, k, v, s = (e.to_compute(x, value, tag) for x, value, tag in zip(ins, node.inputs, ("p", "k", "v", "s")))
    columns = e.op("Mul", [e.unsqueeze(k, [k_rank], "k_col"), e.unsqueeze(v, [v_rank - 1], "v_row")], "columns")
    col_rank = max(k_rank, v_rank) + 1  # [..., n, m, e]
    real = e.unsqueeze(columns, [col_rank], "real")
    spectrum = e.dft(real, col_rank - 3, n_fft, "dft")
    s = e.unsqueeze(s, [-2, -3], "s_columns")  # [..., bins, 1, 1, 2]
    product = e.complex_mul(spectrum, s, "mul")
    full_rank = max(col_rank, _rank(node, node.inputs[3], "S") + 1)  # S: [..., bins, 1, 1]
    y = e.dft(product, full_rank - 3, n_fft, "idft", inverse=1)
    y = e.first(y, full_rank - 3, n, "first_n")
    mixed = e.squeeze(y, [full_rank], "mixed")  # [..., n, m, e]
    rows = e.unsqueeze(p, [p_rank - 1], "p_rows")  # [..., n, 1, m]
    out = e.op("MatMul", [rows, mixed], "contract")  # [..., n, 1, e]
    e.from_compute(e.squeeze(out, [out_rank - 1], "out_rows"), outs[0])
