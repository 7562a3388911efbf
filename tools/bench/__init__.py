"""Benchmarks, run as modules, e.g. `python -m requant.tools.bench.rewrite_scaling`
(rewrite-engine speed and scaling against onnxscript's rewriter)."""
