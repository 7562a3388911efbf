"""CUDA builds of Relax modules for the cuda-int8 / cuda-fp8 / cuda-fp4 targets.

What this module owns:
- `build_cuda(mod, archs=("sm_80", "sm_90")) -> CudaBuild`: Relax -> TIR -> CUDA C with
  TVM 0.27, GPU schedules from dlight, and an nvcc compile of the generated CUDA source
  into ONE fatbin holding SASS for every arch in `archs` plus PTX of the newest one
  (drivers JIT that PTX on later GPUs). Works on machines without a GPU.
- integer matmuls: `relax.matmul(int8|uint8, int8 [K, N], out_dtype="int32")` (2-D
  weight, K a multiple of 4) is replaced before legalization by a hand-scheduled TIR
  kernel: 64x64 output tile per block, 16x16 threads each owning a 4x4 tile of int32
  accumulators, 8-bit tiles staged in shared memory and multiplied four at a time with
  `__dp4a` (int8x4 . int8x4 + int32; uint8 activations are staged as a - 128 and
  128 * colsum(W), itself a dp4a, is added back). Every other int8 matmul gets dlight's plain tiled
  schedule (int32 accumulation, no tensor cores).
- `serialize_bool_kernels`: scalar loads in kernels that read bool buffers (TVM 0.27
  reads two bools as one `ushort2`; see the function).
- requant's FFT kernels (fft_kernels.py), which the TVM lowering emits in their CPU form,
  are rebuilt in their CUDA form (`RetargetFFTKernels`) before dlight's schedules.
- `nvcc_status()`, `find_nvcc()`, `gpu_present()`, `load_cuda_library(path)`; the
  loading side needs only TVM's runtime (libtvm_runtime + libtvm_runtime_cuda, e.g.
  `TVM_USE_RUNTIME_LIB=1` or a TVM without libtvm_compiler), not its compiler:
  `load_cuda_runtime()` loads the CUDA runtime library that a full TVM loads at import.

Why these choices (TVM 0.27 as shipped on PyPI):
- `Schedule.tensorize` crashes the process (segfault) in this build, even on TVM's own
  dp4a intrinsic; dlight's Matmul rule tensorizes int8 and fp16 matmuls on sm_70+ with
  wmma, so every PrimFunc here is marked `dlight.do_not_tensorize`, and the dp4a kernel
  calls `__dp4a` directly instead of going through `tensorize`.
- One codegen, one fatbin: the CUDA C is generated once for the oldest arch in `archs`
  (sm_80 code is valid on sm_90), then nvcc compiles it with one `-gencode` per arch.
  Per-arch codegen would only matter for arch-specific instructions (fp8 mma on sm_89+,
  wgmma on sm_90), which the dlight schedules used here do not emit.
- The TVM wheel's CUDA codegen keeps the kernels as CUDA *source* inside the library and
  compiles them when the library is loaded (its `tvm_callback_cuda_compile` hook, nvrtc
  by default). `load_cuda_library` installs a hook that hands the runtime the fatbin
  that `build_cuda` compiled (written next to the .so by `CudaBuild.export`), and
  compiles with nvcc only when no fatbin matches the source.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from requant.errors import RequantError

__all__ = [
    "CudaBuild",
    "CudaToolkitError",
    "NoGpuError",
    "build_cuda",
    "find_nvcc",
    "nvcc_status",
    "gpu_present",
    "load_cuda_library",
    "load_cuda_runtime",
    "rewrite_int8_matmuls",
    "serialize_bool_kernels",
    "DEFAULT_ARCHS",
]

logger = logging.getLogger(__name__)

DEFAULT_ARCHS: tuple[str, ...] = ("sm_80", "sm_90")
NVCC_ENV = "TVM_NVCC"  # path to an nvcc binary; wins over CUDA_HOME / CUDA_PATH / PATH

# dp4a kernel tiling: a block computes BM x BN outputs with TY x TX threads, each TM x TN
_BM = _BN = 64
_BK = 32
_TY = _TX = 16
_TM = _TN = 4
_SHARED_PAD = 4  # bytes appended to each shared row: rows stay 4-byte aligned, banks spread
_LOADS_PER_THREAD = _BM * _BK // (_TY * _TX)  # = _BN * _BK // (_TY * _TX) = 8


class CudaToolkitError(RequantError):
    """nvcc (the CUDA toolkit) is missing or broken; the message says how to fix it."""


class NoGpuError(RequantError):
    """A CUDA library was asked to run on a machine without a CUDA GPU."""


# ----------------------------------------------------------------------------- toolkit


def _nvcc_candidates() -> list[tuple[str, str]]:
    """(where it came from, path) in the order they are tried."""
    found: list[tuple[str, str]] = []
    if os.environ.get(NVCC_ENV):
        found.append((f"${NVCC_ENV}", os.environ[NVCC_ENV]))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            found.append((f"${var}/bin/nvcc", os.path.join(os.environ[var], "bin", "nvcc")))
    on_path = shutil.which("nvcc")
    if on_path:
        found.append(("PATH", on_path))
    found.append(("default location", "/usr/local/cuda/bin/nvcc"))
    return found


def find_nvcc() -> str:
    """The nvcc to use; raises `CudaToolkitError` (with how to fix it) when there is none."""
    status, path = _probe_nvcc()
    if status is not None:
        raise CudaToolkitError(status)
    return path


def nvcc_status() -> str | None:
    """None when nvcc is usable, otherwise what is missing and how to fix it."""
    return _probe_nvcc()[0]


def _probe_nvcc() -> tuple[str | None, str]:
    tried: list[str] = []
    for origin, path in _nvcc_candidates():
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            tried.append(f"{path} ({origin}: not found)")
            continue
        return None, path
    return (
        "CUDA targets need nvcc (the NVIDIA CUDA toolkit) to compile the generated kernels, and none was "
        "found; tried " + "; ".join(tried) + ". Install the CUDA toolkit (12.x or newer for sm_90) and put its "
        f"bin/ directory on PATH, or set {NVCC_ENV}=/path/to/nvcc or CUDA_HOME=/path/to/cuda; "
        "or compile for a CPU target (cpu-int8, ...)."
    ), ""


def load_cuda_runtime() -> None:
    """Make sure TVM's CUDA runtime (libtvm_runtime_cuda: the cuda device API and the
    loader of cuda modules) is loaded. A full TVM loads it at `import tvm`; a runtime-only
    TVM (`TVM_USE_RUNTIME_LIB=1`, or no libtvm_compiler) does not, so it is loaded here
    from the directory libtvm_runtime came from. Raises `RequantError` with the reason
    (e.g. libcudart or the driver's libcuda.so.1 missing) when it cannot be loaded."""
    import tvm
    from tvm.base import _LOADED_LIBS

    if "tvm_runtime_cuda" in _LOADED_LIBS or tvm.get_global_func("device_api.cuda", allow_missing=True):
        return
    from tvm_ffi.libinfo import load_lib_ctypes

    runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir], mode="RTLD_LOCAL")
    except (OSError, RuntimeError) as exc:
        raise RequantError(f"TVM's CUDA runtime (libtvm_runtime_cuda next to {runtime_dir / 'libtvm_runtime.so'}) "
                           f"could not be loaded: {exc}") from exc


