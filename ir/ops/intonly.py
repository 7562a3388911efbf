"""Integer-only ops (domain "requant"): the kernels of integer-only transformers, after
I-ViT (Li & Gu, "I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", ICCV 2023, arXiv 2207.01405) and I-BERT (Kim et al., "I-BERT: Integer-only
BERT Quantization", ICML 2021, arXiv 2101.01321).

Every op reads and writes integers only; every constant it needs is an integer attribute
or an integer input, computed by the pass that makes it (passes/intonly.py) from the
real scales, so the graph says "this tensor is int8 with scale S" in value metadata
without a float op. Arithmetic is exact in int64 (products of an int32 and an int32
multiplier need 62 bits); each op states where it saturates. Notation: `a >> s` is an
arithmetic shift, i.e. floor(a / 2^s); `rshift(a, s)` rounds half up:
floor((a + 2^(s-1)) / 2^s) (a itself when s = 0); `sat(a)` clamps to the output dtype.
Reductions run along the last axis.

- `Requantize(X, multiplier, shift, offset?) {to, axis=-1}`: dyadic rescaling,
  `Y = sat(rshift(X * multiplier + offset, shift))` in int64 (wrapping). multiplier
  (int32), shift (int32, 0..62) and offset (int64) are one value or a vector along
  `axis` (per channel). A real factor F becomes (m, e) = frexp(F),
  multiplier = round(m * 2^31), shift = 31 - e; offset carries a bias and a zero point in
  the pre-shift domain (`dyadic` computes them).
- `DyadicAdd(A, a_multiplier, a_shift, B, b_multiplier, b_shift, offset?) {to, axis=-1}`:
  an integer residual add whose branches have their own scales:
  `Y = sat(rshift(A * a_mult, a_shift) + rshift(B * b_mult, b_shift) + offset)`, A and B
  broadcast; parameters per tensor or per channel along `axis` of the output.
- `ILayerNorm(X) {steps=10, k0=2^16}` (I-ViT's I-LayerNorm without the affine part):
  X int8/int16 (int16 keeps every sum in int64), N = the last axis's length;
  `mean = floor((2 * sum(x) + N) / (2N))` (round half up), `y = x - mean`,
  `var = sum(y^2)` (a sum, not a mean), integer square root by `steps` Newton steps
  `k = max(1, (k + var // k) >> 1)` from `k = k0`, then
  `Y = sat_int32((y * ((2^31 - 1) // k)) >> 1)`, scale sqrt(N) / 2^30. No epsilon: a
  row of equal values gives 0. (The guard k >= 1 keeps small k0 or many steps from
  dividing by zero; I-ViT's 2^16 and 10 steps never reach it.) The pass folds gamma and
  beta into the Requantize that follows.
- `Shiftmax(X, mask?) {x0, n=15, frac_bits=15, to="int16"}` (I-ViT): X with scale S and
  `x0 = floor(-1/S)` (< 0). With m = the row max over kept elements, d = x - m <= 0,
  ShiftExp(d):
      t = d + (d >> 1) - (d >> 4)        # d * log2(e), log2(e) ~ 1.4375
      t = max(t, n * x0)
      q = t // x0                       # q in 0..n
      r = t - x0 * q                    # r in (x0, 0]
      e = ((r - 2 * x0) << (n - q)) >> 1   # floor((r/2 - x0) * 2^(n-q)): 2^f ~ 1 + f/2
  (scale S / 2^n). Elements where the bool `mask` (broadcast to X) is False get e = 0.
  `total = min(sum(e), 2^31 - 1)`, `factor = (2^31 - 1) // max(total, 1)`,
  `Y = sat((e * factor) >> (31 - frac_bits))`, scale 2^-frac_bits; a row with no kept
  element gives zeros.
- `ShiftGELU(X) {x0, n=23, frac_bits=7}` (I-ViT): GELU(x) ~ x * sigmoid(1.702 x); X
  with scale S, `x0 = floor(-1 / (1.702 S))`. With m = max(x, 0) (elementwise),
  e1 = ShiftExp(x - m), e2 = ShiftExp(-m) (ShiftExp as above, this n and x0),
  `sig = (e1 * ((2^31 - 1) // min(e1 + e2, 2^31 - 1))) >> (31 - frac_bits)` (sigmoid,
  scale 2^-frac_bits), `Y = sat_int32(x * sig)`, scale S * 2^-frac_bits. (I-ViT takes
  m = the row's max; sigmoid(x) = e^(x-m) / (e^(x-m) + e^(-m)) for any m, and with the
  row max both exponentials of a row whose max is large (a post-training range of 20 or
  more) fall below ShiftExp's floor 2^-n and the sigmoid comes out 1/2; m = max(x, 0)
  keeps one of the two at e^0 and needs no row reduction.)
- `PolySoftmax(X, mask?) {x0, b, c, n=30, frac_bits=15, to="int16"}` (I-BERT's i-exp):
  X with scale S, `x0 = floor(-ln2 / S)`, `b = floor(0.96963238 / 0.35815147 / S)`,
  `c = floor(1 / 0.35815147 / S^2)`. With d as in Shiftmax:
      t = max(d, n * x0); q = t // x0; r = t - x0 * q     # r in (x0, 0] ~ (-ln2, 0]
      e = (r * (r + b) + c) >> q        # exp(p) ~ 0.35815147 (p^2 + 2.7073 p + 2.7921)
  (scale 0.35815147 S^2), then masked elements, the sum, the factor and Y as in Shiftmax.
- `PolyGELU(X) {b, c, shift, one}` (I-BERT's i-GELU): GELU(x) = x/2 (1 + erf(x/sqrt2)),
  erf(u) ~ sign(u) (a (min(|u|, -b') + b')^2 + 1), a = -0.2888, b' = -1.769. X with scale
  S, S_e = S / sqrt2, `b = floor(-1.769 / S_e)` (< 0), `c = floor((1 / -0.2888) / S_e^2)`:
      y = sign(x) * ((min(|x|, -b) + b)^2 + c) >> shift     # erf, scale a S_e^2 2^shift
      Y = sat_int32(x * (y + one))                          # one = floor(1 / (a S_e^2 2^shift))
  scale S * a S_e^2 2^shift / 2 (negative, as a is: Y and its scale both change sign).

- `TanhGELU(X) {clip, lin, cube_mult, cube_shift, z_shift, frac_bits=15}` (requant's):
  the tanh form GELU(x) ~ x * sigmoid(z), z = 1.5957691 x + 0.0713548 x^3, with the
  sigmoid from I-BERT's exp. X with scale S (int8/int16); the attributes carry S:
      xc = clip(x, -clip, clip)                                   # |S xc| <= 6: z saturates
      w = lin + rshift(xc^2 * cube_mult, cube_shift)              # (1.5957691 + 0.0713548 (S x)^2) S 2^(10+z_shift)
      z = rshift(xc * w, z_shift)                                 # z, scale 2^-10
      e = ((r * (r + B) + C) >> q) of t = max(-|z|, 30 X0)         # exp(-|z|) * C: PolySoftmax's exp
          with X0 = floor(-0.6931 * 2^10), B = floor(2^10 b'), C = floor(2^20 c') (b', c' as PolySoftmax)
      sig = (C << frac_bits) // (C + e)                            # sigmoid(|z|), scale 2^-frac_bits
      sig = sig if z >= 0 else 2^frac_bits - sig
      Y = sat_int32(x * sig)                                       # scale S * 2^-frac_bits
  Products stay below 2^62 for int16 inputs (the pass keeps lin < 2^21).

`dyadic(factor)` gives the (multiplier, shift) pair of a real factor; `shift_exp`,
`poly_exp` and `round_shift` are the integer building blocks the kernels share.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from requant.ir import dtypes
from requant.ir.dtypes import DType
from requant.ir.ops._common import attr_int, opt
from requant.ir.registry import REQUIRED, InferContext, define_op
from requant.ir.shapes import broadcast_shapes
from requant.ir.types import TensorType

__all__ = [
    "INT32_MAX",
    "MAX_SHIFT",
    "dyadic",
    "round_shift",
    "saturate",
    "shift_exp",
    "poly_exp",
    "normalize_rows",
    "int_sqrt_newton",
    "TANH_GELU_EXP",
]

logger = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1
MAX_SHIFT = 62
"""The largest shift a dyadic rescale uses: products stay below 2^62 in int64."""

_INT_IN = frozenset({dtypes.int8, dtypes.uint8, dtypes.int16, dtypes.int32})
_INT_OUT = frozenset({dtypes.int8, dtypes.uint8, dtypes.int16, dtypes.int32})
_NARROW_IN = frozenset({dtypes.int8, dtypes.int16})
_PARAM_DTYPES = {"multiplier": dtypes.int32, "shift": dtypes.int32, "offset": dtypes.int64}


# ----------------------------------------------------------------------------- integer helpers


def dyadic(factor: Any) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier int32, shift int32) with multiplier * 2^-shift ~ factor, elementwise:
    (m, e) = frexp(factor), multiplier = round(m * 2^31) (|multiplier| < 2^31), shift =
    31 - e, clamped to 0..MAX_SHIFT (a factor below 2^-31 loses bits; 0 gives 0).
    Raises ValueError for factors of 2^31 or more (no integer rescale needs them)."""
    f = np.asarray(factor, np.float64)
    if not np.all(np.isfinite(f)):
        raise ValueError(f"dyadic: factor {f} is not finite")
    m, e = np.frexp(f)
    mult = np.round(m * 2.0**31).astype(np.int64)
    e = e.astype(np.int64)
    full = np.abs(mult) == 2**31  # m rounded up to +-1.0: one more bit of exponent
    mult = np.where(full, mult // 2, mult)
    e = np.where(full, e + 1, e)
    shift = 31 - e
    if np.any(shift < 0):
        raise ValueError(f"dyadic: factor {f.max()} is 2^31 or more")
    over = shift > MAX_SHIFT  # tiny factors: keep the shift in range, lose low bits
    mult = np.where(over, np.round(np.where(over, f, 0.0) * 2.0**MAX_SHIFT).astype(np.int64), mult)
    shift = np.where(over, MAX_SHIFT, shift)
    mult = np.where(f == 0, 0, mult)
    return mult.astype(np.int32), shift.astype(np.int32)


def round_shift(a: np.ndarray, shift: Any) -> np.ndarray:
    """floor((a + 2^(shift-1)) / 2^shift) in int64 (a when shift is 0), elementwise."""
    a = np.asarray(a, np.int64)
    s = np.asarray(shift, np.int64)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    with np.errstate(over="ignore"):
        return np.right_shift(a + half, s)


def saturate(a: np.ndarray, dt: DType) -> np.ndarray:
    lo, hi = dt.int_range
    return np.clip(a, lo, hi).astype(dt.np)


def shift_exp(d: np.ndarray, x0: int, n: int) -> np.ndarray:
    """I-ViT's ShiftExp of d <= 0 (int64): module docstring."""
    d = np.asarray(d, np.int64)
    t = d + (d >> 1) - (d >> 4)
    t = np.maximum(t, n * x0)
    q = t // x0
    r = t - x0 * q
    return ((r - 2 * x0) << (n - q)) >> 1


def poly_exp(d: np.ndarray, x0: int, b: int, c: int, n: int) -> np.ndarray:
    """I-BERT's i-exp of d <= 0 (int64): module docstring."""
    d = np.asarray(d, np.int64)
    t = np.maximum(d, n * x0)
    q = t // x0
    r = t - x0 * q
    return (r * (r + b) + c) >> q


def normalize_rows(e: np.ndarray, frac_bits: int, dt: DType) -> np.ndarray:
    """sat((e * ((2^31-1) // max(min(sum(e), 2^31-1), 1))) >> (31 - frac_bits)), rows
    along the last axis (int64 e >= 0)."""
    total = np.minimum(e.sum(axis=-1, keepdims=True), INT32_MAX)
    factor = INT32_MAX // np.maximum(total, 1)
    return saturate((e * factor) >> (31 - frac_bits), dt)


def int_sqrt_newton(var: np.ndarray, k0: int, steps: int) -> np.ndarray:
    """`steps` Newton steps k = max(1, (k + var // k) >> 1) from k0 (int64)."""
    k = np.full(var.shape, k0, np.int64)
    for _ in range(steps):
        k = np.maximum((k + var // k) >> 1, 1)
    return k


def _row_max(x: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    if keep is None:
        return x.max(axis=-1, keepdims=True)
    low = np.iinfo(np.int64).min
    m = np.where(keep, x, low).max(axis=-1, keepdims=True)
    return np.where(m == low, 0, m)


# ----------------------------------------------------------------------------- type rules


def _int_input(ctx: InferContext, i: int, allowed: frozenset[DType]) -> TensorType:
    t = ctx.input(i)
    name = ctx.schema.inputs[i].name
    if t is None:
        raise ctx.fail(f"input {name} is missing")
    if t.dtype not in allowed:
        raise ctx.fail(f"input {name} has dtype {t.dtype}, expected one of "
                       f"{', '.join(sorted(d.short for d in allowed))}")
    return t


def _out_dtype(ctx: InferContext) -> DType:
    v = ctx.attrs["to"]
    try:
        dt = dtypes.dtype(v)
    except (ValueError, TypeError):
        raise ctx.fail(f"attribute to={v!r} is not a dtype name") from None
    if dt not in _INT_OUT:
        raise ctx.fail(f"attribute to={dt} must be one of {', '.join(sorted(d.short for d in _INT_OUT))}")
    return dt


def _check_params(ctx: InferContext, names: tuple[str, ...], channels: Any, axis: int) -> None:
    """Each named parameter input: its dtype, and one value or a vector of `channels`."""
    index = {p.name: i for i, p in enumerate(ctx.schema.inputs)}
    for name in names:
        i = index[name]
        t = ctx.input(i)
        if t is None:
            continue
        kind = name.split("_")[-1]
        want = _PARAM_DTYPES[kind]
        if t.dtype != want:
            raise ctx.fail(f"input {name} has dtype {t.dtype}, expected {want}")
        if t.shape is None or all(d == 1 for d in t.shape):
            continue
        if len(t.shape) != 1:
            raise ctx.fail(f"input {name} must hold one value or a vector along axis {axis}, got shape {t.shape}")
        if isinstance(t.shape[0], int) and isinstance(channels, int) and t.shape[0] != channels:
            raise ctx.fail(f"input {name} has {t.shape[0]} values, axis {axis} has {channels}")
        if kind == "shift":
            c = ctx.const(i)
            if c is not None and (np.min(c) < 0 or np.max(c) > MAX_SHIFT):
                raise ctx.fail(f"input {name} holds shifts outside 0..{MAX_SHIFT}")


def _channels(shape: Any, axis: int, ctx: InferContext) -> tuple[Any, int]:
    if shape is None:
        return None, axis
    rank = len(shape)
    if rank == 0:
        return 1, 0
    if not -rank <= axis < rank:
        raise ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return shape[axis % rank], axis % rank


def _infer_requantize(ctx: InferContext) -> list[TensorType]:
    x = _int_input(ctx, 0, _INT_IN)
    to = _out_dtype(ctx)
    channels, _ = _channels(x.shape, attr_int(ctx, "axis"), ctx)
    _check_params(ctx, ("multiplier", "shift", "offset"), channels, ctx.attrs["axis"])
    return [x.with_dtype(to)]


def _along(p: np.ndarray | None, rank: int, axis: int) -> Any:
    """A parameter (one value or a vector) shaped to broadcast along `axis` of a rank-`rank` array."""
    if p is None:
        return np.int64(0)
    p = np.asarray(p, np.int64)
    if p.size == 1 or rank == 0:
        return p.reshape(())
    shape = [1] * rank
    shape[axis % rank] = -1
    return p.reshape(shape)


def _requantize(ins: list, attrs: dict, outs: list) -> Any:
    x = np.asarray(ins[0]).astype(np.int64)
    axis, rank = int(attrs["axis"]), x.ndim
    mult, shift, offset = (_along(opt(ins, i), rank, axis) for i in (1, 2, 3))
    _check_shift_values(shift)
    with np.errstate(over="ignore"):
        acc = x * mult + offset
    return saturate(round_shift(acc, shift), outs[0].dtype)


def _check_shift_values(shift: Any) -> None:
    s = np.asarray(shift)
    if s.size and (s.min() < 0 or s.max() > MAX_SHIFT):
        raise ValueError(f"dyadic shift {s.min()}..{s.max()} outside 0..{MAX_SHIFT}")


define_op(
    "Requantize",
    inputs=("X", "multiplier", "shift", "offset?"),
    attrs={"to": REQUIRED, "axis": -1},
    infer=_infer_requantize,
    kernel=_requantize,
    domain="requant",
    doc="sat(rshift(X * multiplier + offset, shift)) in int64: dyadic rescaling per tensor or per channel",
)


def _infer_dyadic_add(ctx: InferContext) -> list[TensorType]:
    a = _int_input(ctx, 0, _INT_IN)
    b = _int_input(ctx, 3, _INT_IN)
    to = _out_dtype(ctx)
    shape = None
    if a.shape is not None and b.shape is not None:
        try:
            shape = broadcast_shapes([a.shape, b.shape], "DyadicAdd")
        except Exception as exc:
            raise ctx.fail(f"A {a.shape} and B {b.shape} do not broadcast: {exc}") from None
    channels, _ = _channels(shape, attr_int(ctx, "axis"), ctx)
    _check_params(ctx, ("a_multiplier", "a_shift", "b_multiplier", "b_shift", "offset"), channels,
                  ctx.attrs["axis"])
    return [TensorType(shape, to)]


def _dyadic_add(ins: list, attrs: dict, outs: list) -> Any:
    a = np.asarray(ins[0]).astype(np.int64)
    b = np.asarray(ins[3]).astype(np.int64)
    rank, axis = max(a.ndim, b.ndim), int(attrs["axis"])
    am, ash, bm, bsh, off = (_along(opt(ins, i), rank, axis) for i in (1, 2, 4, 5, 6))
    _check_shift_values(ash)
    _check_shift_values(bsh)
    with np.errstate(over="ignore"):
        y = round_shift(a * am, ash) + round_shift(b * bm, bsh) + off
    return saturate(y, outs[0].dtype)


define_op(
    "DyadicAdd",
    inputs=("A", "a_multiplier", "a_shift", "B", "b_multiplier", "b_shift", "offset?"),
    attrs={"to": REQUIRED, "axis": -1},
    infer=_infer_dyadic_add,
    kernel=_dyadic_add,
    domain="requant",
    doc="sat(rshift(A * a_mult, a_shift) + rshift(B * b_mult, b_shift) + offset): an integer residual add",
)


# ----------------------------------------------------------------------------- I-LayerNorm


def _infer_ilayernorm(ctx: InferContext) -> list[TensorType]:
    x = _int_input(ctx, 0, _NARROW_IN)
    attr_int(ctx, "steps", lo=0)
    attr_int(ctx, "k0", lo=1)
    if x.shape is not None and len(x.shape) == 0:
        raise ctx.fail("input X must have rank >= 1 (rows along the last axis)")
    return [x.with_dtype(dtypes.int32)]


def _ilayernorm(ins: list, attrs: dict, outs: list) -> Any:
    x = np.asarray(ins[0]).astype(np.int64)
    n = x.shape[-1]
    total = x.sum(axis=-1, keepdims=True)
    mean = (2 * total + n) // (2 * n)
    y = x - mean
    var = (y * y).sum(axis=-1, keepdims=True)
    k = int_sqrt_newton(var, int(attrs["k0"]), int(attrs["steps"]))
    factor = INT32_MAX // k
    return saturate((y * factor) >> 1, dtypes.int32)


define_op(
    "ILayerNorm",
    inputs=("X",),
    attrs={"steps": 10, "k0": 2**16},
    infer=_infer_ilayernorm,
    kernel=_ilayernorm,
    domain="requant",
    doc="I-ViT's I-LayerNorm along the last axis (no affine): int32 output with scale sqrt(N) / 2^30",
)


# ----------------------------------------------------------------------------- softmax forms


def _check_exp_range(ctx: InferContext, x0: int, n: int) -> None:
    if x0 >= 0:
        raise ctx.fail(f"attribute x0={x0} must be negative (floor(-1/S) of the input scale S)")
    if n < 0 or n + max(abs(x0), 1).bit_length() > 60:
        raise ctx.fail(f"attributes n={n}, x0={x0}: the exponent needs n >= 0 and |x0| * 2^n < 2^60")


def _infer_softmax_like(ctx: InferContext) -> TensorType:
    x = _int_input(ctx, 0, _INT_IN)
    mask = ctx.input(1)
    if mask is not None:
        if mask.dtype != dtypes.bool_:
            raise ctx.fail(f"input mask has dtype {mask.dtype}, expected bool (True = keep)")
        if x.shape is not None and mask.shape is not None:
            try:
                shape = broadcast_shapes([x.shape, mask.shape], ctx.schema.id)
            except Exception:
                shape = None
            if shape is None or len(shape) != len(x.shape) or any(
                    isinstance(s, int) and isinstance(d, int) and s != d for s, d in zip(shape, x.shape)):
                raise ctx.fail(f"mask {mask.shape} does not broadcast to X {x.shape}")
    frac = attr_int(ctx, "frac_bits", lo=0)
    if frac > 31:
        raise ctx.fail(f"attribute frac_bits={frac} must be <= 31")
    if x.shape is not None and len(x.shape) == 0:
        raise ctx.fail("input X must have rank >= 1 (rows along the last axis)")
    return x.with_dtype(_out_dtype(ctx))


def _infer_shiftmax(ctx: InferContext) -> list[TensorType]:
    _check_exp_range(ctx, attr_int(ctx, "x0"), attr_int(ctx, "n"))
    return [_infer_softmax_like(ctx)]


def _keep_and_diff(ins: list) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(ins[0]).astype(np.int64)
    mask = opt(ins, 1)
    keep = None if mask is None else np.broadcast_to(np.asarray(mask, bool), x.shape)
    return x - _row_max(x, keep), keep


def _shiftmax(ins: list, attrs: dict, outs: list) -> Any:
    d, keep = _keep_and_diff(ins)
    e = shift_exp(np.minimum(d, 0), int(attrs["x0"]), int(attrs["n"]))
    if keep is not None:
        e = np.where(keep, e, 0)
    return normalize_rows(e, int(attrs["frac_bits"]), outs[0].dtype)


define_op(
    "Shiftmax",
    inputs=("X", "mask?"),
    attrs={"x0": REQUIRED, "n": 15, "frac_bits": 15, "to": "int16"},
    infer=_infer_shiftmax,
    kernel=_shiftmax,
    domain="requant",
    doc="I-ViT's Shiftmax along the last axis: output scale 2^-frac_bits",
)


def _infer_poly_softmax(ctx: InferContext) -> list[TensorType]:
    x0, b, c, n = (attr_int(ctx, k) for k in ("x0", "b", "c", "n"))
    _check_exp_range(ctx, x0, 0)
    if n < 0 or n > 62:
        raise ctx.fail(f"attribute n={n} must be in 0..62")
    if c <= 0 or b < 0:
        raise ctx.fail(f"attributes b={b}, c={c}: the polynomial needs b >= 0 and c > 0")
    if (abs(x0) + b) ** 2 + c >= 2**62 or n * abs(x0) >= 2**62:
        raise ctx.fail(f"attributes x0={x0}, b={b}, c={c}: the polynomial would not fit in int64")
    return [_infer_softmax_like(ctx)]


def _poly_softmax(ins: list, attrs: dict, outs: list) -> Any:
    d, keep = _keep_and_diff(ins)
    e = poly_exp(np.minimum(d, 0), int(attrs["x0"]), int(attrs["b"]), int(attrs["c"]), int(attrs["n"]))
    if keep is not None:
        e = np.where(keep, e, 0)
    return normalize_rows(e, int(attrs["frac_bits"]), outs[0].dtype)


define_op(
    "PolySoftmax",
    inputs=("X", "mask?"),
    attrs={"x0": REQUIRED, "b": REQUIRED, "c": REQUIRED, "n": 30, "frac_bits": 15, "to": "int16"},
    infer=_infer_poly_softmax,
    kernel=_poly_softmax,
    domain="requant",
    doc="softmax along the last axis with I-BERT's second-order polynomial exp: output scale 2^-frac_bits",
)


# ----------------------------------------------------------------------------- GELU forms


def _infer_shift_gelu(ctx: InferContext) -> list[TensorType]:
    x = _int_input(ctx, 0, _NARROW_IN)
    _check_exp_range(ctx, attr_int(ctx, "x0"), attr_int(ctx, "n"))
    frac = attr_int(ctx, "frac_bits", lo=0)
    if frac > 30:
        raise ctx.fail(f"attribute frac_bits={frac} must be <= 30")
    return [x.with_dtype(dtypes.int32)]


def _shift_gelu(ins: list, attrs: dict, outs: list) -> Any:
    x = np.asarray(ins[0]).astype(np.int64)
    x0, n, frac = int(attrs["x0"]), int(attrs["n"]), int(attrs["frac_bits"])
    m = np.maximum(x, 0)
    e1 = shift_exp(x - m, x0, n)
    e2 = shift_exp(-m, x0, n)
    factor = INT32_MAX // np.minimum(e1 + e2, INT32_MAX)
    sig = (e1 * factor) >> (31 - frac)
    return saturate(x * sig, dtypes.int32)


define_op(
    "ShiftGELU",
    inputs=("X",),
    attrs={"x0": REQUIRED, "n": 23, "frac_bits": 7},
    infer=_infer_shift_gelu,
    kernel=_shift_gelu,
    domain="requant",
    doc="I-ViT's ShiftGELU, x * sigmoid(1.702 x): int32 output with scale S * 2^-frac_bits",
)


def _infer_poly_gelu(ctx: InferContext) -> list[TensorType]:
    x = _int_input(ctx, 0, _NARROW_IN)
    b, c, shift, one = (attr_int(ctx, k) for k in ("b", "c", "shift", "one"))
    if b >= 0:
        raise ctx.fail(f"attribute b={b} must be negative (floor(-1.769 / S_e))")
    if not 0 <= shift <= 62:
        raise ctx.fail(f"attribute shift={shift} must be in 0..62")
    if b * b + abs(c) >= 2**62 or abs(one) >= 2**31:
        raise ctx.fail(f"attributes b={b}, c={c}, one={one}: the polynomial would not fit in int64")
    return [x.with_dtype(dtypes.int32)]


def _poly_gelu(ins: list, attrs: dict, outs: list) -> Any:
    x = np.asarray(ins[0]).astype(np.int64)
    b, c, shift, one = (int(attrs[k]) for k in ("b", "c", "shift", "one"))
    clipped = np.minimum(np.abs(x), -b)
    y = (np.sign(x) * ((clipped + b) ** 2 + c)) >> shift
    return saturate(x * (y + one), dtypes.int32)


define_op(
    "PolyGELU",
    inputs=("X",),
    attrs={"b": REQUIRED, "c": REQUIRED, "shift": REQUIRED, "one": REQUIRED},
    infer=_infer_poly_gelu,
    kernel=_poly_gelu,
    domain="requant",
    doc="I-BERT's i-GELU, x/2 (1 + erf(x/sqrt2)) with a second-order erf: int32 output",
)


# I-BERT's exp at the fixed scale 2^-10 of TanhGELU's z: (X0, B, C, clamp n); C is also 1.0
TANH_GELU_EXP = (math.floor(-0.6931 * 2**10), math.floor(0.96963238 / 0.35815147 * 2**10),
                 math.floor(1.0 / 0.35815147 * 2**20), 30)


def _infer_tanh_gelu(ctx: InferContext) -> list[TensorType]:
    x = _int_input(ctx, 0, _NARROW_IN)
    clip, lin, cm, cs, zs, frac = (attr_int(ctx, k) for k in ("clip", "lin", "cube_mult", "cube_shift", "z_shift",
                                                                "frac_bits"))
    if clip < 0 or clip > 2**15 or not 0 <= lin < 2**24 or not 0 <= cm < 2**31:
        raise ctx.fail(f"attributes clip={clip}, lin={lin}, cube_mult={cm}: need 0 <= clip <= 2^15, "
                       f"0 <= lin < 2^24, 0 <= cube_mult < 2^31")
    if not (0 <= cs <= MAX_SHIFT and 0 <= zs <= MAX_SHIFT and 0 <= frac <= 15):
        raise ctx.fail(f"shifts must be in 0..{MAX_SHIFT} and frac_bits in 0..15")
    return [x.with_dtype(dtypes.int32)]


def _tanh_gelu(ins: list, attrs: dict, outs: list) -> Any:
    x = np.asarray(ins[0]).astype(np.int64)
    clip, frac = int(attrs["clip"]), int(attrs["frac_bits"])
    xc = np.clip(x, -clip, clip)
    w = int(attrs["lin"]) + round_shift(xc * xc * int(attrs["cube_mult"]), int(attrs["cube_shift"]))
    z = round_shift(xc * w, int(attrs["z_shift"]))
    x0, b, c, n = TANH_GELU_EXP
    e = poly_exp(-np.abs(z), x0, b, c, n)
    sig = (np.int64(c) << frac) // (c + e)
    sig = np.where(z >= 0, sig, (1 << frac) - sig)
    return saturate(x * sig, dtypes.int32)


define_op(
    "TanhGELU",
    inputs=("X",),
    attrs={"clip": REQUIRED, "lin": REQUIRED, "cube_mult": REQUIRED, "cube_shift": REQUIRED, "z_shift": REQUIRED,
           "frac_bits": 15},
    infer=_infer_tanh_gelu,
    kernel=_tanh_gelu,
    domain="requant",
    doc="GELU's tanh form x * sigmoid(1.5957691 x + 0.0713548 x^3), sigmoid from I-BERT's exp: int32 output",
)
