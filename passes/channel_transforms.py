"""Invertible transforms of a tensor's last axis (its channels), the one idea behind
SmoothQuant, Hadamard rotations and OSTQuant-style scaling: for an activation x [..., K]
read by linears `y = x W` (W [K, N]) and any invertible M [K, K],

    y = x W = (x M) (M^-1 W),

so x may be replaced by x M everywhere its readers multiply by M^-1 first. Where x M
comes from is the migration's business (passes/fold_common.py `migrate_transform`): the
writer of x absorbs M (a linear `x = u V + b` becomes `u (V M) + b M`; a norm's
per-channel affine absorbs a diagonal M), or an explicit op computes it.

The kinds, each with the cheapest exact way to apply it and its inverse (numpy, float64):
- `DiagonalTransform(d)`: M = diag(d), M^-1 = diag(1 / d) (SmoothQuant: d = 1 / s);
- `OrthogonalTransform(q)`: M^-1 = M^T, checked |Q Q^T - I| <= 1e-8 * K (Hadamard / sqrt(K),
  learned rotations);
- `BlockDiagonalTransform(blocks)`: square blocks along the diagonal (per-head
  rotations), each block inverted on its own;
- `MatrixTransform(m)`: any invertible matrix, inverted by LU (refused when its
  condition number makes the inverse meaningless in float32);
- `HadamardTransform(n, signs, block)`: the orthogonal diag(signs) H_n / sqrt(n) with H_n the
  canonical Hadamard matrix of requant.ir.hadamard (QuaRot's rotation; random signs from a
  seed make it a random Hadamard rotation), or with `block` b the block-diagonal
  diag(signs) (I_(n/b) (x) H_b / sqrt(b)); without signs it is what requant's `Hadamard`
  op computes (with the same `block`), so a migration can apply it online as that op.

`rotation_transform(n, seed)` is the rotation the rotation passes use for n channels: a
random Hadamard where requant.ir.hadamard has an order-n matrix, else (n = r x p with p the
largest order dividing n that has one; 156 = 3 x 52, 172 = 43 x 4) the Kronecker product
of a seeded random orthogonal r x r matrix (QR of a Gaussian) with a random Hadamard of
order p: still orthogonal and mixing every channel, but its r-part is dense, and it is
named so in the passes' stats.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from requant.errors import RequantError
from requant.ir.hadamard import apply_hadamard, block_hadamard_problem, hadamard_factors, hadamard_unsupported, \
    normalized_hadamard, random_signs

__all__ = [
    "ChannelTransform",
    "DiagonalTransform",
    "OrthogonalTransform",
    "BlockDiagonalTransform",
    "MatrixTransform",
    "HadamardTransform",
    "rotation_transform",
    "random_orthogonal",
]

logger = logging.getLogger(__name__)

# cond(M) above this leaves a float32 inverse with no correct digit (2^24 ~ 1.7e7)
_MAX_CONDITION = 1e6


class ChannelTransform:
    """An invertible K x K matrix M acting on the last axis: `right(a)` = a M,
    `inverse_left(w)` = M^-1 w (w [K, ...]), `right_inverse(a)` = a M^-1."""

    kind = "general"

    @property
    def size(self) -> int:
        raise NotImplementedError

    @property
    def diagonal(self) -> np.ndarray | None:
        """M's diagonal when M is diagonal, else None."""
        return None

    def matrix(self) -> np.ndarray:
        """M as a dense float64 array."""
        return self.right(np.eye(self.size))

    def right(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inverse_left(self, w: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def right_inverse(self, a: np.ndarray) -> np.ndarray:
        """a M^-1: what a writer's output becomes when M's inverse moves into it."""
        return self.inverse().right(a)

    def inverse(self) -> ChannelTransform:
        """M^-1 as a transform of the same kind."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.kind} {self.size}x{self.size}"

    def _check(self, a: np.ndarray, axis: int, what: str) -> np.ndarray:
        a = np.asarray(a, np.float64)
        if a.ndim == 0 or a.shape[axis] != self.size:
            raise RequantError(f"{self.describe()} transform: {what} has shape {a.shape}, needs {self.size} "
                               f"along axis {axis}")
        return a


@dataclass(frozen=True)
class DiagonalTransform(ChannelTransform):
    """M = diag(d); every d_k must be finite and non-zero."""

    d: np.ndarray
    kind = "diagonal"

    def __post_init__(self) -> None:
        d = np.asarray(self.d, np.float64).reshape(-1)
        if d.size == 0 or not np.all(np.isfinite(d)) or np.any(d == 0):
            raise RequantError("diagonal transform: every factor must be finite and non-zero")
        object.__setattr__(self, "d", d)

    @property
    def size(self) -> int:
        return int(self.d.size)

    @property
    def diagonal(self) -> np.ndarray:
        return self.d

    def right(self, a: np.ndarray) -> np.ndarray:
        return self._check(a, -1, "the operand") * self.d

    def inverse_left(self, w: np.ndarray) -> np.ndarray:
        w = self._check(w, 0, "the weight")
        return w / self.d.reshape((-1,) + (1,) * (w.ndim - 1))

    def inverse(self) -> DiagonalTransform:
        return DiagonalTransform(1.0 / self.d)


@dataclass(frozen=True)
class OrthogonalTransform(ChannelTransform):
    """M = Q with Q Q^T = I (checked), so M^-1 = Q^T."""

    q: np.ndarray
    label: str = ""  # what the matrix is, for stats and errors (describe)
    kind = "orthogonal"

    def __post_init__(self) -> None:
        q = np.asarray(self.q, np.float64)
        if q.ndim != 2 or q.shape[0] != q.shape[1] or q.shape[0] == 0:
            raise RequantError(f"orthogonal transform: needs a square matrix, got shape {q.shape}")
        err = float(np.max(np.abs(q @ q.T - np.eye(q.shape[0]))))
        if err > 1e-8 * q.shape[0]:
            raise RequantError(f"orthogonal transform: |Q Q^T - I| = {err:.3g} (not orthogonal)")
        object.__setattr__(self, "q", q)

    @property
    def size(self) -> int:
        return int(self.q.shape[0])

    def right(self, a: np.ndarray) -> np.ndarray:
        return self._check(a, -1, "the operand") @ self.q

    def inverse_left(self, w: np.ndarray) -> np.ndarray:
        w = self._check(w, 0, "the weight")
        return np.tensordot(self.q.T, w, axes=(1, 0))

    def inverse(self) -> OrthogonalTransform:
        return OrthogonalTransform(self.q.T, f"inverse of {self.label}" if self.label else "")

    def describe(self) -> str:
        return f"{self.label} {self.size}x{self.size}" if self.label else super().describe()


@dataclass(frozen=True)
class BlockDiagonalTransform(ChannelTransform):
    """M = diag(B_1, ..., B_h), square blocks in order along the diagonal."""

    blocks: Sequence[ChannelTransform] = field(default_factory=tuple)
    kind = "block-diagonal"

    def __post_init__(self) -> None:
        blocks = tuple(b if isinstance(b, ChannelTransform) else MatrixTransform(b) for b in self.blocks)
        if not blocks:
            raise RequantError("block-diagonal transform: needs at least one block")
        object.__setattr__(self, "blocks", blocks)

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def diagonal(self) -> np.ndarray | None:
        parts = [b.diagonal for b in self.blocks]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    def _bounds(self) -> list[tuple[int, int]]:
        edges = np.cumsum([0] + [b.size for b in self.blocks])
        return list(zip(edges[:-1].tolist(), edges[1:].tolist()))

    def right(self, a: np.ndarray) -> np.ndarray:
        a = self._check(a, -1, "the operand")
        return np.concatenate([b.right(a[..., lo:hi]) for b, (lo, hi) in zip(self.blocks, self._bounds())], axis=-1)

    def inverse_left(self, w: np.ndarray) -> np.ndarray:
        w = self._check(w, 0, "the weight")
        return np.concatenate([b.inverse_left(w[lo:hi]) for b, (lo, hi) in zip(self.blocks, self._bounds())], axis=0)

    def inverse(self) -> BlockDiagonalTransform:
        return BlockDiagonalTransform(tuple(b.inverse() for b in self.blocks))

    def describe(self) -> str:
        sizes = sorted({b.size for b in self.blocks})
        return f"block-diagonal {self.size}x{self.size} ({len(self.blocks)} blocks of {'/'.join(map(str, sizes))})"


@dataclass(frozen=True)
class MatrixTransform(ChannelTransform):
    """Any invertible M; refused when cond(M) > 1e6 (its float32 inverse would be noise)."""

    m: np.ndarray
    kind = "general"

    def __post_init__(self) -> None:
        m = np.asarray(self.m, np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
            raise RequantError(f"matrix transform: needs a square matrix, got shape {m.shape}")
        cond = float(np.linalg.cond(m))
        if not np.isfinite(cond) or cond > _MAX_CONDITION:
            raise RequantError(f"matrix transform: condition number {cond:.3g} > {_MAX_CONDITION:g}: not invertible "
                               f"in float32")
        object.__setattr__(self, "m", m)

    @property
    def size(self) -> int:
        return int(self.m.shape[0])

    def right(self, a: np.ndarray) -> np.ndarray:
        return self._check(a, -1, "the operand") @ self.m

    def inverse_left(self, w: np.ndarray) -> np.ndarray:
        w = self._check(w, 0, "the weight")
        return np.linalg.solve(self.m, w.reshape(self.size, -1)).reshape(w.shape)

    def inverse(self) -> MatrixTransform:
        return MatrixTransform(np.linalg.inv(self.m))


@dataclass(frozen=True)
class HadamardTransform(ChannelTransform):
    """M = diag(signs) H_n / sqrt(n), or diag(signs) (I_(n/b) (x) H_b / sqrt(b)) with `block`
    b > 0 (module docstring); `signs` None means all +1."""

    n: int
    signs: np.ndarray | None = None
    block: int = 0
    kind = "hadamard"

    def __post_init__(self) -> None:
        reason = block_hadamard_problem(self.n, self.block)
        if reason is not None:
            raise RequantError(f"hadamard transform: {reason}")
        if self.signs is not None:
            s = np.asarray(self.signs, np.float64).reshape(-1)
            if s.size != self.n or not np.all(np.abs(s) == 1.0):
                raise RequantError(f"hadamard transform: signs must be {self.n} values +-1")
            object.__setattr__(self, "signs", s)

    @property
    def size(self) -> int:
        return int(self.n)

    @property
    def online(self) -> bool:
        """Whether requant's `Hadamard` op computes x M (no sign flips)."""
        return self.signs is None

    def matrix(self) -> np.ndarray:
        return normalized_hadamard(self.n, self.signs, self.block)

    def right(self, a: np.ndarray) -> np.ndarray:
        a = self._check(a, -1, "the operand")
        return apply_hadamard(a if self.signs is None else a * self.signs, -1, self.block)

    def inverse_left(self, w: np.ndarray) -> np.ndarray:
        # M^-1 w = M^T w = (w^T M)^T: the signs, then the fast transform along w's first axis
        w = self._check(w, 0, "the weight")
        if self.signs is not None:
            w = w * self.signs.reshape((-1,) + (1,) * (w.ndim - 1))
        return np.moveaxis(apply_hadamard(np.moveaxis(w, 0, -1), -1, self.block), -1, 0)

    def inverse(self) -> OrthogonalTransform:
        return OrthogonalTransform(self.matrix().T, f"inverse {self._what()}")

    def _what(self) -> str:
        b = self.block or self.n
        k, p = hadamard_factors(b)
        shape = "Sylvester" if k == 1 else (f"Paley {k}" if p == 1 else f"Paley {k} x Sylvester {p}")
        blocks = f", {self.n // b} diagonal blocks of {b}" if b != self.n else ""
        return f"hadamard ({shape}{blocks}{', random signs' if self.signs is not None else ''})"

    def describe(self) -> str:
        return f"{self._what()} {self.n}x{self.n}"


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal n x n matrix (QR of a Gaussian, signs of R's diagonal fixed)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def rotation_transform(n: int, seed: int | None = 0) -> ChannelTransform:
    """The rotation of n channels (module docstring): a Hadamard transform (random signs
    from `seed`, none with seed None) where one exists, else random orthogonal (x) Hadamard."""
    if hadamard_unsupported(n) is None:
        return HadamardTransform(n, None if seed is None else random_signs(n, seed))
    p = max(d for d in range(1, n + 1) if n % d == 0 and hadamard_unsupported(d) is None)
    r = n // p
    q = np.kron(random_orthogonal(r, 0 if seed is None else seed), normalized_hadamard(p, None if seed is None else
                                                                                      random_signs(p, seed)))
    logger.info("no Hadamard matrix of order %d (%s): using random orthogonal %d (x) hadamard %d", n,
                hadamard_unsupported(n), r, p)
    return OrthogonalTransform(q, f"random orthogonal {r} (x) hadamard {p}")