def gpu_present() -> bool:
    """Whether this process can see a CUDA GPU (TVM's runtime: tvm.cuda(0).exist)."""
    try:
        import tvm

        load_cuda_runtime()
        return bool(tvm.cuda(0).exist)
    except Exception:  # no CUDA runtime library, no driver: no GPU as far as we can use one
        return False


# ----------------------------------------------------------------------------- dp4a kernel


def _dp4a_matmul_kernel(a_dtype: str, b_dtype: str, k: int, n: int) -> Any:
    """TIR kernel C[m, n] (int32) = A[m, k] (a_dtype) @ W[k, n] (b_dtype), m symbolic,
    4 products per `__dp4a`. Bounds are guarded, so any m, n and k % 4 == 0 work."""
    from tvm.script import tirx as T

    kp = _BK + _SHARED_PAD
    n_k_tiles = (k + _BK - 1) // _BK
    n_col_blocks = (n + _BN - 1) // _BN
    per_thread = _LOADS_PER_THREAD
    # CUDA's __dp4a is signed x signed (or unsigned x unsigned): uint8 activations are
    # staged as int8 (a - 128) and 128 * sum_k(w) is added back, exact in int32.
    shift = 128 if a_dtype == "uint8" else 0
    ones = 0x01010101  # four int8 ones: __dp4a(ones, w4, s) = s + sum of the four weights

    @T.prim_func(s_tir=True)
    def dp4a_matmul(a: T.handle, w: T.Buffer((T.int64(k), T.int64(n)), b_dtype), c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        m = T.int64()
        A = T.match_buffer(a, (m, T.int64(k)), a_dtype)
        C = T.match_buffer(c, (m, T.int64(n)), "int32")
        with T.sblock("root"):
            a_tile = T.sblock_alloc_buffer((_BM, kp), "int8", scope="shared")
            w_tile = T.sblock_alloc_buffer((_BN, kp), "int8", scope="shared")  # transposed: [n, k]
            acc = T.sblock_alloc_buffer((_TM, _TN), "int32", scope="local")
            wsum = T.sblock_alloc_buffer((_TN,), "int32", scope="local")
            for by in T.thread_binding((m + T.int64(_BM - 1)) // T.int64(_BM), thread="blockIdx.y"):
                for bx in T.thread_binding(T.int64(n_col_blocks), thread="blockIdx.x"):
                    for ty in T.thread_binding(T.int64(_TY), thread="threadIdx.y"):
                        for tx in T.thread_binding(T.int64(_TX), thread="threadIdx.x"):
                            for i, j in T.grid(_TM, _TN):
                                acc[i, j] = 0
                            for j in range(_TN):
                                wsum[j] = 0
                            for ko in range(n_k_tiles):
                                for e in range(per_thread):
                                    with T.sblock("load_a"):
                                        T.reads(A[by * _BM: by * _BM + _BM, ko * _BK: ko * _BK + _BK])
                                        T.writes(a_tile[0:_BM, 0:_BK])
                                        flat = (ty * _TX + tx) * per_thread + e
                                        r = flat // _BK
                                        kk = flat % _BK
                                        a_tile[r, kk] = T.if_then_else(
                                            by * _BM + r < m and ko * _BK + kk < k,
                                            T.Cast("int8", T.Cast("int32", A[by * _BM + r, ko * _BK + kk]) - shift),
                                            T.int8(0))
                                for e in range(per_thread):
                                    with T.sblock("load_w"):
                                        T.reads(w[ko * _BK: ko * _BK + _BK, bx * _BN: bx * _BN + _BN])
                                        T.writes(w_tile[0:_BN, 0:_BK])
                                        flat = (ty * _TX + tx) * per_thread + e
                                        kk = flat // _BN
                                        col = flat % _BN
                                        w_tile[col, kk] = T.if_then_else(
                                            bx * _BN + col < n and ko * _BK + kk < k,
                                            w[ko * _BK + kk, bx * _BN + col], T.int8(0))
                                for k4 in T.unroll(_BK // 4):
                                    for i, j in T.grid(_TM, _TN):
                                        with T.sblock("dp4a"):
                                            T.reads(acc[i, j], a_tile[ty * _TM + i, k4 * 4: k4 * 4 + 4],
                                                    w_tile[tx * _TN + j, k4 * 4: k4 * 4 + 4])
                                            T.writes(acc[i, j])
                                            acc[i, j] = T.call_pure_extern(
                                                "int32", "__dp4a",
                                                a_tile[ty * _TM + i, T.Ramp(k4 * 4, 1, 4)],
                                                w_tile[tx * _TN + j, T.Ramp(k4 * 4, 1, 4)],
                                                acc[i, j])
                                    if shift != 0:
                                        for j in range(_TN):
                                            with T.sblock("wsum"):
                                                T.reads(wsum[j], w_tile[tx * _TN + j, k4 * 4: k4 * 4 + 4])
                                                T.writes(wsum[j])
                                                wsum[j] = T.call_pure_extern(
                                                    "int32", "__dp4a", T.int32(ones),
                                                    w_tile[tx * _TN + j, T.Ramp(k4 * 4, 1, 4)], wsum[j])
                            for i, j in T.grid(_TM, _TN):
                                with T.sblock("store"):
                                    T.reads(acc[i, j], wsum[j])
                                    T.writes(C[by * _BM + ty * _TM + i, bx * _BN + tx * _TN + j])
                                    if by * _BM + ty * _TM + i < m and bx * _BN + tx * _TN + j < n:
                                        C[by * _BM + ty * _TM + i, bx * _BN + tx * _TN + j] = acc[i, j] + shift * wsum[j]

    return dp4a_matmul


def _static_dims(sinfo: Any) -> list[int | None] | None:
    shape = getattr(sinfo, "shape", None)
    if shape is None or not hasattr(shape, "values"):
        return None
    from tvm import tirx

    return [int(d.value) if isinstance(d, tirx.IntImm) else None for d in shape.values]


def _dp4a_operands(call: Any) -> tuple[str, str, int, int] | None:
    """(a dtype, w dtype, K, N) when `call` is an 8-bit matmul the dp4a kernel takes."""
    import tvm

    if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.matmul":
        return None
    if str(call.attrs.out_dtype) != "int32":
        return None
    a, w = call.args
    a_si, w_si = a.ty, w.ty
    a_dt, w_dt = str(getattr(a_si, "dtype", "")), str(getattr(w_si, "dtype", ""))
    if (a_dt, w_dt) not in {("int8", "int8"), ("uint8", "int8")}:
        return None
    w_dims, a_dims = _static_dims(w_si), _static_dims(a_si)
    if w_dims is None or a_dims is None or len(w_dims) != 2 or len(a_dims) < 2 or None in w_dims:
        return None
    k, n = w_dims
    if a_dims[-1] != k or k % 4:
        return None
    return a_dt, w_dt, k, n


def _op_name(expr: Any) -> str | None:
    import tvm
    from tvm import relax

    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def _int8_constant(expr: Any) -> np.ndarray | None:
    """The values of a constant 2-D weight (int8, or wider integers that fit int8) as int8."""
    import tvm

    if _op_name(expr) == "relax.astype":
        expr = expr.args[0]
    if not isinstance(expr, tvm.ir.expr.Constant) or not hasattr(expr.value, "numpy"):
        return None
    w = expr.value.numpy()
    if w.ndim != 2 or w.dtype.kind not in "iu" or w.size == 0 or w.min() < -128 or w.max() > 127:
        return None
    return w.astype(np.int8)


def _bound(expr: Any, lookup: Any) -> Any:
    """What a bound Relax variable stands for (`lookup`: var -> value or None); `expr`
    itself otherwise."""
    from tvm import relax

    value = lookup(expr) if isinstance(expr, relax.Var) else None
    return expr if value is None else value


def _widened_int8(expr: Any, lookup: Any) -> tuple[Any, np.ndarray | None] | None:
    """`astype(x8, int32)` [`- zp`, zp a scalar constant] -> (x8, zp or None)."""
    import tvm

    zp = None
    if _op_name(expr) == "relax.subtract":
        z = _bound(expr.args[1], lookup)
        while _op_name(z) in ("relax.astype", "relax.reshape"):  # a scalar constant behind bindings and casts
            z = _bound(z.args[0], lookup)
        if not isinstance(z, tvm.ir.expr.Constant) or not hasattr(z.value, "numpy") or z.value.numpy().size != 1:
            return None
        zp = z.value.numpy().reshape(())
        expr = _bound(expr.args[0], lookup)
    if _op_name(expr) != "relax.astype" or str(expr.attrs.dtype) != "int32":
        return None
    x8 = expr.args[0]
    if str(getattr(x8.ty, "dtype", "")) not in ("int8", "uint8"):
        return None
    return x8, zp


def rewrite_int8_matmuls(mod: Any) -> tuple[Any, int]:
    """Replace every 8-bit matmul with a call to the dp4a kernel (leading dims flattened
    and restored). Returns (module, count). Two forms are taken:
    `relax.matmul(int8|uint8 [..., K], int8 [K, N], out_dtype=int32)`, and the widened
    form requant's emitter writes for MatMulInteger with a constant weight,
    `matmul(astype(x8, int32) [- zp], W)` (W constant, values in int8), which becomes
    `dp4a(x8, W8) - zp * colsum(W)` (exact in int32)."""
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    # zero points and weights reach the matmul through astype/reshape chains of constants
    mod = relax.transform.FoldConstant()(mod)
    kernels: dict[tuple[str, str, int, int], Any] = {}
    count = [0]

    @mutator
    class _Rewriter(PyExprMutator):
        def _lookup(self, var: Any) -> Any:
            try:
                return self.lookup_binding(var)
            except Exception:  # noqa: BLE001  (not a bound var)
                return None

        def _widened(self, call: Any) -> tuple[Any, Any, np.ndarray | None] | None:
            if _op_name(call) != "relax.matmul":
                return None
            a, w = call.args
            widened = _widened_int8(_bound(a, self._lookup), self._lookup)
            w8 = _int8_constant(_bound(w, self._lookup))
            if widened is None or w8 is None:
                return None
            x8, zp = widened
            return x8, w8, zp

        def visit_call_(self, call: Any) -> Any:  # noqa: N802 (TVM's name)
            call = super().visit_call_(call)
            widened = self._widened(call)
            zp = None
            if widened is not None:
                x8, w8, zp = widened
                call = relax.Call(call.op, [x8, relax.const(w8)], call.attrs)
                call = self.builder_.normalize(call)
            key = _dp4a_operands(call)
            if key is None:
                return call
            a, w = call.args
            _, _, k, n = key
            if key not in kernels:
                name = f"requant_dp4a_matmul_{key[0]}_{key[1]}_k{k}_n{n}"
                kernels[key] = self.builder_.add_func(_dp4a_matmul_kernel(*key).with_attr("global_symbol", name), name)
            shape = a.ty.shape.values
            lead = list(shape[:-1])
            rows = lead[0]
            for d in lead[1:]:
                rows = rows * d
            a2 = a if len(shape) == 2 else self.builder_.emit(relax.op.reshape(a, [rows, k]))
            out = self.builder_.emit(relax.call_tir(kernels[key], [a2, w],
                                                    relax.TensorType([rows, n], "int32")))
            if zp is not None and int(zp) != 0:
                colsum = w.value.numpy().astype(np.int64).sum(axis=0) * int(zp)
                out = self.builder_.emit(relax.op.subtract(out, relax.const(colsum.astype(np.int32))))
            count[0] += 1
            return out if len(shape) == 2 else relax.op.reshape(out, lead + [n])

    rewriter = _Rewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return rewriter.builder_.get(), count[0]


# ----------------------------------------------------------------------------- pipeline


def serialize_bool_kernels(mod: Any) -> Any:
    """Scalar loops in every scheduled kernel that takes a bool buffer. TVM 0.27's CUDA
    codegen loads two bools (one byte each) as a `ushort2` -- four bytes, one 16-bit lane
    per PAIR of bools -- so a vectorized read of an attention mask (dlight's matmul
    epilogue: `where(mask, q @ k^T * scale, -inf)`) let each key see its neighbour's
    mask bit: MiniLM's attention was wrong on the H100 (73% of the scores off, embedding
    cosine 0.994 instead of 0.998) while every int8 matmul was exact. Only those kernels
    lose their vector loads."""
    import tvm
    from tvm import tirx

    def has_bool_buffer(func: Any) -> bool:
        return any(str(getattr(p, "dtype", "")) == "bool" for p in func.params)

    scalar = tirx.transform.VectorizeLoop(False)
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tirx.PrimFunc) and has_bool_buffer(func):
            mod[gv] = scalar(tvm.IRModule({gv: func}))[gv]
    return mod


def _cuda_relax_pipeline(target: Any, rewritten: list[int] | None = None) -> Any:
    """TVM's default CUDA pipeline, with the dp4a rewrite first and dlight's tensor-core
    tensorization switched off (it crashes in TVM 0.27, see the module docstring)."""
    import tvm
    from tvm import relax, tirx
    from tvm.relax.backend.cuda import pipeline as cuda_pipeline
    from tvm.s_tir import dlight as dl

    from requant.backends.tvm.fft_kernels import CUDA, RetargetFFTKernels

    @tvm.transform.module_pass(opt_level=0, name="RequantDp4aMatmul")
    def dp4a(mod: Any, _ctx: Any) -> Any:
        mod, count = rewrite_int8_matmuls(mod)
        if rewritten is not None:
            rewritten.append(count)
        return mod

    @tvm.transform.module_pass(opt_level=0, name="RequantNoTensorize")
    def no_tensorize(mod: Any, _ctx: Any) -> Any:
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tirx.PrimFunc) and "dlight.do_not_tensorize" not in func.attrs:
                mod[gv] = func.with_attr("dlight.do_not_tensorize", True)
        return mod

    @tvm.transform.module_pass(opt_level=0, name="RequantScalarBoolLoads")
    def scalar_bool_loads(mod: Any, _ctx: Any) -> Any:
        return serialize_bool_kernels(mod)

    legalize = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        RetargetFFTKernels(CUDA),  # the TVM lowering emits the CPU forms of requant's FFT kernels
        no_tensorize,
        dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                dl.gpu.GeneralReduction(), dl.gpu.Fallback()),
        scalar_bool_loads,
    ]

    @tvm.transform.module_pass(opt_level=0, name="RequantCudaPipeline")
    def pipeline(mod: Any, _ctx: Any) -> Any:
        with target:
            seq = tvm.transform.Sequential(
                [dp4a] + cuda_pipeline.library_dispatch_passes(target) + legalize
                + cuda_pipeline.dataflow_lower_passes(target) + cuda_pipeline.finalize_passes(target))
            return seq(mod)

    return pipeline


