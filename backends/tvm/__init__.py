"""The TVM backend: requant IR -> Relax -> a TVM build for the CPU or an NVIDIA GPU.

- `lowering/`: the lowering table (`LOWERINGS`, one entry per registered op), its
  emitters in one module per op family;
- `emit.py`: `to_relax(graph)`, the Relax module, through `relax.BlockBuilder`;
- `pipeline.py` + `schedule_cpu.py`: LLVM builds with requant's CPU schedules (importing
  pipeline.py sets TVM's thread-pool defaults: one worker per usable CPU, unpinned);
- `cuda.py`: CUDA builds (dp4a int8 matmuls, nvcc for sm_80/sm_90, no GPU needed);
- `runtime.py`: what `requant.compile` / `requant.load` use (build, call, save, load).

Importing this package does not import tvm (`requant.targets()` asks cuda.py whether nvcc
exists without it); `to_relax` and `LOWERINGS` import it on first use.
"""

from __future__ import annotations

from requant import _lazy_getattr

__all__ = ["to_relax", "LOWERINGS"]

__getattr__ = _lazy_getattr(
    __name__, {"to_relax": "requant.backends.tvm.emit", "LOWERINGS": "requant.backends.tvm.lowering"}, globals())
