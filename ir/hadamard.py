"""Hadamard matrices and the fast transform the `Hadamard` op (ir/ops/rotation.py) and
the rotation passes use.

A Hadamard matrix H of order n has entries +-1 and H H^T = n I, so H / sqrt(n) is
orthogonal: a rotation that spreads every input channel evenly over all outputs. What
this module builds, and how (each matrix is checked, H H^T = n I, when first built):

- Sylvester: H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]] (order 2^m);
- Paley I (Paley 1933): for a prime power q = 3 mod 4, the Jacobsthal matrix
  Q[i, j] = chi(x_j - x_i) over GF(q) (chi the quadratic character: 1 on non-zero
  squares, -1 on non-squares, 0 at 0) is skew, and H = I + [[0, 1^T], [-1, Q]] has order
  q + 1 (12 from q = 11, 20 from 19, 28 from 27 = 3^3, 44, 60, 108, 140, ...);
- Paley II: for a prime power q = 1 mod 4, Q is symmetric, C = [[0, 1^T], [1, Q]] is a
  symmetric conference matrix, and H = C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]]
  has order 2(q + 1) (36 from q = 17, 52 from 25 = 5^2, 148 from 73, ...).

The canonical matrix of order n (what `hadamard_matrix(n)` returns and the op computes)
is Sylvester's for n = 2^m, else H_K (x) H_(2^m) with K = 4 x (the odd part of n) built by
Paley I (preferred) or Paley II: n = 384 = 12 x 32, 1536 = 12 x 128, 11008 = 172 x 64 only if
172 is buildable (it is not by Paley: 171 = 9 x 19 and 85 are not prime powers; nor is
156). `hadamard_unsupported(n)` says why an order has no matrix here; the passes then use
another orthogonal transform (passes/channel_transforms.py names it).

`apply_hadamard(x, axis)` computes x @ H_n / sqrt(n) along `axis` in O(n log n + n K): the
2^m factor by butterflies (the fast Walsh-Hadamard transform), the K factor as a small
dense product. Row-vector convention: for x reshaped [..., K, P] (P = 2^m),
x @ (H_K (x) H_P) = H_K^T X H_P.

Block-diagonal form (`block=b`, b < n dividing n): I_(n/b) (x) H_b / sqrt(b), each run of
b consecutive channels rotated on its own (`block_hadamard_problem` says when b is not
valid for n). Still orthogonal, and b multiply-adds per element (log b with butterflies)
instead of n; it spreads an outlier channel over b channels instead of n, which is what a
per-tensor int8 quantizer needs while 4-bit formats want the whole width (the rotate
benchmark measures both).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from itertools import product

import numpy as np

__all__ = [
    "is_power_of_two",
    "prime_power",
    "sylvester",
    "paley_one",
    "paley_two",
    "base_order_construction",
    "hadamard_factors",
    "hadamard_unsupported",
    "hadamard_matrix",
    "normalized_hadamard",
    "random_signs",
    "apply_hadamard",
    "fwht",
    "kronecker_factors",
    "factor_matrix",
    "block_hadamard_problem",
    "block_option_problem",
    "block_size",
]

logger = logging.getLogger(__name__)


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def prime_power(q: int) -> tuple[int, int] | None:
    """(p, k) with q = p^k for a prime p, else None."""
    if q < 2:
        return None
    p = next((d for d in range(2, int(q ** 0.5) + 1) if q % d == 0), q)
    k, rest = 0, q
    while rest % p == 0:
        rest //= p
        k += 1
    return (p, k) if rest == 1 else None


# -- finite fields GF(p^k) -----------------------------------------------------------------------


def _poly_mod(a: list[int], m: list[int], p: int) -> list[int]:
    """a mod m over GF(p); polynomials as coefficient lists, lowest degree first, m monic."""
    a = [c % p for c in a]
    while len(a) >= len(m):
        lead = a[-1]
        if lead:
            shift = len(a) - len(m)
            for i, c in enumerate(m):
                a[shift + i] = (a[shift + i] - lead * c) % p
        a.pop()
    return a + [0] * (len(m) - 1 - len(a))


def _irreducible(p: int, k: int) -> list[int]:
    """The first monic irreducible polynomial of degree k over GF(p) (lowest degree first):
    no monic factor of degree 1..k/2 divides it."""
    def divides(f: list[int], g: list[int]) -> bool:
        return not any(_poly_mod(g, f, p))

    for tail in product(range(p), repeat=k):
        g = list(tail) + [1]
        if g[0] == 0:
            continue  # divisible by x
        factors = (list(t) + [1] for d in range(1, k // 2 + 1) for t in product(range(p), repeat=d))
        if not any(divides(f, g) for f in factors):
            return g
    raise ValueError(f"no irreducible polynomial of degree {k} over GF({p})")  # cannot happen


def _quadratic_character(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Elements of GF(q) as integer codes 0..q-1 (base-p digits = polynomial coefficients),
    with `diff[i, j]` = code of x_j - x_i and `chi[c]` = the quadratic character of code c."""
    pk = prime_power(q)
    assert pk is not None
    p, k = pk
    digits = np.array(list(product(range(p), repeat=k)))[:, ::-1] if k > 1 else np.arange(p)[:, None]
    powers = p ** np.arange(k)
    codes = digits @ powers  # digits[c] are the coefficients of element c, lowest degree first
    order = np.argsort(codes)
    digits = digits[order]
    diff = ((digits[None, :, :] - digits[:, None, :]) % p) @ powers
    modulus = _irreducible(p, k) if k > 1 else [0, 1]
    squares = set()
    for c in range(1, q):
        a = list(digits[c])
        sq = [0] * (2 * k - 1)
        for i, ai in enumerate(a):
            for j, aj in enumerate(a):
                sq[i + j] += ai * aj
        squares.add(int(np.dot(_poly_mod(sq, modulus, p), powers)))
    chi = np.array([0] + [1 if c in squares else -1 for c in range(1, q)], np.int64)
    return diff, chi