def _check_archs(archs: Any) -> tuple[str, ...]:
    if isinstance(archs, str):
        archs = (archs,)
    archs = tuple(archs)
    bad = [a for a in archs if not (isinstance(a, str) and a.startswith("sm_") and a[3:5].isdigit())]
    if not archs or bad:
        raise RequantError(f"build_cuda(archs=...): expected names like 'sm_80', 'sm_90'; got {list(archs) or '[]'}")
    return tuple(sorted(set(archs), key=lambda a: int("".join(ch for ch in a[3:] if ch.isdigit()))))


def _nvcc_command(nvcc: str, archs: tuple[str, ...], src: str, out: str) -> list[str]:
    cmd = [nvcc, "--fatbin", "-O3", "-std=c++17", "--expt-relaxed-constexpr", "--use_fast_math",
           "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
           "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
    for i, arch in enumerate(archs):
        num = arch[3:]
        code = f"[sm_{num},compute_{num}]" if i == len(archs) - 1 else f"sm_{num}"  # PTX of the newest
        cmd += ["-gencode", f"arch=compute_{num},code={code}"]
    return cmd + ["-o", out, src]


def compile_fatbin(source: str, archs: tuple[str, ...], nvcc: str | None = None) -> bytes:
    """nvcc: CUDA C -> one fatbin with SASS for each arch (and PTX for the newest)."""
    nvcc = nvcc or find_nvcc()
    with tempfile.TemporaryDirectory(prefix="requant_nvcc_") as tmp:
        src, out = os.path.join(tmp, "kernels.cu"), os.path.join(tmp, "kernels.fatbin")
        Path(src).write_text(source)
        cmd = _nvcc_command(nvcc, archs, src, out)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise CudaToolkitError(f"could not run {nvcc}: {exc}; {nvcc_status() or 'check the CUDA toolkit'}") from exc
        if proc.returncode != 0:
            raise RequantError(f"nvcc failed ({' '.join(cmd)}):\n{(proc.stderr or proc.stdout)[-4000:]}")
        return Path(out).read_bytes()


# ----------------------------------------------------------------------------- build


@dataclass
class CudaBuild:
    """A Relax module built for CUDA: the TVM Executable, its CUDA C and the nvcc fatbin."""

    executable: Any  # tvm.runtime.Executable (host llvm code + the CUDA module)
    cuda_source: str
    fatbin: bytes
    archs: tuple[str, ...]
    codegen_arch: str
    dp4a_matmuls: int  # int8 matmuls replaced by the dp4a kernel
    times: dict[str, float] = field(default_factory=dict)  # seconds: "tvm", "nvcc"

    @property
    def kernel_names(self) -> list[str]:
        import re

        found = re.findall(r"__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)\(", self.cuda_source)
        return list(dict.fromkeys(found))  # each kernel is declared, then defined

    def export(self, directory: str | os.PathLike, name: str = "model") -> dict[str, Path]:
        """Write `name`.so (TVM library, export_library), `name`.cu (the CUDA C, for
        inspection) and `name`.fatbin (what `load_cuda_library` hands the runtime)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"so": out / f"{name}.so", "cu": out / f"{name}.cu", "fatbin": out / f"{name}.fatbin"}
        self.executable.export_library(str(paths["so"]))
        paths["cu"].write_text(self.cuda_source)
        paths["fatbin"].write_bytes(self.fatbin)
        return paths


def build_cuda(mod: Any, *, archs: Any = DEFAULT_ARCHS) -> CudaBuild:
    """Build a Relax IRModule for NVIDIA GPUs; see the module docstring. Needs nvcc, not a GPU."""
    archs = _check_archs(archs)
    nvcc = find_nvcc()
    import tvm

    codegen_arch = archs[0]
    target = tvm.target.Target({"kind": "cuda", "arch": codegen_arch}, host={"kind": "llvm"})
    started = time.perf_counter()
    rewritten: list[int] = []  # the pipeline's dp4a pass reports how many matmuls it took
    try:
        executable = tvm.compile(mod, target, relax_pipeline=_cuda_relax_pipeline(target, rewritten))
    except Exception as exc:
        raise RequantError(f"TVM could not build the module for CUDA ({codegen_arch}): {exc}") from exc
    dp4a_count = sum(rewritten)
    tvm_done = time.perf_counter()
    source = _cuda_source(executable)
    fatbin = compile_fatbin(source, archs, nvcc)
    done = time.perf_counter()
    logger.info("CUDA build for %s: TVM %.2f s, nvcc %.2f s, %d dp4a matmul(s)",
                ",".join(archs), tvm_done - started, done - tvm_done, dp4a_count)
    return CudaBuild(executable, source, fatbin, archs, codegen_arch, dp4a_count,
                     {"tvm": tvm_done - started, "nvcc": done - tvm_done})


def _cuda_source(executable: Any) -> str:
    parts = []
    stack, seen = [executable.mod], set()
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            parts.append(m.inspect_source("cuda"))
        for sub in m.imports:
            if id(sub) not in seen:
                seen.add(id(sub))
                stack.append(sub)
    if not parts:
        raise RequantError("the CUDA build produced no CUDA kernels (no cuda module among the imports)")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- load


def _source_key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


_PREBUILT: dict[str, bytes] = {}


def _install_compile_hook() -> None:
    """The runtime compiles the embedded CUDA C on load through `tvm_callback_cuda_compile`;
    answer it with a prebuilt fatbin when one matches, else compile with nvcc."""
    import tvm
    import tvm_ffi

    def compile_hook(code: str, *_: Any) -> bytearray:
        prebuilt = _PREBUILT.get(_source_key(code))
        if prebuilt is not None:
            logger.info("CUDA kernels: the prebuilt fatbin (%d bytes)", len(prebuilt))
            return bytearray(prebuilt)
        dev = tvm.cuda(0)
        arch = "sm_" + str(dev.compute_version).replace(".", "")
        logger.warning("no prebuilt fatbin matches the library's CUDA source: compiling it with nvcc for %s", arch)
        return bytearray(compile_fatbin(code, (arch,)))

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_hook, override=True)


def load_cuda_library(path: str | os.PathLike, *, fatbin: str | os.PathLike | None = None) -> Any:
    """Load an exported CUDA library and return a `relax.VirtualMachine` on cuda:0 (TVM's
    runtime is enough: see `load_cuda_runtime`). Raises `NoGpuError` where there is no
    CUDA GPU."""
    path = Path(path)
    if not path.is_file():
        raise RequantError(f"no CUDA library at {path}")
    if not gpu_present():
        raise NoGpuError(f"no CUDA GPU is present on this machine; the library at {path} runs where one exists "
                         f"(an NVIDIA GPU of the arch it was built for, with its driver)")
    import tvm
    from tvm.runtime.vm import VirtualMachine  # = relax.VirtualMachine, without the compiler

    fatbin_path = Path(fatbin) if fatbin is not None else path.with_suffix(".fatbin")
    source_path = path.with_suffix(".cu")
    if fatbin_path.is_file() and source_path.is_file():
        _PREBUILT[_source_key(source_path.read_text())] = fatbin_path.read_bytes()
    _install_compile_hook()
    lib = tvm.runtime.load_module(str(path))
    return VirtualMachine(lib, tvm.cuda(0))
