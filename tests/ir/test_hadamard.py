"""Tests of requant.ir.hadamard: every order the constructions reach is a Hadamard matrix
(H H^T = n I, entries +-1), the canonical matrix of K x 2^m is H_K (x) H_(2^m), the
orders they do not reach say why, the fast transform equals the dense product, and the
factors the backends lower to multiply back to H_n / sqrt(n); the block-diagonal form is
I (x) H_b, orthogonal, and refuses blocks that do not divide the axis or have no matrix."""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest

from requant.errors import ShapeInferenceError
from requant.ir import Builder, Graph, run, tensor_type
from requant.ir.hadamard import (
    apply_hadamard,
    base_order_construction,
    block_hadamard_problem,
    factor_matrix,
    fwht,
    hadamard_factors,
    hadamard_matrix,
    hadamard_unsupported,
    kronecker_factors,
    normalized_hadamard,
    paley_one,
    paley_two,
    prime_power,
    random_signs,
    sylvester,
)

# the base orders QuaRot-style rotations need (LLaMA, OPT, ViT and BERT widths are K x 2^m)
ISSUE_BASE_ORDERS = (12, 20, 28, 36, 40, 44, 52, 60, 108, 140, 148)
UNREACHED = (156, 172)  # Williamson-type only: no Paley construction


def _is_hadamard(h: np.ndarray) -> bool:
    n = h.shape[0]
    h64 = h.astype(np.int64)
    return bool(np.all(np.abs(h64) == 1) and np.array_equal(h64 @ h64.T, n * np.eye(n, dtype=np.int64)))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 512])
def test_sylvester_orders(n):
    assert _is_hadamard(sylvester(n))


def test_every_reachable_base_order_up_to_260_is_hadamard():
    reached = [k for k in range(4, 261, 8) if base_order_construction(k) is not None]
    assert set(ISSUE_BASE_ORDERS) - {40} <= set(reached)  # 40 = 20 x 2 is not a base order
    for k in reached:
        assert _is_hadamard(hadamard_matrix(k)), k


@pytest.mark.parametrize("n", ISSUE_BASE_ORDERS)
def test_issue_orders_and_their_multiples(n):
    for m in (0, 1):
        assert hadamard_unsupported(n * 2 ** m) is None
        assert _is_hadamard(hadamard_matrix(n * 2 ** m))


def test_paley_constructions_over_prime_powers():
    assert prime_power(27) == (3, 3) and prime_power(25) == (5, 2) and prime_power(12) is None
    assert _is_hadamard(paley_one(27))  # GF(3^3): polynomial arithmetic
    assert _is_hadamard(paley_two(25))  # GF(5^2)
    assert base_order_construction(28) == ("paley1", 27)
    assert base_order_construction(52) == ("paley2", 25)
    with pytest.raises(ValueError, match="prime power q = 3 mod 4"):
        paley_one(13)
    with pytest.raises(ValueError, match="prime power q = 1 mod 4"):
        paley_two(11)


def test_canonical_matrix_is_base_kron_sylvester():
    assert hadamard_factors(384) == (12, 32) and hadamard_factors(1536) == (12, 128)
    assert hadamard_factors(40) == (20, 2) and hadamard_factors(64) == (1, 64)
    np.testing.assert_array_equal(hadamard_matrix(384), np.kron(hadamard_matrix(12), sylvester(32)))


@pytest.mark.parametrize("n, words", [(156, "no Paley construction of order 156"),
                                      (172 * 64, "11008 = 172 x 2^6: no Paley construction of order 172"),
                                      (6, "not a multiple of 4"), (0, "not a positive integer")])
def test_unreached_orders_say_why(n, words):
    assert words in hadamard_unsupported(n)
    with pytest.raises(ValueError, match=words.split(":")[0].split(" = ")[0]):
        hadamard_matrix(n)


