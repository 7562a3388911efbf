"""Shape arithmetic shared by the ops' type rules: broadcasting with symbolic dims, axis
normalisation, products and sums of dims, reshape/slice/convolution arithmetic.

Dims are `int` (static), `str` (a symbol) or `None` (unknown). The rules here never
invent new symbol names: arithmetic on a symbol gives `None` unless the result is the
symbol itself (`B * 1`, `B + 0`, a reshape that keeps `B` as the only unknown factor).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from requant.errors import ShapeInferenceError
from requant.ir.types import Dim, Shape

__all__ = [
    "broadcast_shapes",
    "broadcast_dim",
    "normalize_axis",
    "normalize_axes",
    "symbolic_product",
    "dim_add",
    "dim_mul",
    "unify_dims",
    "reshape_shape",
    "slice_range",
    "slice_dim",
    "resolve_pads",
    "window_out_dim",
]


def broadcast_dim(a: Dim, b: Dim, op: str = "") -> Dim:
    """The numpy broadcast of two dims; symbols equal to themselves, unknown otherwise."""
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int) and isinstance(b, int):
        raise ShapeInferenceError(f"{op}: dims {a} and {b} do not broadcast")
    if isinstance(a, int):
        return a  # a symbol or unknown broadcast against a static dim > 1 must equal it
    if isinstance(b, int):
        return b
    return None


def broadcast_shapes(shapes: Sequence[Shape], op: str = "") -> Shape:
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for s in shapes:
        padded = (1,) * (rank - len(s)) + tuple(s)
        out = [broadcast_dim(x, y, op) for x, y in zip(out, padded)]
    return tuple(out)


def normalize_axis(axis: int, rank: int, op: str = "") -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeInferenceError(f"{op}: axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def normalize_axes(axes: Sequence[int], rank: int, op: str = "") -> list[int]:
    """Axes made non-negative; raises on out-of-range or repeated axes."""
    out = [normalize_axis(int(a), rank, op) for a in axes]
    if len(set(out)) != len(out):
        raise ShapeInferenceError(f"{op}: repeated axis in {list(axes)}")
    return out


def symbolic_product(dims: Sequence[Dim]) -> Dim:
    """Product of dims keeping a lone symbol: `(B, 1, 1)` gives `"B"`, `(B, 4)` None,
    `(2, 3)` 6. A static zero gives 0 whatever the rest."""
    total = 1
    symbols: list[Dim] = []
    for d in dims:
        if isinstance(d, int):
            total *= d
        else:
            symbols.append(d)
    if total == 0 or not symbols:
        return total
    if total == 1 and len(symbols) == 1 and isinstance(symbols[0], str):
        return symbols[0]
    return None


def dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if b == 0:
        return a
    if a == 0:
        return b
    return None


def dim_mul(a: Dim, b: Dim) -> Dim:
    return symbolic_product((a, b))


def unify_dims(a: Dim, b: Dim, op: str = "", what: str = "dims") -> Dim:
    """Two dims that must be equal at run time: the more precise one (static beats a
    symbol beats unknown); raises when two static dims differ."""
    if isinstance(a, int) and isinstance(b, int):
        if a != b:
            raise ShapeInferenceError(f"{op}: {what} differ: {a} and {b}")
        return a
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a if a is not None else b


def reshape_shape(src: Shape, target: Sequence[int], allowzero: bool, op: str = "Reshape") -> tuple[Dim, ...]:
    """Output shape of ONNX Reshape of `src` to the constant `target` (with 0 = copy the
    input dim unless `allowzero`, and at most one -1 = whatever is left).

    The -1 dim is static when the input's symbols cancel against copied dims, the lone
    leftover symbol when exactly one remains (`(B, S, 64) -> (-1, 64)` gives `B*S`, which
    is unknown, but `(B, 12, 64) -> (0, -1)` gives 768)."""
    target = [int(t) for t in target]
    if sum(1 for t in target if t == -1) > 1:
        raise ShapeInferenceError(f"{op}: more than one -1 in shape {target}")
    if any(t < -1 for t in target):
        raise ShapeInferenceError(f"{op}: bad dim in shape {target}")
    if allowzero and 0 in target and -1 in target:
        raise ShapeInferenceError(f"{op}: allowzero=1 with both 0 and -1 in shape {target}")
    out: list[Dim] = []
    for i, t in enumerate(target):
        if t == 0 and not allowzero:
            if src is None:
                out.append(None)
            elif i >= len(src):
                raise ShapeInferenceError(f"{op}: shape {target} copies dim {i} of a rank-{len(src)} input")
            else:
                out.append(src[i])
        else:
            out.append(t)
    if -1 not in target:
        if src is not None:
            a, b = symbolic_product(src), symbolic_product(out)
            if isinstance(a, int) and isinstance(b, int) and a != b:
                raise ShapeInferenceError(f"{op}: cannot reshape {tuple(src)} ({a} elements) to {tuple(out)}")
        return tuple(out)
    k = out.index(-1)
    known = [d for j, d in enumerate(out) if j != k]
    out[k] = _quotient(src, known, op, target)
    return tuple(out)


def _quotient(src: Shape, known: Sequence[Dim], op: str, target: Sequence[int]) -> Dim:
    """numel(src) / prod(known), symbolically where the symbols cancel."""
    if src is None or any(d is None for d in src) or any(d is None for d in known):
        return None
    num_int, num_sym = 1, Counter()
    for d in src:
        if isinstance(d, int):
            num_int *= d
        else:
            num_sym[d] += 1
    den_int, den_sym = 1, Counter()
    for d in known:
        if isinstance(d, int):
            den_int *= d
        else:
            den_sym[d] += 1
    if den_sym - num_sym:  # a symbol in the known dims that the input lacks
        return None
    rest = num_sym - den_sym
    if den_int == 0:
        raise ShapeInferenceError(f"{op}: cannot infer -1 in shape {list(target)} next to a 0 dim")
    if num_int % den_int:
        if not rest:
            raise ShapeInferenceError(f"{op}: cannot reshape {tuple(src)} to {list(target)}")
        return None
    q = num_int // den_int
    if not rest:
        return q
    if q == 1 and sum(rest.values()) == 1:
        return next(iter(rest))
    return None


INT_MAX = 2**63 - 1


def slice_range(dim: int, start: int, end: int, step: int) -> tuple[int, int]:
    """ONNX Slice clamping of (start, end) for one axis of static extent `dim`."""
    if step == 0:
        raise ShapeInferenceError("Slice: step 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
    else:
        start = min(max(start, 0), dim - 1)
        end = min(max(end, -1), dim - 1)
    return start, end


def slice_dim(dim: Dim, start: int, end: int, step: int) -> Dim:
    """The extent of one sliced axis; a symbolic dim survives a full-range slice."""
    if isinstance(dim, int):
        s, e = slice_range(dim, start, end, step)
        n = (e - s + step + (-1 if step > 0 else 1)) // step
        return max(0, n)
    if step == 1 and start == 0 and end >= 2**31 - 1:
        return dim
    if step == -1 and (start == -1 or start >= 2**31 - 1) and end <= -(2**31):
        return dim
    return None


def resolve_pads(
    in_dims: Sequence[Dim],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str,
    op: str = "",
) -> list[tuple[Dim, Dim]]:
    """Begin/end padding per spatial axis; SAME_* pads on a symbolic axis are None."""
    n = len(in_dims)
    if auto_pad == "NOTSET":
        p = list(pads) if pads is not None else [0] * (2 * n)
        if len(p) != 2 * n:
            raise ShapeInferenceError(f"{op}: pads has {len(p)} values, {2 * n} expected")
        if any(v < 0 for v in p):
            raise ShapeInferenceError(f"{op}: negative pads {p}")
        return [(p[i], p[i + n]) for i in range(n)]
    if auto_pad == "VALID":
        return [(0, 0)] * n
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out: list[tuple[Dim, Dim]] = []
        for d, k, s, dl in zip(in_dims, kernel, strides, dilations):
            if not isinstance(d, int):
                out.append((None, None))
                continue
            o = -(-d // s)
            total = max(0, (o - 1) * s + (k - 1) * dl + 1 - d)
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        return out
    raise ShapeInferenceError(f"{op}: auto_pad {auto_pad!r} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER")


def window_out_dim(
    d: Dim, k: int, stride: int, dilation: int, pad: tuple[Dim, Dim], auto_pad: str, ceil_mode: bool = False
) -> Dim:
    """Output extent of a sliding window (Conv, pooling) along one spatial axis."""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if isinstance(d, int):
            return -(-d // stride)
        return d if stride == 1 else None
    pb, pe = pad
    span = dilation * (k - 1) + 1
    if not isinstance(d, int):
        if stride == 1 and not ceil_mode and isinstance(pb, int) and isinstance(pe, int) and pb + pe == span - 1:
            return d
        return None
    total = d + pb + pe - span
    if total < 0:
        raise ShapeInferenceError(f"window of {span} does not fit an extent of {d} padded by {pb}+{pe}")
    if ceil_mode:
        o = -(-total // stride) + 1
        if (o - 1) * stride >= d + pb:  # the last window must start inside the input or begin padding
            o -= 1
        return o
    return total // stride + 1

