"""requant's passes: the pass infrastructure (`requant.passes.manager`) and one module per
pass, named after it (pass "fold_batchnorm" lives in passes/fold_batchnorm.py and is
tested in tests/passes/test_fold_batchnorm.py). Importing this package registers every
pass it ships, so `available_passes()` lists them all. It imports no torch, onnx or tvm.

Families (each module's docstring states what it rewrites into what, and the math):
- cleanup (exact): dce, cse, fold_constants;
- canonical forms (exact): canonicalize and its rule passes canonicalize_linear /
  _noops / _norm / _activation / _attention, refine_types, bind_dims;
- fold (exact in float): fold_batchnorm, fold_norm_affine, smoothquant, llm_fp4; their
  shared machinery is fold_common (moving an invertible transform between a tensor's
  writers and readers), residual_stream (the analysis that finds them), fold_samples;
- quantize (approximate): calibration, quantize;
- intonly (approximate, bit-exact to its spec): intonly, with intonly_approx / _forms /
  _convert / _check;
- rpe_fft (exact to float rounding): toeplitz_fft (Toeplitz products, relative-position
  kernelized attention and long depthwise convs in FFT form), with the analysis that
  proves the Toeplitz structure (toeplitz_analysis) and its measured crossovers
  (toeplitz_fft_crossovers);
- lower (exact): lower_integer (Q/DQ -> standard integer ops). Lowerings to one
  runtime's own kernels live under that backend (backends/onnx/lower_quant.py).
"""

from __future__ import annotations

from requant.passes import (  # noqa: F401  (each module registers its pass)
    bind_dims,
    canonicalize,
    cse,
    dce,
    fold_batchnorm,
    fold_constants,
    fold_norm_affine,
    intonly,
    layernorm_to_rmsnorm,
    llm_fp4,
    lower_integer,
    quantize,
    refine_types,
    rotate_heads,
    rotate_online,
    rotate_residual,
    smoothquant,
    toeplitz_fft,
)
from requant.passes.cse import common_subexpression_elimination
from requant.passes.dce import dead_code_elimination
from requant.passes.fold_constants import constant_folding
from requant.passes.manager import (
    FunctionPass,
    Pass,
    PassFactory,
    PassManager,
    PassRecord,
    PassResult,
    PipelineResult,
    available_passes,
    get_pass,
    graph_pass,
    register_pass,
    verify_enabled,
)

__all__ = [
    "Pass",
    "PassResult",
    "FunctionPass",
    "PassFactory",
    "graph_pass",
    "register_pass",
    "get_pass",
    "available_passes",
    "verify_enabled",
    "PassManager",
    "PassRecord",
    "PipelineResult",
    "dead_code_elimination",
    "common_subexpression_elimination",
    "constant_folding",
]
