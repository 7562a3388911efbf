"""Shared pieces of the one-node op tests (tests/ir/test_ops.py, test_quant_ops.py): the
oracle that runs an ONNX model, and the check that a kernel's array fits its inferred type."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["run_oracle", "check_type"]


def run_oracle(model: Any, feed: dict[str, np.ndarray], oracle: str) -> list[np.ndarray]:
    """Outputs of `model` from onnx's ReferenceEvaluator, or from ONNX Runtime when
    `oracle == "ort"` (where the reference implementation is wrong or lacks the op)."""
    if oracle == "ort":
        import onnxruntime

        model.ir_version = min(model.ir_version, 10)
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return list(session.run(None, feed))
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(model).run(None, feed))


def check_type(t, arr: np.ndarray, bindings: dict[str, int], where: str) -> None:
    """`arr` has the dtype and shape of inferred type `t`; a symbol binds one size."""
    assert arr.dtype == t.dtype.np, f"{where}: kernel gave {arr.dtype}, type says {t.dtype}"
    if t.shape is None:
        return
    assert len(t.shape) == arr.ndim, f"{where}: inferred {t}, got shape {arr.shape}"
    for d, n in zip(t.shape, arr.shape):
        if isinstance(d, int):
            assert d == n, f"{where}: inferred {t}, got shape {arr.shape}"
        elif isinstance(d, str):
            assert bindings.setdefault(d, n) == n, f"{where}: symbol {d} is {bindings[d]} and {n}"
