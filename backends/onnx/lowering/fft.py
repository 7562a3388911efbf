"""ONNX lowering of the FFT family (`requant.ir.ops.fft`). Each transform is emitted in
one of two forms:

- **four-step MatMuls** (a length L = n1 n2 whose larger factor n1 is at most
  `MATMUL_MAX_FACTOR`): the DFT of L points as DFTs of n2 points (a constant n2 x n2
  complex matrix times the signal viewed as [n2, n1 x columns]), a twiddle product, and
  DFTs of n1 points (an n1-column constant matrix, one matmul per batch of the rest),
  then one transpose into natural order (Bailey's four-step FFT). With t = t1 + n1 t2
  and k = k2 + n2 k1 (t1, k1 < n1; t2, k2 < n2):

      X[k2 + n2 k1] = sum_t1 W_n1^(t1 k1) W_L^(t1 k2) sum_t2 W_n2^(t2 k2) x[t1 + n1 t2],
      W_m = exp(-2 pi i / m).

  Only the k1 <= n1/2 rows of the last DFT are computed, which cover the one-sided
  bins 0 .. L/2. The inverse runs the same steps with conjugate matrices, on the full
  spectrum rebuilt from the one-sided bins by Hermitian symmetry, and keeps the real
  part (the imaginary parts of bins 0 and L/2 then fall into the discarded imaginary
  part, as numpy and ONNX ignore them). Bin 0 is left out of the inverse's products and
  its constant Re Z[0] / L added to the result: a spectrum's bin 0 can dwarf the rest
  (a positive Toeplitz line's does), and the products' float32 sums would spread its
  rounding over every sample. A prime L up to that bound is one dense DFT matrix (the
  inverse from the one-sided bins directly, each bin but 0 and L/2 counted twice).
  The arithmetic is 4 L (n1 + n2) multiply-adds per column instead of an FFT's
  O(L log L), but it runs in ONNX Runtime's GEMMs (`python -m
  requant.tools.bench.toeplitz_fft --patterns onnx-dft` measures the two forms).
- **ONNX's `DFT`** (opset 17: axis as an attribute; opset 20: axis as an input), for
  longer prime factors and dims after the axis that are not static.

Complex intermediates are kept as (real, imaginary) pairs of tensors; the ops' complex
inputs and outputs (a trailing axis of 2, ONNX's convention) are split with `Gather`
and joined with `Concat`.

- RFFT: the signal cut or zero-padded to n along its axis, the one-sided transform.
- IRFFT: the bins cut or zero-padded to n//2 + 1 (ONNX Runtime's one-sided inverse
  misreads other counts), the inverse (real output of n samples, 1/n normalised).
- ToeplitzMatMulFFT: RFFT of X at n_fft, the complex product with S, the inverse, the
  first n entries along the axis.
- ToeplitzLowRankMatMulFFT: the m x e columns K_j[r] V_j[s] as a broadcast product
  [..., n, m, e], their Toeplitz products as above along the sequence axis, then the
  contraction with P_i as a MatMul of [..., n, 1, m] by [..., n, m, e].

DFT matrices and twiddles are computed in float64 and stored in the compute dtype.
f16/bf16 operands compute in float32 (as requant's reference kernels do) and are
rounded once. Ranks must be known (the DFT axis is counted from the front at opset 17).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from requant.backends.onnx.lowering._common import LOWERINGS, EmitContext
from requant.backends.onnx.onnx_types import dtype_to_onnx
from requant.errors import UnsupportedOpError
from requant.ir import dtypes
from requant.ir.graph import Node, Value

__all__ = ["MATMUL_MAX_FACTOR", "matmul_factors"]

logger = logging.getLogger(__name__)

DFT_OPSET = 17
_HALF = (dtypes.float16, dtypes.bfloat16)
#: the largest factor of a transform length that the MatMul form takes (module
#: docstring); `python -m requant.tools.bench.toeplitz_fft --patterns onnx-dft` measures
#: both forms at lengths whose factors lie on either side of it
MATMUL_MAX_FACTOR = 256


def matmul_factors(length: int) -> tuple[int, int] | None:
    """(n1, n2), n1 n2 = length, n1 >= n2, n1 the smallest divisor >= sqrt(length): the
    four-step split of a transform of `length` points (n2 = 1: one dense DFT matrix);
    None when n1 exceeds MATMUL_MAX_FACTOR (the `DFT` form runs it)."""
    n1 = next(d for d in range(math.isqrt(length - 1) + 1 if length > 1 else 1, length + 1) if length % d == 0)
    return (n1, length // n1) if n1 <= MATMUL_MAX_FACTOR else None


def _check_opset(ctx: EmitContext, node: Node) -> None:
    if ctx.opset < DFT_OPSET:
        raise UnsupportedOpError(f"{node.label}: ONNX has DFT only from opset {DFT_OPSET}; target opset is "
                                 f"{ctx.opset} (use opset >= {DFT_OPSET})")


def _shape(node: Node, value: Value | None, what: str) -> tuple:
    if value is None or value.type.shape is None:
        raise UnsupportedOpError(f"{node.label}: the ONNX lowering needs {what} of known rank (DFT counts its axis "
                                 f"from the front); give the graph inputs shapes")
    return tuple(value.type.shape)


def _static_length(node: Node, shape: tuple, axis: int, what: str) -> int:
    n = shape[axis]
    if not isinstance(n, int):
        raise UnsupportedOpError(f"{node.label}: the ONNX lowering needs a static {what} along axis {axis}")
    return n


Pair = tuple[str, str]


class _Emit:
    """The helpers one FFT node's decomposition shares: names, constants, both
    transform forms, complex arithmetic on (real, imaginary) pairs."""

    def __init__(self, ctx: EmitContext, node: Node) -> None:
        self.ctx = ctx
        self.node = node
        self.compute = dtypes.float32 if node.inputs[0].dtype in _HALF else node.inputs[0].dtype

    def name(self, part: str) -> str | None:
        return self.ctx.sub_name(self.node, part)

    def i64(self, value, tag: str) -> str:
        return self.ctx.const(np.asarray(value, np.int64), dtypes.int64, tag)

    def real_const(self, array: np.ndarray, tag: str) -> str:
        return self.ctx.const(np.ascontiguousarray(array).astype(self.compute.np), self.compute, tag)

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

    # -- shapes ---------------------------------------------------------------------------

    def unsqueeze(self, x: str, axes: list[int], part: str) -> str:
        return self.op("Unsqueeze", [x, self.i64(axes, "axes")], part)

    def squeeze(self, x: str, axes: list[int], part: str) -> str:
        return self.op("Squeeze", [x, self.i64(axes, "axes")], part)

    def reshape(self, x: str, shape: list[int], part: str) -> str:
        return self.op("Reshape", [x, self.i64(shape, "shape")], part)

    def first(self, x: str, axis: int, count: int, part: str) -> str:
        """The first `count` entries of x along `axis`."""
        return self.op("Slice", [x, self.i64([0], "zero"), self.i64([count], "count"), self.i64([axis], "axis")], part)

    def fit(self, x: str, shape: tuple, axis: int, length: int, part: str) -> str:
        """x cut or zero-padded at the end of `axis` to `length` entries."""
        n = shape[axis]
        if n == length:
            return x
        if n > length:
            return self.first(x, axis, length, part)
        pads = [0] * (2 * len(shape))
        pads[len(shape) + axis] = length - n
        return self.op("Pad", [x, self.i64(pads, "pads")], part)

    def split_complex(self, x: str, part: str) -> Pair:
        """(real, imaginary) of a tensor with a trailing complex axis."""
        return (self.op("Gather", [x, self.i64(0, "re_index")], f"{part}_re", axis=-1),
                self.op("Gather", [x, self.i64(1, "im_index")], f"{part}_im", axis=-1))

    def join_complex(self, z: Pair, part: str) -> str:
        re, im = (self.unsqueeze(v, [-1], f"{part}_{tag}") for v, tag in zip(z, ("re", "im")))
        return self.op("Concat", [re, im], part, axis=-1)

    # -- complex arithmetic ---------------------------------------------------------------

    def complex_mul(self, a: Pair, b: Pair, part: str) -> Pair:
        """a b for (real, imaginary) pairs, b broadcasting against a."""
        (ar, ai), (br, bi) = a, b
        re = self.op("Sub", [self.op("Mul", [ar, br], f"{part}_rr"), self.op("Mul", [ai, bi], f"{part}_ii")], f"{part}_re")
        im = self.op("Add", [self.op("Mul", [ar, bi], f"{part}_ri"), self.op("Mul", [ai, br], f"{part}_ir")], f"{part}_im")
        return re, im

    def complex_matmul(self, m: np.ndarray, z: Pair | str, part: str, *, real_only: bool = False) -> Pair | str:
        """The constant complex matrix m (numpy complex) times z, a (real, imaginary)
        pair or a real tensor, as real MatMuls (m broadcasting over z's leading dims);
        `real_only`: only the real part."""
        mr, mi = self.real_const(m.real, "dft_re"), self.real_const(m.imag, "dft_im")
        mm = lambda a, b, tag: self.op("MatMul", [a, b], f"{part}_{tag}")  # noqa: E731
        if isinstance(z, str):
            return mm(mr, z, "r") if real_only else (mm(mr, z, "r"), mm(mi, z, "i"))
        zr, zi = z
        re = self.op("Sub", [mm(mr, zr, "rr"), mm(mi, zi, "ii")], f"{part}_re")
        if real_only:
            return re
        return re, self.op("Add", [mm(mr, zi, "ri"), mm(mi, zr, "ir")], f"{part}_im")

    # -- transforms -----------------------------------------------------------------------

    def rfft(self, x: str, shape: tuple, axis: int, length: int, part: str) -> Pair:
        """The one-sided spectrum (length//2 + 1 bins at `axis`) of the real x (compute
        dtype, `shape`) cut or zero-padded to `length` along `axis`."""
        x = self.fit(x, shape, axis, length, f"{part}_fit")
        shape = shape[:axis] + (length,) + shape[axis + 1:]
        form = self._matmul_form(shape, axis, length)
        if form is None:
            spectrum = self._dft(self.unsqueeze(x, [len(shape)], f"{part}_real"), axis, length, part)
            return self.split_complex(spectrum, part)
        n1, n2, lead, post, columns, bins = form
        if n2 == 1:
            k = np.arange(bins)[:, None] * np.arange(length)[None, :]
            z = self.complex_matmul(np.exp(-2j * np.pi * k / length), self.reshape(x, lead + [length, columns], f"{part}_cols"), part)
            return tuple(self.reshape(v, lead + [bins] + post, f"{part}_out_{tag}") for v, tag in zip(z, "ri"))
        # x[t1 + n1 t2] as [n2 (t2), n1 (t1) x columns]; step 1 transforms t2 -> k2
        a = self.complex_matmul(np.exp(-2j * np.pi * np.outer(np.arange(n2), np.arange(n2)) / n2),
                                self.reshape(x, lead + [n2, n1 * columns], f"{part}_rows"), f"{part}_step1")
        b = self._twiddled(a, lead, n1, n2, columns, -1, part)
        half = n1 // 2 + 1  # k1 <= n1/2 covers the bins 0 .. length/2
        y = self.complex_matmul(np.exp(-2j * np.pi * np.outer(np.arange(half), np.arange(n1)) / n1), b, f"{part}_step3")
        perm = list(range(axis)) + [axis + 1, axis, axis + 2]  # [k2, k1] -> [k1, k2]: k = k2 + n2 k1
        out = []
        for v, tag in zip(y, "ri"):
            v = self.op("Transpose", [v], f"{part}_order_{tag}", perm=perm)
            v = self.reshape(v, lead + [half * n2] + post, f"{part}_merge_{tag}")
            out.append(self.first(v, axis, bins, f"{part}_bins_{tag}"))
        return out[0], out[1]

    def irfft(self, z: Pair, shape: tuple, axis: int, length: int, part: str) -> str:
        """`length` real samples (1/length normalised) from the one-sided spectrum z of
        exactly length//2 + 1 bins at `axis` (`shape`: its real part's)."""
        form = self._matmul_form(shape, axis, length)
        if form is None:
            spectrum = self.join_complex(z, f"{part}_complex")
            return self.squeeze(self._dft(spectrum, axis, length, part, inverse=1), [len(shape)], f"{part}_real")
        n1, n2, lead, post, columns, bins = form
        if n2 == 1:
            # Hermitian: bins 1 .. (length - 1)/2 stand for their mirror images too
            k = np.arange(bins)
            weight = np.where((k == 0) | (2 * k == length), 1.0, 2.0) / length
            m = np.exp(2j * np.pi * np.outer(np.arange(length), k) / length) * weight
            cols = tuple(self.reshape(v, lead + [bins, columns], f"{part}_cols_{tag}") for v, tag in zip(z, "ri"))
            y = self.complex_matmul(m, cols, part, real_only=True)
            return self.reshape(y, lead + [length] + post, f"{part}_out")
        # the full spectrum, Z[length - k] = conj(Z[k]), with bin 0 zero: its constant
        # Re Z[0] / length is added to the result instead (module docstring)
        mirror = length - bins
        starts, ends, axes, steps = (self.i64(v, tag) for v, tag in
                                     (([length - bins], "starts"), ([0], "ends"), ([axis], "axis"), ([-1], "steps")))
        front = [0] * (2 * len(shape))
        front[axis] = 1
        pads = self.i64(front, "pads")

        def full(v: str, tag: str, conj: bool) -> str:
            rest = self.op("Pad", [self.op("Slice", [v, self.i64([1], "one"), self.i64([bins], "bins"), axes],
                                           f"{part}_rest_{tag}"), pads], f"{part}_no_dc_{tag}")
            if not mirror:
                return rest
            image = self.op("Slice", [v, starts, ends, axes, steps], f"{part}_mirror_{tag}")
            if conj:
                image = self.op("Neg", [image], f"{part}_conj")
            return self.op("Concat", [rest, image], f"{part}_full_{tag}", axis=axis)

        zr, zi = full(z[0], "re", False), full(z[1], "im", True)
        # Z[k1 + n1 k2] as [n2 (k2), n1 (k1) x columns]; step 1 transforms k2 -> t2
        rows = tuple(self.reshape(v, lead + [n2, n1 * columns], f"{part}_rows_{tag}") for v, tag in zip((zr, zi), "ri"))
        a = self.complex_matmul(np.exp(2j * np.pi * np.outer(np.arange(n2), np.arange(n2)) / n2), rows, f"{part}_step1")
        b = self._twiddled(a, lead, n1, n2, columns, 1, part)
        y = self.complex_matmul(np.exp(2j * np.pi * np.outer(np.arange(n1), np.arange(n1)) / n1) / length, b,
                                f"{part}_step3", real_only=True)
        perm = list(range(axis)) + [axis + 1, axis, axis + 2]  # [t2, t1] -> [t1, t2]: t = t2 + n2 t1
        y = self.op("Transpose", [y], f"{part}_order", perm=perm)
        y = self.reshape(y, lead + [length] + post, f"{part}_merge")
        dc = self.op("Mul", [self.first(z[0], axis, 1, f"{part}_dc"), self.real_const(np.asarray(1.0 / length), "inv_n")],
                     f"{part}_dc_term")
        return self.op("Add", [y, dc], f"{part}_with_dc")

    def _twiddled(self, a: Pair, lead: list[int], n1: int, n2: int, columns: int, sign: int, part: str) -> Pair:
        """The four-step middle: step 1's [n2, n1 x columns] result viewed as [n2, n1,
        columns] times the twiddles exp(sign 2 pi i j t / (n1 n2)) (j < n2, t < n1)."""
        a = tuple(self.reshape(v, lead + [n2, n1, columns], f"{part}_split_{tag}") for v, tag in zip(a, "ri"))
        twiddle = np.exp(sign * 2j * np.pi * np.outer(np.arange(n2), np.arange(n1)) / (n1 * n2))[:, :, None]
        return self.complex_mul(a, (self.real_const(twiddle.real, "twiddle_re"), self.real_const(twiddle.imag, "twiddle_im")),
                                f"{part}_twiddle")

    def _matmul_form(self, shape: tuple, axis: int, length: int) -> tuple | None:
        """(n1, n2, the Reshape dims copying those before `axis`, the dims after it,
        their product, the one-sided bins) of a transform along `axis` in MatMul form;
        None when it takes ONNX's DFT (a factor too large, dims after the axis not static)."""
        factors = matmul_factors(length)
        if factors is None or not all(isinstance(d, int) for d in shape[axis + 1:]):
            return None
        post = [int(d) for d in shape[axis + 1:]]
        return (*factors, [0] * axis, post, math.prod(post), length // 2 + 1)

    def _dft(self, x: str, axis: int, length: int, part: str, *, inverse: int = 0) -> str:
        """ONNX DFT of the complex-convention tensor x along `axis` (>= 0, not counting
        the trailing complex axis), one-sided."""
        dft_length = self.i64(length, "dft_length")
        if self.ctx.opset >= 20:
            return self.op("DFT", [x, dft_length, self.i64(axis, "dft_axis")], part, inverse=inverse, onesided=1)
        return self.op("DFT", [x, dft_length], part, axis=axis, inverse=inverse, onesided=1)


@LOWERINGS.lowers("RFFT")
def _rfft(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """The one-sided transform, joined into the trailing complex axis."""
    _check_opset(ctx, node)
    shape = _shape(node, node.inputs[0], "X")
    e = _Emit(ctx, node)
    axis = int(node.attrs.get("axis", -1)) % len(shape)
    n = int(node.attrs.get("n", 0)) or _static_length(node, shape, axis, "length")
    z = e.rfft(e.to_compute(ins[0], node.inputs[0], "x"), shape, axis, n, "dft")
    e.from_compute(e.join_complex(z, "spectrum"), outs[0])


@LOWERINGS.lowers("IRFFT")
def _irfft(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """The inverse from the bins cut or zero-padded to exactly n//2 + 1."""
    _check_opset(ctx, node)
    shape = _shape(node, node.inputs[0], "X")[:-1]
    e = _Emit(ctx, node)
    axis = int(node.attrs.get("axis", -1)) % len(shape)
    n = int(node.attrs.get("n", 0))
    bins = _static_length(node, shape, axis, "number of bins")
    n = n or 2 * (bins - 1)
    z = e.split_complex(e.to_compute(ins[0], node.inputs[0], "x"), "bins")
    want = n // 2 + 1
    z = tuple(e.fit(v, shape, axis, want, f"fit_{tag}") for v, tag in zip(z, "ri"))
    shape = shape[:axis] + (want,) + shape[axis + 1:]
    e.from_compute(e.irfft(z, shape, axis, n, "idft"), outs[0])


def _broadcast(*shapes: tuple) -> tuple:
    """numpy broadcasting of shapes whose dims are ints or symbols (equal or 1)."""
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*((1,) * (rank - len(s)) + tuple(s) for s in shapes)):
        sized = [d for d in dims if d != 1]
        out.append(sized[0] if sized else 1)
    return tuple(out)


def _toeplitz_product(e: _Emit, x: str, x_shape: tuple, s: Pair, s_shape: tuple, axis: int, n_fft: int) -> str:
    """IRFFT(RFFT(x, n_fft) S)[:n] along `axis` of x (S, without its complex axis, of
    `s_shape`, may add leading dims)."""
    n = x_shape[axis]
    spectrum = e.rfft(x, x_shape, axis, n_fft, "dft")
    spectrum_shape = x_shape[:axis] + (n_fft // 2 + 1,) + x_shape[axis + 1:]
    product = e.complex_mul(spectrum, s, "mul")
    product_shape = _broadcast(spectrum_shape, s_shape)
    out_axis = axis + len(product_shape) - len(x_shape)
    y = e.irfft(product, product_shape, out_axis, n_fft, "idft")
    return e.first(y, out_axis, n, "first_n")


@LOWERINGS.lowers("ToeplitzMatMulFFT")
def _toeplitz(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """RFFT(X, n_fft) * S, the inverse, the first n entries along the axis."""
    _check_opset(ctx, node)
    x_shape = _shape(node, node.inputs[0], "X")
    s_shape = _shape(node, node.inputs[1], "S")[:-1]
    e = _Emit(ctx, node)
    axis = int(node.attrs.get("axis", -2)) % len(x_shape)
    _static_length(node, x_shape, axis, "length")
    s = e.split_complex(e.to_compute(ins[1], node.inputs[1], "s"), "s")
    y = _toeplitz_product(e, e.to_compute(ins[0], node.inputs[0], "x"), x_shape, s, s_shape, axis,
                          int(node.attrs["n_fft"]))
    e.from_compute(y, outs[0])


@LOWERINGS.lowers("ToeplitzLowRankMatMulFFT")
def _toeplitz_low_rank(ctx: EmitContext, node: Node, ins: list, outs: list) -> None:
    """The columns K_j[r] V_j[s] [..., n, m, e], their Toeplitz products along the
    sequence axis, contracted with P_i by a MatMul."""
    _check_opset(ctx, node)
    p_shape = _shape(node, node.inputs[0], "P")
    k_shape = _shape(node, node.inputs[1], "K")
    v_shape = _shape(node, node.inputs[2], "V")
    s_shape = _shape(node, node.inputs[3], "S")[:-1]
    out_rank = len(_shape(node, node.outputs[0], "the output"))
    e = _Emit(ctx, node)
    _static_length(node, p_shape, len(p_shape) - 2, "sequence length")
    p, k, v, s = (e.to_compute(x, value, tag) for x, value, tag in zip(ins, node.inputs, ("p", "k", "v", "s")))
    columns = e.op("Mul", [e.unsqueeze(k, [len(k_shape)], "k_col"), e.unsqueeze(v, [len(v_shape) - 1], "v_row")], "columns")
    col_shape = _broadcast(k_shape + (1,), v_shape[:-1] + (1, v_shape[-1]))  # [..., n, m, e]
    s = tuple(e.unsqueeze(part, [-1, -2], f"s_columns_{tag}") for part, tag in
              zip(e.split_complex(s, "s"), "ri"))  # [..., bins, 1, 1]
    mixed = _toeplitz_product(e, columns, col_shape, s, s_shape + (1, 1), len(col_shape) - 3,
                              int(node.attrs["n_fft"]))  # [..., n, m, e]
    rows = e.unsqueeze(p, [len(p_shape) - 1], "p_rows")  # [..., n, 1, m]
    out = e.op("MatMul", [rows, mixed], "contract")  # [..., n, 1, e]
    e.from_compute(e.squeeze(out, [out_rank - 1], "out_rows"), outs[0])
