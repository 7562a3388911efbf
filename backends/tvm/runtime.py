"""The "tvm" backend as `requant.compile` sees it: build a graph for a device, call it,
write it into a saved directory and read it back.

What this module owns:
- `build_runtime(graph, device, ...)`: the graph -> Relax (`emit.to_relax`) -> a TVM
  build for "llvm" (`pipeline.build_cpu`, requant's CPU schedules) or "cuda"
  (`cuda.build_cuda`: CUDA source + nvcc, no GPU needed to build);
- `TvmRuntime`: numpy feeds in, a tuple of numpy arrays out, through the Relax VM; on a
  machine without a CUDA GPU a cuda build can be saved and inspected but calling it
  raises a `RequantError` saying so;
- the files it adds to a saved directory (`model.so`, the exported TVM library; for
  cuda also `model.cu`, the generated CUDA source, and `model.fatbin`, its nvcc build
  for sm_80/sm_90) and `load_runtime`, which reads them back. All of them are native
  code (`saved_files`): the library runs when loaded, the fatbin on the GPU, and the
  CUDA source is compiled by nvcc when no fatbin matches it. `requant.load` hands
  `load_runtime` private copies of these files, made while checking their hashes, so
  what runs is what was checked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from requant.errors import RequantError

__all__ = ["TvmRuntime", "build_runtime", "load_runtime", "saved_files", "LIBRARY_FILE", "DEVICES"]

logger = logging.getLogger(__name__)

LIBRARY_STEM = "model"
LIBRARY_FILE = LIBRARY_STEM + ".so"
CUDA_SOURCE_FILE = LIBRARY_STEM + ".cu"
FATBIN_FILE = LIBRARY_STEM + ".fatbin"
DEVICES = ("llvm", "cuda")


def saved_files(device: str) -> Any:
    """The files of a TVM artifact for `device` (`requant.backends.SavedFiles`): all code."""
    from requant.backends import SavedFiles

    names = frozenset({LIBRARY_FILE} | ({CUDA_SOURCE_FILE, FATBIN_FILE} if device == "cuda" else set()))
    return SavedFiles(names, frozenset(), names)


def _set_threads(threads: int | None) -> None:
    """`threads` workers in TVM's CPU pool; 0/None keeps the backend's default (one per
    usable CPU, unpinned: set when requant.backends.tvm.pipeline is imported)."""
    from requant.backends.tvm import pipeline

    if threads:
        pipeline.set_threads(threads)


class TvmRuntime:
    """A TVM build (or the library a saved directory holds) and the Relax VM that runs
    its "main", made on first call."""

    kind = "tvm"

    def __init__(self, device: str, *, executable: Any = None, cuda_build: Any = None,
                 library_path: Path | None = None, dtypes: tuple[list[Any], list[Any]] | None = None) -> None:
        self.device = device
        self._dtypes = dtypes  # requant dtypes of (inputs, outputs): low-bit floats travel as float32
        self._executable = executable  # what tvm.compile returned (llvm builds)
        self._cuda_build = cuda_build  # a cuda.CudaBuild (cuda builds)
        self._library_path = library_path  # a saved model.so (loaded models)
        self._vm: Any = None
        self._dev: Any = None
        self._size: int | None = None
        self._export: Any = None  # a TemporaryDirectory holding the build's files, made once

    @property
    def artifact_kind(self) -> str:
        return "TVM library (CUDA)" if self.device == "cuda" else "TVM library (LLVM)"

    @property
    def cuda_source(self) -> str | None:
        """The generated CUDA C of a cuda build (None for llvm)."""
        if self._cuda_build is not None:
            return self._cuda_build.cuda_source
        if self._library_path is not None and self._library_path.with_suffix(".cu").is_file():
            return self._library_path.with_suffix(".cu").read_text()
        return None

    def cannot_run(self) -> str | None:
        """Why this build cannot run on this machine, or None."""
        if self.device == "cuda":
            from requant.backends.tvm.cuda import gpu_present

            if not gpu_present():
                return ("no CUDA GPU is present on this machine: the cuda build is compiled "
                        "(save() writes its library and CUDA source) and runs where a GPU exists")
        return None

    def _make_vm(self) -> Any:
        import tvm
        from tvm import relax

        if self.device == "cuda":
            from requant.backends.tvm.cuda import load_cuda_library

            reason = self.cannot_run()
            if reason:
                raise RequantError(reason)
            self._dev = tvm.cuda(0)
            if self._library_path is None:  # a fresh build runs from its exported files
                self._library_path = self._exported() / LIBRARY_FILE
            return load_cuda_library(self._library_path)
        self._dev = tvm.cpu(0)
        module = self._executable if self._library_path is None else tvm.runtime.load_module(str(self._library_path))
        return relax.VirtualMachine(module, self._dev)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        import tvm

        if self._vm is None:
            self._vm = self._make_vm()
        arrays = list(feeds.values())
        if self._dtypes is not None:
            from requant.backends.tvm.emit import to_relax_array

            arrays = [to_relax_array(a, dt) for a, dt in zip(arrays, self._dtypes[0])]
        args = [self._tensor(a) for a in arrays]
        try:
            out = self._vm["main"](*args)
        except Exception as exc:  # TVM raises its own errors (shape checks, CUDA faults)
            raise RequantError(f"the TVM {self.device} build failed running the model: "
                               f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}") from exc
        items = [t.numpy() for t in ([out] if isinstance(out, tvm.runtime.Tensor) else list(out))]
        if self._dtypes is not None:
            from requant.backends.tvm.emit import from_relax_array

            items = [from_relax_array(a, dt) for a, dt in zip(items, self._dtypes[1])]
        return tuple(items)

    def _tensor(self, array: np.ndarray) -> Any:
        """`array` as a TVM tensor on the build's device: on the CPU the array itself when
        TVM can take it without a copy (C-contiguous, writable, 64-byte aligned: TVM
        refuses other memory), which saves copying a batch of images on every call."""
        import tvm

        array = np.ascontiguousarray(array)
        if self.device == "llvm" and array.flags.writeable and array.size:
            try:
                return tvm.runtime.from_dlpack(array)
            except (BufferError, ValueError, RuntimeError):
                pass  # misaligned (or a dtype DLPack cannot carry): copied below
        return tvm.runtime.tensor(array, self._dev)

    def _exported(self) -> Path:
        """The build exported (linked) once into a temporary directory: the library, and
        for CUDA its source and fatbin; sizes, saves and the CUDA loader read it there."""
        if self._export is None:
            import tempfile

            if self._executable is None and self._cuda_build is None:
                raise RequantError("this TVM model was loaded from disk: copy the directory it came from instead")
            self._export = tempfile.TemporaryDirectory(prefix="requant-tvm-")
            out = Path(self._export.name)
            if self._cuda_build is not None:
                self._cuda_build.export(out, name=LIBRARY_STEM)
            else:
                self._executable.export_library(str(out / LIBRARY_FILE))
        return Path(self._export.name)

    def artifact_bytes(self) -> int:
        """The size of the files `write` produces."""
        if self._size is None:
            self._size = sum(f.stat().st_size for f in self._exported().iterdir())
        return self._size

    def write(self, out: Path, external_data: bool | None = None) -> list[str]:
        """Write the library (for CUDA also its source and fatbin); the file names."""
        del external_data  # the constants live inside the library
        import shutil

        names = sorted(f.name for f in self._exported().iterdir())
        for name in names:
            shutil.copyfile(self._exported() / name, out / name)
        return names


def build_runtime(graph: Any, device: str, *, threads: int | None = None, opset: int | None = None) -> TvmRuntime:
    """`graph` built by TVM for `device` ("llvm" or "cuda"); symbolic dims stay symbolic
    (the targets' bind_dims step specialises the graph before this). `opset` is the ONNX
    backend's option: TVM has none."""
    del opset
    from requant.backends.tvm.emit import to_relax

    _set_threads(threads)
    mod = to_relax(graph)
    dtypes = ([v.dtype for v in graph.inputs], [v.dtype for v in graph.outputs])
    if device == "llvm":
        from requant.backends.tvm.pipeline import build_cpu

        return TvmRuntime(device, executable=build_cpu(mod), dtypes=dtypes)
    if device == "cuda":
        from requant.backends.tvm.cuda import build_cuda

        return TvmRuntime(device, cuda_build=build_cuda(mod), dtypes=dtypes)
    raise RequantError(f"the TVM backend builds for 'llvm' or 'cuda', not {device!r}")


def load_runtime(root: Path, manifest: Mapping[str, Any], *, proto: Any = None, threads: int | None = None,
                 files: Mapping[str, Path] | None = None, proto_loader: Any = None) -> TvmRuntime:
    """A runtime on the library of a saved directory; a cuda library loads on first
    call. `files` maps each of `saved_files(device)` to the private copy `requant.load`
    made while checking it against the manifest (the library runs from there, never
    from `root`, which could change after the check). The manifest gives the device and
    the inputs' and outputs' dtypes (low-bit floats travel as float32); `proto` (the
    saved graph, or `proto_loader` reading it) is not needed: the library is the model."""
    from requant.ir import dtypes as dt

    del proto, proto_loader
    device = manifest.get("device", "llvm")
    if files is None or LIBRARY_FILE not in files:
        raise RequantError(f"cannot load {root}: no checked copy of {LIBRARY_FILE} (load it with requant.load)")
    _set_threads(threads)
    dtypes = ([dt.dtype(i["dtype"]) for i in manifest["inputs"]], [dt.dtype(o["dtype"]) for o in manifest["outputs"]])
    runtime = TvmRuntime(device, library_path=files[LIBRARY_FILE], dtypes=dtypes)
    runtime._size = sum(p.stat().st_size for p in files.values())
    return runtime
