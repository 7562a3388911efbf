"""Tests of passes/channel_transforms.py: each kind applies M and M^-1 exactly as its
dense matrix does (float64, tolerance 1e-12 relative), refuses what is not invertible
(or not orthogonal), and composes into block-diagonal transforms."""

from __future__ import annotations

import numpy as np
import pytest

from requant.errors import RequantError
from requant.passes.channel_transforms import (
    BlockDiagonalTransform,
    DiagonalTransform,
    MatrixTransform,
    OrthogonalTransform,
)

RNG = np.random.default_rng(0)


def _orthogonal(n: int) -> np.ndarray:
    q, _ = np.linalg.qr(RNG.standard_normal((n, n)))
    return q


@pytest.mark.parametrize("make", [
    lambda: DiagonalTransform(RNG.uniform(0.5, 2.0, 6) * RNG.choice([-1, 1], 6)),
    lambda: OrthogonalTransform(_orthogonal(6)),
    lambda: BlockDiagonalTransform([_orthogonal(2), _orthogonal(4)]),
    lambda: BlockDiagonalTransform([DiagonalTransform([2.0, 3.0]), OrthogonalTransform(_orthogonal(4))]),
    lambda: MatrixTransform(np.eye(6) + 0.3 * RNG.standard_normal((6, 6))),
], ids=["diagonal", "orthogonal", "block-orthogonal", "block-mixed", "general"])
def test_every_kind_agrees_with_its_dense_matrix(make):
    t = make()
    m = t.matrix()
    x = RNG.standard_normal((3, 5, 6))
    w = RNG.standard_normal((6, 4))
    np.testing.assert_allclose(t.right(x), x @ m, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(t.inverse_left(w), np.linalg.solve(m, w), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(t.right_inverse(x), x @ np.linalg.inv(m), rtol=1e-10, atol=1e-10)
    # what the migration relies on: (x M)(M^-1 W) = x W
    np.testing.assert_allclose(t.right(x) @ t.inverse_left(w), x @ w, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(t.inverse().matrix() @ m, np.eye(6), atol=1e-10)


def test_diagonal_of_a_block_diagonal_exists_only_when_every_block_is_diagonal():
    assert BlockDiagonalTransform([DiagonalTransform([1.0, 2.0]), DiagonalTransform([3.0])]).diagonal.tolist() == \
        [1.0, 2.0, 3.0]
    assert BlockDiagonalTransform([DiagonalTransform([1.0, 2.0]), _orthogonal(2)]).diagonal is None


@pytest.mark.parametrize("make, message", [
    (lambda: DiagonalTransform([1.0, 0.0]), "non-zero"),
    (lambda: DiagonalTransform([1.0, np.inf]), "finite"),
    (lambda: OrthogonalTransform(np.array([[1.0, 0.1], [0.0, 1.0]])), "not orthogonal"),
    (lambda: OrthogonalTransform(np.ones((2, 3))), "square"),
    (lambda: MatrixTransform(np.array([[1.0, 1.0], [1.0, 1.0 + 1e-9]])), "condition number"),
    (lambda: BlockDiagonalTransform([]), "at least one block"),
])
def test_refuses_what_cannot_be_inverted(make, message):
    with pytest.raises(RequantError, match=message):
        make()


def test_shape_mismatch_is_named():
    with pytest.raises(RequantError, match="has shape .* needs 4"):
        DiagonalTransform(np.ones(4)).right(np.ones((2, 3)))


def test_hadamard_transform_is_the_normalized_hadamard_with_signs():
    from requant.ir.hadamard import normalized_hadamard, random_signs
    from requant.passes.channel_transforms import HadamardTransform

    rng = np.random.default_rng(4)
    s = random_signs(12, 3)
    t = HadamardTransform(12, s)
    m = s[:, None] * normalized_hadamard(12)
    a, w = rng.standard_normal((2, 5, 12)), rng.standard_normal((12, 3))
    np.testing.assert_allclose(t.matrix(), m, atol=1e-15)
    np.testing.assert_allclose(t.right(a), a @ m, atol=1e-12)
    np.testing.assert_allclose(t.inverse_left(w), m.T @ w, atol=1e-12)
    np.testing.assert_allclose(t.inverse().matrix(), m.T, atol=1e-15)
    assert t.describe() == "hadamard (Paley 12, random signs) 12x12" and not t.online and HadamardTransform(8).online
    with pytest.raises(RequantError, match="order 6 is not a multiple of 4"):
        HadamardTransform(6)
    with pytest.raises(RequantError, match="signs must be 12 values"):
        HadamardTransform(12, np.full(12, 0.5))


def test_rotation_transform_falls_back_to_a_named_kronecker_product():
    from requant.passes.channel_transforms import HadamardTransform, rotation_transform

    assert isinstance(rotation_transform(384, seed=1), HadamardTransform)
    t = rotation_transform(156, seed=1)
    assert t.describe() == "random orthogonal 3 (x) hadamard 52 156x156"
    m = t.matrix()
    np.testing.assert_allclose(m @ m.T, np.eye(156), atol=1e-12)
    assert rotation_transform(6, seed=None).describe() == "random orthogonal 3 (x) hadamard 2 6x6"
