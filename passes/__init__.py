"""requant's passes: the pass infrastructure (`requant.passes.manager`) and one module
per transformation family. Importing this package registers every pass it ships, so
`available_passes()` lists them all. It imports no torch, onnx or tvm."""

from __future__ import annotations

from requant.passes import bind_dims  # noqa: F401  (registers "bind_dims")
from requant.passes import cleanup
from requant.passes import canonicalize  # noqa: F401  (registers the canonicalize passes)
from requant.passes import fold  # noqa: F401  (registers the fold passes)
from requant.passes import lower, quantize  # noqa: F401  (registers "quantize" and "lower_quant")
from requant.passes.cleanup import (
    common_subexpression_elimination,
    constant_folding,
    dead_code_elimination,
)
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
    "cleanup",
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
