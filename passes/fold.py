"""The fold family: exact-in-float rewrites that move scales into weights. Importing
this module registers every fold pass:

- "fold_batchnorm" (passes/fold_batchnorm.py): inference BatchNormalization -> folded
  into the preceding Conv or linear's weight and bias;
- "fold_norm_affine" (passes/fold_norm.py): LayerNorm / RMSNorm gamma and beta -> folded
  into the linears reading the norm, when every reader is a linear;
- "smoothquant" (passes/fold_smoothquant.py): per-channel activation scales from
  calibration -> divided out of the producing norm (or linear, or an explicit Mul on
  the branch to the linears) and multiplied into the consuming linears' weight rows;
- "llm_fp4" (passes/fold_llm_fp4.py): LLM-FP4's searched floating-point quantizers with
  per-channel activation exponent biases, whose integer parts fold into the next
  weight's rows as powers of two, plus the FakeQuantize nodes of the searched formats.

Shared machinery: passes/fold_common.py (recognising linears and norms, migrating a
per-channel scale), passes/fold_samples.py (activation samples from calibration
batches), passes/fold_fp4_search.py (the LLM-FP4 format search).
"""

from __future__ import annotations

import logging

from requant.passes.fold_batchnorm import batchnorm_fold_refusal, fold_batchnorm
from requant.passes.fold_llm_fp4 import fp4_candidates, llm_fp4
from requant.passes.fold_norm import fold_norm_affine, norm_fold_refusal
from requant.passes.fold_smoothquant import smoothing_channel_axes, smoothquant

__all__ = [
    "fold_batchnorm",
    "batchnorm_fold_refusal",
    "fold_norm_affine",
    "norm_fold_refusal",
    "smoothquant",
    "smoothing_channel_axes",
    "llm_fp4",
    "fp4_candidates",
]

logger = logging.getLogger(__name__)
