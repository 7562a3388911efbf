"""Cases of requant's fused attention (requant.ir.ops.attention, ScaledDotProductAttention,
domain "requant"): multi-head and grouped-query, causal, bool and additive masks, fully
masked rows, an explicit scale, symbolic lengths, float16. The oracle is the numpy
reference in tests/op_references.py."""

from __future__ import annotations

import numpy as np

from op_cases.case import OLD_OPSETS, C, CaseList, Draws, I

__all__ = ["CASES"]

CASES = CaseList(oracle="numpy")
add = CASES.add
_d = Draws(116)
r = _d.r


def _qkv(q: tuple, k: tuple, v: tuple, dt: str = "f32") -> list:
    return [I(r(*q, dt=dt, lo=-2, hi=2)), I(r(*k, dt=dt, lo=-2, hi=2)), I(r(*v, dt=dt, lo=-2, hi=2))]


_SDPA = "ScaledDotProductAttention"
add(_SDPA, _qkv((2, 4, 5, 8), (2, 4, 6, 8), (2, 4, 6, 8)), label="plain")
add(_SDPA, _qkv((1, 4, 5, 8), (1, 2, 5, 8), (1, 2, 5, 3)), {"is_causal": 1}, label="gqa_causal")
add(_SDPA, _qkv((1, 4, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8)), {"is_causal": 1}, label="gqa_causal_square",
    export_opsets=OLD_OPSETS)
add(_SDPA, _qkv((1, 4, 5, 8), (1, 2, 5, 8), (1, 2, 5, 8)) + [C(r(1, 1, 5, 5))], {"is_causal": 1, "scale": 0.3},
    label="gqa_causal_additive_scale", export_opsets=OLD_OPSETS)
add(_SDPA, _qkv((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4))
    + [I(np.array([[True, False, True], [False, False, False], [True, True, True]]))],
    {"scale": 0.3}, label="bool_mask_fully_masked_row")
_MASK = _d.rng.random((2, 1, 3, 5)) > 0.3
_MASK[0, 0, 1, :] = False  # a query row that sees no key: zeros, not NaN
add(_SDPA, _qkv((2, 4, 3, 8), (2, 4, 5, 8), (2, 4, 5, 6)) + [I(_MASK)], label="mha_bool_mask_broadcast",
    export_opsets=OLD_OPSETS)
add(_SDPA, [I(r(2, 2, 3, 4), shape=("B", 2, "S", 4)) for _ in range(3)] + [I(r(1, 1, 3, 3))], {"is_causal": 1},
    label="sym_additive_mask")
add(_SDPA, [I(r(2, 2, 4, 8), shape=("batch", 2, "s", "d")) for _ in range(3)], {"is_causal": 1},
    label="sym_lengths", export_opsets=(None, 13, 21),
    refused={"tvm": "a symbolic head size and no explicit scale: the default scale 1/sqrt(d) must be static"})
add(_SDPA, [I(r(2, 2, 4, 8), shape=("batch", 2, "s", 8)) for _ in range(3)], {"is_causal": 1},
    label="sym_lengths_static_head")
add(_SDPA, _qkv((1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), dt="f16"), label="f16")
