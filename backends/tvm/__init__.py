"""The TVM backend: requant IR -> Relax -> a TVM build for the CPU or an NVIDIA GPU.

- `relax_lowering.py`: the lowering table (`LOWERINGS`, one entry per registered op);
- `emit.py`: `to_relax(graph)`, the Relax module, through `relax.BlockBuilder`;
- `pipeline.py` + `schedule_cpu.py`: LLVM builds with requant's CPU schedules;
- `cuda.py`: CUDA builds (dp4a int8 matmuls, nvcc for sm_80/sm_90, no GPU needed);
- `runtime.py`: what `requant.compile` / `requant.load` use (build, call, save, load).

Importing this package imports tvm and sets TVM's CPU thread-pool defaults (one worker
per usable CPU, unpinned: see pipeline.py); `import requant` does not import it.
"""

from __future__ import annotations

from requant.backends.tvm import pipeline  # noqa: F401  (thread-pool defaults before any run)
from requant.backends.tvm.emit import to_relax
from requant.backends.tvm.relax_lowering import LOWERINGS

__all__ = ["to_relax", "LOWERINGS"]
