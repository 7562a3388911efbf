"""Fast CPU builds of Relax modules: the Relax pipeline with requant's CPU schedules,
the host target, and timing / per-op-kind profiling of a built module.

This module owns:

- `host_llvm_target(threads=None, mcpu=None)`: the JSON-dict LLVM target for this host
  (its CPU name from LLVM, a plain x86_64 linux triple so that `mcpu` is accepted).
- `build_cpu(mod, mcpu=None, threads=None)`: FoldConstant on the high-level module,
  `PackConstantWeights` (matmul with constant weights -> pre-packed dense kernels),
  LegalizeOps (with `CPU_LEGALIZATIONS`: round as LLVM's vector nearbyint, isnan on
  the bits), FuseOps,
  FuseTIR, the CPU schedule rules of `schedule_cpu`, then TVM's
  usual lowering; returns a `tvm.runtime.Executable` that needs no tuning to load
  (`relax.VirtualMachine(ex, tvm.cpu())`). `build_cpu(..., schedule=False)` is the
  default TVM build of the same module, for comparison.
- `set_threads(n)`: size TVM's CPU thread pool for this process (up to the size it
  started with); `tvm_threads()`: its size. Importing this module makes the pool start
  with one thread per usable CPU, unpinned (see `_default_thread_pool_env`).
- `time_module(ex, inputs)`: median latency of `main`; `profile_by_kind(ex, inputs)`:
  the VM profiler's per-kernel times grouped into op kinds (matmul, batch_matmul,
  softmax, layer_norm, gelu, elementwise, reshape/transpose, other);
  `format_breakdown(...)` prints it.

Measured numbers are in schedule_cpu's docstring and tools/bench/tvm_cpu.py.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import tvm
from tvm import relax

from requant.backends.tvm import schedule_cpu

__all__ = [
    "host_llvm_target",
    "build_cpu",
    "cpu_relax_pipeline",
    "set_threads",
    "tvm_threads",
    "time_module",
    "profile_by_kind",
    "format_breakdown",
    "KindTime",
    "KINDS",
    "kernel_kind",
]

logger = logging.getLogger(__name__)


def _default_thread_pool_env() -> None:
    """One TVM worker per usable CPU, threads not pinned, unless the user said otherwise.

    TVM's thread pool halves `hardware_concurrency()` on x86 (it assumes SMT pairs), so
    on a 2-vCPU machine every kernel ran on ONE thread while ONNX Runtime used two; and
    it pins the calling (Python main) thread to core 0, which threads created later in
    the process (ONNX Runtime's pool) inherit. Both are read once, when the pool starts
    (the first parallel kernel), so they are set when this module is imported."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    os.environ.setdefault("TVM_NUM_THREADS", str(cpus))
    os.environ.setdefault("TVM_BIND_THREADS", "0")


_default_thread_pool_env()

KINDS = ("matmul", "batch_matmul", "softmax", "layer_norm", "gelu", "elementwise", "reshape/transpose", "other")


def host_llvm_target(threads: int | None = None, mcpu: str | None = None) -> tvm.target.Target:
    """The LLVM target for this machine, as TVM 0.27 wants it (a JSON dict)."""
    from tvm.target import codegen

    spec: dict = {"kind": "llvm", "mcpu": mcpu or codegen.llvm_get_system_cpu()}
    triple = codegen.llvm_get_system_triple()
    # conda's LLVM reports "x86_64-conda-linux-gnu", which LLVM then refuses mcpu for
    if triple.startswith("x86_64") and "linux" in triple:
        spec["mtriple"] = "x86_64-pc-linux-gnu"
    elif triple:
        spec["mtriple"] = triple
    if threads:
        spec["num-cores"] = int(threads)
    return tvm.target.Target(spec)


def tvm_threads() -> int:
    """How many threads TVM's CPU pool runs kernels on (starts the pool)."""
    count = tvm.get_global_func("runtime.NumThreads", allow_missing=True)
    return int(count()) if count is not None else 0


def set_threads(threads: int | None) -> None:
    """Size TVM's CPU thread pool (0 or None: one thread per core)."""
    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is not None:
        config(0, int(threads or 0))


def _legalize_round(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """relax.round as `tirx.round`, not the default legalization's `tirx.nearbyint`: on
    LLVM both are `llvm.nearbyint` (half to even in the default rounding mode, the
    ONNX Round / QuantizeLinear rounding), but a vectorised `tirx.nearbyint` reached
    LLVM as 8-lane gathers and scatters, which made every quantize kernel (and the
    Hadamard + quantize epilogue) several times slower than its memory traffic."""
    from tvm import te, tirx

    x = call.args[0]
    if not str(x.ty.dtype).startswith(("float", "bfloat")):
        return x  # an integer is its own rounding
    return bb.call_te(lambda t: te.compute(t.shape, lambda *i: tirx.round(t(*i)), name="round"), x)


def _legalize_isnan(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """relax.isnan as `tir_nan.is_nan`, a test on the value's bits: with TVM's own
    `tirx.isnan`, which it does not vectorise, the NaN-keeping ReLU / clip of every conv
    epilogue (`where(isnan(y), y, max(y, 0))`) went lane by lane, then through LLVM's
    gathers and scatters, and cost several times its conv."""
    from tvm import te

    from requant.backends.tvm.tir_nan import is_nan

    def isnan(t):
        return te.compute(t.shape, lambda *i: is_nan(t(*i)), name="isnan")

    return bb.call_te(isnan, call.args[0])


#: LegalizeOps overrides of the scheduled CPU build (`cpu_relax_pipeline`)
CPU_LEGALIZATIONS = {"relax.round": _legalize_round, "relax.isnan": _legalize_isnan}


def cpu_relax_pipeline(target: tvm.target.Target, *, schedule: bool = True, vnni: bool = True,
                       fast_math: bool = True) -> tvm.transform.Pass:
    """The Relax pipeline of `build_cpu` (high level -> VM-ready), as one pass."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    prepare = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
               relax.transform.FoldConstant()]
    if schedule:
        prepare.append(schedule_cpu.PackConstantWeights(vnni=vnni))
    if schedule and fast_math:
        prepare.append(schedule_cpu.FastMath())
    legalize = [relax.transform.LegalizeOps(customize_legalize_map=CPU_LEGALIZATIONS if schedule else None),
                relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
                relax.transform.FuseOps(), relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()]
    scheduled = [schedule_cpu.schedule_cpu_module(target)] if schedule else []

    @tvm.transform.module_pass(opt_level=0, name="RequantCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(prepare + legalize + scheduled
                                           + cpu_generic.dataflow_lower_passes(target)
                                           + cpu_generic.finalize_passes(target))
            return seq(mod)

    return _pipeline


def build_cpu(mod: tvm.IRModule, *, mcpu: str | None = None, threads: int | None = None, schedule: bool = True,
              vnni: bool | None = None, fast_math: bool = True) -> tvm.runtime.Executable:
    """Compile a Relax module for this host's CPU with requant's schedules.

    `mcpu` overrides the host CPU name (e.g. "skylake-avx512"); `threads` sizes the
    thread pool of this process (and is recorded as the target's num-cores);
    `schedule=False` gives TVM's default build; `vnni` (default: the target has it)
    allows the int8 VNNI kernel; `fast_math` uses polynomial exp/erf/tanh (float32
    error ~1e-7 relative) instead of libm's scalar calls."""
    target = host_llvm_target(threads, mcpu)
    if vnni is None:
        vnni = schedule_cpu._has_vnni(target)
    if threads:
        set_threads(threads)
    with tvm.transform.PassContext(opt_level=3):
        return tvm.compile(mod, target=target, relax_pipeline=cpu_relax_pipeline(target, schedule=schedule, vnni=vnni,
                                                                             fast_math=fast_math))


# --------------------------------------------------------------------------------------
# timing and profiling
# --------------------------------------------------------------------------------------


def _tensors(inputs: Sequence[np.ndarray], dev) -> list:
    return [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]


def time_module(ex: tvm.runtime.Executable, inputs: Sequence[np.ndarray], *, number: int = 1, repeat: int = 10,
                func: str = "main") -> float:
    """Median seconds of one call of `func` (after a warm-up call)."""
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    args = _tensors(inputs, dev)
    vm[func](*args)
    timer = vm.time_evaluator(func, dev, number=number, repeat=repeat)
    return float(statistics.median(timer(*args).results))


# first match wins: a matmul with a fused epilogue (bias, GELU, residual) is a matmul
_KIND_PATTERNS = (
    ("matmul", re.compile(r"packed_dense|dense|linear")),
    ("batch_matmul", re.compile(r"batch_matmul|padded_bmm|matmul")),
    ("softmax", re.compile(r"softmax")),
    ("layer_norm", re.compile(r"layer_norm|rms_norm|group_norm")),
    ("gelu", re.compile(r"gelu")),
    ("reshape/transpose", re.compile(r"^(fused_)?((reshape|transpose|permute_dims|squeeze|expand_dims|concat|split|strided_slice|take)\d*_?)+$")),
    ("elementwise", re.compile(r"add|multiply|subtract|divide|astype|cast|exp|tanh|erf|sigmoid|power|sqrt|maximum|minimum|where|clip|relu|round|floor")),
)


def kernel_kind(name: str, matmul_2d: set[str] | None = None) -> str:
    """The op kind of a kernel by its (fused) name. Legalized matmuls are all called
    "matmul": those in `matmul_2d` (constant-weight matmuls) count as matmul, the rest
    as batch_matmul."""
    if matmul_2d is not None and name in matmul_2d:
        return "matmul"
    for kind, pattern in _KIND_PATTERNS:
        if pattern.search(name):
            return kind
    return "other"


@dataclass
class KindTime:
    kind: str
    ms: float
    calls: int
    share: float


def profile_by_kind(ex: tvm.runtime.Executable, inputs: Sequence[np.ndarray], *, runs: int = 3,
                    matmul_2d: set[str] | None = None) -> tuple[list[KindTime], dict[str, float]]:
    """Per-op-kind time of one call of `main` (median over `runs` instrumented calls).

    TVM 0.27's VM has no profiler; its instrument hook runs before and after every
    call instruction, and CPU kernels are synchronous, so wall time between the two is
    the kernel's time (plus a few microseconds of Python per call).
    Returns the kinds (largest first) and the per-kernel medians in ms."""
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    args = _tensors(inputs, dev)
    vm["main"](*args)
    current: dict[str, list] = {}
    started: list[float] = []

    def instrument(func, name, before_run, ret_value, *call_args):
        if before_run:
            started.append(time.perf_counter())
        else:
            acc = current.setdefault(str(name), [0.0, 0])
            acc[0] += (time.perf_counter() - started.pop()) * 1e3
            acc[1] += 1
        return 0

    vm.set_instrument(instrument)
    per_run: list[dict[str, list]] = []
    for _ in range(runs):
        current = {}
        vm["main"](*args)
        per_run.append(current)
    names = set().union(*per_run)
    kernels = {n: statistics.median(r.get(n, [0.0, 0])[0] for r in per_run) for n in names}
    calls = {n: max(r.get(n, [0.0, 0])[1] for r in per_run) for n in names}
    totals: dict[str, list] = {}
    for name, ms in kernels.items():
        kind = kernel_kind(name, matmul_2d)
        acc = totals.setdefault(kind, [0.0, 0])
        acc[0] += ms
        acc[1] += calls[name]
    whole = sum(v[0] for v in totals.values()) or 1.0
    kinds = [KindTime(k, v[0], v[1], v[0] / whole) for k, v in totals.items()]
    return sorted(kinds, key=lambda k: -k.ms), kernels


def format_breakdown(kinds: Sequence[KindTime], title: str = "") -> str:
    lines = [f"{title}" if title else "", "| op kind | ms | calls | share |", "|---|---:|---:|---:|"]
    for k in kinds:
        lines.append(f"| {k.kind} | {k.ms:.2f} | {k.calls} | {k.share:.1%} |")
    return "\n".join(line for line in lines if line)