@pytest.mark.parametrize("n", [8, 12, 40, 384, 1536])
def test_fast_transform_is_the_dense_product(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((3, 2, n))
    want = x @ normalized_hadamard(n)
    np.testing.assert_allclose(apply_hadamard(x), want, rtol=0, atol=1e-12 * np.abs(x).sum(-1).max())
    inner = np.moveaxis(x, -1, 1)  # the same along an inner axis
    np.testing.assert_allclose(apply_hadamard(inner, axis=1), np.moveaxis(want, -1, 1), rtol=0, atol=1e-10)


def test_fwht_is_sylvester_and_needs_a_power_of_two():
    x = np.arange(16.0).reshape(2, 8)
    np.testing.assert_array_equal(fwht(x), x @ sylvester(8))
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(np.ones((2, 12)))


def test_random_signs_give_an_orthogonal_matrix():
    s = random_signs(384, seed=7)
    assert set(np.unique(s)) == {-1.0, 1.0}
    np.testing.assert_array_equal(s, random_signs(384, seed=7))
    q = normalized_hadamard(384, s)
    np.testing.assert_allclose(q @ q.T, np.eye(384), atol=1e-12)


@pytest.mark.parametrize("n", [4, 64, 128, 256, 384, 1536, 2048])
def test_backend_factors_multiply_back(n):
    factors = kronecker_factors(n)
    assert np.prod(factors) == n and all(f <= 128 for f in factors if f & (f - 1) == 0)
    np.testing.assert_allclose(reduce(np.kron, [factor_matrix(f) for f in factors]), normalized_hadamard(n),
                               atol=1e-15)


def test_op_refuses_an_order_without_a_matrix():
    g = Graph("h")
    b = Builder(g)
    x = b.input("x", tensor_type("float32", [2, 156]))
    with pytest.raises(ShapeInferenceError, match="Hadamard: order 156"):
        b.Hadamard(x)


def test_op_checks_a_symbolic_order_when_it_runs():
    g = Graph("h")
    b = Builder(g)
    x = b.input("x", tensor_type("float32", ["batch", "n"]))
    g.outputs = [b.Hadamard(x)]
    assert run(g, {"x": np.ones((2, 8), np.float32)})[0].shape == (2, 8)
    with pytest.raises(Exception, match="not a multiple of 4"):
        run(g, {"x": np.ones((2, 6), np.float32)})


@pytest.mark.parametrize("n,block", [(96, 32), (1536, 32), (384, 12), (72, 12), (64, 64), (64, 0)])
def test_block_diagonal_form_is_kron_of_the_block(n, block):
    b = block or n
    want = np.kron(np.eye(n // b), hadamard_matrix(b) / np.sqrt(b))
    q = normalized_hadamard(n, block=block)
    np.testing.assert_allclose(q, want, rtol=0, atol=1e-15)
    np.testing.assert_allclose(q @ q.T, np.eye(n), rtol=0, atol=1e-12)
    x = np.random.default_rng(n).standard_normal((3, n))
    np.testing.assert_allclose(apply_hadamard(x, block=block), x @ want, rtol=0, atol=1e-12)
    inner = np.moveaxis(np.stack([x, -x]), -1, 1)  # along an inner axis
    np.testing.assert_allclose(apply_hadamard(inner, axis=1, block=block), np.moveaxis(np.stack([x, -x]) @ want, -1, 1),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("n,block,words", [(96, 64, "does not divide"), (312, 156, "order 156"),
                                           (36, 6, "not a multiple of 4"), (32, -4, "non-negative")])
def test_block_problems_are_named(n, block, words):
    assert words in block_hadamard_problem(n, block)
    with pytest.raises(ValueError, match=words):
        apply_hadamard(np.ones((2, n)), block=block)


def test_op_refuses_a_block_that_does_not_divide_the_axis():
    g = Graph("h")
    b = Builder(g)
    x = b.input("x", tensor_type("float32", [2, 96]))
    with pytest.raises(ShapeInferenceError, match="block 64 does not divide the axis's 96 channels"):
        b.Hadamard(x, block=64)
    with pytest.raises(ShapeInferenceError, match="block"):
        b.Hadamard(x, block=-32)
