"""Shared by the TVM CPU schedule tests: a module taken through build_cpu's Relax
pipeline up to and including requant's schedules (no lowering), for reading the
scheduled TIR of each kernel."""

from __future__ import annotations

import tvm
from tvm import relax, tirx

from requant.backends.tvm import pipeline, schedule_cpu


def scheduled_funcs(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    """The PrimFuncs of `mod` after build_cpu's Relax pipeline up to the schedules."""
    target = pipeline.host_llvm_target()
    seq = tvm.transform.Sequential([
        relax.transform.FoldConstant(), schedule_cpu.PackConstantWeights(), schedule_cpu.FastMath(),
        relax.transform.LegalizeOps(customize_legalize_map=pipeline.CPU_LEGALIZATIONS),
        relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
        relax.transform.FuseOps(), relax.transform.FuseTIR(), schedule_cpu.schedule_cpu_module(target)])
    with target:
        out = seq(mod)
    return {gv.name_hint: f for gv, f in out.functions_items() if isinstance(f, tirx.PrimFunc)}