def _jacobsthal(q: int) -> np.ndarray:
    diff, chi = _quadratic_character(q)
    return chi[diff]


# -- constructions -------------------------------------------------------------------------------


def sylvester(n: int) -> np.ndarray:
    """Sylvester's Hadamard matrix of order n = 2^m (int8 +-1)."""
    if not is_power_of_two(n):
        raise ValueError(f"Sylvester's construction needs a power of two, not {n}")
    h = np.ones((1, 1), np.int8)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def paley_one(q: int) -> np.ndarray:
    """Paley I: order q + 1 for a prime power q = 3 mod 4 (module docstring)."""
    if prime_power(q) is None or q % 4 != 3:
        raise ValueError(f"Paley I needs a prime power q = 3 mod 4, not {q}")
    s = np.zeros((q + 1, q + 1), np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _jacobsthal(q)
    return (np.eye(q + 1, dtype=np.int64) + s).astype(np.int8)


def paley_two(q: int) -> np.ndarray:
    """Paley II: order 2(q + 1) for a prime power q = 1 mod 4 (module docstring)."""
    if prime_power(q) is None or q % 4 != 1:
        raise ValueError(f"Paley II needs a prime power q = 1 mod 4, not {q}")
    c = np.zeros((q + 1, q + 1), np.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _jacobsthal(q)
    h = np.kron(c, np.array([[1, 1], [1, -1]])) + np.kron(np.eye(q + 1, dtype=np.int64), np.array([[1, -1], [-1, -1]]))
    return h.astype(np.int8)


def base_order_construction(k: int) -> tuple[str, int] | None:
    """How the base order K (a multiple of 4) is built: ("paley1", q) or ("paley2", q),
    or None when neither Paley construction reaches it."""
    if k % 4:
        return None
    q = k - 1
    if prime_power(q) is not None and q % 4 == 3:
        return "paley1", q
    q = k // 2 - 1
    if k % 8 == 4 and prime_power(q) is not None and q % 4 == 1:
        return "paley2", q
    return None


def hadamard_factors(n: int) -> tuple[int, int]:
    """(K, P) with n = K * P, P = 2^m and H_n = H_K (x) H_P; K = 1 for powers of two.
    Raises ValueError (the reason) for orders without a matrix here."""
    reason = hadamard_unsupported(n)
    if reason is not None:
        raise ValueError(reason)
    if is_power_of_two(n):
        return 1, n
    odd = n
    while odd % 2 == 0:
        odd //= 2
    return 4 * odd, n // (4 * odd)


def hadamard_unsupported(n: int) -> str | None:
    """Why there is no Hadamard matrix of order n here, or None when there is one."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        return f"order {n!r} is not a positive integer"
    n = int(n)
    if is_power_of_two(n):
        return None
    odd, twos = n, 0
    while odd % 2 == 0:
        odd //= 2
        twos += 1
    if twos < 2:
        return f"order {n} is not a multiple of 4 (Hadamard matrices of order > 2 are)"
    k = 4 * odd
    if base_order_construction(k) is None:
        return (f"order {n} = {k} x 2^{twos - 2}: no Paley construction of order {k} ({k - 1} is not a prime power "
                f"= 3 mod 4, and {k // 2 - 1} is not a prime power = 1 mod 4)")
    return None


@lru_cache(maxsize=64)
def _base_matrix(k: int) -> np.ndarray:
    how = base_order_construction(k)
    assert how is not None
    kind, q = how
    h = paley_one(q) if kind == "paley1" else paley_two(q)
    _check(h, f"{kind} q={q}")
    return h


def _check(h: np.ndarray, what: str) -> None:
    n = h.shape[0]
    hh = h.astype(np.int64) @ h.T.astype(np.int64)
    if not np.array_equal(hh, n * np.eye(n, dtype=np.int64)):
        raise AssertionError(f"{what}: H H^T != {n} I")  # a construction bug, never user input


@lru_cache(maxsize=64)
def _hadamard_matrix(n: int) -> np.ndarray:
    k, p = hadamard_factors(n)
    h = sylvester(p) if k == 1 else np.kron(_base_matrix(k), sylvester(p)).astype(np.int8)
    h.setflags(write=False)
    return h


def hadamard_matrix(n: int) -> np.ndarray:
    """The canonical Hadamard matrix of order n (int8 +-1, read-only; module docstring)."""
    return _hadamard_matrix(int(n))


def normalized_hadamard(n: int, signs: np.ndarray | None = None, block: int = 0) -> np.ndarray:
    """diag(signs) (I_(n/b) (x) H_b / sqrt(b)) in float64 (orthogonal), b = `block_size(n,
    block)` (H_n / sqrt(n) for block 0); `signs` a +-1 vector or None."""
    b = block_size(n, block)
    h = hadamard_matrix(b).astype(np.float64) / np.sqrt(b)
    if b != n:
        h = np.kron(np.eye(n // b), h)
    return h if signs is None else np.asarray(signs, np.float64)[:, None] * h


def block_hadamard_problem(n: int, block: int) -> str | None:
    """Why I_(n/b) (x) H_b (b = `block`, 0 for the whole axis) is not a rotation of n
    channels here, or None when it is (b = n is the plain H_n)."""
    if not isinstance(block, (int, np.integer)) or block < 0:
        return f"block {block!r} is not a non-negative integer"
    b = int(block) or int(n)
    if n % b:
        return f"block {b} does not divide the axis's {n} channels"
    return hadamard_unsupported(b)


def block_option_problem(block: object) -> str | None:
    """What is wrong with `block` as the block size a caller asks for before any width is
    known (0: the whole width), or None: it must be 0 or itself a Hadamard order."""
    if not isinstance(block, (int, np.integer)) or isinstance(block, bool) or block < 0 or (
            block and hadamard_unsupported(int(block))):
        return "must be 0 (the whole width) or a Hadamard order (2^m, or 12, 20, 28, ... times 2^m)"
    return None


def block_size(n: int, block: int) -> int:
    """The order of the diagonal blocks: `block`, or n for 0. Raises ValueError (the reason)
    when `block_hadamard_problem` has one."""
    reason = block_hadamard_problem(n, block)
    if reason is not None:
        raise ValueError(reason)
    return int(block) or int(n)


def random_signs(n: int, seed: int) -> np.ndarray:
    """n random +-1 values (float64) from `seed`: diag(s) H is a random Hadamard rotation."""
    return np.random.default_rng(seed).integers(0, 2, n).astype(np.float64) * 2.0 - 1.0


# -- the fast transform --------------------------------------------------------------------------


def fwht(x: np.ndarray) -> np.ndarray:
    """x @ H_P along the last axis (P = 2^m, unnormalised), by log2(P) butterfly stages."""
    p = x.shape[-1]
    if not is_power_of_two(p):
        raise ValueError(f"fwht needs a power-of-two length, not {p}")
    lead = x.shape[:-1]
    y = x.reshape(-1, p)
    h = 1
    while h < p:
        # pairs (i, i + h) inside blocks of 2h; Sylvester's H_2n = [[H, H], [H, -H]]
        z = y.reshape(-1, p // (2 * h), 2, h)
        a, b = z[:, :, 0, :], z[:, :, 1, :]
        y = np.stack([a + b, a - b], axis=2).reshape(-1, p)
        h *= 2
    return y.reshape(*lead, p)


def apply_hadamard(x: np.ndarray, axis: int = -1, block: int = 0) -> np.ndarray:
    """x @ H_n / sqrt(n) along `axis` (n its length), or with `block` b the block-diagonal
    x @ (I_(n/b) (x) H_b / sqrt(b)), in x's dtype (module docstring)."""
    x = np.asarray(x)
    moved = np.moveaxis(x, axis, -1)
    n = block_size(moved.shape[-1], block)
    k, p = hadamard_factors(n)
    dt = moved.dtype
    y = moved.reshape(*moved.shape[:-1], -1, k, p)
    y = fwht(y) if p > 1 else y
    if k > 1:
        hk = _base_matrix(k).astype(dt)
        y = np.einsum("...ap,ac->...cp", y, hk)
    y = (y.reshape(moved.shape) * dt.type(1.0 / np.sqrt(n))).astype(dt, copy=False)
    return np.moveaxis(y, -1, axis)


def kronecker_factors(n: int, dense_max: int = 64, factor_max: int = 128) -> list[int]:
    """Orders f_1, ..., f_r with H_n / sqrt(n) = (x)_i H_(f_i) / sqrt(f_i) in this order: [n]
    when n <= `dense_max` (one dense product), else the base order K (when n is not a
    power of two) followed by powers of two of at most `factor_max`, as even as possible
    (Sylvester's H_(2^(a+b)) = H_(2^a) (x) H_(2^b)). What the backends lower the op to."""
    k, p = hadamard_factors(n)
    if n <= dense_max:
        return [n]
    out = [k] if k > 1 else []
    m = p.bit_length() - 1  # p = 2^m
    per_factor = factor_max.bit_length() - 1
    parts = -(-m // per_factor)
    for i in range(parts):
        out.append(2 ** (m // parts + (1 if i < m % parts else 0)))
    return out


def factor_matrix(f: int) -> np.ndarray:
    """H_f / sqrt(f) (float64) for one order `kronecker_factors` returns."""
    return normalized_hadamard(f)
